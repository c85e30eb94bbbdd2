//! Object descriptors for reads that arrive without an open.
//!
//! With zero-message opens (`FUSE_NO_OPEN_SUPPORT`, answered once with
//! ENOSYS) the kernel sends neither OPEN nor RELEASE for regular files, so an
//! `open()` in a container or a `tar` costs no round trip to us; a READ then
//! names only the inode. The first read of an inode that reaches us opens its
//! object and keeps the descriptor in that inode's slot, and later reads of
//! it (from any thread) share it.
//!
//! When a slot is emptied:
//! - FORGET of the inode: the kernel evicted it, which it does only once no
//!   file is open on it and its page cache has been truncated (so every READ
//!   it sent for the inode has been answered); it sends no READ for that
//!   inode again before a new LOOKUP.
//! - EMFILE or ENFILE while opening (here, or a passthrough open through
//!   [`ObjectFds::open`]): every slot is emptied once (a cache may always
//!   be dropped) and the open is retried.
//! - More than the cap given to [`ObjectFds::new`] kept: every slot is
//!   emptied before the next is filled (the server raises its soft
//!   descriptor limit to the hard one and keeps at most half of it).
//!
//! Readers hold an `Arc` of the descriptor for the length of their `pread`,
//! so emptying a slot never closes a descriptor under a read in flight (and
//! never lets its number be reused by another open meanwhile).
//!
//! Cost per read: a read lock of the inode's own slot and an `Arc` clone; no
//! global lock, no allocation once the slot is filled.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// One slot per inode number.
#[derive(Debug)]
pub struct ObjectFds {
    slots: Box<[RwLock<Option<Arc<OwnedFd>>>]>,
    /// Slots filled now, and how many may be.
    kept: AtomicUsize,
    cap: usize,
    /// Objects opened (each time a slot was filled, or a retry after EMFILE).
    pub opened: AtomicU64,
    /// Times every slot was emptied because descriptors ran out.
    pub sweeps: AtomicU64,
}

impl ObjectFds {
    /// Slots for inode numbers below `inodes`, at most `cap` filled at once.
    pub fn new(inodes: usize, cap: usize) -> Self {
        ObjectFds {
            slots: (0..inodes).map(|_| RwLock::new(None)).collect(),
            kept: AtomicUsize::new(0),
            cap: cap.max(1),
            opened: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
        }
    }

    /// The descriptor of inode `ino`'s object: the kept one, or one `open`
    /// makes now (and which is then kept).
    pub fn get(
        &self,
        ino: u64,
        open: impl Fn() -> io::Result<OwnedFd>,
    ) -> io::Result<Arc<OwnedFd>> {
        let Some(slot) = self.slots.get(ino as usize) else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        if let Some(fd) = &*slot.read().expect("not poisoned") {
            return Ok(Arc::clone(fd));
        }
        // Opening is a path walk: not under the slot's lock. Two threads
        // that miss at once both open; the second keeps the first's.
        let fd = Arc::new(self.open(open)?);
        self.opened.fetch_add(1, Ordering::Relaxed);
        if self.kept.load(Ordering::Relaxed) >= self.cap {
            self.sweep("at the cap");
        }
        let mut slot = slot.write().expect("not poisoned");
        if slot.is_none() {
            self.kept.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Arc::clone(slot.get_or_insert(fd)))
    }

    /// Runs `open`; when descriptors ran out, empties every slot and runs
    /// it once more.
    pub fn open<T>(&self, open: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match open() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                self.sweep("out of descriptors");
                open()
            }
            r => r,
        }
    }

    /// The kernel forgot `ino`: close its descriptor (once no read uses it).
    pub fn forget(&self, ino: u64) {
        if let Some(slot) = self.slots.get(ino as usize) {
            // Read first: most forgotten inodes were never read through us.
            if slot.read().expect("not poisoned").is_some()
                && slot.write().expect("not poisoned").take().is_some()
            {
                self.kept.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Descriptors kept now.
    pub fn kept(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.read().expect("not poisoned").is_some())
            .count()
    }

    fn sweep(&self, why: &str) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("closing the kept object descriptors: {why}");
        for slot in self.slots.iter() {
            if slot.write().expect("not poisoned").take().is_some() {
                self.kept.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn devnull() -> io::Result<OwnedFd> {
        Ok(std::fs::File::open("/dev/null")?.into())
    }

    #[test]
    fn one_open_per_inode_until_forgotten() {
        let fds = ObjectFds::new(4, 100);
        let calls = AtomicUsize::new(0);
        let open = || {
            calls.fetch_add(1, Ordering::Relaxed);
            devnull()
        };
        let a = fds.get(2, open).unwrap();
        let b = fds.get(2, open).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(fds.kept(), 1);
        fds.forget(2);
        assert_eq!(fds.kept(), 0);
        // A reader that still holds the old descriptor keeps it open.
        assert!(rustix::fs::fstat(&*a).is_ok());
        let c = fds.get(2, open).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert!(
            fds.get(9, open).is_err(),
            "an inode out of range is refused"
        );
        fds.forget(9);
    }

    #[test]
    fn running_out_of_descriptors_empties_the_cache_once() {
        let fds = ObjectFds::new(4, 100);
        fds.get(1, devnull).unwrap();
        fds.get(3, devnull).unwrap();
        let tries = AtomicUsize::new(0);
        let fd = fds
            .get(2, || {
                if tries.fetch_add(1, Ordering::Relaxed) == 0 {
                    Err(io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    devnull()
                }
            })
            .unwrap();
        assert!(rustix::fs::fstat(&*fd).is_ok());
        assert_eq!(fds.sweeps.load(Ordering::Relaxed), 1);
        assert_eq!(
            fds.kept(),
            1,
            "the sweep dropped the others, the new one is kept"
        );
        // A failure other than running out is returned as it is.
        let e = fds
            .get(0, || Err(io::Error::from_raw_os_error(libc::ENOENT)))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(fds.sweeps.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn at_the_cap_the_kept_descriptors_are_dropped_first() {
        let fds = ObjectFds::new(8, 3);
        for ino in 0..3 {
            fds.get(ino, devnull).unwrap();
        }
        assert_eq!((fds.kept(), fds.sweeps.load(Ordering::Relaxed)), (3, 0));
        fds.get(5, devnull).unwrap();
        assert_eq!((fds.kept(), fds.sweeps.load(Ordering::Relaxed)), (1, 1));
        fds.forget(5);
        fds.forget(5);
        assert_eq!(fds.kept(), 0);
        assert_eq!(fds.kept.load(Ordering::Relaxed), 0, "the count follows");
    }
}
