//! `export IMAGE oci:DIR[:TAG]`: write an image back as an OCI image layout.
//!
//! # What is written
//!
//! The destination is spelled like a pull source, `oci:DIR[:TAG]` (parsed by
//! [`Source::parse`]; any other transport is refused with FK0230). `TAG`
//! defaults to `latest`. The image becomes **one** layer: the flattened tree
//! of the image (its composefs tree, as `dump` shows it), as a gzip
//! compressed tar. The layout gets:
//!
//! - `blobs/sha256/<hex>`: that layer, the image config and the manifest;
//! - `oci-layout` (`{"imageLayoutVersion":"1.0.0"}`) in a new layout;
//! - `index.json`, with a manifest descriptor annotated
//!   `org.opencontainers.image.ref.name = TAG` (and the image's platform).
//!
//! `DIR` is created (with its parents) when missing. When it already holds
//! an OCI layout (it has an `oci-layout` file), the image is added to it: an
//! index entry with the same ref name is replaced, every other entry and
//! blob is kept (blobs the replaced entry alone used stay behind, as they do
//! with skopeo). A directory that exists and is neither empty nor a layout is
//! refused, and so is a layout whose `index.json` cannot be parsed: export
//! never overwrites what it does not understand. Concurrent exports to one
//! directory are serialized with an exclusive `flock` on the directory.
//!
//! # The layer
//!
//! The tar is written by walking the tree depth first, each directory's
//! entries in byte order, parents before children; the root comes first as
//! `./`, so its mode, owner, mtime and xattrs survive. Entries are POSIX
//! ustar headers, plus a PAX extended header (`x`) before an entry when it
//! needs one:
//!
//! - `path` / `linkpath` for names and link targets longer than the 100
//!   bytes of the header fields; names are written as their raw bytes, so
//!   names that are not UTF-8 survive (shorter names go in the header as is);
//! - `mtime` as `SECONDS.NANOSECONDS` when the nanoseconds are not zero or
//!   the time does not fit the header (before 1970, after 2242);
//! - `uid`, `gid`, `size` when they do not fit the octal header fields (the
//!   header then also carries the GNU base-256 form);
//! - `SCHILY.xattr.NAME` for each xattr, values byte for byte.
//!
//! Directories, regular files, symlinks, character and block devices and
//! fifos are written with their permission bits (setuid, setgid and sticky
//! included), uid, gid and mtime. The second and later names of a file with
//! several links become hardlink entries (`1`) naming the first one in
//! walking order, which is always earlier in the stream. Sockets cannot be
//! stored in a tar: they are left out with a warning. A sparse file is
//! written as zeros.
//!
//! Small files come from the tree (inline data); others are streamed from
//! their store object, whose length is checked against the tree (a shorter or
//! longer object is FK0104, the store is damaged).
//!
//! The tar is hashed (the `diff_id`) and gzip compressed as it is produced;
//! the compressed stream is hashed (the blob digest) and written to a
//! temporary file in `DIR`, then renamed to `blobs/sha256/<hex>`. Memory use
//! does not depend on the image size. The output is deterministic: the same
//! image exported twice gives the same blobs and manifest digest (the gzip
//! header carries no time or name).
//!
//! # Config and manifest
//!
//! The config is the image's OCI config as pulled (its record), with
//! `rootfs` replaced by the one new `diff_id` and `history` replaced by one
//! entry (`created_by: "fukastor export"`, `empty_layer: false`, `created`
//! copied from the config when it has one). `architecture` and `os` are
//! filled in when missing. The manifest is an OCI image manifest
//! (`application/vnd.oci.image.manifest.v1+json`, config
//! `application/vnd.oci.image.config.v1+json`, layer
//! `application/vnd.oci.image.layer.v1.tar+gzip`).
//!
//! # Crash safety
//!
//! A new layout gets its `oci-layout` file first. Blobs are written next
//! (temporary file, `fsync`, rename), then the blob directory is synced, and
//! `index.json` comes last, through a temporary file and a rename: an
//! interrupted export never leaves an `index.json` that names a missing
//! blob. It may leave a `.fukastor-tmp-*` file in `DIR` and unreferenced
//! blobs; the directory stays a layout (an `oci-layout` without an
//! `index.json` counts as a layout with no images), so exporting again works.
//!
//! # Errors
//!
//! Everything that goes wrong at the destination is [`OciError::Export`]
//! (FK0230); reading the store fails with the store's own errors.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use composefs::fsverity::FsVerityHashValue;
use composefs::generic_tree::{LeafContent, LeafId, Stat};
use composefs::tree::{Directory, Inode, RegularFile};
use oci_spec::image::{Descriptor, Digest as OciDigest, ImageManifestBuilder, MediaType};
use sha2::{Digest, Sha256};

