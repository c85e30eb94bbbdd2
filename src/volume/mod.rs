//! Volumes: thin copy-on-write virtual disks with O(1) snapshots, clones and
//! rollbacks (DESIGN §5). This module is the storage core; exporting a volume
//! as a file over FUSE, loop devices and the CLI are built on top of it.
//!
//! # What it owns
//!
//! A **pool** directory ([`Pool`]) holding volumes and the layers they are
//! made of (the byte-level format and the crash argument are in
//! `docs/volume-format.md`):
//!
//! ```text
//! POOL/
//!   volumes/<name>.meta   a volume: size, base, stack of layer IDs, snapshots
//!   layers/<id>.data      a layer: header, then append-only records
//!   layers/<id>.index     a sealed layer's blocks (without payloads)
//! ```
//!
//! A [`Volume`] is a virtual disk of fixed size in 4 KiB blocks, read through
//! a stack `base → sealed layers → head`. The base is zeros or a read-only
//! file or block device used in place. A layer is an append-only data file
//! of records (write one block, discard a range, commit); only the head is
//! written. An in-memory merged index (`index.rs`) maps every block to the
//! layer and offset of its current content, so a read is one lookup.
//! Opening a volume builds it from the sealed layers' index files (written
//! when a layer is sealed) and a replay of the head, so it reads a few bytes
//! per block, not the data. A volume created with a filter chain
//! ([`VolumeOptions::filters`], `filtered.rs`) stores each block as what the
//! chain's `encode` made of it, in records that carry the stored length, and
//! decodes it on every read. [`Volume::compact`] rewrites the live blocks of
//! the layers only one volume uses into one layer, while the volume is in
//! use; the garbage it would free is counted as blocks are overwritten
//! ([`VolumeStats::garbage_bytes`]).
//!
//! # Invariants
//!
//! - **Prefix durability.** A layer's valid content is its records up to its
//!   last valid commit record. [`Volume::flush`] appends a commit record
//!   (chaining the checksums of the batch it commits) and `fdatasync`s, so
//!   after a crash a volume reopens exactly as it was at a flush: like a disk
//!   with a volatile write cache, never a torn one.
//! - **Sealed layers never change.** A layer is the head of exactly one
//!   volume or sealed; sealing is a metadata change (the layer stops being
//!   last in the stack), after a flush. Layers are shared by volumes and
//!   snapshots, and referenced only from metadata files.
//! - **Metadata is replaced atomically** (temp file, `fdatasync`, rename,
//!   directory `fsync`); it is written only after every layer it names is
//!   durable.
//! - **Garbage, never loss.** A crash at any step leaves at worst layer files
//!   no metadata references; only [`Pool::reclaim`] removes them, and only
//!   after reading every metadata file (and never a layer compaction is
//!   still writing: it is pinned).
//! - **Index files are accelerators.** One is used only if its checksums,
//!   its layer's length and its layer's last commit record match; otherwise
//!   the layer is replayed, and the index written again.
//! - **Compaction changes no byte.** The new layer holds the net content of
//!   the layers it replaces, and metadata names it only once it is durable.
//! - **Errors poison, reopening heals.** An I/O error while a volume writes
//!   (write, discard, flush, snapshot, rollback) makes every later write fail
//!   ([`VolumeError::Failed`]); dropping and reopening the volume replays its
//!   head to the last commit. Recovery syncs what it found (the head, the
//!   pool's directories) before anything builds on it: after a failed sync,
//!   what is visible may be in the page cache only.
//!
//! # Concurrency
//!
//! A pool is used by one process at a time, through one [`Pool`] value and
//! its clones (nothing locks it across processes yet). Inside it, a volume is opened at most once; its methods
//! take `&self`: reads run in parallel; writes, discards and flushes of one
//! volume are serialised by its head lock; snapshot, rollback, clone and
//! metadata changes are serialised by the pool's lock, which reads and
//! writes never take. [`Pool::reclaim`] holds that lock only while it reads
//! the metadata, and deletes afterwards. Compaction holds the head lock only
//! to seal the head and to switch stacks, and the index's write lock only to
//! move the entries of the layers it replaced.
//!
//! Lock order: a volume's head, then the pool, then the volume's index.
//!
//! # Files
//!
//! `crc.rs` (CRC-32C), `format.rs` (layer and record layout), `filtered.rs`
//! (encoding and decoding blocks of filtered volumes), `backend.rs`
//! (the I/O seam), `index.rs` (merged index), `layer.rs` (replay and the head
//! writer), `layer_index.rs` (layer index files, net contents), `meta.rs`
//! (metadata files), `pool.rs` (volumes, clones, reclaim), `stack.rs` (an
//! open volume: I/O, flush, snapshot, rollback, compaction), `compact.rs`
//! (compaction's writer).

