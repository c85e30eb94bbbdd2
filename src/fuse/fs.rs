//! The read-only FUSE filesystem of one image.
//!
//! Hot paths and what they cost:
//! - `lookup`, `getattr`, `readdir(plus)`: an index into the immutable
//!   inode table and a copy of a prepared `FileAttr`; no lock, no allocation
//!   (beyond fuser's reply buffer).
//! - `read` of an object: one `pread` on the file descriptor opened at
//!   `open`, into a per-thread buffer. The file handle *is* that descriptor,
//!   so threads reading one file never wait for each other.
//! - with passthrough, reads of files of [`PASSTHROUGH_MIN`] bytes or more
//!   never reach us: `open` registers the object's descriptor with the kernel
//!   (one backing ID per inode, shared by all opens of it and released with
//!   the last one), and the kernel reads the object file directly. Smaller
//!   files are served as without passthrough (below).
//! - without passthrough, a `read` finds the object's descriptor in the
//!   inode's slot ([`super::fds`]), opened by the first read that reached us
//!   and closed at FORGET, so `open` walks no path. Unfiltered and without
//!   passthrough, opens cost no message at all: the first OPEN is answered
//!   ENOSYS (`FUSE_NO_OPEN_SUPPORT`), after which the kernel opens regular
//!   files without asking us and sends no RELEASE.
//!
//! Entry and attribute TTLs are long (the tree never changes), files are
//! opened with `FOPEN_KEEP_CACHE` (which zero-message opens imply), and
//! inodes live as long as the server: `forget` only closes a kept descriptor.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use composefs::fsverity::FsVerityHashValue;
use fuser::{
    BackingId, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use rustix::fs::{Mode, OFlags};

use super::fds::ObjectFds;
use super::inodes::{Content, Inodes, NodeKind};
use crate::error::Coded;
use crate::store::{ObjectId, Objects};

/// How long the kernel may cache entries and attributes: the tree is immutable.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Smallest file served by passthrough. A passthrough open costs a path
/// walk, a backing ID and a kernel open of the object, and its release as
/// much again; a smaller file is read in one READ of at most 64 KiB, and
/// from the mount's own page cache after that (docs/benchmarks.md, *FUSE
/// opens*, measures the difference on a warm `tar`).
pub const PASSTHROUGH_MIN: u64 = 64 * 1024;

/// Largest read or write the kernel may send (with `max_pages` to match).
pub const MAX_IO: u32 = 1 << 20;

/// Counters, for tests and `mounts --json`.
#[derive(Debug, Default)]
pub struct Counters {
    /// `read` requests served.
    pub reads: AtomicU64,
    /// Bytes returned by them.
    pub read_bytes: AtomicU64,
    /// OPEN requests for regular files (with zero-message opens, only the
    /// first, answered ENOSYS).
    pub opens: AtomicU64,
    /// Opens served by passthrough.
    pub passthrough_opens: AtomicU64,
    /// Lookups.
    pub lookups: AtomicU64,
    /// `flush` requests (the kernel stops sending them after the first).
    pub flushes: AtomicU64,
}

/// The filesystem.
#[derive(Debug)]
pub struct ImageFs {
    inodes: Inodes,
    objects: OwnedFd,
    passthrough: AtomicBool,
    no_opendir: bool,
    /// Zero-message opens are on: reads name only the inode, whose object
    /// descriptor is kept in `fds`.
    no_open: bool,
    fds: ObjectFds,
    backing: Mutex<HashMap<u64, (BackingId, u64)>>,
    /// For a filtered image: how to decode objects, and the decoded content
    /// of each open inode with its open count (freed with the last release).
    filter: Option<crate::store::Objects>,
    decoded: RwLock<HashMap<u64, Decoded>>,
    /// Counters.
    pub counters: std::sync::Arc<Counters>,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_IO as usize]);
}

