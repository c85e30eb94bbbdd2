//! The pool: a directory of volumes and the layers they share. Creates,
//! clones, lists and deletes volumes, deletes snapshots, and reclaims layers
//! that no metadata references any more.
//!
//! Every change to metadata, and every creation of a layer file, happens
//! under the pool's lock, so [`Pool::reclaim`], which lists layer files and
//! reads every metadata file under the same lock, never mistakes a layer
//! being born for garbage. A layer written over a longer time before any
//! metadata names it (compaction's output) is **pinned** in the pool's
//! state meanwhile, and reclaim leaves pinned layers alone. A layer that no
//! metadata references can never be referenced again (new references are
//! only ever copied from existing ones), so reclaim deletes after releasing
//! the lock. A layer's index file (`<id>.index`) goes with its data file.
//!
//! **Spare heads.** Every snapshot, rollback, clone and volume creation
//! needs a new, empty head layer, durable (header, `fdatasync`, `fsync
//! layers/`) before metadata names it. [`Pool::make_spares`] makes one
//! ahead of time (the volume server does, on a thread, after each of those
//! operations), pinned like compaction's output; the next operation takes
//! it instead of creating a file, two syncs fewer on its path. A spare is a
//! layer no metadata names: the pool's owner deletes it before it lets the
//! pool go ([`Pool::drop_spares`]); after a crash it is garbage, which
//! reclaim removes. An ephemeral clone takes no spare: its
//! head is made without syncs, as its metadata is written.
//!
//! A pool opened on a directory keeps the scripts of its filtered volumes
//! in `POOL/filters/<sha256>.lua` ([`crate::filter::save_scripts`] puts
//! them there; a volume's metadata names them by digest).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::backend::{Backend, BackendFile, StdBackend};
use super::format::{BLOCK_SIZE, BS, FORMAT, FORMAT_FILTERED};
use super::layer::{self, layer_path};
use super::layer_index::index_path;
use super::meta::{self, BaseMeta, VolumeInfo, VolumeMeta};
use super::stack::Volume;
use super::{MAX_SIZE, Result, VolumeError, io_err, lock};
use crate::filter::{Chain, ChainSpec, FilterError, Limits};

/// How to create a volume.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VolumeOptions {
    /// Size in bytes; by default the base's length rounded up to a block.
    pub size: Option<u64>,
    /// A read-only file or block device the volume starts as (never copied).
    pub base: Option<PathBuf>,
    /// The filter chain its blocks are stored through (`None`, or an empty
    /// chain: stored as they are). Its scripts must be in the pool's filter
    /// directory ([`Pool::filter_dir`]).
    pub filters: Option<ChainSpec>,
}

impl VolumeOptions {
    /// A volume of `size` bytes, starting as zeros.
    pub fn new(size: u64) -> VolumeOptions {
        VolumeOptions {
            size: Some(size),
            base: None,
            filters: None,
        }
    }

    /// A volume starting as the content of `base`, as large as `base`
    /// unless a size is given.
    pub fn with_base(base: impl Into<PathBuf>) -> VolumeOptions {
        VolumeOptions {
            size: None,
            base: Some(base.into()),
            filters: None,
        }
    }

    /// Sets the size in bytes.
    pub fn size(mut self, size: u64) -> VolumeOptions {
        self.size = Some(size);
        self
    }

    /// Stores the volume's blocks through filter chain `spec` (in encode
    /// order). Clones and snapshots inherit it.
    pub fn filters(mut self, spec: ChainSpec) -> VolumeOptions {
        self.filters = Some(spec);
        self
    }
}

/// What [`Pool::reclaim`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReclaimReport {
    /// Layer files removed.
    pub layers: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Leftover temporary metadata files, and legacy `.json` metadata a
    /// `.meta` replaced, removed.
    pub temp_files: usize,
    /// Layer index files removed (with their layers, or left alone).
    pub index_files: usize,
}

/// State shared by a pool and its open volumes.
pub(crate) struct Shared {
    pub backend: Arc<dyn Backend>,
    /// Where the scripts of filtered volumes are (`POOL/filters`).
    pub filters: Option<PathBuf>,
    /// The pool's lock: held for every metadata change and layer creation.
    pub state: Mutex<PoolState>,
    /// Signalled when [`Pool::make_spares`] ends making a spare.
    spare_made: Condvar,
}

