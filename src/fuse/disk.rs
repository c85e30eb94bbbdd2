//! The FUSE filesystem that exports attached volumes: one directory holding
//! one regular file per attached volume, `<name>`, whose bytes are the
//! volume's. A loop device over that file turns the volume into a block
//! device (see `crate::volume::server`).
//!
//! The I/O path and what it costs:
//! - files are opened with `FOPEN_DIRECT_IO`: the kernel keeps no page cache
//!   for them, so what the loop device (itself in direct I/O mode) reads is
//!   always what the volume holds, and writeback never has to come back
//!   through this server's memory;
//! - `read`/`write` look the volume up in a small table under a read lock
//!   (taken for writing only by attach and detach) and call
//!   [`Volume::read_at`]/[`Volume::write_at`]: reads of one volume run in
//!   parallel, writes are serialised by the volume's head lock (their
//!   blocks' CRCs are computed before it, in parallel, and the blocks are
//!   appended from the request's buffer);
//! - `fsync` (what the loop device sends for a flush) is [`Volume::flush`]:
//!   a commit record and one `fdatasync`. That is the only durability point;
//! - `fallocate(PUNCH_HOLE | ZERO_RANGE)` (the loop device's discard and
//!   write-zeroes) is [`Volume::discard`].
//!
//! Errors from the volume become `EIO`, each logged as one error line with
//! the volume's name, the error's code and what it names (for a filtered
//! volume whose block fails to decode: the layer and block, FK0905 for
//! damage, FK0906 for a wrong key, FK0901–FK0903 for a failing script).
//! Only that request fails: the server goes on serving other blocks and
//! volumes, and never returns bytes that did not pass their checks. After
//! a failed write the volume refuses further writes until it is detached
//! and attached again (a write refused by its filter chain, before
//! anything was appended, is not such a failure).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, WriteFlags,
};

use crate::error::Coded;
use crate::volume::{BLOCK_SIZE, Volume, VolumeError};

/// Attributes change only by attach and detach; keep the TTL short so a
/// name reused after a detach is looked up again.
const TTL: Duration = Duration::from_secs(1);

/// Largest read or write the kernel may send.
pub const MAX_IO: u32 = 1 << 20;

const ROOT: u64 = 1;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_IO as usize]);
}

/// One attached volume.
struct Disk {
    name: String,
    volume: Arc<Volume>,
    attr: FileAttr,
}

#[derive(Default)]
struct Table {
    by_ino: BTreeMap<u64, Arc<Disk>>,
    by_name: BTreeMap<String, u64>,
    /// Every name ever exported and its inode number: a volume attached
    /// again gets its old number back, so a dentry the kernel still caches
    /// from before the detach stays valid.
    inos: BTreeMap<String, u64>,
}

/// Counters, for tests and logs.
#[derive(Debug, Default)]
pub struct DiskCounters {
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes (fsync).
    pub flushes: AtomicU64,
    /// Discards.
    pub discards: AtomicU64,
    /// Requests answered with EIO.
    pub errors: AtomicU64,
}

/// The set of exported volumes. Cheap to clone; the clone given to the FUSE
/// session and the one the control thread keeps share the table.
#[derive(Clone)]
pub struct DiskFs {
    table: Arc<RwLock<Table>>,
    next_ino: Arc<AtomicU64>,
    uid: u32,
    gid: u32,
    /// Counters.
    pub counters: Arc<DiskCounters>,
}

impl std::fmt::Debug for DiskFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskFs").finish_non_exhaustive()
    }
}

impl Default for DiskFs {
    fn default() -> Self {
        Self::new()
    }
}

impl DiskFs {
    /// An empty export owned by the calling user.
    pub fn new() -> DiskFs {
        DiskFs {
            table: Arc::default(),
            next_ino: Arc::new(AtomicU64::new(ROOT + 1)),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            counters: Arc::default(),
        }
    }

