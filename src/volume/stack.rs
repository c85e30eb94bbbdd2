//! An open volume: its stack of layers, its merged index and its head.
//! Reads, writes, discards, flushes, snapshots, rollbacks and compaction.
//!
//! State and locks:
//! - `head` (a mutex): the head layer's appending end, what the head holds
//!   (for its index file when it is sealed) and the failure flag. Every
//!   write, discard, flush, snapshot and rollback holds it, so records are
//!   appended in one order and a flush's sync completes before the next
//!   record is appended (the replay argument in `layer.rs` needs this).
//!   Compaction holds it only to seal the head and to switch stacks.
//!   Sealing the head (snapshot, compaction) freezes the index chunks the
//!   head wrote in (shared copy-on-write, [`Frozen`]) instead of copying
//!   its entries, so the head lock is held for a time that does not grow
//!   with the data; the sealed layer's index file is made from them later.
//! - `mapped` (a read-write lock): the open layer files and the merged
//!   index. Reads hold it shared; writers hold it exclusively only to update
//!   the index after their records are in the file, so a read never sees a
//!   block before its bytes are written.
//! - `compacting` (a mutex): one compaction at a time.
//!
//! Index entries name a layer by its **slot** in `Mapped::slots`, not by its
//! stack position, so that compaction can replace a run of layers by one
//! and move only the entries of that run.
//!
//! A volume whose write path failed keeps serving reads of what it had, and
//! refuses writes with [`VolumeError::Failed`] until it is reopened.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::backend::{Backend, BackendFile};
use super::compact::{self, Job, Source};
use super::crc::crc32c;
use super::filtered;
use super::format::{BS, Kind, LAYER_HEADER_LEN, RECORD_HEADER_LEN, WRITE_RECORD_LEN};
use super::index::{CHUNK, Frozen, Index, Lookup, MAX_LAYERS};
use super::layer::{self, Head, Pos, Rec, Staged, layer_path};
use super::layer_index::{self, Entry, LayerIndex, Net, coalesce};
use super::meta::{self, SnapshotInfo, SnapshotMeta, VolumeMeta};
use super::pool::{Pool, Shared};
use super::{Result, VolumeError, io_err, lock};
use crate::filter::Chain;

/// Most blocks appended with one write, or read with one read (1 MiB).
const GROUP: u64 = 256;

/// An open volume. Dropping it without [`Volume::close`] or
/// [`Volume::flush`] loses the writes since the last flush, as a power cut
/// would for a disk with a write cache.
pub struct Volume {
    reg: Registration,
    size: u64,
    base: Option<Base>,
    head: Mutex<HeadState>,
    mapped: RwLock<Mapped>,
    compacting: Mutex<()>,
    cancel: AtomicBool,
    /// The filter chain of a filtered volume, built when it opened.
    chain: Option<Chain>,
    /// Ephemeral ([`Pool::clone_ephemeral`]), as its metadata said when it
    /// opened.
    ephemeral: bool,
}

/// Figures about an open volume.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeStats {
    /// Layer IDs, bottom to top (the last one is the head).
    pub layers: Vec<u64>,
    /// Bytes in the head's data file.
    pub head_bytes: u64,
    /// Records appended since the last flush.
    pub unflushed_records: u64,
    /// Bytes of the data files of every layer of the stack.
    pub layer_bytes: u64,
    /// Bytes of the layers only this volume uses (its head, and sealed
    /// layers that no snapshot and no other volume references): what
    /// [`Volume::compact`] may rewrite. Which layers those are is learnt
    /// when the volume opens (not for an ephemeral volume, nor one opened
    /// deferred, until [`Volume::refresh_sharing`]), snapshots, rolls back,
    /// deletes a snapshot or compacts; until then a layer another volume
    /// stopped using still counts as shared.
    pub own_bytes: u64,
    /// Bytes of those layers holding no live block: write records whose
    /// block was written again or discarded since. What compaction frees
    /// (less what is written during it). Updated by every write, at the
    /// cost of a counter.
    pub garbage_bytes: u64,
}

/// What [`Volume::compact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// The layers it replaced, bottom to top; empty when there was nothing
    /// to reclaim.
    pub replaced: Vec<u64>,
    /// The layer that replaced them.
    pub layer: Option<u64>,
    /// Bytes of the replaced layers' data files (freed by
    /// [`Pool::reclaim`]).
    pub bytes_before: u64,
    /// Bytes of the new layer's data file.
    pub bytes_after: u64,
    /// Live blocks copied into it.
    pub blocks: u64,
    /// The volume's garbage before ([`VolumeStats::garbage_bytes`]).
    pub garbage_before: u64,
    /// And after (what was written during compaction).
    pub garbage_after: u64,
}

#[derive(Debug)]
struct Base {
    file: Arc<dyn BackendFile>,
    len: u64,
}

#[derive(Debug)]
struct HeadState {
    head: Head,
    failed: Option<String>,
    /// Write records in the head.
    writes: u64,
    /// Its discard ranges, coalesced now and then.
    discards: Vec<(u64, u64)>,
    coalesced: usize,
    /// A bit per chunk of the merged index where the head wrote: where its
    /// blocks are when it is sealed and its index is made.
    touched: Vec<u64>,
}

/// A head just sealed: what its index file needs, taken under the head lock
/// at a cost that does not grow with its data (its blocks stay in frozen
/// chunks of the merged index until [`Sealed::index`] collects them).
#[derive(Debug)]
struct Sealed {
    id: u64,
    /// Its slot in the merged index when it was sealed.
    slot: u32,
    filtered: bool,
    len: u64,
    last_crc: u32,
    writes: u64,
    discards: Vec<(u64, u64)>,
    frozen: Frozen,
}

impl Sealed {
    /// The sealed layer's net content (for its index file).
    fn index(self) -> LayerIndex {
        let entries = self.frozen.collect(self.slot);
        let mut discards = self.discards;
        coalesce(&mut discards);
        LayerIndex {
            id: self.id,
            filtered: self.filtered,
            len: self.len,
            last_crc: self.last_crc,
            writes: self.writes,
            discards,
            entries,
        }
    }
}

impl HeadState {
    fn new(head: Head, blocks: u64) -> HeadState {
        HeadState {
            head,
            failed: None,
            writes: 0,
            discards: Vec::new(),
            coalesced: 0,
            touched: vec![0; blocks.div_ceil(CHUNK).div_ceil(64) as usize],
        }
    }

