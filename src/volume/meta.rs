//! Volume metadata files: `volumes/<name>.meta`, one per volume, holding
//! its geometry, its base, its stack of layer IDs and its snapshots' stacks.
//!
//! These files are the only references to layers: a layer is alive while a
//! metadata file names it. All changes go through the pool's lock.
//!
//! A file has two slots of equal size, each a header (magic, generation,
//! length, CRC-32C) and the JSON of one version; the valid slot with the
//! higher generation is the metadata. An update writes the next generation
//! into the *other* slot and syncs it (`fdatasync`), so the version in
//! force is never written over and a torn slot fails its CRC: after a
//! crash the file holds the old version or the new one. Overwriting
//! allocated blocks in place needs no new inode, block, rename or
//! directory sync (docs/volume-format.md says what this saves). A file is
//! made whole (temp file, `fdatasync`, rename, directory `fsync`) when the
//! volume is created and when a version outgrows its slot. Metadata of
//! older fukastor versions (`volumes/<name>.json`, plain JSON) is still
//! read, and replaced by a `.meta` file on its first update.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::format::{BLOCK_SIZE, FORMAT, FORMAT_FILTERED, le32, le64};
use super::{Result, VolumeError, io_err};
use crate::filter::ChainSpec;

/// The base of a volume: a file or block device read in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BaseMeta {
    /// Its path (absolute, or relative to the pool).
    pub path: PathBuf,
    /// Its length when the volume was created; reads past it are zeros.
    pub len: u64,
}

/// A snapshot: a name for a stack of sealed layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotMeta {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    pub layers: Vec<u64>,
}

/// One version of a volume's metadata (the JSON of a slot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VolumeMeta {
    /// 1, or 2 for a filtered volume.
    pub format: u32,
    pub size: u64,
    pub block_size: u32,
    pub base: Option<BaseMeta>,
    /// Layer IDs, bottom to top; the last one is the head, unless
    /// `headless`.
    pub layers: Vec<u64>,
    /// The stack is a snapshot's sealed layers and nothing more (a closed
    /// volume rolled back): the next open adds an empty head (`give_head`
    /// in `pool.rs`) before anything is read or written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    pub snapshots: Vec<SnapshotMeta>,
    /// The filter chain every block is encoded with (format 2 only);
    /// clones inherit it. Absent for an unfiltered volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<ChainSpec>,
}

impl VolumeMeta {
    /// Whether the volume's blocks go through a filter chain.
    pub fn filtered(&self) -> bool {
        self.filters.is_some()
    }

    /// The snapshot named `name`.
    pub fn snapshot(&self, name: &str) -> Option<&SnapshotMeta> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// Every layer this volume references, with repetitions.
    pub fn referenced(&self) -> impl Iterator<Item = u64> + '_ {
        self.layers
            .iter()
            .chain(self.snapshots.iter().flat_map(|s| &s.layers))
            .copied()
    }
}

/// What a volume is, as its metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeInfo {
    /// The volume's name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its block size in bytes.
    pub block_size: u32,
    /// The base file, if any, and its length.
    pub base: Option<(PathBuf, u64)>,
    /// Its layer IDs, bottom to top (the last one is the head, unless the
    /// volume was rolled back while closed and not opened since: then they
    /// are all the snapshot's).
    pub layers: Vec<u64>,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// The names of its filters, in encode order (empty: not filtered).
    pub filters: Vec<String>,
}

/// A snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The snapshot's name.
    pub name: String,
    /// When it was taken (Unix seconds).
    pub created: u64,
    /// The sealed layers it consists of, bottom to top.
    pub layers: Vec<u64>,
}

impl VolumeInfo {
    pub(crate) fn new(name: &str, m: &VolumeMeta) -> VolumeInfo {
        VolumeInfo {
            name: name.to_string(),
            size: m.size,
            block_size: m.block_size,
            base: m.base.as_ref().map(|b| (b.path.clone(), b.len)),
            layers: m.layers.clone(),
            snapshots: m.snapshots.iter().map(SnapshotInfo::new).collect(),
            filters: m
                .filters
                .iter()
                .flat_map(|c| c.filters.iter().map(|f| f.name.clone()))
                .collect(),
        }
    }
}