mod backend;
mod compact;
mod crc;
mod filtered;
mod format;
mod index;
mod layer;
mod layer_index;
pub mod loopdev;
mod meta;
mod pool;
pub mod server;
mod stack;
#[cfg(test)]
mod tests;

use std::io;

pub use backend::{Backend, BackendFile, StdBackend};
pub(crate) use backend::{boot_file, boot_id, split_boot_file};
pub use format::BLOCK_SIZE;
pub use meta::{SnapshotInfo, VolumeInfo};
pub use pool::{FILTER_DIR, Pool, ReclaimReport, VolumeOptions, check_size};
pub use stack::{CompactReport, Volume, VolumeStats};

use crate::error::Coded;
use crate::filter::FilterError;

/// The largest volume size: 16 TiB (the merged index's top level then takes
/// 96 MiB of memory).
pub const MAX_SIZE: u64 = 16 << 40;

/// What can go wrong with volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// An I/O error in the pool or on a base file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: io::Error,
    },
    /// No volume of that name.
    #[error("no volume named {0:?}")]
    NotFound(String),
    /// A volume of that name exists already.
    #[error("a volume named {0:?} exists already")]
    Exists(String),
    /// Not a valid volume or snapshot name.
    #[error("{0:?} is not a valid name: {1}")]
    BadName(String, &'static str),
    /// No snapshot of that name on the volume.
    #[error("volume {volume:?} has no snapshot named {snapshot:?}")]
    SnapshotNotFound {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// A snapshot of that name exists already on the volume.
    #[error("volume {volume:?} already has a snapshot named {snapshot:?}")]
    SnapshotExists {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// The volume is open (by this process) and cannot be opened or deleted.
    #[error("volume {0:?} is in use")]
    Busy(String),
    /// An access outside the volume.
    #[error("{len} bytes at offset {offset} are outside the volume ({size} bytes)")]
    OutOfRange {
        /// Start of the access.
        offset: u64,
        /// Its length.
        len: u64,
        /// The volume's size.
        size: u64,
    },
    /// A size that is zero, not a multiple of the block size, or too large.
    #[error("invalid volume size {0}: {1}")]
    BadSize(u64, &'static str),
    /// Metadata or a layer is damaged or missing.
    #[error("the volume pool is damaged: {0}")]
    Damaged(String),
    /// A block's content does not match its checksum.
    #[error("volume {volume:?}: block {block} (in layer {layer}) does not match its checksum")]
    Corrupt {
        /// The volume.
        volume: String,
        /// The virtual block.
        block: u64,
        /// The layer holding it.
        layer: u64,
    },
    /// An earlier write to this volume failed; it accepts no more writes.
    #[error("volume {volume:?} stopped after a failed write: {reason}")]
    Failed {
        /// The volume.
        volume: String,
        /// The first failure.
        reason: String,
    },
    /// The base file's length is not what it was when the volume was created.
    #[error("the base {path} of volume {volume:?} has {found} bytes; it had {expected}")]
    BaseChanged {
        /// The volume.
        volume: String,
        /// The base file.
        path: String,
        /// Its recorded length.
        expected: u64,
        /// Its length now.
        found: u64,
    },
    /// Metadata or a layer written by a newer fukastor.
    #[error("{0} was written in an unknown format")]
    Format(String),
    /// The volume server failed, or could not be reached.
    #[error("volume server: {0}")]
    Server(String),
    /// The volume is attached, and the operation needs it detached.
    #[error("volume {0:?} is attached")]
    Attached(String),
    /// The volume is not attached.
    #[error("volume {0:?} is not attached")]
    NotAttached(String),
    /// The volume's loop device is in use (a mounted filesystem).
    #[error("volume {volume:?} is in use: {device} is open{}", if mountpoints.is_empty() { String::new() } else { format!(" (mounted at {mountpoints})") })]
    InUse {
        /// The volume.
        volume: String,
        /// Its loop device.
        device: String,
        /// Where it is mounted.
        mountpoints: String,
    },
    /// Binding or unbinding a loop device failed.
    #[error("loop device: {0}")]
    Loop(String),
    /// Freezing or thawing the filesystem on a volume failed.
    #[error("cannot freeze the filesystem: {0}")]
    Freeze(String),
    /// Building an ext4 template volume failed.
    #[error("cannot build the ext4 template: {0}")]
    Template(String),
    /// The running volume server did not understand a request, or its
    /// answer could not be read: another build of fukastor runs it (one
    /// started before an upgrade, kept running by attached volumes).
    #[error("{}", other_server_message(.pid, .what, .detail, .replaced))]
    OtherServer {
        /// The server's pid (the socket's peer), when known.
        pid: Option<i32>,
        /// "did not understand this command's request", or "gave an answer
        /// this command cannot read".
        what: &'static str,
        /// What was wrong.
        detail: String,
        /// Whether the server's executable was deleted since it started
        /// (`/proc/PID/exe` names a deleted file): replaced by an upgrade.
        replaced: bool,
    },
    /// A compaction gave up before it changed anything.
    #[error("compaction of volume {volume:?} gave up: {reason}")]
    Abandoned {
        /// The volume.
        volume: String,
        /// Why.
        reason: String,
    },
    /// A filter chain failed: a script, a key, a replica, damage it found
    /// (FK0900–FK0909, the filter's own code).
    #[error("{0}")]
    Filter(FilterError),
    /// A filter chain's output does not fit a volume block: `encode` made
    /// more than 65535 bytes of a block, or `decode` gave back other than
    /// 4096 bytes.
    #[error("volume {volume:?}: block {block}: {why}")]
    FilterOutput {
        /// The volume.
        volume: String,
        /// The virtual block.
        block: u64,
        /// What was wrong.
        why: String,
    },
    /// An error the volume server reported.
    #[error("{message}")]
    Remote {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
        /// Its hint.
        hint: String,
    },
}

/// [`VolumeError::OtherServer`]'s message.
fn other_server_message(pid: &Option<i32>, what: &str, detail: &str, replaced: &bool) -> String {
    let pid = pid.map_or_else(|| "?".to_string(), |p| p.to_string());
    let replaced = if *replaced {
        "; it runs a fukastor binary that has since been replaced"
    } else {
        ""
    };
    format!("the volume server (pid {pid}) {what}: {detail}{replaced}")
}

/// Every code of this module, to give a code received from the server back
/// its static form.
const CODES: [&str; 34] = [
    "FK0700", "FK0701", "FK0702", "FK0703", "FK0704", "FK0705", "FK0706", "FK0707", "FK0708",
    "FK0709", "FK0710", "FK0711", "FK0712", "FK0713", "FK0714", "FK0715", "FK0716", "FK0717",
    "FK0718", "FK0719", "FK0720", "FK0721", "FK0722", "FK0723", "FK0900", "FK0901", "FK0902",
    "FK0903", "FK0904", "FK0905", "FK0906", "FK0907", "FK0908", "FK0909",
];

impl Coded for VolumeError {
    fn code(&self) -> &'static str {
        match self {
            VolumeError::Io { .. } => "FK0700",
            VolumeError::NotFound(_) => "FK0701",
            VolumeError::Exists(_) => "FK0702",
            VolumeError::BadName(..) => "FK0703",
            VolumeError::SnapshotNotFound { .. } => "FK0704",
            VolumeError::SnapshotExists { .. } => "FK0705",
            VolumeError::Busy(_) => "FK0706",
            VolumeError::OutOfRange { .. } => "FK0707",
            VolumeError::BadSize(..) => "FK0708",
            VolumeError::Damaged(_) => "FK0709",
            VolumeError::Corrupt { .. } => "FK0710",
            VolumeError::Failed { .. } => "FK0711",
            VolumeError::BaseChanged { .. } => "FK0712",
            VolumeError::Format(_) => "FK0713",
            VolumeError::Server(_) => "FK0714",
            VolumeError::Attached(_) => "FK0715",
            VolumeError::NotAttached(_) => "FK0716",
            VolumeError::InUse { .. } => "FK0717",
            VolumeError::Loop(_) => "FK0718",
            VolumeError::Freeze(_) => "FK0719",
            VolumeError::Template(_) => "FK0720",
            VolumeError::Abandoned { .. } => "FK0721",
            VolumeError::Filter(e) => e.code(),
            VolumeError::FilterOutput { .. } => "FK0722",
            VolumeError::OtherServer { .. } => "FK0723",
            VolumeError::Remote { code, .. } => CODES
                .iter()
                .find(|c| **c == code.as_str())
                .copied()
                .unwrap_or("FK0714"),
        }
    }

    fn hint(&self) -> String {
        match self {
            VolumeError::Io { .. } => {
                "check free space and permissions of the pool's filesystem".into()
            }
            VolumeError::NotFound(_) => "list volumes with `fukastor volume ls`".into(),
            VolumeError::Exists(_) => "choose another name, or remove the volume first".into(),
            VolumeError::BadName(..) => {
                "use up to 128 letters, digits, '.', '_' and '-', not starting with '.'".into()
            }
            VolumeError::SnapshotNotFound { .. } => {
                "list snapshots with `fukastor snapshot list`".into()
            }
            VolumeError::SnapshotExists { .. } => {
                "choose another name, or remove the snapshot first".into()
            }
            VolumeError::Busy(_) => "detach the volume first".into(),
            VolumeError::OutOfRange { .. } => "stay within the volume's size".into(),
            VolumeError::BadSize(..) => {
                format!("give a positive multiple of {BLOCK_SIZE} bytes, at most {MAX_SIZE}")
            }
            VolumeError::Damaged(_) | VolumeError::Corrupt { .. } => {
                "the pool's files were changed or the disk is failing; restore from a backup".into()
            }
            VolumeError::Failed { .. } => {
                "fix the cause (disk full? I/O errors?), then detach and reattach the volume: \
                 it reopens at its last flush"
                    .into()
            }
            VolumeError::BaseChanged { .. } => {
                "a volume's base must not change; restore the original base file".into()
            }
            VolumeError::Format(_) => "use a newer fukastor".into(),
            VolumeError::Server(_) => {
                "see fukastor/vserve/server.log in the store; volumes need root, the loop driver and /dev/fuse".into()
            }
            VolumeError::Attached(_) => "detach it first: `fukastor volume detach NAME`".into(),
            VolumeError::NotAttached(_) => {
                "attach it with `fukastor volume attach NAME`; `fukastor volume ls` shows devices".into()
            }
            VolumeError::InUse { .. } => "unmount the filesystem on it first".into(),
            VolumeError::Loop(_) => {
                "loop devices need root and the loop module (`modprobe loop`)".into()
            }
            VolumeError::Freeze(_) => {
                "mount the volume's filesystem (or snapshot without --atomic); if a filesystem stayed frozen, `fsfreeze --unfreeze` it".into()
            }
            VolumeError::Template(_) => "install e2fsprogs (mkfs.ext4) and check free space".into(),
            VolumeError::OtherServer { pid, .. } => {
                let first = "it exits once nothing is attached and it has been idle for 2 s: \
                     unmount the containers it serves (`fukastor container umount NAME`) and \
                     detach its volumes (`fukastor volume detach NAME`), then retry";
                match pid {
                    Some(pid) => format!(
                        "{first}; if those are refused the same way, run them with the binary \
                         that started it, /proc/{pid}/exe"
                    ),
                    None => first.into(),
                }
            }
            VolumeError::Abandoned { .. } => {
                "nothing changed; run it again (a snapshot or rollback while it runs, or a \
                 cancellation, makes compaction give up)"
                    .into()
            }
            VolumeError::Filter(e) => e.hint(),
            VolumeError::FilterOutput { .. } => {
                "fix the filter script: decode must give back the 4096 bytes encode was given, \
                 and encode must make at most 65535 bytes of them"
                    .into()
            }
            VolumeError::Remote { hint, .. } => hint.clone(),
        }
    }
}

/// Shorthand for results in this module.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

impl From<FilterError> for VolumeError {
    fn from(e: FilterError) -> Self {
        VolumeError::Filter(e)
    }
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// Locks a mutex; a panic in another thread does not make the data invalid
/// here (every critical section leaves it consistent or poisons the volume).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