    fn touch(&mut self, block: u64) {
        let c = block / CHUNK;
        self.touched[(c / 64) as usize] |= 1 << (c % 64);
    }

    fn discarded(&mut self, first: u64, count: u64) {
        self.discards.push((first, count));
        if self.discards.len() > 64 && self.discards.len() > 2 * self.coalesced {
            coalesce(&mut self.discards);
            self.coalesced = self.discards.len();
        }
    }

    /// Starts over on a new, empty head.
    fn restart(&mut self, head: Head) {
        self.head = head;
        self.writes = 0;
        self.discards.clear();
        self.coalesced = 0;
        self.touched.fill(0);
    }
}

#[derive(Debug)]
struct Mapped {
    /// Layers by slot (what index entries name); `None`: a free slot.
    slots: Vec<Option<LayerSlot>>,
    /// The stack: slots, bottom to top; the last is the head.
    stack: Vec<u32>,
    index: Index,
}

#[derive(Debug)]
struct LayerSlot {
    id: u64,
    file: Arc<dyn BackendFile>,
    /// Bytes of its data file (of a sealed layer; the head's are in
    /// `HeadState`).
    len: u64,
    /// Write records in it (of a sealed layer).
    writes: u64,
    /// Referenced by a snapshot or by another volume: compaction leaves it.
    shared: bool,
}

impl Mapped {
    fn ids(&self) -> Vec<u64> {
        self.stack.iter().map(|&s| self.layer(s).id).collect()
    }

    fn layer(&self, slot: u32) -> &LayerSlot {
        self.slots[slot as usize]
            .as_ref()
            .expect("a slot in use holds a layer")
    }

    fn layer_mut(&mut self, slot: u32) -> &mut LayerSlot {
        self.slots[slot as usize]
            .as_mut()
            .expect("a slot in use holds a layer")
    }

    fn head_slot(&self) -> u32 {
        *self.stack.last().expect("a stack has a head")
    }

    /// Puts a layer in a free slot.
    fn add(&mut self, l: LayerSlot) -> u32 {
        match self.slots.iter().position(Option::is_none) {
            Some(s) => {
                self.slots[s] = Some(l);
                s as u32
            }
            None => {
                self.slots.push(Some(l));
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Marks the sealed layers named in `shared` as shared, the others as
    /// this volume's own.
    fn set_sharing(&mut self, shared: &BTreeSet<u64>) {
        let sealed = self.stack.len() - 1;
        for i in 0..sealed {
            let l = self.layer_mut(self.stack[i]);
            l.shared = shared.contains(&l.id);
        }
    }

    /// Write records of `slot` no longer holding its block's content.
    fn garbage(&self, slot: u32, writes: u64) -> u64 {
        writes.saturating_sub(self.index.live(slot))
    }
}

/// Marks a volume open in its pool for as long as it lives.
struct Registration {
    shared: Arc<Shared>,
    name: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.state).open.remove(&self.name);
    }
}

/// Keeps a layer ID pinned in the pool (not garbage) while it lives.
struct Pinned<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        lock(&self.shared.state).pinned.remove(&self.id);
    }
}

impl fmt::Debug for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.reg.name)
            .field("size", &self.size)
            .finish()
    }
}

/// The CRC-32C of every block that `data`, written at byte `offset`, covers
/// whole, from the block at `offset / BS` on (0 for a block it covers in
/// part: such a block is read, modified and checksummed under the head
/// lock). Empty when `data` covers no block whole.
fn whole_block_crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    let end = offset + data.len() as u64;
    let (first, stop) = (offset / BS, end / BS);
    if offset.div_ceil(BS) >= stop {
        return Vec::new();
    }
    (first..stop)
        .map(|x| {
            let start = x * BS;
            if start < offset {
                0
            } else {
                let at = (start - offset) as usize;
                crc32c(&data[at..at + BS as usize])
            }
        })
        .collect()
}

/// The layers that metadata other than volume `name`'s own stack
/// references; every layer of `m` when some metadata cannot be read (so
/// nothing counts as garbage until compaction reads it all).
fn sharing(backend: &dyn Backend, name: &str, m: &VolumeMeta) -> BTreeSet<u64> {
    meta::shared_layers(backend, name, m).unwrap_or_else(|e| {
        tracing::debug!("volume {name:?}: {e}; counting every layer as shared");
        m.layers.iter().copied().collect()
    })
}

impl Volume {
    pub(crate) fn open(shared: Arc<Shared>, name: &str) -> Result<Volume> {
        Self::open_with(shared, name, true)
    }

    /// [`Volume::open`]; with `exact` false, every sealed layer counts as
    /// shared (see [`Pool::open_volume_deferred`]).
    pub(crate) fn open_with(shared: Arc<Shared>, name: &str, exact: bool) -> Result<Volume> {
        let (m, others, ephemeral) = {
            let mut st = lock(&shared.state);
            if st.open.contains(name) {
                return Err(VolumeError::Busy(name.to_string()));
            }
            let (mut m, ephemeral) = meta::read_kind(&*shared.backend, name)?;
            if m.headless {
                // Rolled back while closed: the head comes now.
                super::pool::give_head(&*shared.backend, &mut st, &mut m)?;
                meta::write(&*shared.backend, name, &m)?;
            }
            // Which sealed layers are shared takes every volume's metadata
            // (2.2 ms of each attach with 300 volumes in the pool). An
            // ephemeral volume (a `run --rm` container's, deleted when it
            // ends), and one opened deferred (`exact` false: the volume
            // server's attach, which counts them on a thread afterwards),
            // count them all as shared instead: that only keeps its sealed
            // layers out of the garbage figures that start the server's
            // compaction; a compaction, `refresh_sharing` or the deletion
            // of one of its snapshots counts them exactly.
            let others = if ephemeral || !exact {
                m.layers.iter().copied().collect()
            } else {
                sharing(&*shared.backend, name, &m)
            };
            st.open.insert(name.to_string());
            (m, others, ephemeral)
        };
        let reg = Registration {
            shared,
            name: name.to_string(),
        };
        let backend = &*reg.shared.backend;
        let base = match &m.base {
            None => None,
            Some(b) => {
                let ctx = || format!("opening base {}", b.path.display());
                let file = backend.open(&b.path, false).map_err(io_err(ctx()))?;
                let found = file.len().map_err(io_err(ctx()))?;
                if found != b.len {
                    return Err(VolumeError::BaseChanged {
                        volume: name.to_string(),
                        path: b.path.display().to_string(),
                        expected: b.len,
                        found,
                    });
                }
                Some(Base { file, len: b.len })
            }
        };
        let chain = match &m.filters {
            Some(spec) => Some(reg.shared.chain(spec)?),
            None => None,
        };
        let (mapped, head) = load(backend, &m, &others)?;
        Ok(Volume {
            reg,
            size: m.size,
            base,
            head: Mutex::new(head),
            mapped: RwLock::new(mapped),
            compacting: Mutex::new(()),
            cancel: AtomicBool::new(false),
            chain,
            ephemeral,
        })
    }