use super::{OciError, Source};
use crate::store::{ObjectId, Objects, Store, StoreError, Tree};

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    /// The layout directory.
    pub path: PathBuf,
    /// The tag written.
    pub tag: String,
    /// The manifest digest.
    pub manifest_digest: String,
    /// Compressed size of the layer.
    pub layer_bytes: u64,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Prefix of temporary files in the layout directory.
const TMP_PREFIX: &str = ".fukastor-tmp-";
/// Copy buffer for file contents.
const COPY_BUF: usize = 256 << 10;

/// Exports image `id` to `dest` (`oci:DIR[:TAG]`), with the config of
/// `name` (the name it was asked for by, if any).
pub fn export(
    store: &Store,
    id: &ObjectId,
    name: Option<&str>,
    dest: &str,
) -> Result<ExportReport, OciError> {
    let (dir, tag) = parse_dest(dest)?;
    // Read everything from the store before touching the destination.
    let record = store.record(id)?;
    let tree = store.image_tree(id)?;

    let layout = Layout::open(&dir)?;
    let layer = write_layer(&store.objects_of(id)?, &tree, &layout)?;

    let config = image_config(record.config_for(name), &layer.diff_id, &id.to_hex());
    let config_bytes = serde_json::to_vec(&config).expect("JSON values serialize");
    let config_digest = layout.put_bytes(&config_bytes)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            oci_digest(&config_digest),
        ))
        .layers(vec![Descriptor::new(
            MediaType::ImageLayerGzip,
            layer.size,
            oci_digest(&layer.digest),
        )])
        .build()
        .map_err(|e| OciError::Export {
            path: dir.display().to_string(),
            why: format!("building the manifest: {e}"),
        })?;
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifests serialize");
    let manifest_digest = layout.put_bytes(&manifest_bytes)?;
    layout.sync_blobs()?;
    crate::failpoint("export:blobs-written");

    let mut entry = serde_json::json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": manifest_digest,
        "size": manifest_bytes.len(),
        "annotations": {REF_NAME: tag},
    });
    if let Some(platform) = platform(&config) {
        entry["platform"] = platform;
    }
    layout.write_index(&tag, entry)?;

    Ok(ExportReport {
        path: dir,
        tag,
        manifest_digest,
        layer_bytes: layer.size,
    })
}

/// `oci:DIR[:TAG]` → (DIR, TAG).
fn parse_dest(dest: &str) -> Result<(PathBuf, String), OciError> {
    let refuse = |why: String| OciError::Export {
        path: dest.to_string(),
        why,
    };
    match Source::parse(dest) {
        Ok(Source::OciDir(dir, tag)) => {
            let tag = tag.unwrap_or_else(|| "latest".to_string());
            let valid = tag.len() <= 255
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:@/+".contains(&b));
            if !valid {
                return Err(refuse(format!(
                    "{tag:?} is not a valid tag (use letters, digits and . _ - : @ / +)"
                )));
            }
            Ok((dir, tag))
        }
        Ok(_) => Err(refuse(
            "export writes only OCI image layouts: spell the destination oci:DIR[:TAG]".into(),
        )),
        Err(_) => Err(refuse(
            "the destination must be spelled oci:DIR[:TAG]".into(),
        )),
    }
}