    /// Exports `volume` as file `name`. A name keeps its inode number.
    pub fn insert(&self, name: &str, volume: Arc<Volume>) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let next = &self.next_ino;
        let ino = *t
            .inos
            .entry(name.to_string())
            .or_insert_with(|| next.fetch_add(1, Ordering::Relaxed));
        let now = SystemTime::now();
        let attr = FileAttr {
            ino: INodeNo(ino),
            size: volume.size(),
            blocks: volume.size() / 512,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        };
        let disk = Arc::new(Disk {
            name: name.to_string(),
            volume,
            attr,
        });
        t.by_name.insert(name.to_string(), ino);
        t.by_ino.insert(ino, disk);
    }

    /// Stops exporting `name`; returns its volume (still open: the caller
    /// flushes and closes it once the last user let go).
    pub fn remove(&self, name: &str) -> Option<Arc<Volume>> {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let ino = t.by_name.remove(name)?;
        t.by_ino.remove(&ino).map(|d| d.volume.clone())
    }

    /// The exported volume called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Volume>> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let ino = t.by_name.get(name)?;
        t.by_ino.get(ino).map(|d| d.volume.clone())
    }

    /// The names exported.
    pub fn names(&self) -> Vec<String> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.by_name.keys().cloned().collect()
    }

    fn disk(&self, ino: u64) -> Option<Arc<Disk>> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.by_ino.get(&ino).cloned()
    }

    fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(ROOT),
            size: 0,
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o700,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    fn fail(&self, disk: &Disk, what: &str, e: &VolumeError) -> Errno {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("volume {:?}: {what}: {} {e}", disk.name, e.code());
        match e {
            VolumeError::OutOfRange { .. } => Errno::EINVAL,
            _ => Errno::EIO,
        }
    }
}

impl Filesystem for DiskFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // Direct I/O from the loop device arrives as async requests, several
        // in flight; writes to one file need not be serialised by the kernel
        // (the volume orders them itself).
        let wanted = InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let found = name
            .to_str()
            .and_then(|n| t.by_name.get(n))
            .and_then(|ino| t.by_ino.get(ino));
        match found {
            Some(d) => reply.entry(&TTL, &d.attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            return reply.attr(&TTL, &self.root_attr());
        }
        match self.disk(ino.0) {
            Some(d) => reply.attr(&TTL, &d.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(d) = self.disk(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        // A volume has a fixed size; opening with O_TRUNC or truncating to
        // the same size is harmless, anything else is refused.
        match size {
            Some(s) if s != d.attr.size => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &d.attr),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.disk(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(
            FileHandle(ino.0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        )
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(d) = self.disk(ino.0) else {
            return reply.error(Errno::EBADF);
        };
        let end = offset
            .saturating_add(u64::from(size.min(MAX_IO)))
            .min(d.attr.size);
        if offset >= end {
            return reply.data(&[]);
        }
        let len = (end - offset) as usize;
        BUF.with_borrow_mut(|buf| match d.volume.read_at(offset, &mut buf[..len]) {
            Ok(()) => {
                self.counters
                    .read_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                reply.data(&buf[..len])
            }
            Err(e) => reply.error(self.fail(&d, "read", &e)),
        })
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(d) = self.disk(ino.0) else {
            return reply.error(Errno::EBADF);
        };
        if offset.saturating_add(data.len() as u64) > d.attr.size {
            return reply.error(Errno::ENOSPC);
        }
        if let Err(e) = d.volume.write_at(offset, data) {
            return reply.error(self.fail(&d, "write", &e));
        }
        // O_SYNC / O_DSYNC writers expect durability on return.
        if flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0
            && let Err(e) = d.volume.flush()
        {
            return reply.error(self.fail(&d, "flush", &e));
        }
        self.counters
            .write_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a durability point (fsync is). ENOSYS makes the
        // kernel stop sending FLUSH on every close of this mount (one
        // request per close; a traced attach's close took 0.2-0.5 ms).
        reply.error(Errno::ENOSYS)
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(d) = self.disk(ino.0) else {
            return reply.error(Errno::EBADF);
        };
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        match d.volume.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&d, "flush", &e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(d) = self.disk(ino.0) else {
            return reply.error(Errno::EBADF);
        };
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE;
        let end = offset.saturating_add(length).min(d.attr.size);
        if mode == 0 || mode == libc::FALLOC_FL_KEEP_SIZE {
            // Preallocation: a thin volume has nothing to reserve.
            return if offset.saturating_add(length) > d.attr.size && mode == 0 {
                reply.error(Errno::ENOSPC)
            } else {
                reply.ok()
            };
        }
        if mode != punch && mode & !libc::FALLOC_FL_KEEP_SIZE != zero {
            return reply.error(Errno::EOPNOTSUPP);
        }
        if offset >= end {
            return reply.ok();
        }
        self.counters.discards.fetch_add(1, Ordering::Relaxed);
        match d.volume.discard(offset, end - offset) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&d, "discard", &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT {
            reply.opened(FileHandle(0), FopenFlags::empty())
        } else {
            reply.error(Errno::ENOTDIR)
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut entries: Vec<(u64, FileType, &str)> = vec![
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
        ];
        entries.extend(
            t.by_name
                .iter()
                .map(|(n, ino)| (*ino, FileType::RegularFile, n.as_str())),
        );
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENODATA)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, BLOCK_SIZE, 255, BLOCK_SIZE)
    }
}