    /// Whether the volume is ephemeral ([`Pool::clone_ephemeral`]).
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.reg.name
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The filter chain its blocks are stored through, if any.
    pub fn chain(&self) -> Option<&Chain> {
        self.chain.as_ref()
    }

    /// The pool this volume belongs to.
    pub fn pool(&self) -> Pool {
        Pool::from_shared(self.reg.shared.clone())
    }

    fn backend(&self) -> &dyn Backend {
        &*self.reg.shared.backend
    }

    /// Figures about the volume (from memory: no I/O).
    pub fn stats(&self) -> VolumeStats {
        let h = lock(&self.head);
        self.stats_locked(&h)
    }

    fn stats_locked(&self, h: &HeadState) -> VolumeStats {
        let m = self.read_mapped();
        let top = m.head_slot();
        let mut s = VolumeStats {
            layers: m.ids(),
            head_bytes: h.head.next.end,
            unflushed_records: h.head.pending,
            layer_bytes: 0,
            own_bytes: 0,
            garbage_bytes: 0,
        };
        for &slot in &m.stack {
            let l = m.layer(slot);
            let (len, writes, own) = if slot == top {
                (h.head.next.end, h.writes, true)
            } else {
                (l.len, l.writes, !l.shared)
            };
            s.layer_bytes += len;
            if own {
                s.own_bytes += len;
                s.garbage_bytes += m.garbage(slot, writes) * WRITE_RECORD_LEN;
            }
        }
        s
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let m = self.read_mapped();
        if offset.is_multiple_of(BS) && (buf.len() as u64).is_multiple_of(BS) {
            return self.read_blocks(&m, offset / BS, buf);
        }
        let first = offset / BS;
        let last = (offset + buf.len() as u64 - 1) / BS;
        let mut tmp = vec![0u8; ((last - first + 1) * BS) as usize];
        self.read_blocks(&m, first, &mut tmp)?;
        let at = (offset - first * BS) as usize;
        buf.copy_from_slice(&tmp[at..at + buf.len()]);
        Ok(())
    }

