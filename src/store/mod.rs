//! The store: one directory holding objects, composefs images, image records
//! and names.
//!
//! Layout (the full description, with the crash argument, is in
//! `docs/store-format.md`; a copy is written into every store as `FORMAT.md`):
//!
//! ```text
//! STORE/
//!   FORMAT.md                 how to read this store by hand
//!   meta.json                 composefs repository metadata (sha256 fs-verity digests)
//!   objects/XX/<62 hex>       file contents and EROFS images, named by fs-verity digest
//!   images/<id>               symlink -> ../objects/XX/... : a composefs EROFS image
//!   images/refs/<name>        symlink -> ../../images/<id> : an image name
//!   fukastor/records/<id>.json  what fukastor knows of an image (source, config, stats)
//!   fukastor/staging/<pull>/  private staging of an import in progress
//!   fukastor/cache/           caches; deletable at any time
//!   fukastor/filters/         filtered images, their chains and encoded objects (see `filtered.rs`)
//!   fukastor/lock             flock: shared by writers, exclusive by gc and fsck --repair
//! ```
//!
//! Invariants kept here:
//! - An object's name is the fs-verity (sha256, 4 KiB blocks) digest of its bytes.
//! - Objects become visible only complete: they are written in a staging
//!   directory and moved in with `renameat2(RENAME_NOREPLACE)`.
//! - A name ref is written last, after `syncfs`, so a ref never points at an
//!   image whose objects could be missing after a crash.
//! - `gc` runs under the exclusive lock, so it never sees a half-done import.

mod filtered;
mod fsck;
mod gc;
mod lock;
mod names;
mod objects;
mod record;
#[cfg(test)]
mod tests;

pub use filtered::{FilterInfo, Objects, filtered_image_id};
pub use fsck::{FsckReport, Problem};
pub use gc::GcReport;
pub(crate) use lock::flock_timed;
pub use lock::{LockMode, set_default_timeout as set_default_lock_timeout};
pub use names::ImageName;
pub use objects::{ObjectWriter, Staging};
pub use record::{ImageRecord, ImageStats, LayerInfo};

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use composefs::fsverity::{FsVerityHashValue, Sha256HashValue};

use crate::error::Coded;

/// The digest naming every object and image: fs-verity sha256 over 4 KiB blocks.
pub type ObjectId = Sha256HashValue;

/// A composefs tree whose external files are objects of this store.
pub type Tree = composefs::tree::FileSystem<ObjectId>;

/// The store's own format version (in `fukastor/format`).
pub const FORMAT_VERSION: u32 = 1;

const FORMAT_DOC: &str = include_str!("../../docs/store-format.md");

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory cannot be created or opened.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// The store root.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The store was written by a newer version.
    #[error("the store at {path} has format {found}; this fukastor reads format {FORMAT_VERSION}")]
    Format {
        /// The store root.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// The lock could not be taken.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// An I/O error inside the store.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: io::Error,
    },
    /// The store is damaged.
    #[error("the store is damaged: {0}")]
    Damaged(String),
    /// No such image.
    #[error("no image named {0:?} in the store")]
    NotFound(String),
    /// Not a valid name.
    #[error("{0:?} is not a valid image name: {1}")]
    BadName(String, &'static str),
    /// An ID prefix that matches several images.
    #[error("the ID prefix {0:?} matches {1} images")]
    Ambiguous(String, usize),
    /// A filter chain failed (loading it, or decoding an object).
    #[error("{0}")]
    Filter(crate::filter::FilterError),
}