impl SnapshotInfo {
    pub(crate) fn new(s: &SnapshotMeta) -> SnapshotInfo {
        SnapshotInfo {
            name: s.name.clone(),
            created: s.created,
            layers: s.layers.clone(),
        }
    }
}

/// Checks a volume or snapshot name: it becomes part of a file name.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let bad = |why| Err(VolumeError::BadName(name.to_string(), why));
    if name.is_empty() || name.len() > 128 {
        return bad("it must have 1 to 128 characters");
    }
    if name.starts_with('.') {
        return bad("it must not start with '.'");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

pub(crate) const DIR: &str = "volumes";

/// Where the metadata of **ephemeral** volumes is kept (a `run --rm`
/// container's): written without any sync, and valid only in the boot that
/// wrote it, which its file name carries (`<name>@<boot ID>.meta`). A
/// later boot's listing reports such files as stale without reading them:
/// after a crash an unsynced file may hold anything.
pub(crate) const EPHEMERAL_DIR: &str = "volumes/ephemeral";

fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/{name}.meta"))
}

fn temp_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/{name}.meta.tmp"))
}

/// An ephemeral volume's metadata file in this boot, and its temp file;
/// `None` when the backend knows no boot ID (no volume is ephemeral then).
fn ephemeral_paths(backend: &dyn Backend, name: &str) -> Option<(PathBuf, PathBuf)> {
    let boot = backend.boot_id()?;
    let p = format!("{EPHEMERAL_DIR}/{}", super::boot_file(name, &boot, ".meta"));
    Some((PathBuf::from(&p), PathBuf::from(p + ".tmp")))
}

/// Which kind of metadata file a volume has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `volumes/<name>.meta`, synced.
    Durable,
    /// In [`EPHEMERAL_DIR`], never synced.
    Ephemeral,
    /// `volumes/<name>.json`, plain JSON of earlier versions.
    Legacy,
}

/// A volume's metadata file: where it is, its kind, and the open file.
type Located = (
    PathBuf,
    Kind,
    std::sync::Arc<dyn super::backend::BackendFile>,
);

/// Volume `name`'s metadata file, opened: `None` when it has none.
fn locate(backend: &dyn Backend, name: &str, writable: bool) -> Result<Option<Located>> {
    let mut candidates = vec![(path(name), Kind::Durable)];
    if let Some((p, _)) = ephemeral_paths(backend, name) {
        candidates.push((p, Kind::Ephemeral));
    }
    candidates.push((legacy_path(name), Kind::Legacy));
    for (p, kind) in candidates {
        if let Some(f) = open_if_exists(backend, &p, writable)? {
            return Ok(Some((p, kind, f)));
        }
    }
    Ok(None)
}

/// The metadata file of fukastor versions before the two-slot file.
fn legacy_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/{name}.json"))
}

/// A slot's header: [`SLOT_MAGIC`], the generation (u64), the JSON's
/// length (u32) and the CRC-32C of generation, length and JSON (u32), all
/// little-endian, then zeros to [`SLOT_HEADER`] bytes.
const SLOT_MAGIC: &[u8; 8] = b"FKVMETA1";
const SLOT_HEADER: usize = 32;
/// Slots are multiples of this (a reader accepts any multiple).
const SLOT_ALIGN: usize = 4096;
/// The most a metadata file may hold: a larger one is damage, not read.
const MAX_FILE: u64 = 64 << 20;

/// The slot size of a new file: a multiple of the page size too, so that
/// writing one slot never writes back a page of the other.
fn slot_align() -> usize {
    rustix::param::page_size().max(SLOT_ALIGN)
}

/// A valid slot: its index, generation and JSON.
struct Slot<'a> {
    index: usize,
    generation: u64,
    json: &'a [u8],
}

