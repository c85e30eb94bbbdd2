//! Writing objects: a private staging directory per import.
//!
//! An import writes every new object into `fukastor/staging/<id>/<hex>`.
//! Nothing in `objects/` changes until [`Staging::publish`], which moves each
//! staged file in with `renameat2(RENAME_NOREPLACE)`; an object already there
//! means another writer stored the same bytes, which is success. If the
//! import fails, dropping the [`Staging`] deletes the directory, so a refused
//! input leaves the store exactly as it was. A `kill -9` leaves the staging
//! directory behind; `gc` removes it (it holds the exclusive lock, so no
//! import is running).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use composefs::fsverity::{FsVerityHashValue, FsVerityHasher, compute_verity};
use rustix::fs::{CWD, RenameFlags, renameat_with};

use super::{ObjectId, Objects, Result, Store, io_err};

/// The staging area of one import.
#[derive(Debug)]
pub struct Staging<'s> {
    store: &'s Store,
    /// Where objects are published, and the chain that encodes them.
    target: Objects,
    dir: PathBuf,
    staged: Mutex<HashSet<ObjectId>>,
    counter: AtomicU64,
    new_bytes: AtomicU64,
    published: bool,
}

/// What [`Staging::publish`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublishStats {
    /// Objects moved into `objects/`.
    pub new_objects: u64,
    /// Their bytes.
    pub new_bytes: u64,
}

impl<'s> Staging<'s> {
    pub(super) fn new(store: &'s Store, target: Objects) -> Result<Staging<'s>> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = store
            .root()
            .join("fukastor/staging")
            .join(format!("{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).map_err(io_err("creating a staging directory"))?;
        Ok(Staging {
            store,
            target,
            dir,
            staged: Mutex::default(),
            counter: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
            published: false,
        })
    }

    /// The store this staging belongs to.
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// True when the object is published where this staging publishes.
    pub fn has_object(&self, id: &ObjectId) -> bool {
        self.target.has(id)
    }

    /// True when `id` needs no writing: it is in the store or staged.
    fn known(&self, id: &ObjectId) -> bool {
        self.target.has(id) || self.staged.lock().expect("not poisoned").contains(id)
    }

    /// The bytes to store for plain `data`: `data` itself, or its encoding
    /// through the staging's chain.
    fn encoded<'d>(&self, id: &ObjectId, data: &'d [u8]) -> Result<std::borrow::Cow<'d, [u8]>> {
        Ok(match self.target.encode(id, data)? {
            None => std::borrow::Cow::Borrowed(data),
            Some(v) => std::borrow::Cow::Owned(v),
        })
    }

