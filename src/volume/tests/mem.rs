//! A fault-injecting in-memory [`Backend`] for the volume tests.
//!
//! It models what a filesystem promises and no more:
//! - every file has a *current* content (what reads see) and a *synced*
//!   content (what survives a crash); `sync` makes the current content
//!   synced;
//! - every name has a current and a durable binding; `sync_dir(d)` makes the
//!   creations, renames and removals in `d` durable, in order;
//! - [`Mem::crash`] replaces everything by what survives: only synced data
//!   and durable names ([`CrashMode::DropUnsynced`]), or that plus a random
//!   subset of the unsynced writes, some of them torn, and of the unsynced
//!   name changes, in order ([`CrashMode::Random`]);
//! - it counts operations and bytes written, and can fail every operation
//!   after the N-th ([`Mem::fail_after`]) or only the N-th
//!   ([`Mem::fail_once`]); a failing write may have written a prefix;
//! - each crash starts a new boot (its [`Backend::boot_id`] changes).
//!
//! Directories are created durable and never removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::super::backend::{Backend, BackendFile};
use super::super::lock;
use super::Rng;

/// How much unsynced state a crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashMode {
    /// Nothing that was not synced.
    DropUnsynced,
    /// A random subset of unsynced writes (some torn) and name changes.
    Random,
}

impl CrashMode {
    /// One mode or the other by the parity of `n`: a loop over `n` tries
    /// both (`DropUnsynced` for even `n`).
    pub(crate) fn alternate(n: u64) -> CrashMode {
        if n.is_multiple_of(2) {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Random
        }
    }
}

/// Operation counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub ops: u64,
    pub reads: u64,
    pub bytes_read: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub syncs: u64,
}

#[derive(Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Clone)]
enum NsOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl NsOp {
    fn dir(&self) -> PathBuf {
        let p = match self {
            NsOp::Link(p, _) | NsOp::Unlink(p) | NsOp::Rename(p, _) => p,
        };
        p.parent().unwrap_or(Path::new("")).to_path_buf()
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            NsOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            NsOp::Unlink(p) => {
                names.remove(p);
            }
            NsOp::Rename(from, to) => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Debug)]
struct State {
    names: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    pending_ns: Vec<NsOp>,
    dirs: BTreeSet<PathBuf>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    counts: Counts,
    fail_after: Option<u64>,
    fail_once: Option<u64>,
    rng: Rng,
    /// Counts crashes: each starts a new boot ([`Backend::boot_id`]).
    boot: u64,
}

/// The in-memory backend. Clones share the same files.
#[derive(Debug, Clone)]
pub(crate) struct Mem {
    st: Arc<Mutex<State>>,
}

fn write_into(v: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if v.len() < end {
        v.resize(end, 0);
    }
    v[off as usize..end].copy_from_slice(data);
}

fn apply(v: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write(off, data) => write_into(v, *off, data),
        Pending::SetLen(len) => v.resize(*len as usize, 0),
    }
}

impl State {
    /// Counts an operation and decides whether it fails.
    fn op(&mut self) -> io::Result<()> {
        self.counts.ops += 1;
        let n = self.counts.ops;
        if self.fail_after.is_some_and(|limit| n > limit) || self.fail_once == Some(n) {
            return Err(io::Error::other(format!(
                "injected failure at operation {n}"
            )));
        }
        Ok(())
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .expect("open files keep their inode")
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )
        })
    }
}

