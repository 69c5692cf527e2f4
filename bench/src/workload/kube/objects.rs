//! kube's objects: their keys and which of them exist.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::Rng;

/// Every object's key starts with this, as kube-apiserver stores pods.
pub const PREFIX: &str = "/registry/pods/";
/// Objects are spread over this many namespaces.
pub const NAMESPACES: u64 = 10;
/// Most objects one run creates (preloaded and new): keys hold 8 digits.
pub const OBJECTS_MAX: u64 = 100_000_000;

/// `/registry/pods/ns-03/pod-00000013`.
pub fn object_key(index: u64) -> Vec<u8> {
    debug_assert!(index < OBJECTS_MAX);
    format!("{PREFIX}ns-{:02}/pod-{index:08}", index % NAMESPACES).into_bytes()
}

/// The objects believed to exist, shared by every request loop: an update
/// picks one of them, a delete claims one (so two deletes never race for the
/// same object), a create adds a new one.
#[derive(Debug)]
pub struct Objects {
    live: Mutex<Vec<u64>>,
    next_new: AtomicU64,
}

impl Objects {
    /// Objects `0..count` exist; new ones are numbered from `count` on.
    pub fn new(count: u64) -> Objects {
        Objects {
            live: Mutex::new((0..count).collect()),
            next_new: AtomicU64::new(count),
        }
    }

    /// An object that exists, if any.
    pub fn pick(&self, rng: &mut impl Rng) -> Option<u64> {
        let live = self.live.lock().expect("not poisoned");
        (!live.is_empty()).then(|| live[rng.gen_range(0..live.len())])
    }

    /// An object that exists, no longer offered to anyone else.
    pub fn claim(&self, rng: &mut impl Rng) -> Option<u64> {
        let mut live = self.live.lock().expect("not poisoned");
        (!live.is_empty()).then(|| {
            let position = rng.gen_range(0..live.len());
            live.swap_remove(position)
        })
    }

    /// A number no object had yet; None once OBJECTS_MAX are used.
    pub fn new_index(&self) -> Option<u64> {
        let index = self.next_new.fetch_add(1, Ordering::Relaxed);
        (index < OBJECTS_MAX).then_some(index)
    }

    /// `index` exists (again).
    pub fn add(&self, index: u64) {
        self.live.lock().expect("not poisoned").push(index);
    }

    pub fn count(&self) -> usize {
        self.live.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn keys_look_like_kube_apiservers_pods() {
        assert_eq!(object_key(13), b"/registry/pods/ns-03/pod-00000013");
        assert!(object_key(OBJECTS_MAX - 1).starts_with(PREFIX.as_bytes()));
    }

    #[test]
    fn a_claimed_object_is_not_offered_again_until_added_back() {
        let objects = Objects::new(1);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(objects.claim(&mut rng), Some(0));
        assert_eq!(objects.pick(&mut rng), None);
        assert_eq!(objects.claim(&mut rng), None);
        objects.add(0);
        assert_eq!(objects.pick(&mut rng), Some(0));
    }

    #[test]
    fn new_objects_are_numbered_after_the_preloaded_ones() {
        let objects = Objects::new(5);
        assert_eq!(objects.new_index(), Some(5));
        assert_eq!(objects.new_index(), Some(6));
        assert_eq!(objects.count(), 5);
    }
}