    /// Writes `data` at byte `offset`. Visible to reads at once; durable
    /// after the next [`Volume::flush`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        // The CRCs of whole blocks do not depend on where they go: computed
        // before taking the head lock, so that writers overlap there.
        let crcs = match self.chain {
            None => whole_block_crcs(offset, data),
            Some(_) => Vec::new(),
        };
        let mut h = self.lock_head()?;
        self.write_locked(&mut h, offset, data, &crcs)?;
        let behind = h.head.write_behind();
        drop(h);
        // Outside the head lock: other writers append while this one waits
        // for the disk (docs/design.md, "Write-behind").
        if let Some(b) = behind {
            b.run();
        }
        Ok(())
    }

    /// Discards `len` bytes at `offset`: they read as zeros from now on,
    /// and whole blocks stop taking space in the head (one record for the
    /// whole range). Durable after the next flush, like a write.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let mut h = self.lock_head()?;
        let end = offset + len;
        let (first, stop) = (offset.div_ceil(BS), end / BS);
        if first >= stop {
            return self.write_locked(&mut h, offset, &vec![0u8; len as usize], &[]);
        }
        if offset < first * BS {
            self.write_locked(
                &mut h,
                offset,
                &vec![0u8; (first * BS - offset) as usize],
                &[],
            )?;
        }
        if stop * BS < end {
            self.write_locked(
                &mut h,
                stop * BS,
                &vec![0u8; (end - stop * BS) as usize],
                &[],
            )?;
        }
        let mut staged = h.head.stage();
        staged.push(Kind::Discard, first, stop - first, &[]);
        self.append(&mut h, staged)?;
        h.discarded(first, stop - first);
        self.write_mapped().index.zero(first, stop - first);
        Ok(())
    }

    /// Why the volume stopped taking writes (a write or flush failed: the
    /// pool's filesystem full, an I/O error), if it did. What was written
    /// since its last flush is then lost.
    pub fn failure(&self) -> Option<String> {
        lock(&self.head).failed.clone()
    }

    /// Makes every earlier write and discard durable: appends a commit
    /// record and syncs the head. Does nothing if nothing changed.
    pub fn flush(&self) -> Result<()> {
        let mut h = self.lock_head()?;
        self.flush_locked(&mut h)
    }

    /// Flushes and closes the volume.
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// Takes snapshot `name`: flushes, seals the head (it becomes part of
    /// the snapshot and is never written again) and starts a new empty
    /// head. The metadata change costs the same whatever the amount of
    /// data; then, with writes already going to the new head, the sealed
    /// layer's index file is written (20 bytes per block it holds).
    pub fn snapshot(&self, name: &str) -> Result<()> {
        meta::check_name(name)?;
        let sealed = {
            let mut h = self.lock_head()?;
            self.seal_locked(&mut h, Some(name))?
        };
        self.write_index(&sealed.index());
        Ok(())
    }

    /// Like [`Volume::snapshot`], but returns once the snapshot is durable
    /// and writes the sealed layer's index file on a background thread, so
    /// the caller waits the same whatever the amount of data. Until the
    /// index is written (or if writing it fails, or a crash interrupts it:
    /// its checksums then reject it) the layer is replayed when opened.
    pub fn snapshot_index_in_background(&self, name: &str) -> Result<()> {
        meta::check_name(name)?;
        let sealed = {
            let mut h = self.lock_head()?;
            self.seal_locked(&mut h, Some(name))?
        };
        let backend = self.reg.shared.backend.clone();
        let volume = self.name().to_string();
        std::thread::spawn(move || {
            let ix = sealed.index();
            if let Err(e) = layer_index::write(&*backend, &ix) {
                tracing::warn!(
                    "volume {volume:?}: cannot write the index of layer {}: {e} (the layer will be replayed when needed)",
                    ix.id
                );
            }
        });
        Ok(())
    }

    /// Seals the head, if it holds records, and writes the sealed layer's
    /// index file: step 2 of [`Volume::compact`] alone (no layer is
    /// rewritten, no snapshot is taken). Opening a volume replays its head
    /// record by record (every write it holds, overwritten or not) but
    /// reads a sealed layer's index, 20 bytes per block; so a head that
    /// grew large is worth sealing by itself (the volume server does when
    /// [`super::server::worth_sealing`] says so). Returns whether it sealed;
    /// does nothing (and clears the mark) when [`Volume::cancel_compaction`]
    /// was called since the last compaction or sealing.
    pub fn seal_head(&self) -> Result<bool> {
        let _one = lock(&self.compacting);
        if self.cancel.swap(false, Ordering::Relaxed) {
            return Ok(false);
        }
        let sealed = {
            let mut h = self.lock_head()?;
            if h.head.next.end <= LAYER_HEADER_LEN {
                return Ok(false);
            }
            self.seal_locked(&mut h, None)?
        };
        crate::failpoint("volume:seal:sealed");
        crate::delaypoint("volume:seal:sealed");
        self.write_index(&sealed.index());
        Ok(true)
    }

    /// Makes the volume's stack snapshot `name`'s layers plus a new empty
    /// head. Writes since the snapshot are dropped (their layer is freed by
    /// [`Pool::reclaim`]). Durable when it returns.
    pub fn rollback(&self, name: &str) -> Result<()> {
        let mut h = self.lock_head()?;
        let mut st = lock(&self.reg.shared.state);
        let mut m = self.read_meta()?;
        super::pool::point_at_snapshot(&mut m, self.name(), name)?;
        super::pool::give_head(self.backend(), &mut st, &mut m)?;
        meta::write(self.backend(), self.name(), &m).map_err(|e| self.fail_with(&mut h, e))?;
        let others = sharing(self.backend(), self.name(), &m);
        drop(st);
        let (mapped, head) =
            load(self.backend(), &m, &others).map_err(|e| self.fail_with(&mut h, e))?;
        *self.write_mapped() = mapped;
        *h = head;
        Ok(())
    }

    /// The volume's snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let _st = lock(&self.reg.shared.state);
        Ok(self
            .read_meta()?
            .snapshots
            .iter()
            .map(SnapshotInfo::new)
            .collect())
    }

    /// Deletes snapshot `name` (see [`Pool::delete_snapshot`]); layers only
    /// this volume uses now count in its garbage figures.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.pool().delete_snapshot(self.name(), name)?;
        if let Err(e) = self.refresh_sharing() {
            tracing::debug!("volume {:?}: {e}", self.name());
        }
        Ok(())
    }

    /// Compacts the layers only this volume uses, while reads and writes go
    /// on: flushes, seals the head (like a snapshot, without one), writes
    /// one new layer holding only the live blocks of the run of this
    /// volume's own sealed layers (the sealed head and those below it that
    /// no snapshot and no other volume references), then replaces that run
    /// by the new layer in the metadata and moves the index entries over.
    /// The old layers' files are freed by [`Pool::reclaim`].
    ///
    /// Does nothing but flush when the volume's own layers hold no garbage
    /// ([`VolumeStats::garbage_bytes`]). Reads never wait for it except
    /// while index entries move (a few milliseconds per GiB of live data);
    /// writes wait while the head is sealed and while the stacks are
    /// switched (a metadata update). A snapshot or rollback while it runs,
    /// or [`Volume::cancel_compaction`], makes it give up with FK0721,
    /// having changed nothing but the head's sealing. A crash at any point
    /// leaves the old stack or the new one, and at worst unreferenced layer
    /// files (`docs/volume-format.md`, "Compaction").
    pub fn compact(&self) -> Result<CompactReport> {
        let _one = lock(&self.compacting);
        let r = self.compact_locked();
        self.cancel.store(false, Ordering::Relaxed);
        r
    }

    /// Makes the compaction running (or, if none, the next one to start)
    /// give up at its next step, with FK0721.
    pub fn cancel_compaction(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn compact_locked(&self) -> Result<CompactReport> {
        let job = Job {
            volume: self.name(),
            cancel: &self.cancel,
        };
        let backend = self.backend();
        let blocks = self.size / BS;
        job.check()?;
        // 1. Which layers are this volume's own, as every metadata file says.
        self.refresh_sharing()?;

        // 2. Flush, and seal the head so that its garbage can go too.
        let mut report = CompactReport::default();
        let (sealed, ids) = {
            let mut h = self.lock_head()?;
            self.flush_locked(&mut h)?;
            let garbage = self.stats_locked(&h).garbage_bytes;
            report.garbage_before = garbage;
            report.garbage_after = garbage;
            if garbage == 0 {
                return Ok(report);
            }
            let sealed = if h.head.next.end > LAYER_HEADER_LEN {
                Some(self.seal_locked(&mut h, None)?)
            } else {
                None
            };
            (sealed, self.read_mapped().ids())
        };
        let mut sealed = sealed.map(Sealed::index);
        if let Some(ix) = &sealed {
            self.write_index(ix);
        }
        job.check()?;

        // 3. Under the pool's lock, with every metadata file read: the run
        // of sealed layers to replace, and a pinned ID for the new layer.
        // What step 4 needs of the stack is taken here, with the run: a
        // rollback may change the stack once these locks are let go.
        let (run, layers, above, new_id) = {
            let mut st = lock(&self.reg.shared.state);
            let m = meta::read(backend, self.name())?;
            let mut mp = self.write_mapped();
            if m.layers != ids || mp.ids() != ids {
                return Err(self.abandoned("its stack changed (a snapshot or rollback)"));
            }
            let others = meta::shared_layers(backend, self.name(), &m)?;
            mp.set_sharing(&others);
            let run = choose_run(&mp);
            if run.is_empty() {
                return Ok(report);
            }
            let layers: Vec<(u64, Arc<dyn BackendFile>, u64)> = mp.stack[run.clone()]
                .iter()
                .map(|&s| {
                    let l = mp.layer(s);
                    (l.id, l.file.clone(), l.len)
                })
                .collect();
            // The sealed layers above the run (the head is the last).
            let above = mp.stack[run.end..mp.stack.len() - 1].to_vec();
            drop(mp);
            let id = st.new_layer_id(self.backend())?;
            st.pinned.insert(id);
            (run, layers, above, id)
        };
        let _pin = Pinned {
            shared: &self.reg.shared,
            id: new_id,
        };

        // 4. The new layer, written outside every lock of the volume.
        let mut sources = Vec::with_capacity(run.len());
        for (id, file, len) in layers {
            let index = match sealed.take_if(|ix| ix.id == id) {
                Some(ix) => ix,
                None => sealed_index(backend, id, blocks, self.chain.is_some(), &*file)?,
            };
            report.replaced.push(id);
            report.bytes_before += len;
            sources.push(Source { id, file, index });
        }
        let keep_discards = run.start > 0 || self.base.is_some();
        // A block whose content is in a sealed layer above the run needs no
        // copy: that layer stays above the new one for as long as the
        // stack this compaction switches from (checked in step 5), and
        // only the head, which may lose unflushed records in a crash, can
        // take the block from it.
        let masked = |block: u64| {
            !above.is_empty()
                && matches!(self.read_mapped().index.get(block),
                    Lookup::Data { layer, .. } if above.contains(&layer))
        };
        let (file, cix, was) = compact::build(
            backend,
            new_id,
            &sources,
            keep_discards,
            &masked,
            job,
            self.chain.as_ref(),
        )?;
        drop(sources);
        job.check()?;

        // 5. Switch: the metadata, then the index entries of the run.
        let mut h = self.lock_head()?;
        let st = lock(&self.reg.shared.state);
        let mut m = meta::read(backend, self.name())?;
        if m.layers != ids || self.read_mapped().ids() != ids {
            return Err(self.abandoned("its stack changed (a snapshot or rollback)"));
        }
        self.check_compacted(&self.read_mapped(), run.clone(), &cix, &was)?;
        m.layers.splice(run.clone(), [new_id]);
        meta::write(backend, self.name(), &m).map_err(|e| self.fail_with(&mut h, e))?;
        {
            let mut mp = self.write_mapped();
            let run_slots: Vec<u32> = mp.stack[run.clone()].to_vec();
            let mut in_run = vec![false; mp.slots.len()];
            for &s in &run_slots {
                in_run[s as usize] = true;
            }
            let c = mp.add(LayerSlot {
                id: new_id,
                file,
                len: cix.len,
                writes: cix.writes,
                shared: false,
            });
            for e in &cix.entries {
                if let Lookup::Data { layer, .. } = mp.index.get(e.block)
                    && in_run.get(layer as usize) == Some(&true)
                {
                    let moved = Lookup::Data {
                        layer: c,
                        offset: e.offset,
                        len: e.len,
                        crc: e.crc,
                    };
                    mp.index.set(e.block, moved);
                }
            }
            for s in run_slots {
                // Checked above: nothing points into the run any more.
                debug_assert_eq!(mp.index.live(s), 0);
                if mp.index.live(s) == 0 {
                    mp.slots[s as usize] = None;
                }
            }
            mp.stack.splice(run, [c]);
        }
        drop(st);
        report.layer = Some(new_id);
        report.bytes_after = cix.len;
        report.blocks = cix.entries.len() as u64;
        report.garbage_after = self.stats_locked(&h).garbage_bytes;
        Ok(report)
    }

    /// Checks, before the switch, that the new layer holds every block the
    /// merged index finds in the run, copied from a record with the same
    /// CRC (`was[i]`: the CRC of the record entry `i` was copied or, for a
    /// filtered volume, decoded from): the index files the new layer was
    /// made from agree with what the volume serves.
    fn check_compacted(
        &self,
        mp: &Mapped,
        run: Range<usize>,
        cix: &LayerIndex,
        was: &[u32],
    ) -> Result<()> {
        let run_slots: Vec<u32> = mp.stack[run].to_vec();
        let expected: u64 = run_slots.iter().map(|&s| mp.index.live(s)).sum();
        let mut found = 0u64;
        for (e, &was) in cix.entries.iter().zip(was) {
            if let Lookup::Data { layer, crc, .. } = mp.index.get(e.block)
                && run_slots.contains(&layer)
            {
                if crc != was {
                    found = u64::MAX;
                    break;
                }
                found += 1;
            }
        }
        if found != expected {
            return Err(VolumeError::Damaged(format!(
                "volume {:?}: the layers being compacted disagree with their index files",
                self.name()
            )));
        }
        Ok(())
    }

    fn abandoned(&self, reason: &str) -> VolumeError {
        VolumeError::Abandoned {
            volume: self.name().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Reads every metadata file (under the pool's lock) and marks which
    /// sealed layers are shared.
    pub(crate) fn refresh_sharing(&self) -> Result<()> {
        let _st = lock(&self.reg.shared.state);
        let m = meta::read(self.backend(), self.name())?;
        let others = meta::shared_layers(self.backend(), self.name(), &m)?;
        let mut mp = self.write_mapped();
        if mp.ids() == m.layers {
            mp.set_sharing(&others);
        }
        Ok(())
    }

    // ---- internals ----

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn read_mapped(&self) -> RwLockReadGuard<'_, Mapped> {
        self.mapped.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_mapped(&self) -> RwLockWriteGuard<'_, Mapped> {
        self.mapped.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the head, refusing if an earlier write failed.
    fn lock_head(&self) -> Result<MutexGuard<'_, HeadState>> {
        let h = lock(&self.head);
        match &h.failed {
            Some(reason) => Err(VolumeError::Failed {
                volume: self.name().to_string(),
                reason: reason.clone(),
            }),
            None => Ok(h),
        }
    }

    /// Marks the volume failed and passes the error on.
    fn fail_with(&self, h: &mut HeadState, e: VolumeError) -> VolumeError {
        h.failed.get_or_insert_with(|| e.to_string());
        e
    }

    /// Reads this volume's metadata (under the pool lock) and checks that
    /// its stack is the one this volume has open.
    fn read_meta(&self) -> Result<VolumeMeta> {
        let m = meta::read(self.backend(), self.name())?;
        if m.layers != self.read_mapped().ids() {
            return Err(VolumeError::Damaged(format!(
                "the metadata of volume {:?} changed while it was open",
                self.name()
            )));
        }
        Ok(m)
    }

    fn flush_locked(&self, h: &mut HeadState) -> Result<()> {
        let ctx = format!("flushing layer {}", h.head.id);
        h.head
            .commit()
            .map_err(|e| self.fail_with(h, io_err(ctx)(e)))
    }

    /// Flushes and seals the head: writes the metadata with the head sealed
    /// (and in a new snapshot `snapshot`, if given) under a new empty head,
    /// and switches to that head. Returns what the sealed layer's index file
    /// needs (written by the caller, without the head lock).
    fn seal_locked(&self, h: &mut HeadState, snapshot: Option<&str>) -> Result<Sealed> {
        self.flush_locked(h)?;
        let mut st = lock(&self.reg.shared.state);
        let mut m = self.read_meta()?;
        if let Some(name) = snapshot
            && m.snapshot(name).is_some()
        {
            return Err(VolumeError::SnapshotExists {
                volume: self.name().to_string(),
                snapshot: name.to_string(),
            });
        }
        if m.layers.len() >= MAX_LAYERS {
            return Err(VolumeError::Damaged(format!(
                "volume {:?} has too many layers",
                self.name()
            )));
        }
        let (id, file) = st.new_head(self.backend(), self.chain.is_some())?;
        crate::failpoint("volume:seal:head-made");
        if let Some(name) = snapshot {
            let layers = m.layers.clone();
            m.snapshots.push(SnapshotMeta {
                name: name.to_string(),
                created: meta::now(),
                layers,
            });
        }
        m.layers.push(id);
        // Whether the new metadata is in force is unknown if this fails:
        // the head may be sealed, so stop writing it.
        meta::write(self.backend(), self.name(), &m).map_err(|e| self.fail_with(h, e))?;
        let sealed = self.capture(h);
        // The in-memory stack changes under the pool's lock too, so that
        // whoever reads the metadata next finds the two in agreement.
        let mut mp = self.write_mapped();
        let top = mp.head_slot();
        let old = mp.layer_mut(top);
        old.len = h.head.next.end;
        old.writes = h.writes;
        if snapshot.is_some() {
            for i in 0..mp.stack.len() {
                let s = mp.stack[i];
                mp.layer_mut(s).shared = true;
            }
        }
        let slot = mp.add(LayerSlot {
            id,
            file: file.clone(),
            len: LAYER_HEADER_LEN,
            writes: 0,
            shared: false,
        });
        mp.stack.push(slot);
        drop(mp);
        drop(st);
        let start = Pos {
            end: LAYER_HEADER_LEN,
            seq: 0,
        };
        h.restart(Head::new(id, file, start, 0));
        Ok(sealed)
    }

    /// The head's (flushed) content, from the merged index: the chunks it
    /// wrote in are frozen, not copied, so this takes constant time per
    /// 4 MiB chunk the head touched.
    fn capture(&self, h: &mut HeadState) -> Sealed {
        debug_assert_eq!(h.head.pending, 0);
        let m = self.read_mapped();
        let touched = h.touched.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let chunk = w as u64 * 64 + u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    chunk
                })
            })
        });
        Sealed {
            id: h.head.id,
            slot: m.head_slot(),
            filtered: self.chain.is_some(),
            len: h.head.next.end,
            last_crc: h.head.last_crc,
            writes: h.writes,
            discards: std::mem::take(&mut h.discards),
            frozen: m.index.freeze(touched),
        }
    }

    /// Writes a sealed layer's index file; a failure costs a replay later.
    fn write_index(&self, ix: &LayerIndex) {
        if let Err(e) = layer_index::write(self.backend(), ix) {
            tracing::warn!(
                "volume {:?}: cannot write the index of layer {}: {e} (the layer will be replayed when needed)",
                self.name(),
                ix.id
            );
        }
    }

    fn append(&self, h: &mut HeadState, staged: Staged) -> Result<()> {
        let ctx = format!("writing layer {}", h.head.id);
        h.head
            .append(staged)
            .map_err(|e| self.fail_with(h, io_err(ctx)(e)))
    }

    /// Writes `data` at `offset`. `crcs`, when not empty, holds the CRC of
    /// every whole block `data` covers ([`whole_block_crcs`]), from the
    /// block at `offset / BS` on. Whole blocks of an unfiltered volume are
    /// written to the head from `data` itself (no staging copy).
    fn write_locked(
        &self,
        h: &mut HeadState,
        offset: u64,
        data: &[u8],
        crcs: &[u32],
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let (first, last) = (offset / BS, (end - 1) / BS);
        // Allocated at the first partial block only.
        let mut block = Vec::new();
        let mut b = first;
        while b <= last {
            let group_end = (b + GROUP).min(last + 1);
            let mut staged = h.head.stage_for((group_end - b) as usize);
            let mut placed = Vec::with_capacity((group_end - b) as usize);
            for x in b..group_end {
                let start = x * BS;
                let (lo, hi) = (offset.max(start), end.min(start + BS));
                let part = &data[(lo - offset) as usize..(hi - offset) as usize];
                let whole = part.len() as u64 == BS;
                let payload = if whole {
                    part
                } else {
                    // A partial block: read, modify, write.
                    block.resize(BS as usize, 0);
                    self.read_blocks(&self.read_mapped(), x, &mut block)?;
                    block[(lo - start) as usize..(hi - start) as usize].copy_from_slice(part);
                    &block[..]
                };
                let (at, len, crc) = match &self.chain {
                    None if whole => {
                        let crc = match crcs.get((x - first) as usize) {
                            Some(&crc) => crc,
                            None => crc32c(part),
                        };
                        (staged.push_borrowed(x, part, crc), BS as u32, crc)
                    }
                    None => {
                        let (at, crc) = staged.push(Kind::Write, x, 1, payload);
                        (at, BS as u32, crc)
                    }
                    Some(chain) => {
                        // Under the head lock: the layer it is encoded for
                        // is the one it is appended to, and a replica is
                        // written in the order the records are.
                        let stored = filtered::encode(chain, self.name(), h.head.id, x, payload)?;
                        let n = stored.len() as u64;
                        let (at, crc) = staged.push(Kind::FilteredWrite, x, n, &stored);
                        (at, n as u32, crc)
                    }
                };
                placed.push((x, at, len, crc));
            }
            self.append(h, staged)?;
            h.writes += placed.len() as u64;
            for &(x, ..) in &placed {
                h.touch(x);
            }
            let mut m = self.write_mapped();
            let layer = m.head_slot();
            for (x, offset, len, crc) in placed {
                let l = Lookup::Data {
                    layer,
                    offset,
                    len,
                    crc,
                };
                m.index.set(x, l);
            }
            b = group_end;
        }
        Ok(())
    }

    /// Fills `out` (whole blocks) with blocks `first ..`.
    fn read_blocks(&self, m: &Mapped, first: u64, out: &mut [u8]) -> Result<()> {
        let n = out.len() as u64 / BS;
        let mut i = 0;
        while i < n {
            let at = (i * BS) as usize;
            match m.index.get(first + i) {
                Lookup::Zero => {
                    out[at..at + BS as usize].fill(0);
                    i += 1;
                }
                Lookup::Base => {
                    let mut j = i + 1;
                    while j < n && m.index.get(first + j) == Lookup::Base {
                        j += 1;
                    }
                    self.read_base(first + i, &mut out[at..(j * BS) as usize])?;
                    i = j;
                }
                Lookup::Data {
                    layer, offset, len, ..
                } => {
                    // A run of blocks written together (each record right
                    // after the previous one): one read.
                    let mut next = offset + u64::from(len) + RECORD_HEADER_LEN;
                    let mut j = i + 1;
                    while j < n && j - i < GROUP {
                        match m.index.get(first + j) {
                            Lookup::Data {
                                layer: l,
                                offset: o,
                                len,
                                ..
                            } if l == layer && o == next => {
                                next = o + u64::from(len) + RECORD_HEADER_LEN;
                            }
                            _ => break,
                        }
                        j += 1;
                    }
                    self.read_run(m, first + i, j - i, &mut out[at..(j * BS) as usize])?;
                    i = j;
                }
            }
        }
        Ok(())
    }

    /// Reads `count` blocks from `first`, laid out one record after the
    /// other in one layer, and checks their CRCs (and decodes them, for a
    /// filtered volume).
    fn read_run(&self, m: &Mapped, first: u64, count: u64, out: &mut [u8]) -> Result<()> {
        let Lookup::Data { layer, offset, .. } = m.index.get(first) else {
            unreachable!()
        };
        let l = m.layer(layer);
        let (file, id) = (&l.file, l.id);
        let ctx = || format!("reading layer {id}");
        let Some(chain) = &self.chain else {
            if count == 1 {
                file.read_at(out, offset).map_err(io_err(ctx()))?;
            } else {
                let mut span = vec![0u8; ((count - 1) * WRITE_RECORD_LEN + BS) as usize];
                file.read_at(&mut span, offset).map_err(io_err(ctx()))?;
                for k in 0..count as usize {
                    let from = k * WRITE_RECORD_LEN as usize;
                    out[k * BS as usize..(k + 1) * BS as usize]
                        .copy_from_slice(&span[from..from + BS as usize]);
                }
            }
            for k in 0..count {
                let Lookup::Data { crc, .. } = m.index.get(first + k) else {
                    unreachable!()
                };
                let block = &out[(k * BS) as usize..((k + 1) * BS) as usize];
                if super::crc::crc32c(block) != crc {
                    return Err(VolumeError::Corrupt {
                        volume: self.name().to_string(),
                        block: first + k,
                        layer: id,
                    });
                }
            }
            return Ok(());
        };
        let Lookup::Data {
            offset: last, len, ..
        } = m.index.get(first + count - 1)
        else {
            unreachable!()
        };
        let mut span = vec![0u8; (last + u64::from(len) - offset) as usize];
        file.read_at(&mut span, offset).map_err(io_err(ctx()))?;
        for k in 0..count {
            let Lookup::Data {
                offset: at,
                len,
                crc,
                ..
            } = m.index.get(first + k)
            else {
                unreachable!()
            };
            let from = (at - offset) as usize;
            let stored = &span[from..from + len as usize];
            let block = &mut out[(k * BS) as usize..((k + 1) * BS) as usize];
            filtered::decode(chain, self.name(), id, first + k, stored, crc, block)?;
        }
        Ok(())
    }

    /// Reads blocks from the base (zeros past its end, or without one).
    fn read_base(&self, first: u64, out: &mut [u8]) -> Result<()> {
        let start = first * BS;
        let have = match &self.base {
            Some(b) if b.len > start => {
                let n = (b.len - start).min(out.len() as u64) as usize;
                b.file
                    .read_at(&mut out[..n], start)
                    .map_err(io_err(format!(
                        "reading the base of volume {:?}",
                        self.name()
                    )))?;
                n
            }
            _ => 0,
        };
        out[have..].fill(0);
        Ok(())
    }
}

