//! Layer index files (`layers/<id>.index`, `docs/volume-format.md`, "Layer
//! index files"): what a sealed layer holds, without its payloads, so that
//! opening a volume reads a few bytes per block instead of every layer.
//!
//! A layer's **net content** is what applying its records in order leaves:
//! every block is untouched, zero (last touched by a discard) or data (last
//! touched by a write, at some payload offset with some CRC). An index file
//! holds it as the union of the layer's discard ranges and the data blocks;
//! applying "zero every range, then point every entry at its payload" gives
//! what replay gives (a block both in a range and in the entries was
//! discarded, then written again).
//!
//! An index is an accelerator, never the only copy of anything: it is
//! written after the layer's data is durable, checked (its own CRCs, the
//! layer's length, and the CRC of the layer's last commit record) before it
//! is used, and a missing, damaged or stale one only costs a replay of the
//! layer, after which it is written again.
//!
//! [`Net`] computes net contents: of one layer while replaying it, and of a
//! run of layers when compaction merges them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::backend::{Backend, BackendFile};
use super::crc::crc32c;
use super::format::{
    BS, Kind, LAYER_HEADER_LEN, LayerHeader, MAX_LAYER_LEN, MAX_STORED, RECORD_HEADER_LEN,
    RecordHeader,
};
use super::index::CHUNK;

const MAGIC: [u8; 8] = *b"FKVINDX1";
const VERSION: u32 = 1;
/// The version of the index of a filtered layer: entries carry the stored
/// payload's length.
const VERSION_FILTERED: u32 = 2;
/// Length of an index file's header.
pub(crate) const HEADER_LEN: usize = 64;
const RANGE_LEN: usize = 16;
const ENTRY_LEN: usize = 20;
const ENTRY_LEN_FILTERED: usize = 24;

/// The path of a layer's index file, relative to the pool.
pub(crate) fn index_path(id: u64) -> PathBuf {
    PathBuf::from(format!("layers/{id}.index"))
}

/// A data block of a layer: its payload's offset in the data file, its
/// length (4096 unless filtered) and its CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub block: u64,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