/// `fh` 0 (also what zero-message opens send) means "served by inode": from
/// the inode table, or from the object descriptor kept for the inode;
/// [`DECODED`] "from the decoded content of the inode" (filtered images);
/// otherwise it is a descriptor + 1 (a passthrough open's own).
const IN_TABLE: u64 = 0;
/// The decoded content of an open filtered inode, and how many opens share it.
type Decoded = (Arc<Vec<u8>>, u64);

/// The file handle of an open filtered object (no descriptor is + 1 this large).
const DECODED: u64 = u64::MAX;

/// How many object descriptors the server keeps at most: half its soft
/// descriptor limit (which [`super::serve`] raises to the hard one).
fn kept_descriptors() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current.map_or(1 << 20, |n| (n / 2) as usize)
}

/// Takes capability `flag` if the kernel offers it; true if taken.
fn take_offer(config: &mut KernelConfig, flag: InitFlags) -> bool {
    config.capabilities().contains(flag) && config.add_capabilities(flag).is_ok()
}

fn kind_of(kind: &NodeKind, attr: &fuser::FileAttr) -> FileType {
    match kind {
        NodeKind::Dir(_) => FileType::Directory,
        _ => attr.kind,
    }
}

impl ImageFs {
    /// A filesystem over `inodes`, reading objects below `objects`
    /// (the store's objects directory, opened `O_PATH | O_DIRECTORY`).
    pub fn new(
        inodes: Inodes,
        objects: OwnedFd,
        passthrough: bool,
        counters: std::sync::Arc<Counters>,
    ) -> Self {
        ImageFs {
            fds: ObjectFds::new(inodes.len() + 1, kept_descriptors()),
            inodes,
            objects,
            passthrough: AtomicBool::new(passthrough),
            no_opendir: false,
            no_open: false,
            backing: Mutex::default(),
            filter: None,
            decoded: RwLock::default(),
            counters,
        }
    }

    /// Serves the objects of `source`, decoding them when they are filtered.
    /// (`objects` given to [`ImageFs::new`] must be `source`'s directory.)
    pub fn with_filter(mut self, source: crate::store::Objects) -> Self {
        if source.chain().is_some() {
            self.filter = Some(source);
        }
        self
    }

    /// Opens a filtered object: decodes it whole (once per inode, shared by
    /// its opens). A decode failure is EIO and a log line, never bad data.
    fn open_decoded(
        &self,
        ino: u64,
        id: &ObjectId,
        size: u64,
        source: &Objects,
    ) -> Result<(), Errno> {
        if let Some((_, n)) = self.decoded.write().expect("not poisoned").get_mut(&ino) {
            *n += 1;
            return Ok(());
        }
        // Decoding may take long: not under the lock. Two racing opens of
        // the same inode both decode; the second finds the first's entry.
        let data = match source.read(id, size) {
            Ok(d) if d.len() as u64 == size => d,
            Ok(d) => {
                tracing::error!(
                    "object {} of inode {ino}: decoded to {} bytes, the tree says {size}",
                    id.to_hex(),
                    d.len()
                );
                return Err(Errno::EIO);
            }
            Err(e) => {
                tracing::error!("object {} of inode {ino}: {} {e}", id.to_hex(), e.code());
                return Err(Errno::EIO);
            }
        };
        let mut map = self.decoded.write().expect("not poisoned");
        map.entry(ino).or_insert_with(|| (Arc::new(data), 0)).1 += 1;
        Ok(())
    }

    fn open_object(&self, id: &composefs::fsverity::Sha256HashValue) -> std::io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.objects,
            id.to_object_pathname(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOATIME,
            Mode::empty(),
        )
        .or_else(|_| {
            // O_NOATIME needs ownership of the file; retry without.
            rustix::fs::openat(
                &self.objects,
                id.to_object_pathname(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        })?)
    }

