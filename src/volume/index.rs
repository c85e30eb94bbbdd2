//! The merged index of an open volume: for every virtual block, where its
//! current content is, whatever the number of layers.
//!
//! Layers are applied bottom to top when a volume opens (and after a
//! rollback), and every write or discard updates the index, so a read is one
//! lookup: two array indexings, no walk of the stack.
//!
//! Structure: a two-level radix array. The top level has one entry per chunk
//! of [`CHUNK`] blocks (4 MiB of volume); a chunk is either uniform (all from
//! the base, or all zeros: no memory) or an array of 16-byte slots. A volume
//! of size S costs 16 bytes per 4 MiB of S at the top level plus 16 KiB per
//! chunk holding data; discarding whole chunks frees their arrays. A slot
//! keeps a payload's offset in its low 48 bits and its stored length (4096,
//! or what a filter chain made of the block, at most 65535) in the high 16.
//!
//! The index also counts, for every layer slot, the blocks whose current
//! content it holds (its **live** blocks): a layer's write records minus its
//! live blocks are its garbage, which compaction frees. Keeping the counts
//! costs a comparison per update.

use std::sync::Arc;

use super::layer_index::Entry;

/// Blocks per chunk.
pub(crate) const CHUNK: u64 = 1024;

/// Where a block's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// In no layer: read the base (zeros without a base).
    Base,
    /// Discarded: reads as zeros.
    Zero,
    /// In layer `layer` (a position in the volume's stack) at byte `offset`
    /// of its data file, `len` bytes stored (4096 unless filtered), with
    /// CRC-32C `crc`.
    Data {
        layer: u32,
        offset: u64,
        len: u32,
        crc: u32,
    },
}

/// A packed [`Lookup`]: `layer` holds the stack position, or a marker;
/// `at` the offset (low 48 bits) and the stored length (high 16 bits).
#[derive(Clone, Copy)]
struct Slot {
    at: u64,
    crc: u32,
    layer: u32,
}

const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

const BASE: u32 = u32::MAX;
const ZERO: u32 = u32::MAX - 1;

/// The largest stack position a slot can name.
pub(crate) const MAX_LAYERS: usize = ZERO as usize;

impl Slot {
    fn pack(l: Lookup) -> Slot {
        match l {
            Lookup::Base => Slot {
                at: 0,
                crc: 0,
                layer: BASE,
            },
            Lookup::Zero => Slot {
                at: 0,
                crc: 0,
                layer: ZERO,
            },
            // Offsets stay below 2^48 and lengths below 2^16 (format.rs:
            // MAX_LAYER_LEN, MAX_STORED; replay and index files check both).
            Lookup::Data {
                layer,
                offset,
                len,
                crc,
            } => Slot {
                at: (offset & OFFSET_MASK) | (u64::from(len) << OFFSET_BITS),
                crc,
                layer,
            },
        }
    }
    fn unpack(self) -> Lookup {
        match self.layer {
            BASE => Lookup::Base,
            ZERO => Lookup::Zero,
            layer => Lookup::Data {
                layer,
                offset: self.at & OFFSET_MASK,
                len: (self.at >> OFFSET_BITS) as u32,
                crc: self.crc,
            },
        }
    }
}

/// A chunk's slots are shared copy-on-write ([`Index::freeze`]): an update
/// copies them first (16 KiB) only while a frozen copy still holds them.
enum Chunk {
    Base,
    Zero,
    Map(Arc<[Slot]>),
}

/// Chunks of an index as they were when [`Index::freeze`] took them,
/// shared with the index until it changes them: what a sealed head held,
/// taken under the head lock in time proportional to the number of chunks
/// (not blocks), and turned into index entries later, without any lock.
#[derive(Default)]
pub(crate) struct Frozen(Vec<(u64, Arc<[Slot]>)>);

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen")
            .field("chunks", &self.0.len())
            .finish()
    }
}

impl Frozen {
    /// The blocks held by layer slot `layer` in the frozen chunks, in
    /// block order (the chunks were frozen in increasing order).
    pub fn collect(&self, layer: u32) -> Vec<Entry> {
        let mut out = Vec::new();
        for (chunk, slots) in &self.0 {
            collect_slots(*chunk, slots, layer, &mut out);
        }
        out
    }
}

