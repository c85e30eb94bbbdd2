//! The byte layout of layer data files (`docs/volume-format.md`, "Layer data
//! files"): a 32-byte layer header, then records, each a 40-byte record
//! header followed, for a write, by one block of payload.
//!
//! Layers of a filtered volume ("Filtered volumes") are format version 2:
//! their writes are [`Kind::FilteredWrite`] records, whose payload is what
//! the volume's filter chain made of the block (any length up to
//! [`MAX_STORED`], given by the record's `count`).
//!
//! Every integer is little-endian; every header carries a CRC-32C of its own
//! bytes, so a torn or stale header is recognised and never trusted.

use super::crc::crc32c;

/// The size of every volume block, and of the payload of a write record.
pub const BLOCK_SIZE: u32 = 4096;

/// `BLOCK_SIZE` as a `u64`, for offset arithmetic.
pub(crate) const BS: u64 = BLOCK_SIZE as u64;

/// The format version written in layer headers and volume metadata.
pub(crate) const FORMAT: u32 = 1;

/// The format version of a filtered volume's metadata and layers.
pub(crate) const FORMAT_FILTERED: u32 = 2;

/// The longest stored payload of a filtered block. The merged index keeps
/// a payload's length in 16 bits beside its offset (see `index.rs`).
pub(crate) const MAX_STORED: u64 = 0xFFFF;

/// Layer files never grow past this (256 TiB): the merged index keeps
/// payload offsets in 48 bits.
pub(crate) const MAX_LAYER_LEN: u64 = 1 << 48;

/// Length of the header at the start of a layer data file.
pub(crate) const LAYER_HEADER_LEN: u64 = 32;

/// Length of a record header.
pub(crate) const RECORD_HEADER_LEN: u64 = 40;

/// Bytes a write record takes in the data file: header and payload.
pub(crate) const WRITE_RECORD_LEN: u64 = RECORD_HEADER_LEN + BS;

const LAYER_MAGIC: [u8; 8] = *b"FKVLAYR1";
const RECORD_MAGIC: [u8; 4] = *b"FKVR";

/// The header at offset 0 of a layer data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerHeader {
    /// The layer's ID (its file is `layers/<id>.data`).
    pub id: u64,
    /// A layer of a filtered volume (format version 2).
    pub filtered: bool,
}

impl LayerHeader {
    /// The 32 bytes of this header.
    pub fn encode(&self) -> [u8; LAYER_HEADER_LEN as usize] {
        let mut b = [0u8; LAYER_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&LAYER_MAGIC);
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..20].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        let version = if self.filtered {
            FORMAT_FILTERED
        } else {
            FORMAT
        };
        b[20..24].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header; `Err` says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<LayerHeader, &'static str> {
        if b.len() < LAYER_HEADER_LEN as usize || b[0..8] != LAYER_MAGIC {
            return Err("not a fukastor layer (bad magic)");
        }
        if le32(&b[28..32]) != crc32c(&b[0..28]) {
            return Err("layer header checksum mismatch");
        }
        let filtered = match le32(&b[20..24]) {
            FORMAT => false,
            FORMAT_FILTERED => true,
            _ => return Err("unknown layer format version"),
        };
        if le32(&b[16..20]) != BLOCK_SIZE || le32(&b[24..28]) != 0 {
            return Err("unsupported block size");
        }
        Ok(LayerHeader {
            id: le64(&b[8..16]),
            filtered,
        })
    }
}

/// What a record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One block of data follows the header.
    Write = 1,
    /// A range of blocks reads as zeros from now on.
    Discard = 2,
    /// Every record since the previous commit is durable and valid.
    Commit = 3,
    /// A filtered block follows the header: `count` bytes, what the
    /// volume's filter chain encoded (only in filtered layers).
    FilteredWrite = 4,
}

/// A record header. Field meanings depend on `kind`:
///
/// | kind | `block` | `count` | `crc` |
/// |---|---|---|---|
/// | write | the virtual block | 1 | CRC-32C of the payload |
/// | discard | the first block | number of blocks | 0 |
/// | commit | 0 | records in the batch it commits | chain CRC of the batch |
/// | filtered write | the virtual block | stored payload length | CRC-32C of the stored payload |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub kind: Kind,
    /// Position of the record in its layer: 0, 1, 2, …
    pub seq: u64,
    pub block: u64,
    pub count: u64,
    pub crc: u32,
}

impl RecordHeader {
    /// The 40 bytes of this header, and their CRC-32C (bytes 36..40).
    pub fn encode(&self) -> ([u8; RECORD_HEADER_LEN as usize], u32) {
        let mut b = [0u8; RECORD_HEADER_LEN as usize];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4] = self.kind as u8;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.block.to_le_bytes());
        b[24..32].copy_from_slice(&self.count.to_le_bytes());
        b[32..36].copy_from_slice(&self.crc.to_le_bytes());
        let hcrc = crc32c(&b[0..36]);
        b[36..40].copy_from_slice(&hcrc.to_le_bytes());
        (b, hcrc)
    }

    /// Decodes a header and returns it with its own CRC, or `None` when the
    /// bytes are not a valid header (torn, stale or never written).
    pub fn decode(b: &[u8]) -> Option<(RecordHeader, u32)> {
        if b.len() < RECORD_HEADER_LEN as usize || b[0..4] != RECORD_MAGIC {
            return None;
        }
        let hcrc = le32(&b[36..40]);
        if hcrc != crc32c(&b[0..36]) || b[5..8] != [0, 0, 0] {
            return None;
        }
        let kind = match b[4] {
            1 => Kind::Write,
            2 => Kind::Discard,
            3 => Kind::Commit,
            4 => Kind::FilteredWrite,
            _ => return None,
        };
        let h = RecordHeader {
            kind,
            seq: le64(&b[8..16]),
            block: le64(&b[16..24]),
            count: le64(&b[24..32]),
            crc: le32(&b[32..36]),
        };
        Some((h, hcrc))
    }
}

/// A little-endian u32 from the first 4 bytes of `b`.
pub(crate) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A little-endian u64 from the first 8 bytes of `b`.
pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_header_round_trip_and_damage() {
        for filtered in [false, true] {
            let h = LayerHeader {
                id: 0x0102_0304_0506,
                filtered,
            };
            let b = h.encode();
            assert_eq!(&b[0..8], b"FKVLAYR1");
            assert_eq!(&b[8..16], &[6, 5, 4, 3, 2, 1, 0, 0]);
            assert_eq!(b[20], if filtered { 2 } else { 1 });
            assert_eq!(LayerHeader::decode(&b), Ok(h));
            for i in 0..b.len() {
                let mut bad = b;
                bad[i] ^= 0x10;
                assert!(LayerHeader::decode(&bad).is_err(), "flip in byte {i}");
            }
        }
    }

    #[test]
    fn record_header_round_trip_and_damage() {
        let h = RecordHeader {
            kind: Kind::Discard,
            seq: 7,
            block: 1 << 40,
            count: 3,
            crc: 0xdead_beef,
        };
        let (b, hcrc) = h.encode();
        assert_eq!(&b[0..5], b"FKVR\x02");
        assert_eq!(&b[8..16], &7u64.to_le_bytes());
        assert_eq!(RecordHeader::decode(&b), Some((h, hcrc)));
        for i in 0..b.len() {
            let mut bad = b;
            bad[i] ^= 0x01;
            assert_eq!(RecordHeader::decode(&bad), None, "flip in byte {i}");
        }
        assert_eq!(RecordHeader::decode(&[0u8; 40]), None);
        assert_eq!(RecordHeader::decode(&b[..39]), None);
    }
}
