//! Values too large for a leaf live in a chain of overflow pages. Body (after
//! the page header, little endian):
//! ```text
//! 24  u64 next page of the chain, 0 on the last page
//! 32  u32 value bytes on this page
//! 36  value bytes
//! ```
//! Overflow pages are written once and never modified: a leaf that is copied on
//! write keeps pointing at the same chain; replacing or removing the value
//! releases the chain.

use crate::page::{get_u32, get_u64, new_page, PageId, PageImage, PageKind, BODY_BYTES, HEADER_BYTES};

/// Value bytes one overflow page holds.
pub const OVERFLOW_DATA_BYTES: usize = BODY_BYTES - 12;

/// Encodes `value` into pages with the given ids (one per `OVERFLOW_DATA_BYTES`).
pub fn encode_chain(value: &[u8], ids: &[PageId]) -> Vec<PageImage> {
    assert_eq!(ids.len(), value.len().div_ceil(OVERFLOW_DATA_BYTES));
    value
        .chunks(OVERFLOW_DATA_BYTES)
        .zip(ids)
        .enumerate()
        .map(|(index, (chunk, &id))| {
            let mut page = new_page(PageKind::Overflow, 0, id);
            let next = ids.get(index + 1).copied().unwrap_or(0);
            page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&next.to_le_bytes());
            page[HEADER_BYTES + 8..HEADER_BYTES + 12].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
            page[HEADER_BYTES + 12..HEADER_BYTES + 12 + chunk.len()].copy_from_slice(chunk);
            (id, page)
        })
        .collect()
}

/// An overflow page whose length field is 0 or more than the page holds.
#[derive(Debug, thiserror::Error)]
#[error("overflow page holds {len} bytes")]
pub struct OverflowPageError {
    len: usize,
}

/// One overflow page's (next page, value bytes); Err if the lengths do not fit.
pub fn decode_page(page: &[u8]) -> Result<(Option<PageId>, &[u8]), OverflowPageError> {
    let next = get_u64(page, HEADER_BYTES);
    let len = get_u32(page, HEADER_BYTES + 8) as usize;
    if len == 0 || len > OVERFLOW_DATA_BYTES {
        return Err(OverflowPageError { len });
    }
    Ok((
        (next != 0).then_some(next),
        &page[HEADER_BYTES + 12..HEADER_BYTES + 12 + len],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_holds_the_value_in_order() {
        let value: Vec<u8> = (0..OVERFLOW_DATA_BYTES * 2 + 10).map(|i| i as u8).collect();
        let pages = encode_chain(&value, &[5, 9, 6]);
        let mut read = Vec::new();
        let mut expected_next = vec![Some(9), Some(6), None].into_iter();
        for (_, page) in &pages {
            let (next, bytes) = decode_page(page).unwrap();
            assert_eq!(next, expected_next.next().unwrap());
            read.extend_from_slice(bytes);
        }
        assert_eq!(read, value);
    }
}
