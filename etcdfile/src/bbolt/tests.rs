use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

use proptest::prelude::*;

use super::read::{BboltError, BucketRoot, Reader};
use super::write::{BucketWriter, Writer};
use super::PAGE_BYTES;

type Buckets = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn write(buckets: &Buckets) -> std::fs::File {
    let mut writer = Writer::new(tempfile::tempfile().unwrap()).unwrap();
    let mut finished = Vec::new();
    for (name, entries) in buckets {
        let mut bucket = BucketWriter::new();
        for (key, value) in entries {
            bucket.put(&mut writer, key, value).unwrap();
        }
        finished.push((name.clone(), bucket.finish(&mut writer).unwrap()));
    }
    let mut file = writer.finish(finished).unwrap();
    file.flush().unwrap();
    file
}

fn read(file: std::fs::File) -> Result<Buckets, BboltError> {
    let len = file.metadata()?.len();
    let reader = Reader::open(file, len)?;
    let mut buckets = Buckets::new();
    for (name, root) in reader.buckets()? {
        let mut entries = BTreeMap::new();
        reader.for_each(&root, |element| -> Result<(), BboltError> {
            assert!(!element.is_bucket);
            entries.insert(element.key.to_vec(), element.value.to_vec());
            Ok(())
        })?;
        buckets.insert(name, entries);
    }
    Ok(buckets)
}

fn buckets() -> impl Strategy<Value = Buckets> {
    let value = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..200),
        1 => prop::collection::vec(any::<u8>(), 3000..10000),
    ];
    let entries = prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..40), value, 0..600);
    prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..12), entries, 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// What the writer lays out, the reader reads back: every bucket, key
    /// and value, inline buckets, multi-level trees and overflow pages alike.
    #[test]
    fn a_written_file_reads_back_the_same(buckets in buckets()) {
        let file = write(&buckets);
        prop_assert_eq!(read(file).unwrap(), buckets);
    }
}

#[test]
fn a_large_bucket_has_branch_levels_and_reads_back_in_order() {
    let entries: BTreeMap<Vec<u8>, Vec<u8>> = (0..50_000u32)
        .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; 40]))
        .collect();
    let buckets = Buckets::from([(b"key".to_vec(), entries)]);
    let file = write(&buckets);
    let len = file.metadata().unwrap().len();
    // 50,000 elements of 60 bytes take more than 700 leaves: a tree of three levels.
    assert!(len > 700 * PAGE_BYTES as u64);
    assert_eq!(read(file).unwrap(), buckets);
}

#[test]
fn damaged_headers_and_elements_are_errors_not_panics() {
    let entries: BTreeMap<Vec<u8>, Vec<u8>> = (0..3000u32).map(|i| (i.to_be_bytes().to_vec(), vec![7; 30])).collect();
    let buckets = Buckets::from([(b"key".to_vec(), entries), (b"meta".to_vec(), BTreeMap::new())]);
    let file = write(&buckets);
    let len = file.metadata().unwrap().len();
    let original = std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).unwrap();
    assert_eq!(original.len() as u64, len);
    // Every byte of page headers and element tables, set to 0xff in turn.
    let mut refused = 0;
    for page in 0..len as usize / PAGE_BYTES {
        for at in (page * PAGE_BYTES..page * PAGE_BYTES + 96).step_by(3) {
            let mut damaged = original.clone();
            damaged[at] ^= 0xff;
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&damaged).unwrap();
            file.seek(SeekFrom::Start(0)).unwrap();
            if read(file).is_err() {
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
}

#[test]
fn a_truncated_file_is_refused() {
    let entries: BTreeMap<Vec<u8>, Vec<u8>> = (0..3000u32).map(|i| (i.to_be_bytes().to_vec(), vec![7; 30])).collect();
    let file = write(&Buckets::from([(b"key".to_vec(), entries)]));
    let len = file.metadata().unwrap().len();
    file.set_len(len - PAGE_BYTES as u64).unwrap();
    let error = read(file).unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn an_empty_bucket_is_inline() {
    let mut writer = Writer::new(tempfile::tempfile().unwrap()).unwrap();
    let bucket = BucketWriter::new().finish(&mut writer).unwrap();
    assert!(matches!(bucket, super::write::FinishedBucket::Inline(ref page) if page.len() == 16));
    let file = writer.finish(vec![(b"auth".to_vec(), bucket)]).unwrap();
    let len = file.metadata().unwrap().len();
    let reader = Reader::open(file, len).unwrap();
    let buckets = reader.buckets().unwrap();
    assert_eq!(buckets.len(), 1);
    assert!(matches!(buckets[0].1, BucketRoot::Inline(_)));
}
