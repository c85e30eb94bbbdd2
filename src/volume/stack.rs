//! An open volume: its stack of layers, its merged index and its head.
//! Reads, writes, discards, flushes, snapshots and rollbacks.
//!
//! State and locks:
//! - `head` (a mutex): the head layer's appending end and the failure flag.
//!   Every write, discard, flush, snapshot and rollback holds it, so records
//!   are appended in one order and a flush's sync completes before the next
//!   record is appended (the replay argument in `layer.rs` needs this).
//! - `mapped` (a read-write lock): the open layer files and the merged
//!   index. Reads hold it shared; writers hold it exclusively only to update
//!   the index after their records are in the file, so a read never sees a
//!   block before its bytes are written.
//!
//! A volume whose write path failed keeps serving reads of what it had, and
//! refuses writes with [`VolumeError::Failed`] until it is reopened.

use std::fmt;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::backend::{Backend, BackendFile};
use super::format::{BS, Kind, LAYER_HEADER_LEN, WRITE_RECORD_LEN};
use super::index::{Index, Lookup, MAX_LAYERS};
use super::layer::{self, Head, Pos, Rec, Staged, layer_path};
use super::meta::{self, SnapshotInfo, SnapshotMeta, VolumeMeta};
use super::pool::{Pool, Shared};
use super::{Result, VolumeError, io_err, lock};

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
}

#[derive(Debug)]
struct Mapped {
    ids: Vec<u64>,
    files: Vec<Arc<dyn BackendFile>>,
    index: Index,
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

impl fmt::Debug for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.reg.name)
            .field("size", &self.size)
            .finish()
    }
}