/// Most own sealed layers [`choose_run`] leaves above the run (mostly
/// live ones): a fifth one down is compacted with the run, so that the
/// stack stays short.
const MAX_KEPT_ABOVE: usize = 4;

/// The run of sealed layers to compact (stack positions): the sealed
/// layers only this volume uses form a suffix of its sealed layers (a layer
/// is shared through a copied stack, which holds what is below it too).
/// Own sealed layers at the top that hold at least as many live blocks as
/// garbage, and more live blocks than all own layers below them, are left
/// alone (up to [`MAX_KEPT_ABOVE`]): rewriting them would copy more than
/// it frees, and what they hold masks blocks of the run, which then need
/// no copy (a volume overwritten in full since the last compaction keeps
/// its last sealed layer and copies next to nothing). Small layers are
/// merged as before, so kept layers at least double in live blocks from
/// one to the next above.
/// Below them, the run goes from the lowest own layer holding garbage up,
/// and further down over own layers holding no more live blocks than the
/// run (so that repeated compactions keep the number of own layers
/// logarithmic, like a binary counter, instead of adding one each time).
/// When nothing below the kept layers holds garbage, the run goes up to
/// the head after all. Empty when no own sealed layer holds garbage.
fn choose_run(mp: &Mapped) -> Range<usize> {
    let top = mp.stack.len() - 1;
    let mut own = top;
    while own > 0 && !mp.layer(mp.stack[own - 1]).shared {
        own -= 1;
    }
    let live = |p: usize| mp.index.live(mp.stack[p]);
    let garbage = |p: usize| {
        let s = mp.stack[p];
        mp.garbage(s, mp.layer(s).writes)
    };
    let ending_at = |end: usize| {
        let mut start = (own..end).find(|&p| garbage(p) > 0)?;
        let mut run_live: u64 = (start..end).map(live).sum();
        while start > own {
            let below = live(start - 1);
            if below > run_live {
                break;
            }
            start -= 1;
            run_live += below;
        }
        Some(start..end)
    };
    let mut end = top;
    while end > own && top - end < MAX_KEPT_ABOVE {
        let p = end - 1;
        let below: u64 = (own..p).map(live).sum();
        if live(p) < garbage(p) || live(p) <= below {
            break;
        }
        end -= 1;
    }
    ending_at(end)
        .or_else(|| ending_at(top))
        .unwrap_or(top..top)
}