    /// Passthrough for `ino`: the kernel reads `fd` directly. Returns false
    /// when the kernel refuses (then passthrough is off for this server).
    fn try_passthrough(&self, ino: u64, fd: &OwnedFd, reply: &ReplyOpen) -> Option<()> {
        let mut map = self.backing.lock().expect("not poisoned");
        if let Some((_, n)) = map.get_mut(&ino) {
            *n += 1;
            return Some(());
        }
        match reply.open_backing(fd) {
            Ok(id) => {
                map.insert(ino, (id, 1));
                Some(())
            }
            Err(e) => {
                if self.passthrough.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "passthrough is not available ({e}); serving reads from the server"
                    );
                }
                None
            }
        }
    }
}

impl ImageFs {
    /// Answers a read of `size` bytes at `offset` of the object open as `fd`,
    /// through this thread's buffer.
    fn read_fd(&self, fd: BorrowedFd<'_>, offset: u64, size: usize, reply: ReplyData) {
        BUF.with_borrow_mut(|buf| {
            let mut done = 0;
            // pread may return less than asked before EOF; fill the request.
            while done < size {
                match rustix::io::pread(fd, &mut buf[done..size], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return reply.error(Errno::from_i32(e.raw_os_error())),
                }
            }
            self.counters
                .read_bytes
                .fetch_add(done as u64, Ordering::Relaxed);
            reply.data(&buf[..done])
        });
    }
}

/// Borrows the descriptor a file handle carries.
///
/// `fh` was made by `open` from a descriptor that stays open until `release`
/// for the same handle; the kernel sends no request on a handle after its
/// release, so the descriptor is valid for every `read` and `lseek` that
/// names it.
#[allow(unsafe_code)]
fn fd_of(fh: FileHandle) -> BorrowedFd<'static> {
    // SAFETY: see above; the borrow does not outlive the request.
    unsafe { BorrowedFd::borrow_raw((fh.0 - 1) as RawFd) }
}