impl Volume {
    pub(crate) fn open(shared: Arc<Shared>, name: &str) -> Result<Volume> {
        let m = {
            let mut st = lock(&shared.state);
            if st.open.contains(name) {
                return Err(VolumeError::Busy(name.to_string()));
            }
            let m = meta::read(&*shared.backend, name)?;
            st.open.insert(name.to_string());
            m
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
        let (mapped, head) = load(backend, &m)?;
        Ok(Volume {
            reg,
            size: m.size,
            base,
            head: Mutex::new(HeadState { head, failed: None }),
            mapped: RwLock::new(mapped),
        })
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.reg.name
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The pool this volume belongs to.
    pub fn pool(&self) -> Pool {
        Pool::from_shared(self.reg.shared.clone())
    }

    fn backend(&self) -> &dyn Backend {
        &*self.reg.shared.backend
    }

    /// Figures about the volume.
    pub fn stats(&self) -> VolumeStats {
        let h = lock(&self.head);
        VolumeStats {
            layers: self.read_mapped().ids.clone(),
            head_bytes: h.head.next.end,
            unflushed_records: h.head.pending,
        }
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let m = self.read_mapped();
        if offset % BS == 0 && buf.len() as u64 % BS == 0 {
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
        let mut h = self.lock_head()?;
        self.write_locked(&mut h, offset, data)
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
            return self.write_locked(&mut h, offset, &vec![0u8; len as usize]);
        }
        if offset < first * BS {
            self.write_locked(&mut h, offset, &vec![0u8; (first * BS - offset) as usize])?;
        }
        if stop * BS < end {
            self.write_locked(&mut h, stop * BS, &vec![0u8; (end - stop * BS) as usize])?;
        }
        let mut staged = h.head.stage();
        staged.push(Kind::Discard, first, stop - first, &[]);
        self.append(&mut h, staged)?;
        self.write_mapped().index.zero(first, stop - first);
        Ok(())
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
    /// head. Costs the same whatever the amount of data.
    pub fn snapshot(&self, name: &str) -> Result<()> {
        meta::check_name(name)?;
        let mut h = self.lock_head()?;
        self.flush_locked(&mut h)?;
        let mut st = lock(&self.reg.shared.state);
        let mut m = self.read_meta()?;
        if m.snapshot(name).is_some() {
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
        let id = st.new_layer_id();
        let file = layer::create(self.backend(), id)?;
        let layers = m.layers.clone();
        m.snapshots.push(SnapshotMeta {
            name: name.to_string(),
            created: meta::now(),
            layers,
        });
        m.layers.push(id);
        // Whether the new metadata is in force is unknown if this fails:
        // the head may be sealed, so stop writing it.
        meta::write(self.backend(), self.name(), &m).map_err(|e| self.fail_with(&mut h, e))?;
        drop(st);
        let mut mp = self.write_mapped();
        mp.ids.push(id);
        mp.files.push(file.clone());
        h.head = Head::new(
            id,
            file,
            Pos {
                end: LAYER_HEADER_LEN,
                seq: 0,
            },
        );
        Ok(())
    }

    /// Makes the volume's stack snapshot `name`'s layers plus a new empty
    /// head. Writes since the snapshot are dropped (their layer is freed by
    /// [`Pool::reclaim`]). Durable when it returns.
    pub fn rollback(&self, name: &str) -> Result<()> {
        let mut h = self.lock_head()?;
        let mut st = lock(&self.reg.shared.state);
        let mut m = self.read_meta()?;
        let snap = m
            .snapshot(name)
            .ok_or_else(|| VolumeError::SnapshotNotFound {
                volume: self.name().to_string(),
                snapshot: name.to_string(),
            })?;
        let mut layers = snap.layers.clone();
        let id = st.new_layer_id();
        layer::create(self.backend(), id)?;
        layers.push(id);
        m.layers = layers;
        meta::write(self.backend(), self.name(), &m).map_err(|e| self.fail_with(&mut h, e))?;
        drop(st);
        let (mapped, head) = load(self.backend(), &m).map_err(|e| self.fail_with(&mut h, e))?;
        *self.write_mapped() = mapped;
        h.head = head;
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

    /// Deletes snapshot `name` (see [`Pool::delete_snapshot`]).
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.pool().delete_snapshot(self.name(), name)
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
    fn lock_head(&self) -> Result<std::sync::MutexGuard<'_, HeadState>> {
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
        if m.layers != self.read_mapped().ids {
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

    fn append(&self, h: &mut HeadState, staged: Staged) -> Result<()> {
        let ctx = format!("writing layer {}", h.head.id);
        h.head
            .append(staged)
            .map_err(|e| self.fail_with(h, io_err(ctx)(e)))
    }

    fn write_locked(&self, h: &mut HeadState, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let (first, last) = (offset / BS, (end - 1) / BS);
        let mut block = vec![0u8; BS as usize];
        let mut b = first;
        while b <= last {
            let group_end = (b + GROUP).min(last + 1);
            let mut staged = h.head.stage();
            let mut placed = Vec::with_capacity((group_end - b) as usize);
            for x in b..group_end {
                let start = x * BS;
                let (lo, hi) = (offset.max(start), end.min(start + BS));
                let part = &data[(lo - offset) as usize..(hi - offset) as usize];
                let payload = if part.len() as u64 == BS {
                    part
                } else {
                    // A partial block: read, modify, write.
                    self.read_blocks(&self.read_mapped(), x, &mut block)?;
                    block[(lo - start) as usize..(hi - start) as usize].copy_from_slice(part);
                    &block[..]
                };
                let (at, crc) = staged.push(Kind::Write, x, 1, payload);
                placed.push((x, at, crc));
            }
            self.append(h, staged)?;
            let mut m = self.write_mapped();
            let layer = (m.files.len() - 1) as u32;
            for (x, offset, crc) in placed {
                m.index.set(x, Lookup::Data { layer, offset, crc });
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
                Lookup::Data { layer, offset, .. } => {
                    // A run of blocks written together: one read.
                    let mut j = i + 1;
                    while j < n && j - i < GROUP {
                        match m.index.get(first + j) {
                            Lookup::Data {
                                layer: l,
                                offset: o,
                                ..
                            } if l == layer && o == offset + (j - i) * WRITE_RECORD_LEN => {}
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

    /// Reads `count` blocks from `first`, laid out one record apart in one
    /// layer, and checks their CRCs.
    fn read_run(&self, m: &Mapped, first: u64, count: u64, out: &mut [u8]) -> Result<()> {
        let Lookup::Data { layer, offset, .. } = m.index.get(first) else {
            unreachable!()
        };
        let file = &m.files[layer as usize];
        let id = m.ids[layer as usize];
        let ctx = || format!("reading layer {id}");
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

/// Opens the layers of `m` and builds the merged index, bottom to top. The
/// head is replayed to its last valid commit and cut there.
fn load(backend: &dyn Backend, m: &VolumeMeta) -> Result<(Mapped, Head)> {
    let blocks = m.size / BS;
    let mut index = Index::new(blocks);
    let mut files = Vec::with_capacity(m.layers.len());
    let top = m.layers.len() - 1;
    let mut head = None;
    for (slot, &id) in m.layers.iter().enumerate() {
        let is_head = slot == top;
        let file = backend.open(&layer_path(id), is_head).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VolumeError::Damaged(format!("layer {id} is missing"))
            } else {
                io_err(format!("opening layer {id}"))(e)
            }
        })?;
        let mut apply = |r: Rec| match r {
            Rec::Write { block, offset, crc } => index.set(
                block,
                Lookup::Data {
                    layer: slot as u32,
                    offset,
                    crc,
                },
            ),
            Rec::Discard { first, count } => index.zero(first, count),
        };
        let r = layer::replay(&*file, id, blocks, &mut apply)?;
        if is_head {
            let next = if layer::verify(&*file, id, &r.last)? {
                r.last.iter().copied().for_each(&mut apply);
                r.end
            } else {
                r.last_start
            };
            // Cut the uncommitted tail, and sync even when there is none:
            // the replayed commits may be in the page cache only (a flush
            // whose sync failed), and what a volume shows must be durable
            // before anything is built on it.
            let ctx = || format!("recovering layer {id}");
            if r.len > next.end {
                file.set_len(next.end).map_err(io_err(ctx()))?;
            }
            file.sync().map_err(io_err(ctx()))?;
            head = Some(Head::new(id, file.clone(), next));
        } else {
            r.last.iter().copied().for_each(&mut apply);
            if r.len != r.end.end {
                return Err(VolumeError::Damaged(format!(
                    "sealed layer {id} has {} bytes after its last commit",
                    r.len - r.end.end
                )));
            }
        }
        files.push(file);
    }
    let head = head.expect("a stack has a head");
    Ok((
        Mapped {
            ids: m.layers.clone(),
            files,
            index,
        },
        head,
    ))
}