/// The net content of sealed layer `id`: from its index file, or, when
/// that is missing or unusable, by replaying the layer (checking it as
/// replay does) and writing the index again.
fn sealed_index(
    backend: &dyn Backend,
    id: u64,
    blocks: u64,
    filtered: bool,
    file: &dyn BackendFile,
) -> Result<LayerIndex> {
    let len = file.len().map_err(io_err(format!("reading layer {id}")))?;
    let why = match layer_index::read(backend, id, blocks, filtered, file, len) {
        Ok(ix) => return Ok(ix),
        Err(why) => why,
    };
    tracing::debug!("layer {id}: index not used ({why}); replaying the layer");
    let mut net = Net::default();
    let mut writes = 0u64;
    let (end, end_crc) = {
        let mut apply = |r: Rec| match r {
            Rec::Write {
                block,
                offset,
                len,
                crc,
            } => {
                net.write(block, 0, offset, len, crc);
                writes += 1;
            }
            Rec::Discard { first, count } => net.discard(first, count),
        };
        let r = layer::replay(file, id, blocks, filtered, &mut apply)?;
        r.last.iter().copied().for_each(&mut apply);
        if r.len != r.end.end {
            return Err(VolumeError::Damaged(format!(
                "sealed layer {id} has {} bytes after its last commit",
                r.len - r.end.end
            )));
        }
        (r.end.end, r.end_crc)
    };
    let (discards, entries) = net.finish();
    let ix = LayerIndex {
        id,
        filtered,
        len: end,
        last_crc: end_crc,
        writes,
        discards,
        entries: entries
            .map(|e| Entry {
                block: e.block,
                offset: e.offset,
                len: e.len,
                crc: e.crc,
            })
            .collect(),
    };
    if let Err(e) = layer_index::write(backend, &ix) {
        tracing::warn!("cannot write the index of layer {id}: {e}");
    }
    Ok(ix)
}