fn oci_digest(d: &str) -> OciDigest {
    OciDigest::from_str(d).expect("sha256 digests we computed parse")
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The exported image's config: the original one with one layer and one
/// history entry.
fn image_config(original: &serde_json::Value, diff_id: &str, id_hex: &str) -> serde_json::Value {
    let mut cfg = match original {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if !cfg.get("architecture").is_some_and(|v| v.is_string()) {
        cfg.insert("architecture".into(), host_arch().into());
    }
    if !cfg.get("os").is_some_and(|v| v.is_string()) {
        cfg.insert("os".into(), "linux".into());
    }
    cfg.insert(
        "rootfs".into(),
        serde_json::json!({"type": "layers", "diff_ids": [diff_id]}),
    );
    let mut history = serde_json::json!({
        "created_by": "fukastor export",
        "comment": format!("flattened from fukastor image {id_hex}"),
        "empty_layer": false,
    });
    if let Some(created) = cfg.get("created").filter(|c| c.is_string()) {
        history["created"] = created.clone();
    }
    cfg.insert("history".into(), serde_json::json!([history]));
    serde_json::Value::Object(cfg)
}

/// The index descriptor's platform, from the config.
fn platform(config: &serde_json::Value) -> Option<serde_json::Value> {
    let arch = config.get("architecture")?.as_str()?;
    let os = config.get("os")?.as_str()?;
    let mut p = serde_json::json!({"architecture": arch, "os": os});
    if let Some(v) = config.get("variant").and_then(|v| v.as_str()) {
        p["variant"] = v.into();
    }
    Some(p)
}

// ------------------------------------------------------------- layout ----

/// An OCI layout directory being written, locked for this process.
struct Layout {
    dir: PathBuf,
    blobs: PathBuf,
    /// The existing `index.json`, if any.
    index: Option<serde_json::Value>,
    /// Holds the `flock` on the directory.
    _lock: File,
}

fn xerr(path: &Path, what: &str) -> impl FnOnce(io::Error) -> OciError {
    let path = path.display().to_string();
    let what = what.to_string();
    move |e| OciError::Export {
        path,
        why: format!("{what}: {e}"),
    }
}

/// A temporary file in the layout directory, removed unless persisted.
struct TmpFile {
    path: PathBuf,
    keep: bool,
}

impl TmpFile {
    fn new(dir: &Path) -> TmpFile {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TmpFile {
            path: dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id())),
            keep: false,
        }
    }

    fn create(&self) -> Result<File, OciError> {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
            .map_err(xerr(&self.path, "creating a temporary file"))
    }

    fn persist(mut self, to: &Path) -> Result<(), OciError> {
        fs::rename(&self.path, to).map_err(xerr(to, "renaming into place"))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Layout {
    /// Creates `dir` or checks that it is empty or a layout; locks it.
    fn open(dir: &Path) -> Result<Layout, OciError> {
        let refuse = |why: &str| OciError::Export {
            path: dir.display().to_string(),
            why: why.to_string(),
        };
        match fs::symlink_metadata(dir) {
            Ok(_) => {
                if !dir.is_dir() {
                    return Err(refuse("it exists and is not a directory"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(xerr(dir, "creating the directory"))?;
            }
            Err(e) => return Err(xerr(dir, "reading the directory")(e)),
        }
        let lock = File::open(dir).map_err(xerr(dir, "opening the directory"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| xerr(dir, "locking the directory")(e.into()))?;

        let is_layout = dir.join("oci-layout").is_file();
        let mut index = None;
        if is_layout {
            let layout = fs::read(dir.join("oci-layout"))
                .map_err(xerr(&dir.join("oci-layout"), "reading"))?;
            let version = serde_json::from_slice::<serde_json::Value>(&layout)
                .ok()
                .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_string));
            if version.as_deref().is_none_or(|v| !v.starts_with("1.")) {
                return Err(refuse(
                    "its oci-layout file does not name image layout version 1.x",
                ));
            }
            match fs::read(dir.join("index.json")) {
                Ok(data) => {
                    let v: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
                        refuse(&format!(
                            "its index.json is not valid JSON ({e}); not touching it"
                        ))
                    })?;
                    if !v.get("manifests").is_some_and(|m| m.is_array()) {
                        return Err(refuse(
                            "its index.json has no manifests list; not touching it",
                        ));
                    }
                    index = Some(v);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(xerr(&dir.join("index.json"), "reading")(e)),
            }
        } else {
            let mut entries = fs::read_dir(dir).map_err(xerr(dir, "listing the directory"))?;
            let foreign = entries.any(|e| {
                e.map_or(true, |e| {
                    !e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes())
                })
            });
            if foreign {
                return Err(refuse(
                    "it is neither empty nor an OCI image layout (no oci-layout file)",
                ));
            }
        }
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(xerr(&blobs, "creating the blob directory"))?;
        let layout = Layout {
            dir: dir.to_path_buf(),
            blobs,
            index,
            _lock: lock,
        };
        if !is_layout {
            // First, so that an interrupted export leaves a directory the
            // next export recognizes as a (not yet indexed) layout.
            layout.write_atomic(&dir.join("oci-layout"), OCI_LAYOUT)?;
        }
        Ok(layout)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs
            .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
    }

    /// Writes a small blob; returns its digest.
    fn put_bytes(&self, data: &[u8]) -> Result<String, OciError> {
        let digest = sha256_digest(data);
        let path = self.blob_path(&digest);
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == data.len() as u64) {
            return Ok(digest);
        }
        let tmp = TmpFile::new(&self.dir);
        let mut f = tmp.create()?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(xerr(&tmp.path, "writing a blob"))?;
        drop(f);
        tmp.persist(&path)?;
        Ok(digest)
    }

    fn sync_blobs(&self) -> Result<(), OciError> {
        for d in [&self.blobs, &self.dir.join("blobs")] {
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(xerr(d, "syncing the blob directory"))?;
        }
        Ok(())
    }

    /// Writes `index.json` with `entry` under
    /// `tag` (replacing an entry with the same ref name).
    fn write_index(&self, tag: &str, entry: serde_json::Value) -> Result<(), OciError> {
        let mut index = self.index.clone().unwrap_or_else(|| {
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA_TYPE,
                "manifests": [],
            })
        });
        let manifests = index["manifests"]
            .as_array_mut()
            .expect("checked when the layout was opened");
        manifests.retain(|d| d["annotations"][REF_NAME].as_str() != Some(tag));
        manifests.push(entry);
        let data = serde_json::to_vec_pretty(&index).expect("JSON values serialize");
        self.write_atomic(&self.dir.join("index.json"), &data)?;
        File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(xerr(&self.dir, "syncing the directory"))
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), OciError> {
        let tmp = TmpFile::new(&self.dir);
        let mut f = tmp.create()?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(xerr(&tmp.path, "writing"))?;
        drop(f);
        tmp.persist(path)
    }
}

