//! Asking the CPU to bring memory into its cache ahead of a read: a walk over
//! many scattered objects (a list page's key index entries) overlaps their
//! cache misses instead of taking them one after another.

/// Starts loading the cache line holding `bytes`' first byte; no effect on
/// what any read returns, and nothing on targets without the instruction.
#[inline(always)]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and
    // cannot fault, whatever the address; this one is a live slice's.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