impl Mem {
    pub fn new(seed: u64) -> Mem {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::new());
        let st = State {
            names: BTreeMap::new(),
            durable: BTreeMap::new(),
            pending_ns: Vec::new(),
            dirs,
            inodes: HashMap::new(),
            next_ino: 1,
            counts: Counts::default(),
            fail_after: None,
            fail_once: None,
            rng: Rng::new(seed ^ 0x6d65_6d6d),
            boot: 0,
        };
        Mem {
            st: Arc::new(Mutex::new(st)),
        }
    }

    pub fn counts(&self) -> Counts {
        lock(&self.st).counts
    }

    /// Every operation after the next `n` fails, until a crash or `heal`.
    pub fn fail_after(&self, n: u64) {
        let mut st = lock(&self.st);
        st.fail_after = Some(st.counts.ops + n);
    }

    /// The operation `n` operations from now fails; the others do not.
    pub fn fail_once(&self, n: u64) {
        let mut st = lock(&self.st);
        st.fail_once = Some(st.counts.ops + n);
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        let mut st = lock(&self.st);
        st.fail_after = None;
        st.fail_once = None;
    }

    /// Simulates a power cut: see the module doc. Also heals.
    pub fn crash(&self, mode: CrashMode) {
        let mut guard = lock(&self.st);
        let st = &mut *guard;
        for inode in st.inodes.values_mut() {
            let mut data = std::mem::take(&mut inode.synced);
            if mode == CrashMode::Random {
                for p in &inode.pending {
                    match (st.rng.below(3), p) {
                        (0, _) => {}
                        (1, p) | (_, p @ Pending::SetLen(_)) => apply(&mut data, p),
                        (_, Pending::Write(off, bytes)) => {
                            let cut = st.rng.below(bytes.len() as u64 + 1) as usize;
                            write_into(&mut data, *off, &bytes[..cut]);
                        }
                    }
                }
            }
            inode.pending.clear();
            inode.synced = data.clone();
            inode.data = data;
        }
        let mut names = st.durable.clone();
        if mode == CrashMode::Random {
            for op in &st.pending_ns {
                if st.rng.below(2) == 0 {
                    op.apply(&mut names);
                }
            }
        }
        st.pending_ns.clear();
        st.durable = names.clone();
        st.names = names;
        st.fail_after = None;
        st.fail_once = None;
        st.boot += 1;
    }

    /// Creates a durable file with `data` (a base image).
    pub fn put_file(&self, path: &str, data: &[u8]) {
        let mut st = lock(&self.st);
        let ino = st.next_ino;
        st.next_ino += 1;
        let inode = Inode {
            data: data.to_vec(),
            synced: data.to_vec(),
            pending: vec![],
        };
        st.inodes.insert(ino, inode);
        st.names.insert(PathBuf::from(path), ino);
        st.durable.insert(PathBuf::from(path), ino);
    }

    /// The current content of a file.
    pub fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        let st = lock(&self.st);
        let ino = *st.names.get(Path::new(path))?;
        Some(st.inodes[&ino].data.clone())
    }

    /// Changes one byte of a file (in both views): bit rot.
    pub fn flip_byte(&self, path: &str, offset: u64) {
        let mut st = lock(&self.st);
        let ino = st.names[Path::new(path)];
        let inode = st.inode(ino);
        inode.data[offset as usize] ^= 0x55;
        inode.synced[offset as usize] ^= 0x55;
    }

    /// Removes a file (durably): an index file lost, say.
    pub fn remove_file(&self, path: &str) {
        let mut st = lock(&self.st);
        st.names.remove(Path::new(path));
        st.durable.remove(Path::new(path));
    }

    /// The current names in a directory.
    pub fn names_in(&self, dir: &str) -> Vec<String> {
        let st = lock(&self.st);
        st.names
            .keys()
            .filter(|p| p.parent() == Some(Path::new(dir)))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }
}

#[derive(Debug)]
struct MemFile {
    st: Arc<Mutex<State>>,
    ino: u64,
    writable: bool,
}

impl BackendFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.op()?;
        st.counts.reads += 1;
        st.counts.bytes_read += buf.len() as u64;
        let data = &st.inode(self.ino).data;
        let end = offset as usize + buf.len();
        if end > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        buf.copy_from_slice(&data[offset as usize..end]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut st = lock(&self.st);
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only file",
            ));
        }
        let mut written = data;
        let res = st.op();
        if res.is_err() {
            // A failed write may still have written a prefix.
            let cut = st.rng.below(data.len() as u64 + 1) as usize;
            written = &data[..cut];
        }
        st.counts.writes += 1;
        st.counts.bytes_written += written.len() as u64;
        let inode = st.inode(self.ino);
        write_into(&mut inode.data, offset, written);
        inode.pending.push(Pending::Write(offset, written.to_vec()));
        res
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.op()?;
        let inode = st.inode(self.ino);
        inode.data.resize(len as usize, 0);
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.op()?;
        st.counts.syncs += 1;
        let inode = st.inode(self.ino);
        for p in std::mem::take(&mut inode.pending) {
            apply(&mut inode.synced, &p);
        }
        debug_assert_eq!(inode.synced, inode.data);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut st = lock(&self.st);
        st.op()?;
        Ok(st.inode(self.ino).data.len() as u64)
    }
}

impl Backend for Mem {
    fn boot_id(&self) -> Option<String> {
        Some(format!("boot-{}", lock(&self.st).boot))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn BackendFile>> {
        let mut st = lock(&self.st);
        st.op()?;
        let ino = st.lookup(path)?;
        Ok(Arc::new(MemFile {
            st: self.st.clone(),
            ino,
            writable,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>> {
        let mut st = lock(&self.st);
        st.op()?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        let ino = match st.names.get(path) {
            Some(&ino) => {
                let inode = st.inode(ino);
                inode.data.clear();
                inode.pending.push(Pending::SetLen(0));
                ino
            }
            None => {
                let ino = st.next_ino;
                st.next_ino += 1;
                st.inodes.insert(ino, Inode::default());
                st.names.insert(path.to_path_buf(), ino);
                st.pending_ns.push(NsOp::Link(path.to_path_buf(), ino));
                ino
            }
        };
        Ok(Arc::new(MemFile {
            st: self.st.clone(),
            ino,
            writable: true,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.op()?;
        assert_eq!(from.parent(), to.parent(), "renames stay in one directory");
        let ino = st.lookup(from)?;
        st.names.remove(from);
        st.names.insert(to.to_path_buf(), ino);
        st.pending_ns
            .push(NsOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.op()?;
        st.lookup(path)?;
        st.names.remove(path);
        st.pending_ns.push(NsOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut st = lock(&self.st);
        st.op()?;
        if !st.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect())
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.op()?;
        st.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut guard = lock(&self.st);
        let st = &mut *guard;
        st.op()?;
        st.counts.syncs += 1;
        let (now, later): (Vec<NsOp>, Vec<NsOp>) =
            st.pending_ns.drain(..).partition(|op| op.dir() == dir);
        for op in &now {
            op.apply(&mut st.durable);
        }
        st.pending_ns = later;
        Ok(())
    }
}