/// Opens the layers of `m` and builds the merged index, bottom to top:
/// sealed layers from their index files (or replayed), the head replayed
/// to its last valid commit and cut there. `shared` names the layers other
/// metadata references.
fn load(
    backend: &dyn Backend,
    m: &VolumeMeta,
    shared: &BTreeSet<u64>,
) -> Result<(Mapped, HeadState)> {
    let blocks = m.size / BS;
    let filtered = m.filtered();
    let mut index = Index::new(blocks);
    let mut slots = Vec::with_capacity(m.layers.len());
    let top = m.layers.len() - 1;
    let mut head = None;
    for (pos, &id) in m.layers.iter().enumerate() {
        let slot = pos as u32;
        let is_head = pos == top;
        let file = backend.open(&layer_path(id), is_head).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VolumeError::Damaged(format!("layer {id} is missing"))
            } else {
                io_err(format!("opening layer {id}"))(e)
            }
        })?;
        if !is_head {
            let ix = sealed_index(backend, id, blocks, filtered, &*file)?;
            for &(first, count) in &ix.discards {
                index.zero(first, count);
            }
            for e in &ix.entries {
                let l = Lookup::Data {
                    layer: slot,
                    offset: e.offset,
                    len: e.len,
                    crc: e.crc,
                };
                index.set(e.block, l);
            }
            slots.push(Some(LayerSlot {
                id,
                file,
                len: ix.len,
                writes: ix.writes,
                shared: shared.contains(&id),
            }));
            continue;
        }
        let mut state = HeadState::new(
            Head::new(id, file.clone(), Pos { end: 0, seq: 0 }, 0),
            blocks,
        );
        let mut apply = |r: Rec| match r {
            Rec::Write {
                block,
                offset,
                len,
                crc,
            } => {
                index.set(
                    block,
                    Lookup::Data {
                        layer: slot,
                        offset,
                        len,
                        crc,
                    },
                );
                state.writes += 1;
                state.touch(block);
            }
            Rec::Discard { first, count } => {
                index.zero(first, count);
                state.discarded(first, count);
            }
        };
        let r = layer::replay(&*file, id, blocks, filtered, &mut apply)?;
        let (next, last_crc) = if layer::verify(&*file, id, &r.last)? {
            r.last.iter().copied().for_each(&mut apply);
            (r.end, r.end_crc)
        } else {
            (r.last_start, r.last_start_crc)
        };
        // Cut the uncommitted tail, and sync even when there is none: the
        // replayed commits may be in the page cache only (a flush whose
        // sync failed), and what a volume shows must be durable before
        // anything is built on it. A head with nothing past its header (a
        // fresh clone's, a rollback's) has nothing to sync: its header was
        // synced before any metadata named it.
        let ctx = || format!("recovering layer {id}");
        if r.len > next.end {
            file.set_len(next.end).map_err(io_err(ctx()))?;
        }
        if r.len > LAYER_HEADER_LEN {
            file.sync().map_err(io_err(ctx()))?;
        }
        state.head = Head::new(id, file.clone(), next, last_crc);
        slots.push(Some(LayerSlot {
            id,
            file,
            len: next.end,
            writes: 0,
            shared: false,
        }));
        head = Some(state);
    }
    let head = head.expect("a stack has a head");
    let mapped = Mapped {
        slots,
        stack: (0..m.layers.len() as u32).collect(),
        index,
    };
    Ok((mapped, head))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One CRC per block from `offset / BS`, 0 for a partial first block,
    /// none for a partial last block or a write inside one block.
    #[test]
    fn whole_block_crcs_cover_whole_blocks_only() {
        let data: Vec<u8> = (0..4 * BS as usize).map(|i| (i % 251) as u8).collect();
        let bs = BS as usize;
        let at = |i: usize| crc32c(&data[i..i + bs]);
        assert_eq!(
            whole_block_crcs(0, &data),
            vec![at(0), at(bs), at(2 * bs), at(3 * bs)]
        );
        assert_eq!(whole_block_crcs(8 * BS, &data[..bs]), vec![at(0)]);
        // From 100 bytes into block 3 to 300 bytes into block 6: blocks 3
        // and 6 partial, 4 and 5 whole.
        assert_eq!(
            whole_block_crcs(3 * BS + 100, &data[..3 * bs + 200]),
            vec![0, at(bs - 100), at(2 * bs - 100)]
        );
        assert!(whole_block_crcs(BS + 1, &data[..bs]).is_empty());
        assert!(whole_block_crcs(0, &data[..bs - 1]).is_empty());
        assert!(whole_block_crcs(0, &[]).is_empty());
    }
}