impl Coded for StoreError {
    fn code(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "FK0100",
            StoreError::Format { .. } => "FK0101",
            StoreError::Busy(_) => "FK0102",
            StoreError::Io { .. } => "FK0103",
            StoreError::Damaged(_) => "FK0104",
            StoreError::NotFound(_) => "FK0110",
            StoreError::BadName(..) => "FK0111",
            StoreError::Ambiguous(..) => "FK0112",
            StoreError::Filter(e) => e.code(),
        }
    }

    fn hint(&self) -> String {
        match self {
            StoreError::Open { .. } => {
                "choose a writable directory with --store or FUKASTOR_STORE".into()
            }
            StoreError::Format { .. } => "use a newer fukastor, or another --store".into(),
            StoreError::Busy(_) => {
                "wait for the other fukastor process (gc or fsck --repair) to finish".into()
            }
            StoreError::Io { .. } => {
                "check free space and permissions of the store's filesystem".into()
            }
            StoreError::Damaged(_) => "run `fukastor fsck`, then `fukastor fsck --repair`".into(),
            StoreError::NotFound(_) => "list images with `fukastor images`".into(),
            StoreError::BadName(..) => {
                "use lowercase letters, digits, '.', '_', '-' and '/', with an optional :TAG".into()
            }
            StoreError::Ambiguous(..) => "give more characters of the ID, or a name".into(),
            StoreError::Filter(e) => e.hint(),
        }
    }
}

/// Shorthand for results in this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// An open store. Holds the store lock for as long as it lives.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: lock::StoreLock,
}

