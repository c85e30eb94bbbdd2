//! `dir:PATH`: commit a host directory as a one-layer image.
//!
//! The walk never follows symlinks and records what `lstat` and `llistxattr`
//! say. Files with several links become hardlinks of the first path seen.
//!
//! Incremental commits: a cache in `fukastor/cache/dir-<hash of path>.json`
//! maps each file's path to its (device, inode, size, mtime, ctime) and the
//! object that held its content. A file whose five values match and whose
//! object is still in the store is not read again. The cache is only a cache:
//! deleting it costs one full read, and a wrong entry is impossible to use
//! because ctime changes whenever content or metadata is changed.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::SyncSender;

use composefs::fsverity::FsVerityHashValue;
use composefs::generic_tree::Stat;
use composefs::tree::RegularFile;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::OciError;
use super::layer::{Job, STREAM_THRESHOLD};
use super::pull::{patch, with_pool};
use crate::store::{ObjectId, Staging, Store};
use crate::tree::{Entry, EntryKind};

/// The config of a committed directory.
pub(super) fn config() -> serde_json::Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    })
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i128,
    ctime: i128,
    id: String,
}

/// The cache entry of a file; `id` is `None` until the hashing pool names it.
fn key(md: &fs::Metadata, id: Option<&ObjectId>) -> Seen {
    Seen {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        ctime: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
        id: id.map(|i| i.to_hex()).unwrap_or_default(),
    }
}

/// Walks `root` and returns its entries and the bytes of content read.
pub(super) fn scan(
    root: &Path,
    staging: &Staging<'_>,
    threads: usize,
    store: &Store,
) -> Result<(Vec<Entry>, u64), OciError> {
    let derr = |p: &Path| {
        let p = p.to_path_buf();
        move |e| OciError::Dir { path: p, source: e }
    };
    let canonical = fs::canonicalize(root).map_err(derr(root))?;
    if !canonical.is_dir() {
        return Err(OciError::Dir {
            path: root.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let cache_path = store.root().join("fukastor/cache").join(format!(
        "dir-{}.json",
        hex::encode(sha2::Sha256::digest(canonical.as_os_str().as_bytes()))
    ));
    let old: HashMap<String, Seen> = fs::read(&cache_path)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();

    let producer = Box::new(|jobs: &SyncSender<Job>, _abort: &AtomicBool| {
        let mut w = Walker {
            staging,
            jobs,
            old: &old,
            new: HashMap::new(),
            links: HashMap::new(),
            entries: Vec::new(),
            bytes: 0,
        };
        w.walk(&canonical, Vec::new())?;
        Ok((w.entries, w.new, w.bytes))
    });
    let (mut out, results) = with_pool(staging, threads, vec![producer])?;
    let (entries, mut new, bytes) = out.remove(0);
    let mut layers = vec![entries];
    // Record in the cache what the pool computed.
    for (_, e, r) in &results {
        if let (Ok(id), Some(entry)) = (r, layers[0].get(*e))
            && let Some(seen) = new.get_mut(&hex::encode(&entry.path))
        {
            seen.id = id.to_hex();
        }
    }
    patch(&mut layers, results);
    let data = serde_json::to_vec(&new).expect("serializes");
    let _ = crate::store::write_atomic(&cache_path, &data);
    Ok((layers.remove(0), bytes))
}

struct Walker<'a, 's> {
    staging: &'a Staging<'s>,
    jobs: &'a SyncSender<Job>,
    old: &'a HashMap<String, Seen>,
    new: HashMap<String, Seen>,
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: Vec<Entry>,
    bytes: u64,
}

impl Walker<'_, '_> {
    fn walk(&mut self, path: &Path, rel: Vec<u8>) -> Result<(), OciError> {
        let derr = |e| OciError::Dir {
            path: path.to_path_buf(),
            source: e,
        };
        let md = fs::symlink_metadata(path).map_err(derr)?;
        let ft = md.file_type();
        let stat = stat_of(path, &md).map_err(derr)?;
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                self.entries.push(Entry {
                    path: rel,
                    stat,
                    kind: EntryKind::HardLink(first.clone()),
                });
                return Ok(());
            }
            self.links.insert((md.dev(), md.ino()), rel.clone());
        }
        let kind = if ft.is_dir() {
            EntryKind::Directory
        } else if ft.is_file() {
            EntryKind::File(self.file(path, &md, &rel)?)
        } else if ft.is_symlink() {
            let t = fs::read_link(path).map_err(derr)?;
            EntryKind::Symlink(Box::from(t.as_os_str()))
        } else if ft.is_char_device() {
            EntryKind::CharDevice(md.rdev())
        } else if ft.is_block_device() {
            EntryKind::BlockDevice(md.rdev())
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            EntryKind::Socket
        };
        self.entries.push(Entry {
            path: rel.clone(),
            stat,
            kind,
        });
        if ft.is_dir() {
            let mut children: Vec<_> = fs::read_dir(path)
                .map_err(derr)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(derr)?;
            children.sort();
            for name in children {
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(name.as_bytes());
                self.walk(&path.join(&name), r)?;
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        path: &Path,
        md: &fs::Metadata,
        rel: &[u8],
    ) -> Result<RegularFile<ObjectId>, OciError> {
        let derr = |e| OciError::Dir {
            path: path.to_path_buf(),
            source: e,
        };
        let size = md.size();
        let cache_key = hex::encode(rel);
        if size > composefs::INLINE_CONTENT_MAX_V0 as u64
            && let Some(seen) = self.old.get(&cache_key)
            && let Ok(id) = ObjectId::from_hex(&seen.id)
            && key(md, Some(&id)) == *seen
            && self.staging.has_object(&id)
        {
            self.new.insert(cache_key, seen.clone());
            return Ok(RegularFile::External(id, size));
        }
        let mut f = fs::File::open(path).map_err(derr)?;
        if size >= STREAM_THRESHOLD {
            let mut w = self.staging.writer()?;
            let n = std::io::copy(&mut f, &mut w).map_err(derr)?;
            let id = w.finish()?;
            self.bytes += n;
            self.new.insert(cache_key, key(md, Some(&id)));
            return Ok(RegularFile::External(id, n));
        }
        let mut data = Vec::with_capacity(size as usize);
        f.read_to_end(&mut data).map_err(derr)?;
        self.bytes += data.len() as u64;
        let len = data.len() as u64;
        if len <= composefs::INLINE_CONTENT_MAX_V0 as u64 {
            return Ok(RegularFile::Inline(data.into_boxed_slice()));
        }
        // The pool fills in the ID; the cache entry gets it after the walk.
        self.new.insert(cache_key, key(md, None));
        let index = self.entries.len();
        match self.jobs.send(Job {
            data,
            layer: 0,
            entry: index,
        }) {
            Ok(()) => Ok(RegularFile::Sparse(len)),
            Err(e) => Ok(RegularFile::External(self.staging.put(&e.0.data)?, len)),
        }
    }
}

fn stat_of(path: &Path, md: &fs::Metadata) -> std::io::Result<Stat> {
    let mut stat = Stat {
        st_mode: md.mode() & 0o7777,
        st_uid: md.uid(),
        st_gid: md.gid(),
        st_mtim_sec: md.mtime(),
        st_mtim_nsec: md.mtime_nsec() as u32,
        xattrs: Default::default(),
    };
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => break 0,
            Err(e) => return Err(e.into()),
        }
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, name, &mut value) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(e.into()),
            }
        };
        if len != usize::MAX {
            value.truncate(len);
            stat.xattrs
                .insert(Box::from(name), value.into_boxed_slice());
        }
    }
    Ok(stat)
}
