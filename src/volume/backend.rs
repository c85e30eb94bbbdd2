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
use std::io::{self, IoSlice, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// An open file of a backend. Positions are explicit: there is no cursor.
// `len` is a file's length, which can fail to read: no `is_empty` to go with it.
#[allow(clippy::len_without_is_empty)]
pub trait BackendFile: Debug + Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset` (an error at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `parts`, one after the other, at `offset`: like
    /// [`BackendFile::write_at`] of their concatenation (what a failure may
    /// leave is the same: any prefix of it). The default concatenates.
    fn write_vectored_at(&self, parts: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut all = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| all.extend_from_slice(p));
        self.write_at(&all, offset)
    }
    /// Sets the file's length (used to cut a torn tail off a layer).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes earlier writes and the length durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
    /// The file's length in bytes (also for block devices).
    fn len(&self) -> io::Result<u64>;
    /// Starts writing `start` (offset, length), which earlier writes left
    /// in the page cache, to the disk, and waits for the writeback of
    /// `wait`, if given, then drops `wait` from the page cache
    /// (`sync_file_range`, `POSIX_FADV_DONTNEED`; a page of it written
    /// again meanwhile is dirty and stays). So the disk works all along,
    /// what a stream of appends keeps cached stays bounded, and its next
    /// pages are recycled ones rather than fresh memory (docs/design.md,
    /// "Write-behind", "Drop-behind"). A hint, not durability (only
    /// [`BackendFile::sync`] gives that). Errors are not reported here: a
    /// writeback error must still reach the next [`BackendFile::sync`]
    /// (the kernel reports one to each open file once, so the real backend
    /// waits through an open file of its own). The default does nothing.
    fn write_behind(&self, _start: (u64, u64), _wait: Option<(u64, u64)>) {}
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
    /// Names the current boot of the machine whose files these are: what
    /// was never synced is only trusted within the boot that wrote it
    /// (ephemeral volumes' metadata). `None` if unknown. The default reads
    /// the kernel's random boot ID.
    fn boot_id(&self) -> Option<String> {
        boot_id()
    }
}

/// The file name `<name>@<boot><ext>` of something valid only in boot
/// `boot` of the machine (an ephemeral volume's metadata, a disposable
/// container's record). Names never hold `@`.
pub(crate) fn boot_file(name: &str, boot: &str, ext: &str) -> String {
    format!("{name}@{boot}{ext}")
}

/// The name and boot of a file name made by [`boot_file`] with `ext`.
pub(crate) fn split_boot_file<'a>(file: &'a str, ext: &str) -> Option<(&'a str, &'a str)> {
    file.strip_suffix(ext)?.rsplit_once('@')
}

/// The kernel's random ID of this boot of the machine
/// (`/proc/sys/kernel/random/boot_id`), read once; `None` if unreadable.
pub(crate) fn boot_id() -> Option<String> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim();
        (!id.is_empty() && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
            .then(|| id.to_string())
    })
    .clone()
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
struct StdFile(File, OnceLock<Option<File>>);

impl StdFile {
    fn new(f: File) -> StdFile {
        StdFile(f, OnceLock::new())
    }

    /// A second open file of the same file, for write-behind: waiting for
    /// writeback through it marks a writeback error seen for it alone, so
    /// a sync through the first one still reports the error. `None` when
    /// it cannot be opened (no /proc): no write-behind then.
    fn behind(&self) -> Option<&File> {
        use std::os::fd::AsRawFd;
        self.1
            .get_or_init(|| File::open(format!("/proc/self/fd/{}", self.0.as_raw_fd())).ok())
            .as_ref()
    }
}

impl BackendFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn write_vectored_at(&self, parts: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        pwritev_all(&self.0, parts, offset)
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
    fn write_behind(&self, start: (u64, u64), wait: Option<(u64, u64)>) {
        let Some(f) = self.behind() else {
            return;
        };
        let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let r = sync_file_range(f, start.0, start.1, libc::SYNC_FILE_RANGE_WRITE).and_then(|()| {
            let Some((offset, len)) = wait else {
                return Ok(());
            };
            sync_file_range(f, offset, len, all)?;
            // Written back and clean: dropping it frees those pages for
            // the next appends. A page still dirty (written again since)
            // stays; DONTNEED never loses data.
            rustix::fs::fadvise(
                f,
                offset,
                NonZeroU64::new(len),
                rustix::fs::Advice::DontNeed,
            )
            .map_err(io::Error::from)
        });
        if let Err(e) = r {
            // The next sync of the file reports a failed write again.
            tracing::debug!("write-behind: {e}");
        }
    }
}

/// `sync_file_range(2)` (not in rustix). Its errors are only logged by the
/// caller (a file system without it answers EINVAL, ESPIPE or ENOSYS: the
/// next sync then writes everything, as it would have).
#[allow(unsafe_code)]
fn sync_file_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    loop {
        // SAFETY: a plain system call on a descriptor `file` keeps open for
        // the call's duration; no memory is passed.
        let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The most buffers one `pwritev` takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// Writes all of `parts` at `offset` with `pwritev`, `IOV_MAX` buffers at a
/// time, going on after short writes and interruptions.
fn pwritev_all(file: &File, parts: &[IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    let mut owned: Vec<IoSlice<'_>> = parts.iter().filter(|p| !p.is_empty()).copied().collect();
    let mut rest = &mut owned[..];
    while !rest.is_empty() {
        let n = rest.len().min(IOV_MAX);
        let written = match rustix::io::pwritev(file, &rest[..n], offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += written as u64;
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

impl Backend for StdBackend {
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn BackendFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(self.path(path))?;
        Ok(Arc::new(StdFile::new(f)))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(path))?;
        Ok(Arc::new(StdFile::new(f)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `write_vectored_at` writes what `write_at` of the concatenation
    /// would, also past `IOV_MAX` parts and with empty parts among them.
    #[test]
    fn vectored_writes_equal_the_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let b = StdBackend::new(dir.path());
        let parts: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| vec![i as u8; (i % 7) as usize * 3])
            .collect();
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let all = parts.concat();
        let (v, w) = (
            b.create("v".as_ref()).unwrap(),
            b.create("w".as_ref()).unwrap(),
        );
        v.write_at(b"head", 0).unwrap();
        w.write_at(b"head", 0).unwrap();
        v.write_vectored_at(&slices, 4).unwrap();
        w.write_at(&all, 4).unwrap();
        v.write_vectored_at(&[], 4 + all.len() as u64).unwrap();
        assert_eq!(v.len().unwrap(), 4 + all.len() as u64);
        assert_eq!(
            fs::read(dir.path().join("v")).unwrap(),
            fs::read(dir.path().join("w")).unwrap()
        );
    }

    /// Write-behind on a real file: a range it waited for was written
    /// back and left the page cache (a dirty page cannot be dropped, so
    /// this also shows the writeback happened), the bytes read back the
    /// same, and a range past the end is harmless.
    #[test]
    fn write_behind_on_a_real_file() {
        // Not /tmp, which may be a tmpfs (whose pages are never dropped).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let b = StdBackend::new(dir.path());
        let f = b.create("f".as_ref()).unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        f.write_at(&data, 0).unwrap();
        let raw = File::open(dir.path().join("f")).unwrap();
        let (cached, pages) = resident(&raw, data.len());
        assert_eq!(cached, pages, "just written, so cached");
        f.write_behind((0, 1 << 19), None);
        f.write_behind((1 << 19, 1 << 30), Some((0, 1 << 20)));
        assert_eq!(resident(&raw, data.len()).0, 0, "written back and dropped");
        let mut back = vec![0u8; data.len()];
        f.read_at(&mut back, 0).unwrap();
        assert!(back == data);
        let std = StdFile::new(File::open(dir.path().join("f")).unwrap());
        assert!(std.behind().is_some(), "/proc/self/fd reopens the file");
    }

    /// How many pages of the first `len` bytes of `f` are in the page
    /// cache, and how many pages they span.
    #[allow(unsafe_code)]
    fn resident(f: &File, len: usize) -> (usize, usize) {
        use std::os::fd::AsRawFd;
        // SAFETY: a private read-only mapping of an open file, used only
        // by `mincore`, which writes one byte per page into `v` (sized for
        // that), and unmapped before returning.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let mut v = vec![0u8; len.div_ceil(page)];
            let r = libc::mincore(p, len, v.as_mut_ptr());
            libc::munmap(p, len);
            assert_eq!(r, 0, "mincore");
            (v.iter().filter(|b| *b & 1 != 0).count(), v.len())
        }
    }
}