/// The net content of a sealed layer, and what binds it to the data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerIndex {
    /// The layer.
    pub id: u64,
    /// A filtered layer (index format version 2).
    pub filtered: bool,
    /// The data file's length (the end of its last commit record).
    pub len: u64,
    /// The header CRC of its last commit record (0 for a layer without
    /// records).
    pub last_crc: u32,
    /// Write records in the layer, live or overwritten (for garbage figures).
    pub writes: u64,
    /// Discard ranges `(first, count)`: sorted, disjoint, not adjacent.
    pub discards: Vec<(u64, u64)>,
    /// Data blocks, by increasing block.
    pub entries: Vec<Entry>,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl LayerIndex {
    /// The bytes of the index file.
    pub fn encode(&self) -> Vec<u8> {
        let (version, entry_len) = if self.filtered {
            (VERSION_FILTERED, ENTRY_LEN_FILTERED)
        } else {
            (VERSION, ENTRY_LEN)
        };
        let body_len = self.discards.len() * RANGE_LEN + self.entries.len() * entry_len;
        let mut b = vec![0u8; HEADER_LEN];
        b.reserve(body_len);
        for &(first, count) in &self.discards {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
        }
        for e in &self.entries {
            b.extend_from_slice(&e.block.to_le_bytes());
            b.extend_from_slice(&e.offset.to_le_bytes());
            b.extend_from_slice(&e.crc.to_le_bytes());
            if self.filtered {
                b.extend_from_slice(&e.len.to_le_bytes());
            }
        }
        let body_crc = crc32c(&b[HEADER_LEN..]);
        b[0..8].copy_from_slice(&MAGIC);
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.last_crc.to_le_bytes());
        b[28..32].copy_from_slice(&version.to_le_bytes());
        b[32..40].copy_from_slice(&self.writes.to_le_bytes());
        b[40..48].copy_from_slice(&(self.discards.len() as u64).to_le_bytes());
        b[48..56].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        b[56..60].copy_from_slice(&body_crc.to_le_bytes());
        let hcrc = crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&hcrc.to_le_bytes());
        b
    }

    /// Decodes an index file and checks it on its own: checksums, lengths,
    /// order. `Err` says what is wrong.
    pub fn decode(b: &[u8]) -> Result<LayerIndex, String> {
        if b.len() < HEADER_LEN || b[0..8] != MAGIC {
            return Err("not a layer index (bad magic)".into());
        }
        if le32(&b[60..64]) != crc32c(&b[0..60]) {
            return Err("header checksum mismatch".into());
        }
        let (filtered, entry_len) = match le32(&b[28..32]) {
            VERSION => (false, ENTRY_LEN),
            VERSION_FILTERED => (true, ENTRY_LEN_FILTERED),
            _ => return Err("unknown index format version".into()),
        };
        let (nd, ne) = (le64(&b[40..48]), le64(&b[48..56]));
        let body = (nd as u128) * RANGE_LEN as u128 + (ne as u128) * entry_len as u128;
        if body != (b.len() - HEADER_LEN) as u128 {
            return Err("length does not match its counts".into());
        }
        if le32(&b[56..60]) != crc32c(&b[HEADER_LEN..]) {
            return Err("body checksum mismatch".into());
        }
        let mut at = HEADER_LEN;
        let mut discards = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            discards.push((le64(&b[at..]), le64(&b[at + 8..])));
            at += RANGE_LEN;
        }
        let mut entries = Vec::with_capacity(ne as usize);
        for _ in 0..ne {
            entries.push(Entry {
                block: le64(&b[at..]),
                offset: le64(&b[at + 8..]),
                crc: le32(&b[at + 16..]),
                len: if filtered {
                    le32(&b[at + 20..])
                } else {
                    BS as u32
                },
            });
            at += entry_len;
        }
        Ok(LayerIndex {
            id: le64(&b[8..16]),
            filtered,
            len: le64(&b[16..24]),
            last_crc: le32(&b[24..28]),
            writes: le64(&b[32..40]),
            discards,
            entries,
        })
    }

    /// Checks that this index can describe layer `id` of a volume of
    /// `blocks` blocks (filtered or not): sorted, within the volume and the
    /// data file.
    fn check(&self, id: u64, blocks: u64, filtered: bool) -> Result<(), String> {
        if self.id != id {
            return Err(format!("it names layer {}", self.id));
        }
        if self.filtered != filtered || self.len > MAX_LAYER_LEN {
            return Err("it describes another kind of layer".into());
        }
        if self.len < LAYER_HEADER_LEN || self.writes < self.entries.len() as u64 {
            return Err("impossible counts".into());
        }
        let mut next = 0u64; // the first block a range may start at
        for &(first, count) in &self.discards {
            let end = first.checked_add(count).filter(|&e| e <= blocks);
            match end {
                Some(end) if count > 0 && first >= next => next = end + 1,
                _ => return Err("a discard range out of order or outside the volume".into()),
            }
        }
        let lowest = LAYER_HEADER_LEN + RECORD_HEADER_LEN;
        let mut prev = None;
        for e in &self.entries {
            let len_ok = if filtered {
                u64::from(e.len) <= MAX_STORED
            } else {
                u64::from(e.len) == BS
            };
            let sound = e.block < blocks
                && prev.is_none_or(|p| e.block > p)
                && e.offset >= lowest
                && len_ok
                && e.offset
                    .checked_add(u64::from(e.len))
                    .is_some_and(|end| end <= self.len);
            if !sound {
                return Err(format!("entry for block {} is impossible", e.block));
            }
            prev = Some(e.block);
        }
        Ok(())
    }
}

