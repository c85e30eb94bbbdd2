//! Compaction's writer: a new layer holding only the net content of a run
//! of sealed layers (`docs/volume-format.md`, "Compaction").
//!
//! The run's layers are merged through their index files ([`Net`]): a block
//! whose last record in the run is a write is copied once, from wherever it
//! is, in block order (so blocks next to each other on the volume are next
//! to each other in the new layer, and read back with one `pread`); the
//! run's discard ranges become discard records, written first, so that they
//! keep masking the layers and the base below the run. A block that a
//! sealed layer above the run holds is not copied: the run's record of it
//! can never be read again (see `docs/volume-format.md`). Every copied block
//! is checked against its CRC on the way (a damaged block stops compaction
//! with FK0710 rather than being laundered under a fresh checksum).
//!
//! A filtered volume's blocks are decoded (checked by the chain, a replica
//! served if the chain has one) and encoded again for the new layer: the
//! filter context names the layer a block is in (replicas are kept per
//! layer), so stored bytes are never moved to another layer as they are.
//!
//! The new layer is written as ordinary records and commits, synced once at
//! the end, then its index file, then the directory: when [`build`]
//! returns, the layer is durable and may be named by metadata.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::backend::{Backend, BackendFile};
use super::crc::crc32c;
use super::filtered;
use super::format::{BS, Kind, LAYER_HEADER_LEN, RECORD_HEADER_LEN};
use super::layer::{self, Head, Pos};
use super::layer_index::{self, Entry, LayerIndex, Net, NetEntry};
use super::{Result, VolumeError, io_err};
use crate::filter::Chain;

/// Records between two commit records of the new layer (bounds what a
/// replay of it holds in memory).
const COMMIT_EVERY: u64 = 1024;

/// Most blocks copied with one read and one write (1 MiB).
const GROUP: usize = 256;

/// A layer of the run: its data file and net content.
#[derive(Debug)]
pub(crate) struct Source {
    pub id: u64,
    pub file: Arc<dyn BackendFile>,
    pub index: LayerIndex,
}

/// What the volume being compacted is called and whether to give up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job<'a> {
    pub volume: &'a str,
    pub cancel: &'a AtomicBool,
}

impl Job<'_> {
    pub fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(VolumeError::Abandoned {
                volume: self.volume.to_string(),
                reason: "cancelled".into(),
            });
        }
        Ok(())
    }
}

/// Writes layer `id` holding the net content of `run` (bottom to top),
/// without its discard ranges unless `keep_discards` (nothing below the run
/// to mask), and without the blocks `masked` names (those a sealed layer
/// above the run holds), makes it and its index durable, and returns its
/// file, its index, and for each index entry the CRC of the record it came
/// from. With `chain` (a filtered volume) every block is decoded and
/// encoded again for the new layer.
pub(crate) fn build(
    backend: &dyn Backend,
    id: u64,
    run: &[Source],
    keep_discards: bool,
    masked: &dyn Fn(u64) -> bool,
    job: Job<'_>,
    chain: Option<&Chain>,
) -> Result<(Arc<dyn BackendFile>, LayerIndex, Vec<u32>)> {
    let mut net = Net::default();
    for (k, s) in run.iter().enumerate() {
        net.apply(&s.index, k as u32);
    }
    let (mut discards, live) = net.finish();
    let live = live.filter(|e| !masked(e.block));
    if !keep_discards {
        discards.clear();
    }
    let file = layer::create(backend, id, chain.is_some())?;
    let ctx = || format!("writing layer {id}");
    let start = Pos {
        end: LAYER_HEADER_LEN,
        seq: 0,
    };
    let mut head = Head::new(id, file.clone(), start, 0);

    let mut staged = head.stage();
    for &(first, count) in &discards {
        staged.push(Kind::Discard, first, count, &[]);
        if staged.records() >= COMMIT_EVERY {
            head.append(staged).map_err(io_err(ctx()))?;
            head.commit_unsynced().map_err(io_err(ctx()))?;
            staged = head.stage();
        }
    }
    head.append(staged).map_err(io_err(ctx()))?;

    let mut entries = Vec::new();
    let mut was = Vec::new();
    let mut live = live.peekable();
    let mut group: Vec<NetEntry> = Vec::with_capacity(GROUP);
    let mut span = Vec::new();
    let mut plain = vec![0u8; BS as usize];
    loop {
        // A run of blocks laid out one record after the other in one
        // layer: one read.
        group.clear();
        while let Some(&e) = live.peek() {
            let follows = group.last().is_none_or(|p: &NetEntry| {
                p.src == e.src
                    && e.offset == p.offset + u64::from(p.len) + RECORD_HEADER_LEN
                    && group.len() < GROUP
            });
            if !follows {
                break;
            }
            group.push(e);
            live.next();
        }
        let Some(first) = group.first() else {
            break;
        };
        job.check()?;
        let src = &run[first.src as usize];
        let last = group.last().expect("a group is not empty");
        span.resize(
            (last.offset + u64::from(last.len) - first.offset) as usize,
            0,
        );
        src.file
            .read_at(&mut span, first.offset)
            .map_err(io_err(format!("reading layer {}", src.id)))?;
        let mut staged = head.stage();
        for e in &group {
            let at = (e.offset - first.offset) as usize;
            let payload = &span[at..at + e.len as usize];
            let (offset, len, crc) = match chain {
                None => {
                    if crc32c(payload) != e.crc {
                        return Err(VolumeError::Corrupt {
                            volume: job.volume.to_string(),
                            block: e.block,
                            layer: src.id,
                        });
                    }
                    let (offset, _) = staged.push_with_crc(Kind::Write, e.block, 1, payload, e.crc);
                    (offset, BS as u32, e.crc)
                }
                Some(chain) => {
                    let v = job.volume;
                    filtered::decode(chain, v, src.id, e.block, payload, e.crc, &mut plain)?;
                    let stored = filtered::encode(chain, v, id, e.block, &plain)?;
                    let n = stored.len() as u64;
                    let (offset, crc) = staged.push(Kind::FilteredWrite, e.block, n, &stored);
                    (offset, n as u32, crc)
                }
            };
            entries.push(Entry {
                block: e.block,
                offset,
                len,
                crc,
            });
            was.push(e.crc);
        }
        head.append(staged).map_err(io_err(ctx()))?;
        if let Some(behind) = head.write_behind() {
            behind.run();
        }
        if head.pending >= COMMIT_EVERY {
            head.commit_unsynced().map_err(io_err(ctx()))?;
        }
    }
    head.commit_unsynced().map_err(io_err(ctx()))?;
    file.sync().map_err(io_err(ctx()))?;
    let ix = LayerIndex {
        id,
        filtered: chain.is_some(),
        len: head.next.end,
        last_crc: head.last_crc,
        writes: entries.len() as u64,
        discards,
        entries,
    };
    layer_index::write(backend, &ix).map_err(io_err(format!("writing the index of layer {id}")))?;
    backend
        .sync_dir(Path::new("layers"))
        .map_err(io_err(ctx()))?;
    Ok((file, ix, was))
}
