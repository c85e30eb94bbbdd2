//! The seam between volumes and the host: every byte a volume reads or
//! writes, and every name it creates, renames or removes, goes through a
//! [`Backend`]. [`StdBackend`] is the real one (`std::fs` under a pool
//! directory); tests plug in a backend that counts operations, fails after N
//! of them, and on a simulated crash forgets everything that was not synced.
//!
//! What the volume code assumes of a backend is what it assumes of the host
//! filesystem (`docs/volume-format.md`, "What is assumed of the host"):
//! - [`BackendFile::sync`] makes the file's earlier writes and its length
//!   durable (`fdatasync`), but not its name;
//! - [`Backend::sync_dir`] makes earlier creations, renames and removals of
//!   names in that directory durable;
//! - [`Backend::rename`] replaces the target atomically: after a crash the
//!   name refers to the old file or to the new one, never to a mix.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open file of a backend. Positions are explicit: there is no cursor.
pub trait BackendFile: Debug + Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset` (an error at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Sets the file's length (used to cut a torn tail off a layer).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes earlier writes and the length durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
    /// The file's length in bytes (also for block devices).
    fn len(&self) -> io::Result<u64>;
}

/// Files and names. Paths are relative to the backend's root (a pool
/// directory); an absolute path (a volume's base file) is used as it is.
pub trait Backend: Debug + Send + Sync {
    /// Opens an existing file, for reading only unless `writable`.
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn BackendFile>>;
    /// Creates a file for reading and writing, truncating an existing one.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>>;
    /// Renames `from` to `to`, atomically replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries of a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a directory (and its parents) if missing.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes earlier changes to the names in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real backend: `std::fs` under a root directory.
#[derive(Debug, Clone)]
pub struct StdBackend {
    root: PathBuf,
}

impl StdBackend {
    /// A backend whose relative paths resolve under `root`.
    pub fn new(root: impl Into<PathBuf>) -> StdBackend {
        StdBackend { root: root.into() }
    }

    fn path(&self, p: &Path) -> PathBuf {
        self.root.join(p) // an absolute `p` replaces the root
    }
}

#[derive(Debug)]
struct StdFile(File);

impl BackendFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        // Seeking to the end also works for block devices, whose metadata
        // says 0. Reads and writes are positional, so the cursor is unused.
        (&self.0).seek(SeekFrom::End(0))
    }
}

impl Backend for StdBackend {
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn BackendFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(self.path(path))?;
        Ok(Arc::new(StdFile(f)))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(path))?;
        Ok(Arc::new(StdFile(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(self.path(path))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(self.path(dir))? {
            // Names that are not UTF-8 are not ours: skip them.
            if let Ok(name) = e?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(self.path(dir))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(self.path(dir))?.sync_all()
    }
}