/// What the pool's lock protects.
#[derive(Debug)]
pub(crate) struct PoolState {
    /// Volumes open in this process.
    pub open: BTreeSet<String>,
    /// Layers being written that no metadata names yet: not garbage.
    pub pinned: BTreeSet<u64>,
    /// The next layer ID to hand out: found by the first
    /// [`PoolState::new_layer_id`] (a rollback or a snapshot deletion
    /// needs none, so opening the pool reads no metadata), or raised by
    /// [`Pool::reclaim`] past every ID it saw.
    next_layer: Option<u64>,
    /// Spare head layers: unfiltered, filtered (format version 2).
    spares: [Spare; 2],
}

/// How long [`Pool::drop_spares`] waits for a spare being made.
const SPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Clears a spare's `making` and wakes [`Pool::drop_spares`] when a
/// [`Pool::make_spares`] ends without doing it itself (a panic).
struct Making<'a> {
    shared: &'a Shared,
    kind: usize,
    /// `making` was cleared by the maker.
    done: bool,
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.shared.state).spares[self.kind].making = false;
            self.shared.spare_made.notify_all();
        }
    }
}

/// A spare head layer of one kind.
#[derive(Debug, Default)]
struct Spare {
    /// Made and durable, pinned: its ID and open file.
    ready: Option<(u64, Arc<dyn BackendFile>)>,
    /// Being made by [`Pool::make_spares`] (its ID pinned).
    making: bool,
    /// Heads of this kind were needed: [`Pool::make_spares`] keeps one.
    wanted: bool,
}

impl Spare {
    /// No spare of this kind any more (none is being made: see
    /// [`Pool::drop_spares`]); the ID of the one that was ready.
    fn forget(&mut self) -> Option<u64> {
        self.wanted = false;
        self.ready.take().map(|(id, _)| id)
    }
}

impl PoolState {
    /// A layer ID never used in this pool: past every ID in use, named or
    /// not (an index file left without its layer counts too), found on the
    /// first call by listing the layer files and reading every volume's
    /// metadata.
    pub fn new_layer_id(&mut self, backend: &dyn Backend) -> Result<u64> {
        if self.next_layer.is_none() {
            let (data, indexes) = layer_files(backend)?;
            let (live, _) = referenced_layers(backend)?;
            self.keep_ids_past(&data, &indexes, &live);
        }
        let next = self.next_layer.unwrap_or(1);
        self.next_layer = Some(next + 1);
        Ok(next)
    }

    /// Makes every ID to come larger than every one in these sets.
    fn keep_ids_past(
        &mut self,
        data: &BTreeSet<u64>,
        indexes: &BTreeSet<u64>,
        live: &BTreeSet<u64>,
    ) {
        let past = data
            .iter()
            .chain(indexes)
            .chain(live)
            .max()
            .map_or(1, |m| m + 1);
        self.next_layer = Some(self.next_layer.map_or(past, |n| n.max(past)));
    }

    /// A new, empty, durable head layer (format version 2 if `filtered`):
    /// the spare if one is ready (no I/O), else one created now
    /// ([`layer::create`]: header, `fdatasync`, `fsync layers/`). Called
    /// under the pool's lock, which the caller holds until metadata names
    /// the layer (if that fails, the layer is garbage).
    pub fn new_head(
        &mut self,
        backend: &dyn Backend,
        filtered: bool,
    ) -> Result<(u64, Arc<dyn BackendFile>)> {
        let spare = &mut self.spares[usize::from(filtered)];
        spare.wanted = true;
        if let Some((id, file)) = spare.ready.take() {
            self.pinned.remove(&id);
            return Ok((id, file));
        }
        let id = self.new_layer_id(backend)?;
        Ok((id, layer::create(backend, id, filtered)?))
    }
}

/// A pool of volumes in one directory. Cheap to clone; volumes opened from
/// it keep it alive.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &self.shared.backend)
            .finish()
    }
}

const LAYERS: &str = "layers";

/// The filter directory of a pool opened on a directory.
pub const FILTER_DIR: &str = "filters";

impl Shared {
    /// Builds the chain `spec` describes, from the pool's filter directory.
    pub fn chain(&self, spec: &ChainSpec) -> Result<Chain> {
        let Some(dir) = &self.filters else {
            return Err(FilterError::Spec {
                why: "this pool has no filter directory".into(),
            }
            .into());
        };
        Ok(Chain::from_spec(spec, dir, Limits::configured())?)
    }
}