/// Closes the descriptor a file handle carries.
#[allow(unsafe_code)]
fn close_fh(fh: FileHandle) {
    if fh.0 != IN_TABLE {
        // SAFETY: `release` is the last request for `fh`; we own its descriptor.
        drop(unsafe { OwnedFd::from_raw_fd((fh.0 - 1) as RawFd) });
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ASYNC_READ;
        let _ = config.add_capabilities(wanted & config.capabilities());
        self.no_opendir = take_offer(config, InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if self.passthrough.load(Ordering::Relaxed) {
            if take_offer(config, InitFlags::FUSE_PASSTHROUGH)
                // Depth 1: the backing objects are on a plain filesystem, and
                // overlayfs may stack on this mount (a container's rootfs).
                && config.set_max_stack_depth(1).is_ok()
            {
                tracing::info!("passthrough enabled");
            } else {
                self.passthrough.store(false, Ordering::Relaxed);
                tracing::warn!(
                    "the kernel does not offer passthrough; serving reads from the server"
                );
            }
        }
        // Passthrough is set up in the OPEN reply, and a filtered object is
        // decoded at OPEN and freed at RELEASE: those need the round trips.
        if !self.passthrough.load(Ordering::Relaxed) && self.filter.is_none() {
            self.no_open = take_offer(config, InitFlags::FUSE_NO_OPEN_SUPPORT);
        }
        Ok(())
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.fds.forget(ino.0);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        match self.inodes.lookup(parent.0, name) {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            None => {
                if self
                    .inodes
                    .get(parent.0)
                    .is_some_and(|p| matches!(p.kind, NodeKind::Dir(_)))
                {
                    reply.error(Errno::ENOENT)
                } else {
                    reply.error(Errno::ENOTDIR)
                }
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inodes.get(ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inodes.get(ino.0).map(|n| &n.kind) {
            Some(NodeKind::Symlink(t)) => reply.data(t),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let NodeKind::File(content) = &node.kind else {
            return reply.error(Errno::EINVAL);
        };
        self.counters.opens.fetch_add(1, Ordering::Relaxed);
        if self.no_open {
            // The kernel goes on with this open as with every later one:
            // file handle 0, FOPEN_KEEP_CACHE, no RELEASE.
            return reply.error(Errno::ENOSYS);
        }
        let Content::Object(id) = content else {
            return reply.opened(FileHandle(IN_TABLE), FopenFlags::FOPEN_KEEP_CACHE);
        };
        if let Some(source) = &self.filter {
            return match self.open_decoded(ino.0, id, node.attr.size, source) {
                Ok(()) => reply.opened(FileHandle(DECODED), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(e),
            };
        }
        if !self.passthrough.load(Ordering::Relaxed) || node.attr.size < PASSTHROUGH_MIN {
            // Served by us from the inode's kept descriptor, opened by the
            // first read that reaches us: this open costs no path walk.
            return reply.opened(FileHandle(IN_TABLE), FopenFlags::FOPEN_KEEP_CACHE);
        }
        let fd = match self.fds.open(|| self.open_object(id)) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("object {} of inode {}: {e}", id.to_hex(), ino.0);
                return reply.error(Errno::EIO);
            }
        };
        if self.try_passthrough(ino.0, &fd, &reply).is_none() {
            // Refused (said once): served by us like a small file.
            return reply.opened(FileHandle(IN_TABLE), FopenFlags::FOPEN_KEEP_CACHE);
        }
        self.counters
            .passthrough_opens
            .fetch_add(1, Ordering::Relaxed);
        let map = self.backing.lock().expect("not poisoned");
        let (id, _) = &map[&ino.0];
        // The descriptor also serves the rare request that still reaches us.
        let fh = FileHandle(fd.into_raw_fd() as u64 + 1);
        // No FOPEN_KEEP_CACHE here: the kernel refuses passthrough opens
        // with any flag outside FOPEN_PASSTHROUGH_MASK (the page cache is
        // the backing file's anyway).
        reply.opened_passthrough(fh, FopenFlags::empty(), id)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let size = size.min(MAX_IO) as usize;
        if fh.0 == DECODED {
            // Replying copies up to 1 MiB into the kernel: not under the
            // lock that opens and releases of other files take to write.
            let data = self
                .decoded
                .read()
                .expect("not poisoned")
                .get(&ino.0)
                .map(|(d, _)| Arc::clone(d));
            let Some(data) = data else {
                return reply.error(Errno::EBADF);
            };
            let start = (offset as usize).min(data.len());
            let end = start.saturating_add(size).min(data.len());
            self.counters
                .read_bytes
                .fetch_add((end - start) as u64, Ordering::Relaxed);
            return reply.data(&data[start..end]);
        }
        if fh.0 != IN_TABLE {
            return self.read_fd(fd_of(fh), offset, size, reply);
        }
        let Some((NodeKind::File(content), len)) =
            self.inodes.get(ino.0).map(|n| (&n.kind, n.attr.size))
        else {
            return reply.error(Errno::EBADF);
        };
        if let Content::Object(id) = content {
            if self.filter.is_some() {
                // Filtered objects are read decoded, through DECODED handles.
                return reply.error(Errno::EBADF);
            }
            // The kept descriptor of the inode's object.
            return match self.fds.get(ino.0, || self.open_object(id)) {
                Ok(fd) => {
                    use std::os::fd::AsFd;
                    self.read_fd(fd.as_fd(), offset, size, reply)
                }
                Err(e) => {
                    tracing::error!("object {} of inode {}: {e}", id.to_hex(), ino.0);
                    reply.error(Errno::EIO)
                }
            };
        }
        let start = offset.min(len) as usize;
        let end = (offset.saturating_add(size as u64)).min(len) as usize;
        self.counters
            .read_bytes
            .fetch_add((end - start) as u64, Ordering::Relaxed);
        match content {
            Content::Inline(data) => reply.data(&data[start..end]),
            Content::Zeros => BUF.with_borrow_mut(|buf| {
                buf[..end - start].fill(0);
                reply.data(&buf[..end - start])
            }),
            Content::Object(_) => unreachable!("served above"),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 == DECODED {
            let mut map = self.decoded.write().expect("not poisoned");
            if let Some((_, n)) = map.get_mut(&ino.0) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ino.0);
                }
            }
            return reply.ok();
        }
        if fh.0 != IN_TABLE {
            let mut map = self.backing.lock().expect("not poisoned");
            if let Some((_, n)) = map.get_mut(&ino.0) {
                *n -= 1;
                if *n == 0 {
                    // Dropping the BackingId closes it in the kernel.
                    map.remove(&ino.0);
                }
            }
            drop(map);
            close_fh(fh);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        // Nothing is ever written: nothing to flush. ENOSYS tells the kernel
        // to stop sending FLUSH, which every close() would otherwise wait
        // for (a round trip per file that `tar` or a container opens).
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.inodes.get(ino.0).map(|n| &n.kind) {
            // With FUSE_NO_OPENDIR_SUPPORT, ENOSYS tells the kernel to stop
            // sending OPENDIR/RELEASEDIR (a round trip per directory opened);
            // it then caches directories as with KEEP_CACHE | CACHE_DIR.
            Some(NodeKind::Dir(_)) if self.no_opendir => reply.error(Errno::ENOSYS),
            Some(NodeKind::Dir(_)) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
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
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let NodeKind::Dir(children) = &node.kind else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut i = offset;
        loop {
            let full = match i {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(node.parent), 2, FileType::Directory, ".."),
                _ => {
                    let Some((name, c)) = children.get(i as usize - 2) else {
                        break;
                    };
                    let child = self.inodes.get(*c).expect("children exist");
                    reply.add(INodeNo(*c), i + 1, kind_of(&child.kind, &child.attr), name)
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let NodeKind::Dir(children) = &node.kind else {
            return reply.error(Errno::ENOTDIR);
        };
        let parent = self.inodes.get(node.parent).expect("parents exist");
        let mut i = offset;
        loop {
            let full = match i {
                0 => reply.add(ino, 1, ".", &TTL, &node.attr, Generation(0)),
                1 => reply.add(
                    INodeNo(node.parent),
                    2,
                    "..",
                    &TTL,
                    &parent.attr,
                    Generation(0),
                ),
                _ => {
                    let Some((name, c)) = children.get(i as usize - 2) else {
                        break;
                    };
                    let child = self.inodes.get(*c).expect("children exist");
                    reply.add(INodeNo(*c), i + 1, name, &TTL, &child.attr, Generation(0))
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.inodes.bytes.div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.inodes.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match node.xattrs.binary_search_by(|(k, _)| (**k).cmp(name)) {
            Ok(i) => {
                let v = &node.xattrs[i].1;
                if size == 0 {
                    reply.size(v.len() as u32)
                } else if (size as usize) < v.len() {
                    reply.error(Errno::ERANGE)
                } else {
                    reply.data(v)
                }
            }
            Err(_) => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let len: usize = node.xattrs.iter().map(|(k, _)| k.len() + 1).sum();
        if size == 0 {
            return reply.size(len as u32);
        }
        if (size as usize) < len {
            return reply.error(Errno::ERANGE);
        }
        let mut out = Vec::with_capacity(len);
        for (k, _) in node.xattrs.iter() {
            out.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(&**k));
            out.push(0);
        }
        reply.data(&out)
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if self.inodes.get(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if mask.contains(fuser::AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        reply.ok()
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let size = node.attr.size as i64;
        match whence {
            // One data extent [0, size): the objects are plain files.
            libc::SEEK_DATA if offset < size && offset >= 0 => reply.offset(offset),
            libc::SEEK_HOLE if offset < size && offset >= 0 => reply.offset(size),
            libc::SEEK_DATA | libc::SEEK_HOLE => reply.error(Errno::ENXIO),
            _ => reply.error(Errno::EINVAL),
        }
    }
}