/// Reads the index of sealed layer `id` (data file `data`, `data_len`
/// bytes, of a volume of `blocks` blocks, `filtered` or not) and checks
/// that it describes that file. `Err` says why it cannot be used: the
/// caller replays the layer.
pub(crate) fn read(
    backend: &dyn Backend,
    id: u64,
    blocks: u64,
    filtered: bool,
    data: &dyn BackendFile,
    data_len: u64,
) -> Result<LayerIndex, String> {
    let err = |e: std::io::Error| e.to_string();
    let file = backend.open(&index_path(id), false).map_err(err)?;
    let len = file.len().map_err(err)?;
    // No sound index is larger than this: do not allocate what damage says.
    let limit = HEADER_LEN as u64 + blocks.saturating_mul((RANGE_LEN + ENTRY_LEN_FILTERED) as u64);
    if len > limit {
        return Err("it is too large".into());
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_at(&mut bytes, 0).map_err(err)?;
    let ix = LayerIndex::decode(&bytes)?;
    ix.check(id, blocks, filtered)?;
    if ix.len != data_len {
        return Err(format!(
            "it describes {} bytes, the layer has {data_len}",
            ix.len
        ));
    }
    // Bind it to the data: the layer's last commit record (or its header,
    // for a layer without records) is the one the index was made from.
    if ix.len == LAYER_HEADER_LEN {
        let mut h = [0u8; LAYER_HEADER_LEN as usize];
        data.read_at(&mut h, 0).map_err(err)?;
        match LayerHeader::decode(&h) {
            Ok(h) if h.id == id && h.filtered == filtered && ix.last_crc == 0 => {}
            _ => return Err("the layer's header does not match".into()),
        }
    } else {
        let mut r = [0u8; RECORD_HEADER_LEN as usize];
        data.read_at(&mut r, ix.len - RECORD_HEADER_LEN)
            .map_err(err)?;
        match RecordHeader::decode(&r) {
            Some((h, hcrc)) if h.kind == Kind::Commit && hcrc == ix.last_crc => {}
            _ => return Err("the layer's last commit record does not match".into()),
        }
    }
    Ok(ix)
}

/// Writes (or replaces) the index file of `ix.id` and syncs it. Its name is
/// not synced: an index lost in a crash costs a replay, nothing more.
pub(crate) fn write(backend: &dyn Backend, ix: &LayerIndex) -> std::io::Result<()> {
    let file = backend.create(&index_path(ix.id))?;
    file.write_at(&ix.encode(), 0)?;
    file.sync()
}

/// Sorts ranges `(first, count)` and merges overlapping or adjacent ones.
pub(crate) fn coalesce(ranges: &mut Vec<(u64, u64)>) {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(first, count) in ranges.iter() {
        match out.last_mut() {
            Some((f, c)) if first <= *f + *c => *c = (*c).max(first + count - *f),
            _ => out.push((first, count)),
        }
    }
    *ranges = out;
}

/// One block of a [`Net`]: `offset == 0` means none.
#[derive(Debug, Clone, Copy, Default)]
struct NetSlot {
    offset: u64,
    crc: u32,
    src: u32,
    len: u32,
}

/// A data block of a net content, and the layer (`src`) holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetEntry {
    pub block: u64,
    pub src: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

/// The net content of records or layers applied in order: data blocks (in
/// 4 MiB chunks of slots, 24 bytes a block, only where something was
/// written) and the union of discard ranges.
#[derive(Debug, Default)]
pub(crate) struct Net {
    chunks: BTreeMap<u64, Box<[NetSlot]>>,
    discards: Vec<(u64, u64)>,
    coalesced: usize,
}

impl Net {
    /// Block `block` is at `offset` of layer `src` (`len` bytes).
    pub fn write(&mut self, block: u64, src: u32, offset: u64, len: u32, crc: u32) {
        let slots = self
            .chunks
            .entry(block / CHUNK)
            .or_insert_with(|| vec![NetSlot::default(); CHUNK as usize].into_boxed_slice());
        slots[(block % CHUNK) as usize] = NetSlot {
            offset,
            crc,
            src,
            len,
        };
    }

    /// Blocks `first .. first + count` are zeros.
    pub fn discard(&mut self, first: u64, count: u64) {
        let end = first + count;
        for (&c, slots) in self.chunks.range_mut(first / CHUNK..=(end - 1) / CHUNK) {
            let (lo, hi) = ((c * CHUNK).max(first), ((c + 1) * CHUNK).min(end));
            slots[(lo - c * CHUNK) as usize..(hi - c * CHUNK) as usize].fill(NetSlot::default());
        }
        self.discards.push((first, count));
        if self.discards.len() > 64 && self.discards.len() > 2 * self.coalesced {
            coalesce(&mut self.discards);
            self.coalesced = self.discards.len();
        }
    }

    /// Applies layer `src`'s net content on top.
    pub fn apply(&mut self, ix: &LayerIndex, src: u32) {
        for &(first, count) in &ix.discards {
            self.discard(first, count);
        }
        for e in &ix.entries {
            self.write(e.block, src, e.offset, e.len, e.crc);
        }
    }

    /// The discard ranges, coalesced, and the data blocks in block order
    /// (each chunk is freed as it is handed over).
    pub fn finish(self) -> (Vec<(u64, u64)>, impl Iterator<Item = NetEntry>) {
        let Net {
            mut chunks,
            mut discards,
            ..
        } = self;
        coalesce(&mut discards);
        let chunks = std::iter::from_fn(move || chunks.pop_first());
        let entries = chunks.flat_map(|(c, slots)| {
            slots
                .into_vec()
                .into_iter()
                .enumerate()
                .filter(|(_, s)| s.offset != 0)
                .map(move |(i, s)| NetEntry {
                    block: c * CHUNK + i as u64,
                    src: s.src,
                    offset: s.offset,
                    len: s.len,
                    crc: s.crc,
                })
        });
        (discards, entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerIndex {
        LayerIndex {
            id: 7,
            filtered: false,
            len: 32 + 3 * 4136 + 40 + 40,
            last_crc: 0xabcd_ef01,
            writes: 3,
            discards: vec![(10, 5), (100, 1)],
            entries: vec![
                Entry {
                    block: 1,
                    offset: 72,
                    len: 4096,
                    crc: 1,
                },
                Entry {
                    block: 12,
                    offset: 72 + 4136,
                    len: 4096,
                    crc: 2,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let ix = sample();
        let b = ix.encode();
        assert_eq!(b.len(), HEADER_LEN + 2 * RANGE_LEN + 2 * ENTRY_LEN);
        assert_eq!(&b[0..8], b"FKVINDX1");
        assert_eq!(LayerIndex::decode(&b).as_ref(), Ok(&ix));
        assert_eq!(ix.check(7, 200, false), Ok(()));
        assert!(ix.check(8, 200, false).is_err(), "another layer");
        assert!(ix.check(7, 100, false).is_err(), "a range past the volume");
        assert!(ix.check(7, 200, true).is_err(), "not a filtered layer");
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x04;
            assert!(LayerIndex::decode(&bad).is_err(), "flip in byte {i}");
        }
        assert!(LayerIndex::decode(&b[..b.len() - 1]).is_err());
        let mut unsorted = ix.clone();
        unsorted.entries.swap(0, 1);
        assert!(unsorted.check(7, 200, false).is_err());
        let mut adjacent = ix.clone();
        adjacent.discards = vec![(10, 5), (15, 1)];
        assert!(
            adjacent.check(7, 200, false).is_err(),
            "ranges are coalesced"
        );

        // A filtered layer's index: 24-byte entries with the stored length.
        let mut f = ix.clone();
        f.filtered = true;
        f.len = 1 << 20;
        f.entries[0].len = 17;
        f.entries[1].len = 0xFFFF;
        let b = f.encode();
        assert_eq!(b.len(), HEADER_LEN + 2 * RANGE_LEN + 2 * ENTRY_LEN_FILTERED);
        assert_eq!(b[28], 2, "version 2");
        assert_eq!(LayerIndex::decode(&b).as_ref(), Ok(&f));
        assert_eq!(f.check(7, 200, true), Ok(()));
        assert!(f.check(7, 200, false).is_err(), "a filtered layer");
        f.entries[1].offset = f.len - 0xFFFF + 1;
        assert!(f.check(7, 200, true).is_err(), "a payload past the layer");
    }

    #[test]
    fn coalescing_and_net_content() {
        let mut r = vec![(10, 5), (0, 2), (15, 1), (2, 1), (30, 3), (31, 1)];
        coalesce(&mut r);
        assert_eq!(r, vec![(0, 3), (10, 6), (30, 3)]);

        let mut net = Net::default();
        net.write(5, 0, 100, 4096, 1);
        net.write(CHUNK + 5, 0, 200, 4096, 2);
        net.discard(4, CHUNK); // kills 5, not CHUNK + 5
        net.write(6, 1, 300, 77, 3); // discarded, then written again
        let (discards, entries) = net.finish();
        let entries: Vec<NetEntry> = entries.collect();
        assert_eq!(discards, vec![(4, CHUNK)]);
        assert_eq!(
            entries,
            vec![
                NetEntry {
                    block: 6,
                    src: 1,
                    offset: 300,
                    len: 77,
                    crc: 3
                },
                NetEntry {
                    block: CHUNK + 5,
                    src: 0,
                    offset: 200,
                    len: 4096,
                    crc: 2
                },
            ]
        );
    }
}