// -------------------------------------------------------------- layer ----

/// A writer that hashes and counts what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The written layer blob.
struct LayerBlob {
    digest: String,
    diff_id: String,
    size: u64,
}

type LayerSink = HashWriter<flate2::write::GzEncoder<HashWriter<BufWriter<File>>>>;

fn write_layer(objects: &Objects, tree: &Tree, layout: &Layout) -> Result<LayerBlob, OciError> {
    let tmp = TmpFile::new(&layout.dir);
    let file = tmp.create()?;
    let sink: LayerSink = HashWriter::new(flate2::write::GzEncoder::new(
        HashWriter::new(BufWriter::with_capacity(COPY_BUF, file)),
        flate2::Compression::default(),
    ));
    let mut tar = TarOut {
        out: sink,
        objects,
        tree,
        dest: tmp.path.display().to_string(),
        buf: vec![0; COPY_BUF],
        nlinks: tree.nlinks(),
        first_name: HashMap::new(),
    };
    tar.write_tree()?;
    let werr = xerr(&tmp.path, "writing the layer");
    let (gz, diff_id, _) = tar.out.finish();
    let gz_out = gz.finish().map_err(werr)?;
    let (buffered, digest, size) = gz_out.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| xerr(&tmp.path, "writing the layer")(e.into_error()))?;
    file.sync_all()
        .map_err(xerr(&tmp.path, "syncing the layer"))?;
    drop(file);
    tmp.persist(&layout.blob_path(&digest))?;
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
    })
}

/// The tar writer: ustar headers with PAX extended headers where needed.
struct TarOut<'a> {
    out: LayerSink,
    objects: &'a Objects,
    tree: &'a Tree,
    /// Shown in write errors.
    dest: String,
    buf: Vec<u8>,
    nlinks: Vec<u32>,
    /// First path of each leaf with several names.
    first_name: HashMap<LeafId, Vec<u8>>,
}

/// What one tar entry is.
enum Kind<'k> {
    Dir,
    File(u64),
    Symlink(&'k [u8]),
    HardLink(Vec<u8>),
    Char(u64),
    Block(u64),
    Fifo,
}

/// Appends one PAX record (`"LEN KEY=VALUE\n"`, LEN counting itself).
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() != base.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `SECONDS[.NANOSECONDS]` as PAX writes times (negative times count down).
fn pax_time(sec: i64, nsec: u32) -> String {
    let total = i128::from(sec) * 1_000_000_000 + i128::from(nsec);
    let sign = if total < 0 { "-" } else { "" };
    let abs = total.unsigned_abs();
    let (s, ns) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if ns == 0 {
        format!("{sign}{s}")
    } else {
        format!("{sign}{s}.{ns:09}")
    }
}