/// Appends the blocks of chunk `chunk` (its slots) held by `layer`.
fn collect_slots(chunk: u64, slots: &[Slot], layer: u32, out: &mut Vec<Entry>) {
    for (i, s) in slots.iter().enumerate() {
        if s.layer == layer {
            out.push(Entry {
                block: chunk * CHUNK + i as u64,
                offset: s.at & OFFSET_MASK,
                len: (s.at >> OFFSET_BITS) as u32,
                crc: s.crc,
            });
        }
    }
}

/// The merged index of one volume.
pub(crate) struct Index {
    chunks: Vec<Chunk>,
    blocks: u64,
    /// Live blocks per layer slot.
    live: Vec<u64>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mapped = self
            .chunks
            .iter()
            .filter(|c| matches!(c, Chunk::Map(_)))
            .count();
        f.debug_struct("Index")
            .field("blocks", &self.blocks)
            .field("mapped_chunks", &mapped)
            .finish()
    }
}

impl Index {
    /// An index of `blocks` blocks, all reading from the base.
    pub fn new(blocks: u64) -> Index {
        let n = blocks.div_ceil(CHUNK) as usize;
        let mut chunks = Vec::with_capacity(n);
        chunks.resize_with(n, || Chunk::Base);
        Index {
            chunks,
            blocks,
            live: Vec::new(),
        }
    }

    /// The blocks whose current content is in layer slot `layer`.
    pub fn live(&self, layer: u32) -> u64 {
        self.live.get(layer as usize).copied().unwrap_or(0)
    }

    /// Freezes chunks `chunks` (increasing; uniform ones are skipped, they
    /// hold no layer's blocks): costs a reference count per chunk.
    pub fn freeze(&self, chunks: impl IntoIterator<Item = u64>) -> Frozen {
        Frozen(
            chunks
                .into_iter()
                .filter_map(|c| match self.chunks.get(c as usize) {
                    Some(Chunk::Map(slots)) => Some((c, slots.clone())),
                    _ => None,
                })
                .collect(),
        )
    }

    fn uncount(live: &mut [u64], old: Slot) {
        if old.layer < ZERO {
            live[old.layer as usize] -= 1;
        }
    }

    /// Where block `b` is. `b` must be below the volume's block count.
    pub fn get(&self, b: u64) -> Lookup {
        match &self.chunks[(b / CHUNK) as usize] {
            Chunk::Base => Lookup::Base,
            Chunk::Zero => Lookup::Zero,
            Chunk::Map(slots) => slots[(b % CHUNK) as usize].unpack(),
        }
    }

    /// Records where block `b` is now.
    pub fn set(&mut self, b: u64, l: Lookup) {
        let chunk = &mut self.chunks[(b / CHUNK) as usize];
        let slots = match chunk {
            Chunk::Map(slots) => slots,
            uniform => {
                let fill = Slot::pack(match uniform {
                    Chunk::Zero => Lookup::Zero,
                    _ => Lookup::Base,
                });
                *uniform = Chunk::Map(vec![fill; CHUNK as usize].into());
                match uniform {
                    Chunk::Map(slots) => slots,
                    _ => unreachable!(),
                }
            }
        };
        let slot = &mut Arc::make_mut(slots)[(b % CHUNK) as usize];
        Self::uncount(&mut self.live, *slot);
        *slot = Slot::pack(l);
        if let Lookup::Data { layer, .. } = l {
            let layer = layer as usize;
            if self.live.len() <= layer {
                self.live.resize(layer + 1, 0);
            }
            self.live[layer] += 1;
        }
    }