impl Pool {
    /// Opens the pool in directory `dir` on the host filesystem, creating it
    /// if missing.
    pub fn open(dir: &Path) -> Result<Pool> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Pool::with_backend_and_filters(Arc::new(StdBackend::new(dir)), Some(dir.join(FILTER_DIR)))
    }

    /// Opens the pool at the root of `backend`, creating its directories if
    /// missing. It has no filter directory: filtered volumes cannot be
    /// created or opened (FK0909).
    pub fn with_backend(backend: Arc<dyn Backend>) -> Result<Pool> {
        Pool::with_backend_and_filters(backend, None)
    }

    /// Like [`Pool::with_backend`], with the scripts of filtered volumes in
    /// directory `filters` of the host filesystem.
    pub fn with_backend_and_filters(
        backend: Arc<dyn Backend>,
        filters: Option<PathBuf>,
    ) -> Result<Pool> {
        // Sync the directories too: a name an interrupted operation left
        // in the page cache only must be durable before anything builds on it.
        for dir in [LAYERS, meta::DIR] {
            let ctx = format!("opening the pool's {dir} directory");
            backend
                .create_dir(Path::new(dir))
                .map_err(io_err(ctx.clone()))?;
            backend.sync_dir(Path::new(dir)).map_err(io_err(ctx))?;
        }
        // Not synced: it holds nothing that outlives a boot.
        backend
            .create_dir(Path::new(meta::EPHEMERAL_DIR))
            .map_err(io_err("opening the pool's ephemeral volumes directory"))?;
        let state = PoolState {
            open: BTreeSet::new(),
            pinned: BTreeSet::new(),
            next_layer: None,
            spares: Default::default(),
        };
        Ok(Pool {
            shared: Arc::new(Shared {
                backend,
                filters,
                state: Mutex::new(state),
                spare_made: Condvar::new(),
            }),
        })
    }

    fn backend(&self) -> &dyn Backend {
        &*self.shared.backend
    }

    /// Says that unfiltered (or filtered) heads will be needed, so that
    /// [`Pool::make_spares`] keeps a spare of that kind even before the
    /// first one is.
    pub fn want_spare(&self, filtered: bool) {
        lock(&self.shared.state).spares[usize::from(filtered)].wanted = true;
    }

    /// Makes a spare head layer of each kind this pool has needed (or was
    /// told it will need) and has none of: pinned, created and made durable
    /// outside the pool's lock, then handed to the next snapshot, rollback,
    /// clone or volume creation (see the module docs).
    pub fn make_spares(&self) -> Result<()> {
        for (k, filtered) in [false, true].into_iter().enumerate() {
            let id = {
                let mut st = lock(&self.shared.state);
                let s = &st.spares[k];
                if !s.wanted || s.making || s.ready.is_some() {
                    continue;
                }
                let id = st.new_layer_id(self.backend())?;
                st.pinned.insert(id);
                st.spares[k].making = true;
                id
            };
            // `making` is cleared however this ends (a panic included):
            // [`Pool::drop_spares`] waits for it.
            let mut making = Making {
                shared: &self.shared,
                kind: k,
                done: false,
            };
            let made = layer::create(self.backend(), id, filtered);
            // Cleared in the same critical section that makes the spare
            // ready: a drop in between would miss it.
            let mut st = lock(&self.shared.state);
            st.spares[k].making = false;
            making.done = true;
            self.shared.spare_made.notify_all();
            match made {
                Ok(file) => st.spares[k].ready = Some((id, file)),
                Err(e) => {
                    // Garbage for reclaim.
                    st.pinned.remove(&id);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Deletes the spare head layers, after waiting for one being made
    /// (and makes no more until a head is needed again): the pool's owner
    /// calls it when no operation runs any more, before it lets the pool
    /// go, so that a store whose volume server has stopped holds no
    /// garbage — what a full disk has is all it gets back — and no spare
    /// is still being written once another process owns the pool (it
    /// could pick the same ID). Tries every spare; the first error is
    /// returned (what was not deleted is garbage for reclaim).
    pub fn drop_spares(&self) -> Result<()> {
        let (mut st, waited) = self
            .shared
            .spare_made
            .wait_timeout_while(lock(&self.shared.state), SPARE_WAIT, |st| {
                st.spares.iter().any(|s| s.making)
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waited.timed_out() {
            // A write that hangs: not a reason never to stop. Its file is
            // garbage for the next reclaim.
            tracing::warn!("a spare head layer still being made after {SPARE_WAIT:?}");
        }
        let ids: Vec<u64> = st.spares.iter_mut().filter_map(Spare::forget).collect();
        let mut first = Ok(());
        for id in ids {
            st.pinned.remove(&id);
            // Under the lock: no operation can take it meanwhile. (A
            // spare has no index file.)
            if let Err(e) = remove_if_present(self.backend(), &layer_path(id)) {
                first = first.and(Err(e));
            }
        }
        first
    }

    /// Where the scripts of filtered volumes are kept (`POOL/filters` for
    /// a pool opened on a directory).
    pub fn filter_dir(&self) -> Option<&Path> {
        self.shared.filters.as_deref()
    }

    /// Creates a volume whose stack is its base and an empty head.
    pub fn create_volume(&self, name: &str, opts: &VolumeOptions) -> Result<()> {
        meta::check_name(name)?;
        let base = match &opts.base {
            None => None,
            Some(path) => {
                let ctx = format!("opening base {}", path.display());
                let len = self.backend().open(path, false).and_then(|f| f.len());
                Some(BaseMeta {
                    path: path.clone(),
                    len: len.map_err(io_err(ctx))?,
                })
            }
        };
        let size = match (opts.size, &base) {
            (Some(s), _) => s,
            (None, Some(b)) => b.len.div_ceil(BS) * BS,
            (None, None) => 0,
        };
        check_size(size)?;
        let filters = opts.filters.clone().filter(|c| !c.is_empty());
        if let Some(spec) = &filters {
            // Scripts present, compiling, keys readable: before anything
            // is written.
            self.shared.chain(spec)?;
        }
        let mut st = lock(&self.shared.state);
        if meta::exists(self.backend(), name)? {
            return Err(VolumeError::Exists(name.to_string()));
        }
        let (id, _) = st.new_head(self.backend(), filters.is_some())?;
        let m = VolumeMeta {
            format: if filters.is_some() {
                FORMAT_FILTERED
            } else {
                FORMAT
            },
            size,
            block_size: BLOCK_SIZE,
            base,
            layers: vec![id],
            headless: false,
            snapshots: vec![],
            filters,
        };
        meta::create(self.backend(), name, &m, false)
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Pool {
        Pool { shared }
    }

    /// Opens a volume for reading and writing. It replays the volume's head
    /// to its last commit (cutting off anything after it).
    pub fn open_volume(&self, name: &str) -> Result<Volume> {
        Volume::open(self.shared.clone(), name)
    }

    /// [`Pool::open_volume`] without reading every other volume's metadata
    /// (2.2 ms with 300 volumes): all its sealed layers count as shared,
    /// which leaves them out of its garbage figures (nothing else: a
    /// compaction counts them exactly first) until
    /// [`Volume::refresh_sharing`] counts them. The volume server's attach
    /// uses it and counts them on a thread afterwards.
    pub(crate) fn open_volume_deferred(&self, name: &str) -> Result<Volume> {
        Volume::open_with(self.shared.clone(), name, false)
    }

    /// The names of all volumes, sorted.
    pub fn volumes(&self) -> Result<Vec<String>> {
        Ok(meta::list(self.backend())?.0)
    }

    /// What the metadata of volume `name` says.
    pub fn info(&self, name: &str) -> Result<VolumeInfo> {
        Ok(self.info_and_kind(name)?.0)
    }

    /// [`Pool::info`], and whether the volume is ephemeral: one read of its
    /// metadata.
    pub fn info_and_kind(&self, name: &str) -> Result<(VolumeInfo, bool)> {
        let _st = lock(&self.shared.state);
        let (m, ephemeral) = meta::read_kind(self.backend(), name)?;
        Ok((VolumeInfo::new(name, &m), ephemeral))
    }

    /// Creates volume `new` from snapshot `snapshot` of volume `volume`: its
    /// stack is the snapshot's sealed layers (shared, not copied) and a new
    /// empty head. Costs the same whatever the amount of data.
    pub fn clone_snapshot(&self, volume: &str, snapshot: &str, new: &str) -> Result<()> {
        self.clone_as(volume, snapshot, new, false)
    }

    /// Like [`Pool::clone_snapshot`], for an **ephemeral** volume (a
    /// disposable container's): its metadata, and every update of it, is
    /// never synced, and it does not outlive the machine's boot. After a
    /// crash of the machine it is gone (its head is garbage for
    /// [`Pool::reclaim`]); until then it is a volume like any other. Its
    /// creation and deletion cost no sync: on a host filesystem with
    /// delayed allocation, a metadata file deleted before writeback never
    /// gets a block (and so no discard when it goes).
    pub fn clone_ephemeral(&self, volume: &str, snapshot: &str, new: &str) -> Result<()> {
        self.clone_as(volume, snapshot, new, true)
    }

    fn clone_as(&self, volume: &str, snapshot: &str, new: &str, ephemeral: bool) -> Result<()> {
        meta::check_name(new)?;
        let mut st = lock(&self.shared.state);
        if meta::exists(self.backend(), new)? {
            return Err(VolumeError::Exists(new.to_string()));
        }
        let src = meta::read(self.backend(), volume)?;
        let snap = src
            .snapshot(snapshot)
            .ok_or_else(|| VolumeError::SnapshotNotFound {
                volume: volume.to_string(),
                snapshot: snapshot.to_string(),
            })?;
        // An ephemeral volume's head needs no syncs (nor the spare, which
        // is made durable for the volumes that need it): its metadata is
        // never synced, so after a crash of the machine nothing names it.
        let id = if ephemeral {
            let id = st.new_layer_id(self.backend())?;
            layer::create_volatile(self.backend(), id, src.filtered())?;
            id
        } else {
            st.new_head(self.backend(), src.filtered())?.0
        };
        // The source's layers may include an ephemeral volume's heads, made
        // without syncs (one sealed with nothing written was never synced
        // at all): they and their names are made durable before durable
        // metadata names them.
        if !ephemeral && meta::is_ephemeral(self.backend(), volume)? {
            for id in &snap.layers {
                let path = layer_path(*id);
                self.backend()
                    .open(&path, false)
                    .and_then(|f| f.sync())
                    .map_err(io_err(format!("syncing {}", path.display())))?;
            }
            self.backend()
                .sync_dir(LAYERS.as_ref())
                .map_err(io_err("syncing layers"))?;
        }
        let mut layers = snap.layers.clone();
        layers.push(id);
        let m = VolumeMeta {
            layers,
            headless: false,
            snapshots: vec![],
            ..src.clone()
        };
        meta::create(self.backend(), new, &m, ephemeral)
    }

    /// Makes closed volume `volume` what it was at snapshot `snapshot`: its
    /// stack becomes the snapshot's sealed layers, and the next open puts a
    /// new empty head on them. Only metadata is written, with one sync
    /// (constant cost whatever the amount of data, and no layer file made);
    /// the old head is freed by [`Pool::reclaim`]. An open volume is refused
    /// (use [`Volume::rollback`](super::Volume::rollback)).
    pub fn rollback(&self, volume: &str, snapshot: &str) -> Result<()> {
        let st = lock(&self.shared.state);
        if st.open.contains(volume) {
            return Err(VolumeError::Busy(volume.to_string()));
        }
        let mut m = meta::read(self.backend(), volume)?;
        point_at_snapshot(&mut m, volume, snapshot)?;
        meta::write(self.backend(), volume, &m)
    }

    /// Deletes a snapshot: drops its reference to its layers. The space is
    /// freed by [`Pool::reclaim`]. Works on open and closed volumes.
    pub fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        let _st = lock(&self.shared.state);
        let mut m = meta::read(self.backend(), volume)?;
        let before = m.snapshots.len();
        m.snapshots.retain(|s| s.name != snapshot);
        if m.snapshots.len() == before {
            return Err(VolumeError::SnapshotNotFound {
                volume: volume.to_string(),
                snapshot: snapshot.to_string(),
            });
        }
        meta::write(self.backend(), volume, &m)
    }

    /// Deletes a closed volume and its snapshots (clones made from them
    /// keep their layers). The space is freed by [`Pool::reclaim`].
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let st = lock(&self.shared.state);
        if st.open.contains(name) {
            return Err(VolumeError::Busy(name.to_string()));
        }
        meta::read(self.backend(), name)?;
        meta::remove(self.backend(), name)
    }

    /// Removes every layer file (data and index) no volume or snapshot
    /// references, and leftover temporary files. Safe while volumes are
    /// open and in use (or being compacted): the pool's lock is held only
    /// while metadata is read, never while files are deleted. A metadata
    /// file that cannot be read stops it before it deletes anything.
    pub fn reclaim(&self) -> Result<ReclaimReport> {
        let mut report = ReclaimReport::default();
        let (garbage, data, indexes) = {
            let mut st = lock(&self.shared.state);
            let (live, temps) = referenced_layers(self.backend())?;
            // Temp files are written, and legacy files replaced, only under
            // this lock: these are stale.
            for t in temps {
                self.backend()
                    .remove(&t)
                    .map_err(io_err(format!("removing {}", t.display())))?;
                report.temp_files += 1;
            }
            let (data, indexes) = layer_files(self.backend())?;
            // The garbage is deleted after the lock is released: its IDs
            // must never be handed out again, even if the first new ID is
            // only asked for once they are gone.
            st.keep_ids_past(&data, &indexes, &live);
            let garbage: Vec<u64> = data
                .union(&indexes)
                .filter(|id| !live.contains(id) && !st.pinned.contains(id))
                .copied()
                .collect();
            (garbage, data, indexes)
        };
        for id in garbage {
            for (path, is_data) in [(layer_path(id), true), (index_path(id), false)] {
                let present = if is_data { &data } else { &indexes };
                if !present.contains(&id) {
                    continue;
                }
                let len = self
                    .backend()
                    .open(&path, false)
                    .and_then(|f| f.len())
                    .unwrap_or(0);
                // Gone already: another reclaim got there first.
                if !remove_if_present(self.backend(), &path)? {
                    continue;
                }
                if is_data {
                    report.layers += 1;
                } else {
                    report.index_files += 1;
                }
                report.bytes += len;
            }
        }
        if report.layers + report.index_files > 0 {
            self.backend()
                .sync_dir(Path::new(LAYERS))
                .map_err(io_err("syncing layers"))?;
        }
        Ok(report)
    }
}

/// Makes `m`'s stack snapshot `snapshot`'s sealed layers, headless: no
/// layer file is made, the next open adds the head ([`give_head`]). The
/// caller holds the pool lock and writes `m`.
pub(crate) fn point_at_snapshot(m: &mut VolumeMeta, volume: &str, snapshot: &str) -> Result<()> {
    let snap = m
        .snapshot(snapshot)
        .ok_or_else(|| VolumeError::SnapshotNotFound {
            volume: volume.to_string(),
            snapshot: snapshot.to_string(),
        })?;
    m.layers = snap.layers.clone();
    m.headless = true;
    Ok(())
}

/// Puts a new empty head (the spare, if one is ready) on top of `m`'s
/// stack, which must be headless. The caller writes the metadata.
pub(crate) fn give_head(
    backend: &dyn Backend,
    st: &mut PoolState,
    m: &mut VolumeMeta,
) -> Result<()> {
    debug_assert!(m.headless);
    let (id, _) = st.new_head(backend, m.filtered())?;
    m.layers.push(id);
    m.headless = false;
    Ok(())
}

/// Checks a volume size: positive, a multiple of the block size, at most
/// [`MAX_SIZE`](super::MAX_SIZE).
pub fn check_size(size: u64) -> Result<()> {
    if size == 0 {
        return Err(VolumeError::BadSize(size, "a volume cannot be empty"));
    }
    if !size.is_multiple_of(BS) {
        return Err(VolumeError::BadSize(
            size,
            "not a multiple of the block size",
        ));
    }
    if size > MAX_SIZE {
        return Err(VolumeError::BadSize(size, "larger than the largest volume"));
    }
    Ok(())
}

/// Every layer ID some volume's metadata names, and the stale metadata
/// files ([`meta::list`]). Any metadata file that cannot be read fails it.
fn referenced_layers(backend: &dyn Backend) -> Result<(BTreeSet<u64>, Vec<PathBuf>)> {
    let (names, stale) = meta::list(backend)?;
    let mut live = BTreeSet::new();
    for name in &names {
        live.extend(meta::read(backend, name)?.referenced());
    }
    Ok((live, stale))
}

/// Removes the file at `path`; false if it was not there.
fn remove_if_present(backend: &dyn Backend, path: &Path) -> Result<bool> {
    match backend.remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
    }
}

/// The IDs of the layer data files present (`<id>.data`), and of the
/// index files present (`<id>.index`).
fn layer_files(backend: &dyn Backend) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let names = backend
        .list(Path::new(LAYERS))
        .map_err(io_err("listing layers"))?;
    let ids = |suffix: &str| -> BTreeSet<u64> {
        names
            .iter()
            .filter_map(|n| n.strip_suffix(suffix)?.parse::<u64>().ok())
            .filter(|id| names.contains(&format!("{id}{suffix}")))
            .collect()
    };
    Ok((ids(".data"), ids(".index")))
}