/// Largest value of an 8-byte octal header field (uid, gid, mode).
const MAX_OCTAL_8: u64 = 0o7777777;
/// Largest value of a 12-byte octal header field (size, mtime).
const MAX_OCTAL_12: u64 = 0o77777777777;

impl TarOut<'_> {
    fn werr(&self) -> impl FnOnce(io::Error) -> OciError + use<> {
        let path = self.dest.clone();
        move |e| OciError::Export {
            path,
            why: format!("writing the layer: {e}"),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), OciError> {
        self.out.write_all(data).map_err(self.werr())
    }

    /// Zero padding after `len` bytes of entry data.
    fn pad(&mut self, len: u64) -> Result<(), OciError> {
        let rem = (len % 512) as usize;
        if rem != 0 {
            self.write(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    fn write_tree(&mut self) -> Result<(), OciError> {
        let tree = self.tree;
        self.entry(b"./", &tree.root.stat, Kind::Dir)?;
        type Entries<'t> = Box<dyn Iterator<Item = (&'t OsStr, &'t Inode<ObjectId>)> + 't>;
        let mut stack: Vec<(Entries<'_>, usize)> = vec![(Box::new(tree.root.sorted_entries()), 0)];
        let mut path: Vec<u8> = Vec::new();
        while let Some((iter, base)) = stack.last_mut() {
            let base = *base;
            let Some((name, inode)) = iter.next() else {
                stack.pop();
                continue;
            };
            path.truncate(base);
            path.extend_from_slice(name.as_bytes());
            match inode {
                Inode::Directory(d) => {
                    let d: &Directory<ObjectId> = d;
                    path.push(b'/');
                    self.entry(&path, &d.stat, Kind::Dir)?;
                    stack.push((Box::new(d.sorted_entries()), path.len()));
                }
                Inode::Leaf(id, _) => self.leaf(*id, &path)?,
            }
        }
        // End of archive: two zero blocks.
        self.write(&[0u8; 1024])
    }

    fn leaf(&mut self, id: LeafId, path: &[u8]) -> Result<(), OciError> {
        let tree = self.tree;
        let leaf = tree.leaf(id);
        if let Some(first) = self.first_name.get(&id) {
            let first = first.clone();
            return self.entry(path, &leaf.stat, Kind::HardLink(first));
        }
        let kind = match &leaf.content {
            LeafContent::Regular(f) => Kind::File(f.file_size()),
            LeafContent::Symlink(t) => Kind::Symlink(t.as_bytes()),
            LeafContent::CharacterDevice(d) => Kind::Char(*d),
            LeafContent::BlockDevice(d) => Kind::Block(*d),
            LeafContent::Fifo => Kind::Fifo,
            LeafContent::Socket => {
                tracing::warn!(
                    "{}: sockets cannot be stored in a tar layer; left out",
                    String::from_utf8_lossy(path)
                );
                return Ok(());
            }
        };
        self.entry(path, &leaf.stat, kind)?;
        if let LeafContent::Regular(f) = &leaf.content {
            self.file_data(f)?;
        }
        if self.nlinks.get(id.0).copied().unwrap_or(1) > 1 {
            self.first_name.insert(id, path.to_vec());
        }
        Ok(())
    }

    /// Writes a header (preceded by a PAX header when needed). Data, if
    /// any, follows from the caller.
    fn entry(&mut self, path: &[u8], st: &Stat, kind: Kind<'_>) -> Result<(), OciError> {
        let mut pax = Vec::new();
        let mut h = tar::Header::new_ustar();
        let (ty, size, link): (tar::EntryType, u64, Option<&[u8]>) = match &kind {
            Kind::Dir => (tar::EntryType::Directory, 0, None),
            Kind::File(n) => (tar::EntryType::Regular, *n, None),
            Kind::Symlink(t) => (tar::EntryType::Symlink, 0, Some(*t)),
            Kind::HardLink(t) => (tar::EntryType::Link, 0, Some(t.as_slice())),
            Kind::Char(_) => (tar::EntryType::Char, 0, None),
            Kind::Block(_) => (tar::EntryType::Block, 0, None),
            Kind::Fifo => (tar::EntryType::Fifo, 0, None),
        };
        {
            let u = h.as_ustar_mut().expect("a ustar header");
            let n = path.len().min(u.name.len());
            u.name[..n].copy_from_slice(&path[..n]);
            if path.len() > u.name.len() {
                pax_record(&mut pax, b"path", path);
            }
            if let Some(link) = link {
                let n = link.len().min(u.linkname.len());
                u.linkname[..n].copy_from_slice(&link[..n]);
                if link.len() > u.linkname.len() {
                    pax_record(&mut pax, b"linkpath", link);
                }
            }
        }
        h.set_entry_type(ty);
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(u64::from(st.st_uid));
        h.set_gid(u64::from(st.st_gid));
        if u64::from(st.st_uid) > MAX_OCTAL_8 {
            pax_record(&mut pax, b"uid", st.st_uid.to_string().as_bytes());
        }
        if u64::from(st.st_gid) > MAX_OCTAL_8 {
            pax_record(&mut pax, b"gid", st.st_gid.to_string().as_bytes());
        }
        h.set_size(size);
        if size > MAX_OCTAL_12 {
            pax_record(&mut pax, b"size", size.to_string().as_bytes());
        }
        let sec = st.st_mtim_sec;
        h.set_mtime(u64::try_from(sec).unwrap_or(0));
        if st.st_mtim_nsec != 0 || sec < 0 || sec as u64 > MAX_OCTAL_12 {
            pax_record(
                &mut pax,
                b"mtime",
                pax_time(sec, st.st_mtim_nsec).as_bytes(),
            );
        }
        if let Kind::Char(dev) | Kind::Block(dev) = kind {
            let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
            if u64::from(major) > MAX_OCTAL_8 || u64::from(minor) > MAX_OCTAL_8 {
                return Err(OciError::Export {
                    path: self.dest.clone(),
                    why: format!(
                        "{}: device number {major}:{minor} does not fit a tar header",
                        String::from_utf8_lossy(path)
                    ),
                });
            }
            h.set_device_major(major).expect("ustar has device fields");
            h.set_device_minor(minor).expect("ustar has device fields");
        }
        for (name, value) in &st.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name.as_bytes());
            pax_record(&mut pax, &key, value);
        }
        h.set_cksum();

        if !pax.is_empty() {
            let mut x = tar::Header::new_ustar();
            {
                let u = x.as_ustar_mut().expect("a ustar header");
                let name = b"././@PaxHeader";
                u.name[..name.len()].copy_from_slice(name);
            }
            x.set_entry_type(tar::EntryType::XHeader);
            x.set_mode(0o644);
            x.set_size(pax.len() as u64);
            x.set_mtime(0);
            x.set_cksum();
            self.write(x.as_bytes())?;
            self.write(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        self.write(h.as_bytes())
    }

    /// Writes a regular file's content and padding.
    fn file_data(&mut self, f: &RegularFile<ObjectId>) -> Result<(), OciError> {
        match f {
            RegularFile::Inline(data) => {
                self.write(data)?;
                self.pad(data.len() as u64)
            }
            RegularFile::Sparse(size) => {
                let zeros = vec![0u8; COPY_BUF];
                let mut left = *size;
                while left > 0 {
                    let n = left.min(COPY_BUF as u64) as usize;
                    self.write(&zeros[..n])?;
                    left -= n as u64;
                }
                self.pad(*size)
            }
            RegularFile::External(oid, size) | RegularFile::ExternalNoVerity(oid, size) => {
                let mut src = self.objects.reader(oid, *size)?;
                let read_err = |e: io::Error| {
                    OciError::Store(StoreError::Io {
                        context: format!("reading object {}", oid.to_hex()),
                        source: e,
                    })
                };
                let damaged = |got: &str| {
                    OciError::Store(StoreError::Damaged(format!(
                        "object {} has {got} bytes, the image says {size}",
                        oid.to_hex()
                    )))
                };
                let mut buf = std::mem::take(&mut self.buf);
                let mut left = *size;
                let result = (|| {
                    while left > 0 {
                        let want = left.min(buf.len() as u64) as usize;
                        let n = match src.read(&mut buf[..want]) {
                            Ok(0) => return Err(damaged(&(size - left).to_string())),
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(read_err(e)),
                        };
                        self.write(&buf[..n])?;
                        left -= n as u64;
                    }
                    match src.read(&mut buf[..1]) {
                        Ok(0) => Ok(()),
                        Ok(_) => Err(damaged("more than")),
                        Err(e) => Err(read_err(e)),
                    }
                })();
                self.buf = buf;
                result?;
                self.pad(*size)
            }
        }
    }
}