/// The valid slot with the highest generation in a two-slot file's bytes;
/// `None` if neither slot is valid. `Err(())`: not a two-slot file.
fn current_slot(bytes: &[u8]) -> std::result::Result<Option<Slot<'_>>, ()> {
    let size = bytes.len() / 2;
    if !bytes.len().is_multiple_of(2) || size < SLOT_ALIGN || !size.is_multiple_of(SLOT_ALIGN) {
        return Err(());
    }
    let slot = |index: usize| {
        let s = &bytes[index * size..(index + 1) * size];
        let (generation, len, crc) = (le64(&s[8..]), le32(&s[16..]) as usize, le32(&s[20..]));
        let ok = &s[..8] == SLOT_MAGIC
            && len <= size - SLOT_HEADER
            && super::crc::crc32c_append(super::crc::crc32c(&s[8..20]), &s[SLOT_HEADER..][..len])
                == crc;
        ok.then(|| Slot {
            index,
            generation,
            json: &s[SLOT_HEADER..][..len],
        })
    };
    Ok([slot(0), slot(1)]
        .into_iter()
        .flatten()
        .max_by_key(|s| s.generation))
}

/// A slot holding `json` as generation `generation`.
fn encode_slot(generation: u64, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SLOT_HEADER + json.len());
    out.extend_from_slice(SLOT_MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    let crc = super::crc::crc32c_append(super::crc::crc32c(&out[8..20]), json);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(SLOT_HEADER, 0);
    out.extend_from_slice(json);
    out
}

/// Reads a whole metadata file (at most [`MAX_FILE`] bytes).
fn read_all(file: &dyn super::backend::BackendFile) -> std::io::Result<Vec<u8>> {
    let len = file.len()?;
    if len > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than metadata ever takes"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Opens `p`; `None` when it does not exist.
fn open_if_exists(
    backend: &dyn Backend,
    p: &Path,
    writable: bool,
) -> Result<Option<std::sync::Arc<dyn super::backend::BackendFile>>> {
    match backend.open(p, writable) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", p.display()))(e)),
    }
}

/// Reads a volume's metadata; [`VolumeError::NotFound`] when it has none.
pub(crate) fn read(backend: &dyn Backend, name: &str) -> Result<VolumeMeta> {
    Ok(read_kind(backend, name)?.0)
}

/// [`read`], and whether the volume is ephemeral.
pub(crate) fn read_kind(backend: &dyn Backend, name: &str) -> Result<(VolumeMeta, bool)> {
    let Some((p, kind, file)) = locate(backend, name, false)? else {
        return Err(VolumeError::NotFound(name.to_string()));
    };
    let bytes = match read_all(&*file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(VolumeError::Damaged(format!("{}: {e}", p.display())));
        }
        Err(e) => return Err(io_err(format!("reading {}", p.display()))(e)),
    };
    let json = if kind != Kind::Legacy {
        match current_slot(&bytes) {
            Ok(Some(slot)) => slot.json,
            Ok(None) => {
                return Err(VolumeError::Damaged(format!(
                    "{}: neither slot is valid",
                    p.display()
                )));
            }
            Err(()) => {
                return Err(VolumeError::Damaged(format!(
                    "{}: not a two-slot metadata file",
                    p.display()
                )));
            }
        }
    } else {
        &bytes[..]
    };
    let m: VolumeMeta = serde_json::from_slice(json)
        .map_err(|e| VolumeError::Damaged(format!("{}: {e}", p.display())))?;
    if (m.format != FORMAT && m.format != FORMAT_FILTERED) || m.block_size != BLOCK_SIZE {
        return Err(VolumeError::Format(p.display().to_string()));
    }
    let sound = m.size > 0
        && (m.format == FORMAT_FILTERED) == m.filters.as_ref().is_some_and(|c| !c.is_empty())
        && m.size.is_multiple_of(u64::from(BLOCK_SIZE))
        && !m.layers.is_empty()
        && m.snapshots.iter().all(|s| check_name(&s.name).is_ok());
    if !sound {
        return Err(VolumeError::Damaged(format!(
            "{}: impossible values",
            p.display()
        )));
    }
    Ok((m, kind == Kind::Ephemeral))
}

/// The layers referenced by metadata other than volume `name`'s own stack
/// (`m`): its snapshots, and every other volume's stack and snapshots.
/// Compaction may rewrite only layers of the stack outside this set. Call
/// under the pool's lock.
pub(crate) fn shared_layers(
    backend: &dyn Backend,
    name: &str,
    m: &VolumeMeta,
) -> Result<std::collections::BTreeSet<u64>> {
    let mut shared: std::collections::BTreeSet<u64> = m
        .snapshots
        .iter()
        .flat_map(|s| s.layers.iter().copied())
        .collect();
    for other in list(backend)?.0 {
        if other != name {
            shared.extend(read(backend, &other)?.referenced());
        }
    }
    Ok(shared)
}