impl Store {
    /// The default store location: `/var/lib/fukastor` for root,
    /// `$XDG_DATA_HOME/fukastor` (or `~/.local/share/fukastor`) otherwise.
    pub fn default_root() -> PathBuf {
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/fukastor");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("fukastor");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/fukastor")
    }

    /// Whether a store was ever made at `root`: false only when its format
    /// file is not there (an error finding out, such as a directory that
    /// cannot be searched, is left for [`Store::open`] to report).
    pub fn exists(root: &Path) -> bool {
        root.join("fukastor/format").try_exists().unwrap_or(true)
    }

    /// For a command that needs image `image` from the store at `root`,
    /// before it makes anything: where no store was ever made, the image
    /// is not found there ([`StoreError::NotFound`], FK0110).
    pub fn require_for_image(root: &Path, image: &str) -> Result<()> {
        if Self::exists(root) {
            Ok(())
        } else {
            Err(StoreError::NotFound(image.to_string()))
        }
    }

    /// [`Store::open`] after [`Store::require_for_image`]: nothing is
    /// created where there was no store.
    pub fn open_for_image(root: &Path, mode: LockMode, image: &str) -> Result<Store> {
        Self::require_for_image(root, image)?;
        Self::open(root, mode)
    }

    /// Opens the store at `root`, creating it when missing, and takes the lock
    /// in `mode`. [`Store::root`] is then the canonical path.
    pub fn open(root: &Path, mode: LockMode) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: root.to_path_buf(),
            source,
        };
        if !root.join("fukastor/format").exists() {
            Self::init(root).map_err(open_err)?;
        }
        let found = fs::read_to_string(root.join("fukastor/format")).map_err(open_err)?;
        if found.trim() != FORMAT_VERSION.to_string() {
            return Err(StoreError::Format {
                path: root.to_path_buf(),
                found: found.trim().to_string(),
            });
        }
        let lock = lock::StoreLock::take(&root.join("fukastor/lock"), mode)?;
        // Absolute and canonical: mount sources name the store by it
        // (`composefs:IMAGE@ROOT`), and whoever reads them compares.
        let root = fs::canonicalize(root).map_err(open_err)?;
        Ok(Store { root, _lock: lock })
    }

    /// Creates the directory skeleton. Safe to run concurrently: every step
    /// tolerates a step already done, and the format file, written last and
    /// atomically, marks the store as complete.
    fn init(root: &Path) -> io::Result<()> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o755);
        b.create(root)?;
        for d in [
            "objects",
            "images/refs",
            "fukastor/records",
            "fukastor/staging",
            "fukastor/cache",
        ] {
            b.create(root.join(d))?;
        }
        for i in 0..=255u8 {
            b.create(root.join(format!("objects/{i:02x}")))?;
        }
        let meta =
            composefs::repository::RepoMetadata::new(composefs::fsverity::Algorithm::for_hash::<
                ObjectId,
            >());
        let meta = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
        write_atomic(&root.join("meta.json"), &meta)?;
        write_atomic(&root.join("FORMAT.md"), FORMAT_DOC.as_bytes())?;
        write_atomic(
            &root.join("fukastor/format"),
            format!("{FORMAT_VERSION}\n").as_bytes(),
        )?;
        Ok(())
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of an object, whether or not it exists.
    pub fn object_path(&self, id: &ObjectId) -> PathBuf {
        self.root.join("objects").join(id.to_object_pathname())
    }

    /// The objects directory (the overlayfs data-only lower).
    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// True when the object is present.
    pub fn has_object(&self, id: &ObjectId) -> bool {
        self.object_path(id).exists()
    }

    /// Reads a whole object.
    pub fn read_object(&self, id: &ObjectId) -> Result<Vec<u8>> {
        fs::read(self.object_path(id)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Damaged(format!("object {} is missing", id.to_hex()))
            } else {
                StoreError::Io {
                    context: format!("reading object {}", id.to_hex()),
                    source: e,
                }
            }
        })
    }

    /// Opens an object for reading.
    pub fn open_object(&self, id: &ObjectId) -> Result<fs::File> {
        fs::File::open(self.object_path(id)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Damaged(format!("object {} is missing", id.to_hex()))
            } else {
                StoreError::Io {
                    context: format!("opening object {}", id.to_hex()),
                    source: e,
                }
            }
        })
    }

    /// Starts a private staging area for one import.
    pub fn staging(&self) -> Result<Staging<'_>> {
        Staging::new(self, self.plain_objects())
    }

    /// Starts a staging area that publishes into `target` (a chain's
    /// objects, encoding each object on the way in).
    pub fn staging_into(&self, target: Objects) -> Result<Staging<'_>> {
        Staging::new(self, target)
    }

    /// Flushes everything written to the store's filesystem.
    pub fn sync(&self) -> Result<()> {
        let dir = fs::File::open(&self.root).map_err(io_err("opening the store root"))?;
        rustix::fs::syncfs(&dir).map_err(|e| StoreError::Io {
            context: "syncfs on the store".into(),
            source: e.into(),
        })
    }

    /// Writes an image's EROFS (already an object), its `images/<id>` link
    /// and record, and then, durably, its name. `name` may be `None`.
    pub fn publish_image(
        &self,
        id: &ObjectId,
        record: &ImageRecord,
        name: Option<&ImageName>,
    ) -> Result<()> {
        // The record before the link: an image link always has its record.
        record.write(&self.root, id)?;
        let (link, target) = match &record.filter {
            None => (
                self.root.join("images").join(id.to_hex()),
                PathBuf::from("../objects").join(id.to_object_pathname()),
            ),
            Some(f) => {
                let erofs = ObjectId::from_hex(&f.erofs).map_err(|_| {
                    StoreError::Damaged("a filtered record without its EROFS".into())
                })?;
                (
                    self.filtered_link(id),
                    PathBuf::from("../chains")
                        .join(&f.chain_digest)
                        .join("objects")
                        .join(erofs.to_object_pathname()),
                )
            }
        };
        symlink_atomic(&target, &link).map_err(io_err("writing the image link"))?;
        self.sync()?;
        crate::failpoint("pull:image-written");
        if let Some(name) = name {
            self.set_ref(name, id)?;
        }
        Ok(())
    }

    /// Points `name` at image `id`, replacing any previous target atomically.
    pub fn set_ref(&self, name: &ImageName, id: &ObjectId) -> Result<()> {
        let path = self.ref_path(name);
        let parent = path.parent().expect("refs have a parent");
        fs::create_dir_all(parent).map_err(io_err("creating the refs directory"))?;
        let depth = name.as_str().matches('/').count() + 2;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        if self.is_filtered(id) {
            target.push("fukastor/filters/images");
        } else {
            target.push("images");
        }
        target.push(id.to_hex());
        symlink_atomic(&target, &path).map_err(io_err("writing the name ref"))?;
        fsync_dir(parent).map_err(io_err("syncing the refs directory"))
    }

    /// Removes a name. Returns the image it pointed at.
    pub fn remove_ref(&self, name: &ImageName) -> Result<ObjectId> {
        let id = self
            .lookup_ref(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let path = self.ref_path(name);
        fs::remove_file(&path).map_err(io_err("removing the name ref"))?;
        // Drop now-empty repository directories below images/refs.
        let refs = self.root.join("images/refs");
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == refs || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        if let Some(p) = path.parent() {
            let _ = fsync_dir(p);
        }
        Ok(id)
    }

    fn ref_path(&self, name: &ImageName) -> PathBuf {
        self.root.join("images/refs").join(name.as_str())
    }

    /// The image a name points at, if the name exists.
    pub fn lookup_ref(&self, name: &ImageName) -> Result<Option<ObjectId>> {
        match fs::read_link(self.ref_path(name)) {
            Ok(t) => parse_image_link(&t).map(Some).ok_or_else(|| {
                StoreError::Damaged(format!("ref {name} points at {}", t.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Err(StoreError::Damaged(format!("ref {name} is not a symlink")))
            }
            Err(e) => Err(StoreError::Io {
                context: format!("reading ref {name}"),
                source: e,
            }),
        }
    }

    /// Every name and the image it points at, sorted by name.
    pub fn refs(&self) -> Result<Vec<(ImageName, ObjectId)>> {
        let base = self.root.join("images/refs");
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io_err("listing image names"))? {
                let entry = entry.map_err(io_err("listing image names"))?;
                let ft = entry.file_type().map_err(io_err("listing image names"))?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_symlink() {
                    let rel = path.strip_prefix(&base).expect("below base");
                    let Some(name) = rel.to_str().and_then(|s| ImageName::parse(s).ok()) else {
                        continue;
                    };
                    if let Some(id) = fs::read_link(&path).ok().and_then(|t| parse_image_link(&t)) {
                        out.push((name, id));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(out)
    }

    /// Resolves what a user typed: a name (`:latest` implied), or a unique
    /// prefix (4 hex digits or more) of an image ID.
    pub fn resolve(&self, spec: &str) -> Result<(ObjectId, Option<ImageName>)> {
        if let Ok(name) = ImageName::parse(spec)
            && let Some(id) = self.lookup_ref(&name)?
        {
            return Ok((id, Some(name)));
        }
        let prefix = spec.strip_prefix("sha256:").unwrap_or(spec);
        if prefix.len() >= 4 && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let prefix = prefix.to_ascii_lowercase();
            let mut found: Vec<ObjectId> = self
                .image_ids()?
                .into_iter()
                .filter(|id| id.to_hex().starts_with(&prefix))
                .collect();
            found.sort_by_key(|id| id.to_hex());
            found.dedup();
            return match found.len() {
                0 => Err(StoreError::NotFound(spec.to_string())),
                1 => Ok((found.remove(0), None)),
                n => Err(StoreError::Ambiguous(spec.to_string(), n)),
            };
        }
        // Neither a name nor an ID: say which rule a bad name breaks.
        ImageName::parse(spec)?;
        Err(StoreError::NotFound(spec.to_string()))
    }

    /// Every image that has an `images/<id>` link, then every filtered
    /// image (`fukastor/filters/images/<id>`).
    pub fn image_ids(&self) -> Result<Vec<ObjectId>> {
        let mut out = Vec::new();
        for dir in [self.root.join("images"), self.filters_dir().join("images")] {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing images")(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("listing images"))?;
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| ObjectId::from_hex(s).ok())
                {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Reads an image's record.
    pub fn record(&self, id: &ObjectId) -> Result<ImageRecord> {
        ImageRecord::read(&self.root, id)
    }

    /// Replaces an image's record (after a tag or rmi).
    pub fn write_record(&self, id: &ObjectId, record: &ImageRecord) -> Result<()> {
        record.write(&self.root, id)
    }

    /// Reads an image's EROFS bytes (decoded, for a filtered image).
    pub fn image_bytes(&self, id: &ObjectId) -> Result<Vec<u8>> {
        if self.is_filtered(id) {
            return self.filtered_image_bytes(id);
        }
        fs::read(self.root.join("images").join(id.to_hex())).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Damaged(format!("image {} is missing its EROFS image", id.to_hex()))
            } else {
                StoreError::Io {
                    context: "reading an image".into(),
                    source: e,
                }
            }
        })
    }

    /// Loads an image's tree back from its EROFS image.
    pub fn image_tree(&self, id: &ObjectId) -> Result<Tree> {
        tree_of(id, &self.image_bytes(id)?)
    }

    /// Removes an image whose last name was removed: its link and record.
    /// The objects stay until `gc`.
    pub fn forget_image(&self, id: &ObjectId) -> Result<()> {
        let hex = id.to_hex();
        for p in [
            self.root.join("images").join(&hex),
            self.filtered_link(id),
            self.root
                .join("fukastor/records")
                .join(format!("{hex}.json")),
        ] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing an image")(e)),
            }
        }
        Ok(())
    }

    /// Checks the store; images in `keep` (those containers and mounts
    /// use, which [`Store::gc`] keeps) are not garbage without a name. See
    /// [`fsck`].
    pub fn fsck(&self, repair: bool, keep: &[ObjectId]) -> Result<FsckReport> {
        fsck::run(self, repair, keep)
    }

    /// Collects garbage, keeping the images in `keep` (mounted ones) as if
    /// they had a name. See [`gc`].
    pub fn gc(&self, dry_run: bool, keep: &[ObjectId]) -> Result<GcReport> {
        gc::run(self, dry_run, keep)
    }

    /// Bytes the store's files take on disk (allocated blocks).
    pub fn disk_usage(&self) -> Result<u64> {
        let mut total = 0u64;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io_err("measuring the store"))? {
                let entry = entry.map_err(io_err("measuring the store"))?;
                let md = entry.metadata().map_err(io_err("measuring the store"))?;
                total += md.blocks() * 512;
                if md.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(total)
    }
}

/// `../objects/XX/rest` or `../../images/<hex>` → the ID.
fn parse_image_link(target: &Path) -> Option<ObjectId> {
    let name = target.file_name()?.to_str()?;
    if let Ok(id) = ObjectId::from_hex(name) {
        return Some(id);
    }
    let dir = target.parent()?.file_name()?.to_str()?;
    ObjectId::from_hex(format!("{dir}{name}")).ok()
}

/// The tree of image `id` from its (plain) EROFS bytes.
pub(crate) fn tree_of(id: &ObjectId, erofs: &[u8]) -> Result<Tree> {
    composefs::erofs::reader::erofs_to_filesystem::<ObjectId>(erofs)
        .map_err(|e| StoreError::Damaged(format!("image {} cannot be read: {e}", id.to_hex())))
}

/// Writes `data` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace_file(path, data, true)
}

