//! The store lock: `fukastor/lock`, taken with `flock`.
//!
//! Importers, taggers and readers take it shared, so any number run at once;
//! `gc` and `fsck --repair` take it exclusive, so they never see an import
//! half done. The kernel drops a `flock` when its holder dies, so a killed
//! process never leaves the store locked.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};

use super::{Result, StoreError, io_err};

/// How the store is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders: imports, reads, name changes.
    Shared,
    /// One holder: gc, fsck --repair.
    Exclusive,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: fs::File,
}

/// The wait when `FUKASTOR_LOCK_TIMEOUT` is not set, in seconds.
static DEFAULT_TIMEOUT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(600);

/// Changes how long this process waits for the store lock when
/// `FUKASTOR_LOCK_TIMEOUT` is not set (hooks must not hold podman up).
pub fn set_default_timeout(secs: u64) {
    DEFAULT_TIMEOUT.store(secs, std::sync::atomic::Ordering::Relaxed);
}

/// How long to wait for the lock before reporting the store busy. Settable
/// with `FUKASTOR_LOCK_TIMEOUT` (seconds).
fn timeout() -> Duration {
    #[cfg(test)]
    if let Some(t) = *TEST_TIMEOUT.lock().expect("not poisoned") {
        return t;
    }
    std::env::var("FUKASTOR_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(
            DEFAULT_TIMEOUT.load(std::sync::atomic::Ordering::Relaxed),
        ))
}

impl StoreLock {
    pub(crate) fn take(path: &Path, mode: LockMode) -> Result<StoreLock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("opening the store lock"))?;
        flock_timed(&file, mode, "the store lock")?;
        Ok(StoreLock { _file: file })
    }
}

/// Takes `flock` `mode` on `file`, waiting for it as for the store lock
/// (up to `FUKASTOR_LOCK_TIMEOUT`, then [`StoreError::Busy`], FK0102);
/// `what` names the lock in messages.
pub(crate) fn flock_timed(file: &fs::File, mode: LockMode, what: &str) -> Result<()> {
    let op = match mode {
        LockMode::Shared => FlockOperation::NonBlockingLockShared,
        LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    let start = Instant::now();
    let limit = timeout();
    let mut said = false;
    loop {
        match flock(file, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                if start.elapsed() >= limit {
                    return Err(StoreError::Busy(format!(
                        "another process held {what} for {}s",
                        limit.as_secs()
                    )));
                }
                if !said {
                    tracing::info!("waiting for {what}");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(io_err(format!("taking {what}"))(e.into())),
        }
    }
}

#[cfg(test)]
static TEST_TIMEOUT: std::sync::Mutex<Option<Duration>> = std::sync::Mutex::new(None);

#[cfg(test)]
pub(crate) fn set_timeout_for_tests(t: Duration) {
    *TEST_TIMEOUT.lock().expect("not poisoned") = Some(t);
}
