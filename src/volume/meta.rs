//! Volume metadata files: `volumes/<name>.json`, one per volume, holding its
//! geometry, its base, its stack of layer IDs and its snapshots' stacks.
//!
//! These files are the only references to layers: a layer is alive while a
//! metadata file names it. They are replaced atomically (temp file,
//! `fdatasync`, rename, directory `fsync`), so after a crash each is the old
//! version or the new one. All changes go through the pool's lock.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::format::{BLOCK_SIZE, FORMAT, FORMAT_FILTERED};
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

/// The content of `volumes/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VolumeMeta {
    /// 1, or 2 for a filtered volume.
    pub format: u32,
    pub size: u64,
    pub block_size: u32,
    pub base: Option<BaseMeta>,
    /// Layer IDs, bottom to top; the last one is the head.
    pub layers: Vec<u64>,
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
    /// Its layer IDs, bottom to top (the last one is the head).
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

fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/{name}.json"))
}

fn temp_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/{name}.json.tmp"))
}

/// Reads a volume's metadata; [`VolumeError::NotFound`] when it has none.
pub(crate) fn read(backend: &dyn Backend, name: &str) -> Result<VolumeMeta> {
    let p = path(name);
    let ctx = || format!("reading {}", p.display());
    let file = match backend.open(&p, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        Err(e) => return Err(io_err(ctx())(e)),
    };
    let len = file.len().map_err(io_err(ctx()))?;
    let mut bytes = vec![0u8; len as usize];
    file.read_at(&mut bytes, 0).map_err(io_err(ctx()))?;
    let m: VolumeMeta = serde_json::from_slice(&bytes)
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
    Ok(m)
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

/// Replaces a volume's metadata atomically and durably.
pub(crate) fn write(backend: &dyn Backend, name: &str, m: &VolumeMeta) -> Result<()> {
    let (tmp, p) = (temp_path(name), path(name));
    let ctx = || format!("writing {}", p.display());
    let mut bytes =
        serde_json::to_vec_pretty(m).map_err(|e| io_err(ctx())(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    let file = backend.create(&tmp).map_err(io_err(ctx()))?;
    file.write_at(&bytes, 0).map_err(io_err(ctx()))?;
    file.sync().map_err(io_err(ctx()))?;
    drop(file);
    backend.rename(&tmp, &p).map_err(io_err(ctx()))?;
    backend.sync_dir(Path::new(DIR)).map_err(io_err(ctx()))
}

/// Removes a volume's metadata durably.
pub(crate) fn remove(backend: &dyn Backend, name: &str) -> Result<()> {
    let p = path(name);
    let ctx = || format!("removing {}", p.display());
    backend.remove(&p).map_err(io_err(ctx()))?;
    backend.sync_dir(Path::new(DIR)).map_err(io_err(ctx()))
}

/// The names of all volumes, sorted, and the leftover temp files.
pub(crate) fn list(backend: &dyn Backend) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let entries = backend
        .list(Path::new(DIR))
        .map_err(io_err("listing volumes"))?;
    let mut names = Vec::new();
    let mut temps = Vec::new();
    for e in entries {
        if let Some(n) = e.strip_suffix(".json").filter(|n| check_name(n).is_ok()) {
            names.push(n.to_string());
        } else if e.ends_with(".json.tmp") {
            temps.push(PathBuf::from(format!("{DIR}/{e}")));
        }
    }
    names.sort();
    Ok((names, temps))
}

/// Now, in Unix seconds.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