/// Like [`write_atomic`] without the fsync: while the system runs, readers
/// see the old content or the new, never a part; after a crash of the
/// system the file may be empty or missing. For files that describe what
/// runs now (mounts), which a reboot makes stale anyway.
pub(crate) fn write_atomic_volatile(path: &Path, data: &[u8]) -> io::Result<()> {
    replace_file(path, data, false)
}

fn replace_file(path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    use std::io::Write;
    let tmp = tmp_sibling(path);
    let mut f = fs::File::create(&tmp)?;
    // A failed write (a full disk) leaves no temporary file behind.
    (|| {
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)
    })()
    .inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Creates or replaces a symlink atomically.
pub(crate) fn symlink_atomic(target: &Path, path: &Path) -> io::Result<()> {
    let tmp = tmp_sibling(path);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn tmp_sibling(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = std::ffi::OsString::from(".tmp-");
    name.push(format!("{}-{n}-", std::process::id()));
    name.push(path.file_name().unwrap_or(OsStr::new("x")));
    path.with_file_name(name)
}

/// The object an entry of an objects directory's fan-out directory `fanout`
/// (`objects/XX/`, or a chain's) names: `None` for anything else.
pub(crate) fn object_id_of(fanout: u8, name: &OsStr) -> Option<ObjectId> {
    name.to_str()
        .and_then(|n| ObjectId::from_hex(format!("{fanout:02x}{n}")).ok())
}

/// True for a temporary name made by [`tmp_sibling`].
pub(crate) fn is_tmp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".tmp-")
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