/// Whether a volume has metadata.
pub(crate) fn exists(backend: &dyn Backend, name: &str) -> Result<bool> {
    match read(backend, name) {
        Ok(_) => Ok(true),
        Err(VolumeError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Replaces a volume's metadata atomically (and durably, unless the volume
/// is ephemeral): in place, in the slot not in force, when the file exists
/// and the new version fits; otherwise by a new file. NotFound if the
/// volume has no metadata ([`create`] makes it).
pub(crate) fn write(backend: &dyn Backend, name: &str, m: &VolumeMeta) -> Result<()> {
    let ctx = || format!("writing the metadata of volume {name:?}");
    let json = encode(m).map_err(io_err(ctx()))?;
    let Some((p, kind, file)) = locate(backend, name, true)? else {
        return Err(VolumeError::NotFound(name.to_string()));
    };
    if kind == Kind::Legacy {
        return write_file(backend, name, 1, &json, false);
    }
    // Never write over a file that is not understood.
    let damaged = || {
        read(backend, name)
            .err()
            .unwrap_or(VolumeError::Damaged(ctx()))
    };
    let bytes = match read_all(&*file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(damaged()),
        Err(e) => return Err(io_err(ctx())(e)),
    };
    let Ok(Some(current)) = current_slot(&bytes) else {
        return Err(damaged());
    };
    let generation = current
        .generation
        .checked_add(1)
        .ok_or_else(|| VolumeError::Damaged(format!("{}: generation overflow", p.display())))?;
    let ephemeral = kind == Kind::Ephemeral;
    let size = bytes.len() / 2;
    if SLOT_HEADER + json.len() <= size {
        let other = 1 - current.index;
        let written = file
            .write_at(&encode_slot(generation, &json), (other * size) as u64)
            .and_then(|()| if ephemeral { Ok(()) } else { file.sync() });
        match written {
            Ok(()) => return Ok(()),
            // The slot may now be in the page cache only, marked clean
            // (Linux drops a failed page's dirty state), where a later
            // read would take it for the version in force. Write the
            // version again as a new file instead: its rename leaves
            // the old inode, and its stale pages, behind.
            Err(e) => tracing::warn!("{}: {e}; writing it as a new file", ctx()),
        }
    }
    write_file(backend, name, generation, &json, ephemeral)
}

/// Writes the metadata of a volume that has none: durable, or ephemeral
/// (in [`EPHEMERAL_DIR`], never synced; durable if the backend knows no
/// boot ID).
pub(crate) fn create(
    backend: &dyn Backend,
    name: &str,
    m: &VolumeMeta,
    ephemeral: bool,
) -> Result<()> {
    let json = encode(m).map_err(io_err(format!("writing the metadata of volume {name:?}")))?;
    write_file(backend, name, 1, &json, ephemeral)
}

/// One version's JSON, refused if it is too large for a metadata file.
fn encode(m: &VolumeMeta) -> std::io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    json.push(b'\n');
    if json.len() as u64 > MAX_FILE / 4 {
        return Err(std::io::Error::other("the metadata is too large"));
    }
    Ok(json)
}

/// Writes `json` as generation `generation` into a new metadata file,
/// with room for the metadata to double: a temp file, renamed over the
/// volume's file. Durable: synced, and the directory synced, and a legacy
/// `.json` removed. Ephemeral: neither synced.
fn write_file(
    backend: &dyn Backend,
    name: &str,
    generation: u64,
    json: &[u8],
    ephemeral: bool,
) -> Result<()> {
    let ephemeral = ephemeral.then(|| ephemeral_paths(backend, name)).flatten();
    let durable = ephemeral.is_none();
    let (p, tmp) = ephemeral.unwrap_or_else(|| (path(name), temp_path(name)));
    let ctx = || format!("writing {}", p.display());
    // Both slots are written (the second with zeros), so that updates
    // overwrite allocated blocks.
    let size = (2 * (SLOT_HEADER + json.len())).next_multiple_of(slot_align());
    let mut bytes = encode_slot(generation, json);
    bytes.resize(2 * size, 0);
    let file = backend.create(&tmp).map_err(io_err(ctx()))?;
    file.write_at(&bytes, 0).map_err(io_err(ctx()))?;
    if durable {
        file.sync().map_err(io_err(ctx()))?;
    }
    drop(file);
    backend.rename(&tmp, &p).map_err(io_err(ctx()))?;
    if durable {
        backend.sync_dir(Path::new(DIR)).map_err(io_err(ctx()))?;
        remove_legacy(backend, name).map_err(io_err(ctx()))?;
    }
    Ok(())
}

/// Removes a legacy `.json` that a `.meta` has replaced: it is no longer
/// read, and must not come back when the `.meta` goes. (One a crash left
/// after the rename is a stale file for [`list`], and reclaim's.)
fn remove_legacy(backend: &dyn Backend, name: &str) -> std::io::Result<()> {
    match backend.remove(&legacy_path(name)) {
        Ok(()) => backend.sync_dir(Path::new(DIR)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a volume's metadata is ephemeral (a disposable container's: in
/// [`EPHEMERAL_DIR`], never synced, valid in this boot only).
pub(crate) fn is_ephemeral(backend: &dyn Backend, name: &str) -> Result<bool> {
    Ok(matches!(
        locate(backend, name, false)?,
        Some((_, Kind::Ephemeral, _))
    ))
}

/// Removes a volume's metadata durably (an ephemeral volume's: with no
/// sync).
pub(crate) fn remove(backend: &dyn Backend, name: &str) -> Result<()> {
    if let Some((p, Kind::Ephemeral, _)) = locate(backend, name, false)? {
        return backend
            .remove(&p)
            .map_err(io_err(format!("removing {}", p.display())));
    }
    let mut removed = false;
    // The legacy file first: were the `.meta` removed alone, a stale
    // `.json` behind it would be read as the volume again.
    for p in [legacy_path(name), path(name)] {
        match backend.remove(&p) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {}", p.display()))(e)),
        }
    }
    if !removed {
        return Err(VolumeError::NotFound(name.to_string()));
    }
    backend
        .sync_dir(Path::new(DIR))
        .map_err(io_err(format!("removing the metadata of volume {name:?}")))
}

/// The names of all volumes, sorted, and the stale files: leftover temp
/// files, legacy `.json` files a `.meta` has replaced (a crash between
/// the rename and the removal leaves one), and ephemeral volumes' files
/// of other boots.
pub(crate) fn list(backend: &dyn Backend) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let (mut names, mut stale) = list_durable(backend)?;
    let entries = match backend.list(Path::new(EPHEMERAL_DIR)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(io_err("listing ephemeral volumes")(e)),
    };
    // Without a boot ID, nothing is stale (it would be deleted, with the
    // heads it names, maybe from under a running container): those files
    // are listed as volumes, and reading them fails (no boot, no path), so
    // reclaim deletes nothing.
    let boot = backend.boot_id();
    for e in entries {
        let this_boot = super::split_boot_file(&e, ".meta").filter(|(n, b)| {
            boot.as_deref().is_none_or(|boot| boot == *b) && check_name(n).is_ok()
        });
        match this_boot {
            Some((n, _)) => names.push(n.to_string()),
            None => stale.push(PathBuf::from(format!("{EPHEMERAL_DIR}/{e}"))),
        }
    }
    names.sort();
    names.dedup();
    Ok((names, stale))
}

/// [`list`] of `volumes/` alone.
fn list_durable(backend: &dyn Backend) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let entries: std::collections::BTreeSet<String> = backend
        .list(Path::new(DIR))
        .map_err(io_err("listing volumes"))?
        .into_iter()
        .collect();
    let mut names = std::collections::BTreeSet::new();
    let mut stale = Vec::new();
    for e in &entries {
        let name = e.strip_suffix(".meta").or_else(|| e.strip_suffix(".json"));
        if let Some(n) = name.filter(|n| check_name(n).is_ok()) {
            if e.ends_with(".json") && entries.contains(&format!("{n}.meta")) {
                stale.push(legacy_path(n));
            } else {
                names.insert(n.to_string());
            }
        } else if e.ends_with(".meta.tmp") || e.ends_with(".json.tmp") {
            stale.push(PathBuf::from(format!("{DIR}/{e}")));
        }
    }
    Ok((names.into_iter().collect(), stale))
}

/// Now, in Unix seconds.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
