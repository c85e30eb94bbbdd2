//! Mounts are tracked in the store: `fukastor/mounts/<key>.json`, one file
//! per mountpoint (`key` is a hash of the canonical mountpoint path).
//!
//! A tracking file says which image is mounted where, how, and which process
//! serves it (FUSE). A FUSE server writes it once its mount is usable; a
//! kernel mount writes it just before attaching the mount (so that a store
//! too full for the file leaves no mount; a failed attach removes it). It is
//! removed by `umount` or by a server that unmounts on SIGTERM. A file whose
//! mount is gone from the mount table is stale and is ignored (and removed
//! by the next `umount` of that mountpoint). `gc` keeps the objects of every image that is
//! mounted according to a live tracking file. Tracking files are not
//! fsynced: after a crash of the system no mount is left for them to
//! describe, and one that cannot be parsed is ignored.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::store::{Store, StoreError, write_atomic_volatile};

/// One tracked mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tracked {
    /// Canonical mountpoint.
    pub mountpoint: PathBuf,
    /// The image as the user named it.
    pub image: String,
    /// The image ID.
    pub id: String,
    /// `kernel`, `fuse` or `fuse-passthrough`.
    pub mode: String,
    /// The serving process (FUSE), if any.
    pub pid: Option<u32>,
    /// Unix seconds.
    pub started: u64,
}

fn dir(store_root: &Path) -> PathBuf {
    store_root.join("fukastor/mounts")
}

/// The tracking file of a mountpoint.
pub fn path_for(store_root: &Path, mountpoint: &Path) -> PathBuf {
    let h = hex::encode(sha2::Sha256::digest(
        mountpoint.as_os_str().as_encoded_bytes(),
    ));
    dir(store_root).join(format!("{}.json", &h[..16]))
}

/// Records a mount. Without an fsync: mounts do not outlive the system,
/// and a file a crash left empty or torn is ignored like a stale one.
pub fn record(store_root: &Path, t: &Tracked) -> Result<(), StoreError> {
    fs::create_dir_all(dir(store_root)).map_err(|e| StoreError::Io {
        context: "creating fukastor/mounts".into(),
        source: e,
    })?;
    let data = serde_json::to_vec_pretty(t).expect("serializes");
    write_atomic_volatile(&path_for(store_root, &t.mountpoint), &data).map_err(|e| StoreError::Io {
        context: "recording a mount".into(),
        source: e,
    })
}

/// Forgets a mount. Its server's log (`<key>.log`) stays until the next
/// server for the same mountpoint replaces it.
pub fn forget(store_root: &Path, mountpoint: &Path) {
    let _ = fs::remove_file(path_for(store_root, mountpoint));
}

/// Forgets a mount only if its tracking file still names server `pid`. A
/// server calls this on its way out: by then `umount` may have returned
/// and a new server for the same mountpoint may have written its own file,
/// which must stay.
pub fn forget_own(store_root: &Path, mountpoint: &Path, pid: u32) {
    if read(store_root, mountpoint).is_some_and(|t| t.pid == Some(pid)) {
        forget(store_root, mountpoint);
    }
}

/// Reads one tracking file.
pub fn read(store_root: &Path, mountpoint: &Path) -> Option<Tracked> {
    fs::read(path_for(store_root, mountpoint))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
}

/// Every tracking file of the store (stale ones included).
pub fn all(store_root: &Path) -> Vec<Tracked> {
    let Ok(entries) = fs::read_dir(dir(store_root)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|d| serde_json::from_slice(&d).ok())
        .collect()
}

/// True when `pid` is a live process. A zombie (a server that died and was
/// not reaped yet; its parent is init once `mount` returned) is not alive.
pub fn alive(pid: u32) -> bool {
    let exists = rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
    if !exists {
        return false;
    }
    // /proc/PID/stat: "pid (comm) S ...": the state follows the last ')'.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// The mounts of the store that are there right now (tracking file and
/// mount table agree; stale tracking files left out). What `gc` keeps and
/// `rmi` refuses to remove.
pub fn mounted(store: &Store) -> Vec<Tracked> {
    let table: Vec<PathBuf> = super::list().into_iter().map(|m| m.mountpoint).collect();
    all(store.root())
        .into_iter()
        .filter(|t| table.contains(&t.mountpoint))
        .collect()
}