    /// Stores `data` as an object and returns its ID.
    pub fn put(&self, data: &[u8]) -> Result<ObjectId> {
        let id: ObjectId = compute_verity(data);
        if self.known(&id) {
            return Ok(id);
        }
        let data = &*self.encoded(&id, data)?;
        let path = self.dir.join(id.to_hex());
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(data).map_err(io_err("writing an object"))?;
                self.new_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.staged.lock().expect("not poisoned").insert(id.clone());
            }
            // Another thread of this import is writing the same bytes.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("writing an object")(e)),
        }
        Ok(id)
    }

    /// A writer for an object too large to hold in memory.
    pub fn writer(&self) -> Result<ObjectWriter<'_, 's>> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("partial-{n}"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(io_err("creating an object"))?;
        Ok(ObjectWriter {
            staging: self,
            path,
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: FsVerityHasher::new(),
            block: Vec::with_capacity(4096),
            len: 0,
        })
    }

    /// Moves every staged object into `objects/`. Objects that another
    /// writer published meanwhile are dropped from staging.
    pub fn publish(self) -> Result<PublishStats> {
        self.publish_only(None)
    }

    /// Moves the staged objects that `keep` names (all when `None`) into
    /// `objects/`; the others (content that later layers replaced or
    /// deleted) are dropped with the staging directory.
    pub fn publish_only(mut self, keep: Option<&HashSet<ObjectId>>) -> Result<PublishStats> {
        let staged = std::mem::take(&mut *self.staged.lock().expect("not poisoned"));
        let mut stats = PublishStats::default();
        for id in staged
            .iter()
            .filter(|id| keep.is_none_or(|k| k.contains(id)))
        {
            let from = self.dir.join(id.to_hex());
            let to = self.target.path(id);
            match renameat_with(CWD, &from, CWD, &to, RenameFlags::NOREPLACE) {
                Ok(()) => {
                    stats.new_objects += 1;
                    stats.new_bytes += fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
                }
                Err(rustix::io::Errno::EXIST) => {
                    let _ = fs::remove_file(&from);
                }
                Err(e) => return Err(io_err("publishing an object")(e.into())),
            }
        }
        crate::failpoint("pull:objects-published");
        self.published = true;
        Ok(stats)
    }

    /// Bytes written to staging so far.
    pub fn staged_bytes(&self) -> u64 {
        self.new_bytes.load(Ordering::Relaxed)
    }

    /// Number of objects staged so far.
    pub fn staged_count(&self) -> usize {
        self.staged.lock().expect("not poisoned").len()
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // Published or not, what is left in the directory is not referenced.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Streams one object into staging, hashing as it goes.
#[derive(Debug)]
pub struct ObjectWriter<'a, 's> {
    staging: &'a Staging<'s>,
    path: PathBuf,
    file: io::BufWriter<fs::File>,
    hasher: FsVerityHasher<ObjectId, 12>,
    block: Vec<u8>,
    len: u64,
}

impl ObjectWriter<'_, '_> {
    /// Finishes the object and returns its ID.
    pub fn finish(mut self) -> Result<ObjectId> {
        if !self.block.is_empty() {
            self.hasher.add_block(&self.block);
        }
        let id = self.hasher.digest();
        self.file.flush().map_err(io_err("writing an object"))?;
        let staging = self.staging;
        let path = std::mem::take(&mut self.path);
        if staging.known(&id) {
            let _ = fs::remove_file(&path);
            return Ok(id);
        }
        let dest = staging.dir.join(id.to_hex());
        if staging.target.chain().is_some() {
            // Filtered: the chain encodes whole objects, in memory.
            let plain = fs::read(&path).map_err(io_err("reading a staged object"))?;
            let _ = fs::remove_file(&path);
            let data = staging.encoded(&id, &plain)?;
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&dest)
            {
                Ok(mut f) => {
                    f.write_all(&data).map_err(io_err("writing an object"))?;
                    staging
                        .new_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    staging
                        .staged
                        .lock()
                        .expect("not poisoned")
                        .insert(id.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("writing an object")(e)),
            }
            return Ok(id);
        }
        match renameat_with(CWD, &path, CWD, &dest, RenameFlags::NOREPLACE) {
            Ok(()) => {
                staging.new_bytes.fetch_add(self.len, Ordering::Relaxed);
                staging
                    .staged
                    .lock()
                    .expect("not poisoned")
                    .insert(id.clone());
            }
            Err(rustix::io::Errno::EXIST) => {
                let _ = fs::remove_file(&path);
            }
            Err(e) => return Err(io_err("staging an object")(e.into())),
        }
        Ok(id)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Write for ObjectWriter<'_, '_> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        self.file.write_all(data)?;
        self.len += n as u64;
        if !self.block.is_empty() {
            let take = (4096 - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == 4096 {
                self.hasher.add_block(&self.block);
                self.block.clear();
            }
        }
        let mut chunks = data.chunks_exact(4096);
        for c in &mut chunks {
            self.hasher.add_block(c);
        }
        self.block.extend_from_slice(chunks.remainder());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for ObjectWriter<'_, '_> {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Recomputes an object's digest from its file.
pub(crate) fn verify_file(path: &Path) -> io::Result<ObjectId> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut hasher = FsVerityHasher::<ObjectId, 12>::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut fill = 0;
    loop {
        let n = f.read(&mut buf[fill..])?;
        fill += n;
        if n == 0 || fill == buf.len() {
            let whole = fill / 4096 * 4096;
            for c in buf[..whole].chunks_exact(4096) {
                hasher.add_block(c);
            }
            if n == 0 {
                if fill > whole {
                    hasher.add_block(&buf[whole..fill]);
                }
                return Ok(hasher.digest());
            }
            buf.copy_within(whole..fill, 0);
            fill -= whole;
        }
    }
}