    /// Makes blocks `first .. first + count` read as zeros; whole chunks
    /// become uniform and free their slots.
    pub fn zero(&mut self, first: u64, count: u64) {
        let end = first + count;
        let mut b = first;
        while b < end {
            let chunk_end = ((b / CHUNK + 1) * CHUNK).min(self.blocks);
            if b.is_multiple_of(CHUNK) && chunk_end <= end {
                let old = std::mem::replace(&mut self.chunks[(b / CHUNK) as usize], Chunk::Zero);
                if let Chunk::Map(slots) = old {
                    for s in slots.iter() {
                        Self::uncount(&mut self.live, *s);
                    }
                }
                b = chunk_end;
            } else {
                let stop = chunk_end.min(end);
                if !matches!(self.chunks[(b / CHUNK) as usize], Chunk::Zero) {
                    for x in b..stop {
                        self.set(x, Lookup::Zero);
                    }
                }
                b = stop;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_zero() {
        let blocks = 3 * CHUNK + 5;
        let mut ix = Index::new(blocks);
        assert_eq!(ix.get(0), Lookup::Base);
        assert_eq!(ix.get(blocks - 1), Lookup::Base);
        let d = Lookup::Data {
            layer: 3,
            offset: (1 << 48) - 1,
            len: 0xFFFF,
            crc: 0xabcd,
        };
        ix.set(CHUNK + 7, d);
        assert_eq!(ix.get(CHUNK + 7), d);
        assert_eq!(ix.get(CHUNK + 6), Lookup::Base);
        // A range over a partial chunk, a whole chunk, and a partial chunk.
        ix.zero(CHUNK - 2, CHUNK + 4);
        assert_eq!(ix.get(CHUNK - 3), Lookup::Base);
        assert_eq!(ix.get(CHUNK - 2), Lookup::Zero);
        assert_eq!(ix.get(CHUNK + 7), Lookup::Zero);
        assert_eq!(ix.get(2 * CHUNK + 1), Lookup::Zero);
        assert_eq!(ix.get(2 * CHUNK + 2), Lookup::Base);
        assert!(matches!(ix.chunks[1], Chunk::Zero));
        // Writing into a zeroed chunk keeps its other blocks zero.
        ix.set(CHUNK + 9, d);
        assert_eq!(ix.get(CHUNK + 8), Lookup::Zero);
        assert_eq!(ix.get(CHUNK + 9), d);
        // The last, short chunk.
        ix.zero(3 * CHUNK, 5);
        assert!(
            std::mem::size_of::<Chunk>() <= 24,
            "the top level's cost, in the docs"
        );
        assert_eq!(
            std::mem::size_of::<Slot>(),
            16,
            "a slot's cost, in the docs"
        );
        assert_eq!(ix.get(blocks - 1), Lookup::Zero);
        assert!(matches!(ix.chunks[3], Chunk::Zero));
    }

    #[test]
    fn live_counts_follow_every_update() {
        let mut ix = Index::new(4 * CHUNK);
        let d = |layer, offset| Lookup::Data {
            layer,
            offset,
            len: 4096,
            crc: 0,
        };
        for b in 0..CHUNK + 10 {
            ix.set(b, d(0, b + 1));
        }
        assert_eq!(ix.live(0), CHUNK + 10);
        ix.set(3, d(2, 9)); // overwritten by layer 2
        assert_eq!((ix.live(0), ix.live(1), ix.live(2)), (CHUNK + 9, 0, 1));
        ix.zero(0, CHUNK); // a whole chunk, holding layer 2's block
        assert_eq!((ix.live(0), ix.live(2)), (10, 0));
        ix.zero(CHUNK + 5, 100); // part of a chunk
        assert_eq!(ix.live(0), 5);
        let out = ix.freeze([1]).collect(0);
        assert_eq!(
            out.iter().map(|e| e.block).collect::<Vec<_>>(),
            (CHUNK..CHUNK + 5).collect::<Vec<_>>()
        );
        assert_eq!(out[0].offset, CHUNK + 1);
    }

    #[test]
    fn frozen_chunks_keep_their_content_while_the_index_changes() {
        let mut ix = Index::new(3 * CHUNK);
        let d = |layer, offset| Lookup::Data {
            layer,
            offset,
            len: 4096,
            crc: offset as u32,
        };
        for b in 0..2 * CHUNK {
            ix.set(b, d(0, b + 1));
        }
        let frozen = ix.freeze([0, 1, 2]); // chunk 2 is uniform: skipped
        ix.set(5, d(1, 7)); // copies chunk 0
        ix.zero(CHUNK, CHUNK); // drops chunk 1
        ix.set(CHUNK + 3, d(1, 8));
        let was = frozen.collect(0);
        assert_eq!(was.len() as u64, 2 * CHUNK);
        assert!(was.iter().enumerate().all(|(i, e)| e.block == i as u64
            && e.offset == i as u64 + 1
            && e.crc == i as u32 + 1));
        assert!(frozen.collect(1).is_empty());
        assert_eq!(ix.get(5), d(1, 7));
        assert_eq!(ix.get(6), d(0, 7));
        assert_eq!(ix.get(CHUNK + 2), Lookup::Zero);
        assert_eq!((ix.live(0), ix.live(1)), (CHUNK - 1, 2));
    }
}
