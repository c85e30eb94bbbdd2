//! Layers: creating a layer file, replaying its records, and appending to a
//! head.
//!
//! A layer's valid content is the prefix of its records that ends with its
//! last valid commit record. Replay reads record headers in order and stops
//! at the first header that is torn, stale (wrong sequence number) or
//! missing; a commit counts only if it names the exact number of records
//! since the previous commit and the chain CRC of their header CRCs.
//!
//! Why only the last batch's payloads need checking: a flush `fdatasync`s
//! once, after appending its commit record, and the next write is appended
//! only after that sync returned. So when batch K's commit is found, every
//! batch before K was durable before batch K was written; only batch K may
//! have a durable commit record in front of payload pages that never reached
//! the disk. The head's last batch is read back and checked before it counts.

use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::Arc;

use super::backend::{Backend, BackendFile};
use super::crc::{crc32c, crc32c_append};
use super::format::{
    BS, Kind, LAYER_HEADER_LEN, LayerHeader, MAX_LAYER_LEN, MAX_STORED, RECORD_HEADER_LEN,
    RecordHeader,
};
use super::{Result, VolumeError, io_err};

/// The path of a layer's data file, relative to the pool.
pub(crate) fn layer_path(id: u64) -> PathBuf {
    PathBuf::from(format!("layers/{id}.data"))
}

/// Creates an empty layer file (its header only; format version 2 if
/// `filtered`) and makes it and its name durable.
pub(crate) fn create(
    backend: &dyn Backend,
    id: u64,
    filtered: bool,
) -> Result<Arc<dyn BackendFile>> {
    let file = create_volatile(backend, id, filtered)?;
    let ctx = || format!("creating layer {}", layer_path(id).display());
    file.sync().map_err(io_err(ctx()))?;
    backend.sync_dir("layers".as_ref()).map_err(io_err(ctx()))?;
    Ok(file)
}

/// Creates an empty layer file like [`create`], without making it durable:
/// the head of an ephemeral volume, whose metadata is never synced either.
/// A crash of the machine can leave it torn or empty, or take it away; no
/// durable metadata names it, so it is garbage then (`Pool::reclaim`
/// goes by file names, not headers).
pub(crate) fn create_volatile(
    backend: &dyn Backend,
    id: u64,
    filtered: bool,
) -> Result<Arc<dyn BackendFile>> {
    let path = layer_path(id);
    let ctx = || format!("creating layer {}", path.display());
    let file = backend.create(&path).map_err(io_err(ctx()))?;
    file.write_at(&LayerHeader { id, filtered }.encode(), 0)
        .map_err(io_err(ctx()))?;
    Ok(file)
}

/// One replayed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rec {
    /// Block `block` is at byte `offset` (of the payload), `len` bytes
    /// (`BS` unless filtered), with CRC `crc`.
    Write {
        block: u64,
        offset: u64,
        len: u32,
        crc: u32,
    },
    /// Blocks `first .. first + count` are zeros.
    Discard { first: u64, count: u64 },
}

/// A position in a layer: a byte offset and the sequence number of the
/// record that would start there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub end: u64,
    pub seq: u64,
}

/// What replay found besides the records it handed over.
#[derive(Debug)]
pub(crate) struct Replayed {
    /// The records of the last committed batch, not yet handed over.
    pub last: Vec<Rec>,
    /// Where the last batch starts (the end of the commit before it).
    pub last_start: Pos,
    /// The end of the last valid commit record.
    pub end: Pos,
    /// The header CRC of that commit record (0 when there is none).
    pub end_crc: u32,
    /// The header CRC of the commit record ending at `last_start`.
    pub last_start_crc: u32,
    /// The file's length.
    pub len: u64,
}

/// Reads the layer `id` in `file`, checking its header, and calls `apply`
/// with the records of every committed batch except the last, in order.
/// `blocks` is the volume's size in blocks (records beyond it are damage);
/// `filtered` says whether the volume is filtered (a layer of the other
/// kind, or a write record of the other kind, is damage).
pub(crate) fn replay(
    file: &dyn BackendFile,
    id: u64,
    blocks: u64,
    filtered: bool,
    mut apply: impl FnMut(Rec),
) -> Result<Replayed> {
    let ctx = || format!("reading layer {id}");
    let len = file.len().map_err(io_err(ctx()))?;
    let mut reader = Reader::new(file, len);
    let header = reader.get(0, LAYER_HEADER_LEN).map_err(io_err(ctx()))?;
    match header.map(LayerHeader::decode) {
        Some(Ok(h)) if h.id == id && h.filtered == filtered => {}
        Some(Ok(h)) if h.id == id => {
            let what = if h.filtered {
                "it is a filtered layer, in a volume without filters"
            } else {
                "it is an unfiltered layer, in a filtered volume"
            };
            return Err(damaged(id, what.into()));
        }
        Some(Ok(h)) => return Err(damaged(id, format!("its header names layer {}", h.id))),
        Some(Err(why)) => return Err(damaged(id, why.to_string())),
        None => return Err(damaged(id, "the file is shorter than a header".into())),
    }
    let start = Pos {
        end: LAYER_HEADER_LEN,
        seq: 0,
    };
    let (mut last_start, mut end) = (start, start);
    let (mut last_start_crc, mut end_crc) = (0u32, 0u32);
    let (mut last, mut batch) = (Vec::new(), Vec::new());
    let (mut pos, mut seq, mut chain) = (LAYER_HEADER_LEN, 0u64, 0u32);
    while let Some(bytes) = reader.get(pos, RECORD_HEADER_LEN).map_err(io_err(ctx()))? {
        let Some((h, hcrc)) = RecordHeader::decode(bytes) else {
            break;
        };
        if h.seq != seq {
            break; // a stale record from before a truncation
        }
        let bad = |what: &str| damaged(id, format!("record {seq} at byte {pos}: {what}"));
        match h.kind {
            Kind::Write | Kind::FilteredWrite => {
                if (h.kind == Kind::FilteredWrite) != filtered {
                    return Err(bad("a write record of the wrong kind for the layer"));
                }
                let stored = if filtered { h.count } else { BS };
                if (!filtered && h.count != 1) || stored > MAX_STORED.max(BS) || h.block >= blocks {
                    return Err(bad("write outside the volume"));
                }
                let offset = pos + RECORD_HEADER_LEN;
                if offset + stored > len {
                    break; // torn payload
                }
                if offset + stored > MAX_LAYER_LEN {
                    return Err(bad("past the largest layer"));
                }
                batch.push(Rec::Write {
                    block: h.block,
                    offset,
                    len: stored as u32,
                    crc: h.crc,
                });
                pos = offset + stored;
            }
            Kind::Discard => {
                if h.count == 0 || h.block.checked_add(h.count).is_none_or(|e| e > blocks) {
                    return Err(bad("discard outside the volume"));
                }
                batch.push(Rec::Discard {
                    first: h.block,
                    count: h.count,
                });
                pos += RECORD_HEADER_LEN;
            }
            Kind::Commit => {
                if h.block != 0 || h.count != batch.len() as u64 || h.crc != chain {
                    break; // does not commit what precedes it: not a valid commit
                }
                last.drain(..).for_each(&mut apply);
                last = std::mem::take(&mut batch);
                pos += RECORD_HEADER_LEN;
                last_start = end;
                last_start_crc = end_crc;
                end_crc = hcrc;
                end = Pos {
                    end: pos,
                    seq: seq + 1,
                };
                chain = 0;
                seq += 1;
                continue;
            }
        }
        chain = crc32c_append(chain, &hcrc.to_le_bytes());
        seq += 1;
    }
    Ok(Replayed {
        last,
        last_start,
        end,
        end_crc,
        last_start_crc,
        len,
    })
}

/// Whether every write record of `batch` has a payload matching its CRC.
pub(crate) fn verify(file: &dyn BackendFile, id: u64, batch: &[Rec]) -> Result<bool> {
    let mut buf = Vec::with_capacity(BS as usize);
    for r in batch {
        if let Rec::Write {
            offset, len, crc, ..
        } = *r
        {
            buf.resize(len as usize, 0);
            file.read_at(&mut buf, offset)
                .map_err(io_err(format!("reading layer {id}")))?;
            if crc32c(&buf) != crc {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn damaged(id: u64, what: String) -> VolumeError {
    VolumeError::Damaged(format!("layer {id}: {what}"))
}

/// Sequential reads through a 1 MiB window (replay reads headers in order;
/// the window also holds the payloads between them, which costs nothing
/// more: they share pages with the headers anyway).
struct Reader<'a> {
    file: &'a dyn BackendFile,
    len: u64,
    buf: Vec<u8>,
    start: u64,
}

const WINDOW: u64 = 1 << 20;

impl<'a> Reader<'a> {
    fn new(file: &'a dyn BackendFile, len: u64) -> Self {
        Reader {
            file,
            len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The `n` bytes at `off`, or `None` past the end of the file.
    fn get(&mut self, off: u64, n: u64) -> std::io::Result<Option<&[u8]>> {
        if off + n > self.len {
            return Ok(None);
        }
        if off < self.start || off + n > self.start + self.buf.len() as u64 {
            let size = WINDOW.max(n).min(self.len - off);
            self.buf.resize(size as usize, 0);
            self.start = off;
            self.file.read_at(&mut self.buf, off)?;
        }
        let at = (off - self.start) as usize;
        Ok(Some(&self.buf[at..at + n as usize]))
    }
}

/// The appending end of a volume's head layer.
#[derive(Debug)]
pub(crate) struct Head {
    pub id: u64,
    pub file: Arc<dyn BackendFile>,
    /// Where the next record goes, and its sequence number.
    pub next: Pos,
    /// Records appended since the last commit.
    pub pending: u64,
    /// The chain CRC of those records' header CRCs.
    chain: u32,
    /// The header CRC of the last commit record (0 before the first).
    pub last_crc: u32,
    /// Write-behind: writeback was started for the bytes before `started`
    /// and waited for before `waited` (or they were synced).
    started: u64,
    waited: u64,
}

/// Write-behind step: once this many bytes were appended to a head since
/// writeback was last started, it is started for them, and waited for on
/// everything more than [`WRITE_BEHIND_LAG`] before them. So the writer
/// that crosses a mark leaves at most about 32 MiB of the head unwritten
/// behind it (other writers append meanwhile: 95–181 MB of dirty and
/// in-flight pages were seen system-wide under a stream, against 2.5 GB
/// without), the disk works all along, and a flush's sync (under the head
/// lock, which every writer and a snapshot need) no longer writes
/// gigabytes. The range waited for then leaves the page cache (docs/design.md,
/// "Drop-behind"). Measured in docs/benchmarks.md ("Write-behind").
pub(crate) const WRITE_BEHIND: u64 = 8 << 20;

/// How far before the bytes whose writeback it starts write-behind waits
/// for the writeback of earlier ones.
pub(crate) const WRITE_BEHIND_LAG: u64 = 24 << 20;

impl Head {
    /// A head whose valid content ends at `next`, after a commit record
    /// whose header CRC is `last_crc` (0 when there is none).
    pub fn new(id: u64, file: Arc<dyn BackendFile>, next: Pos, last_crc: u32) -> Head {
        Head {
            id,
            file,
            next,
            pending: 0,
            chain: 0,
            last_crc,
            started: next.end,
            waited: next.end,
        }
    }

    /// Starts a group of records to append with one write.
    pub fn stage<'a>(&self) -> Staged<'a> {
        self.stage_for(0)
    }

    /// [`Head::stage`] with room for the headers and pieces of `blocks`
    /// whole blocks pushed by reference (a write request's group), so that
    /// staging them does not grow its buffers as it goes.
    pub fn stage_for<'a>(&self, blocks: usize) -> Staged<'a> {
        Staged {
            buf: Vec::with_capacity(blocks * RECORD_HEADER_LEN as usize),
            segs: Vec::with_capacity(2 * blocks),
            len: 0,
            at: self.next,
            records: 0,
            chain: self.chain,
        }
    }

    /// Writes a staged group at the end of the layer. On error the head is
    /// unchanged, but the file may hold part of the group (the caller
    /// stops using this head: replay will cut it off).
    pub fn append(&mut self, staged: Staged<'_>) -> std::io::Result<()> {
        debug_assert_eq!(staged.at.end, self.next.end + staged.len);
        if staged.at.end + RECORD_HEADER_LEN > MAX_LAYER_LEN {
            return Err(std::io::Error::other(
                "the layer would grow past 256 TiB: take a snapshot or compact",
            ));
        }
        match staged.segs[..] {
            [] => {}
            [Seg::Own(_)] => self.file.write_at(&staged.buf, self.next.end)?,
            _ => {
                let parts: Vec<IoSlice<'_>> = staged.slices().map(IoSlice::new).collect();
                self.file.write_vectored_at(&parts, self.next.end)?;
            }
        }
        self.next.end += staged.len;
        self.next.seq += staged.records;
        self.pending += staged.records;
        self.chain = staged.chain;
        Ok(())
    }

    /// The write-behind due now ([`WRITE_BEHIND`]), if any, to run with
    /// [`WriteBehind::run`]; the volume runs it after letting go of the
    /// head, so that appends go on while a writer waits for the disk.
    pub fn write_behind(&mut self) -> Option<WriteBehind> {
        let end = self.next.end;
        if end - self.started < WRITE_BEHIND {
            return None;
        }
        let upto = self.started.saturating_sub(WRITE_BEHIND_LAG);
        let w = WriteBehind {
            file: self.file.clone(),
            start: (self.started, end - self.started),
            wait: (upto > self.waited).then(|| (self.waited, upto - self.waited)),
        };
        self.started = end;
        self.waited = self.waited.max(upto);
        Some(w)
    }

    /// Appends a commit record for the pending records and syncs the file.
    /// Does nothing when nothing is pending.
    pub fn commit(&mut self) -> std::io::Result<()> {
        self.commit_with(true)
    }

    /// Appends a commit record without syncing (for a layer written whole
    /// and synced once, by compaction).
    pub fn commit_unsynced(&mut self) -> std::io::Result<()> {
        self.commit_with(false)
    }

    fn commit_with(&mut self, sync: bool) -> std::io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let h = RecordHeader {
            kind: Kind::Commit,
            seq: self.next.seq,
            block: 0,
            count: self.pending,
            crc: self.chain,
        };
        let (bytes, hcrc) = h.encode();
        self.file.write_at(&bytes, self.next.end)?;
        let end = self.next.end + RECORD_HEADER_LEN;
        if sync {
            self.file.sync()?;
            (self.started, self.waited) = (end, end);
        }
        self.next = Pos {
            end,
            seq: self.next.seq + 1,
        };
        self.pending = 0;
        self.chain = 0;
        self.last_crc = hcrc;
        Ok(())
    }
}

/// Write-behind for a range of a head: start writing it back, and wait for
/// an earlier range.
#[derive(Debug)]
pub(crate) struct WriteBehind {
    file: Arc<dyn BackendFile>,
    start: (u64, u64),
    wait: Option<(u64, u64)>,
}

impl WriteBehind {
    /// Starts writeback of its range and waits for the earlier one
    /// ([`BackendFile::write_behind`]; errors are left to the next sync).
    pub fn run(self) {
        self.file.write_behind(self.start, self.wait);
    }
}

/// Records staged for one append: their headers (and the payloads pushed
/// by copy) in one buffer, and the payloads pushed by reference where they
/// are, so that a write request's blocks go to the file without a copy.
#[derive(Debug)]
pub(crate) struct Staged<'a> {
    buf: Vec<u8>,
    /// What to write, in order.
    segs: Vec<Seg<'a>>,
    /// Bytes staged.
    len: u64,
    /// Where the next staged record will be.
    at: Pos,
    records: u64,
    chain: u32,
}

/// A piece of a staged group: a range of its buffer, or a borrowed payload.
#[derive(Debug)]
enum Seg<'a> {
    Own(std::ops::Range<usize>),
    Borrowed(&'a [u8]),
}

impl<'a> Staged<'a> {
    /// Records staged.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The staged bytes, in order.
    fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.segs.iter().map(|s| match s {
            Seg::Own(r) => &self.buf[r.clone()],
            Seg::Borrowed(b) => *b,
        })
    }

    /// Appends `bytes` to the buffer, extending the last segment when it is
    /// the buffer's end.
    fn copy(&mut self, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        match self.segs.last_mut() {
            Some(Seg::Own(r)) if r.end == start => r.end = self.buf.len(),
            _ => self.segs.push(Seg::Own(start..self.buf.len())),
        }
        self.len += bytes.len() as u64;
    }

    /// Stages a record (`payload` is the block of a write, empty otherwise)
    /// and returns the file offset its payload will have.
    pub fn push(&mut self, kind: Kind, block: u64, count: u64, payload: &[u8]) -> (u64, u32) {
        let crc = if matches!(kind, Kind::Write | Kind::FilteredWrite) {
            crc32c(payload)
        } else {
            0
        };
        self.push_with_crc(kind, block, count, payload, crc)
    }

    /// Like [`Staged::push`], with the payload's CRC already known.
    pub fn push_with_crc(
        &mut self,
        kind: Kind,
        block: u64,
        count: u64,
        payload: &[u8],
        crc: u32,
    ) -> (u64, u32) {
        let at = self.header(kind, block, count, payload.len() as u64, crc);
        self.copy(payload);
        (at, crc)
    }

    /// Stages the write record of unfiltered block `block`, whose `payload`
    /// (`BS` bytes, CRC `crc`) is written from where it is, without a copy.
    /// Returns the file offset the payload will have.
    pub fn push_borrowed(&mut self, block: u64, payload: &'a [u8], crc: u32) -> u64 {
        debug_assert_eq!(payload.len() as u64, BS);
        debug_assert_eq!(crc, crc32c(payload));
        let at = self.header(Kind::Write, block, 1, BS, crc);
        self.segs.push(Seg::Borrowed(payload));
        self.len += BS;
        at
    }

    /// Stages a record header for a payload of `n` bytes to follow it;
    /// returns the payload's file offset.
    fn header(&mut self, kind: Kind, block: u64, count: u64, n: u64, crc: u32) -> u64 {
        let h = RecordHeader {
            kind,
            seq: self.at.seq,
            block,
            count,
            crc,
        };
        let (bytes, hcrc) = h.encode();
        self.copy(&bytes);
        let payload_at = self.at.end + RECORD_HEADER_LEN;
        self.at = Pos {
            end: payload_at + n,
            seq: self.at.seq + 1,
        };
        self.records += 1;
        self.chain = crc32c_append(self.chain, &hcrc.to_le_bytes());
        payload_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::backend::Backend;
    use crate::volume::tests::mem::Mem;

    /// Records whose payloads are staged by reference are the same bytes,
    /// offsets and CRCs as records staged by copy, and replay the same.
    #[test]
    fn borrowed_payloads_are_written_like_copied_ones() {
        let blocks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i + 1; BS as usize]).collect();
        let mut files = Vec::new();
        for borrowed in [false, true] {
            let mem = Mem::new(1);
            mem.create_dir("layers".as_ref()).unwrap();
            let file = create(&mem, 7, false).unwrap();
            let start = Pos {
                end: LAYER_HEADER_LEN,
                seq: 0,
            };
            let mut head = Head::new(7, file.clone(), start, 0);
            let mut staged = head.stage();
            let mut placed = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                let x = 10 + i as u64;
                placed.push(if i == 2 {
                    staged.push(Kind::Discard, 100, 3, &[]).0
                } else if borrowed {
                    staged.push_borrowed(x, b, crc32c(b))
                } else {
                    staged.push(Kind::Write, x, 1, b).0
                });
            }
            assert_eq!(staged.records(), 5);
            head.append(staged).unwrap();
            head.commit().unwrap();
            let mut recs = Vec::new();
            let r = replay(&*file, 7, 1000, false, |r| recs.push(r)).unwrap();
            assert!(recs.is_empty());
            assert_eq!(r.last.len(), 5);
            for (i, rec) in r.last.iter().enumerate() {
                if let Rec::Write { offset, crc, .. } = *rec {
                    assert_eq!(offset, placed[i]);
                    assert_eq!(crc, crc32c(&blocks[i]));
                }
            }
            assert!(verify(&*file, 7, &r.last).unwrap());
            files.push(mem.read_file("layers/7.data").unwrap());
        }
        assert_eq!(files[0], files[1]);
    }

    /// What a head asks of its file besides writes: the write-behind calls
    /// and syncs, in order.
    #[derive(Debug, Default)]
    struct Recorder {
        len: std::sync::Mutex<u64>,
        calls: std::sync::Mutex<Vec<(&'static str, u64, u64)>>,
    }

    impl BackendFile for Recorder {
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            unreachable!("the head does not read")
        }
        fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
            let mut len = self.len.lock().unwrap();
            assert_eq!(offset, *len, "the head appends");
            *len += data.len() as u64;
            Ok(())
        }
        fn set_len(&self, _: u64) -> std::io::Result<()> {
            unreachable!()
        }
        fn sync(&self) -> std::io::Result<()> {
            let len = *self.len.lock().unwrap();
            self.calls.lock().unwrap().push(("sync", 0, len));
            Ok(())
        }
        fn len(&self) -> std::io::Result<u64> {
            Ok(*self.len.lock().unwrap())
        }
        fn write_behind(&self, start: (u64, u64), wait: Option<(u64, u64)>) {
            assert!(
                start.0 + start.1 <= *self.len.lock().unwrap(),
                "only written bytes"
            );
            let mut calls = self.calls.lock().unwrap();
            calls.push(("start", start.0, start.1));
            if let Some((offset, len)) = wait {
                calls.push(("wait", offset, len));
            }
        }
    }

    /// Write-behind: writeback is started for every byte appended, in
    /// steps of at least `WRITE_BEHIND`, each range once and in order;
    /// waits cover what lies more than `WRITE_BEHIND_LAG` behind, so the
    /// unwritten tail stays bounded; a synced commit makes waiting for what
    /// it synced needless.
    #[test]
    fn write_behind_covers_every_appended_byte_once() {
        let rec = Arc::new(Recorder::default());
        *rec.len.lock().unwrap() = LAYER_HEADER_LEN;
        let start = Pos {
            end: LAYER_HEADER_LEN,
            seq: 0,
        };
        let mut head = Head::new(3, rec.clone(), start, 0);
        let block = vec![7u8; BS as usize];
        let append = |head: &mut Head, blocks: usize| {
            let mut staged = head.stage_for(blocks);
            for x in 0..blocks as u64 {
                staged.push_borrowed(x, &block, crc32c(&block));
            }
            head.append(staged).unwrap();
            if let Some(w) = head.write_behind() {
                w.run();
            }
        };
        for _ in 0..40 {
            append(&mut head, 256); // 1 MiB + headers
        }
        let calls = rec.calls.lock().unwrap().clone();
        let starts: Vec<_> = calls.iter().filter(|c| c.0 == "start").collect();
        let waits: Vec<_> = calls.iter().filter(|c| c.0 == "wait").collect();
        // 8 appends of 1 MiB and headers pass a step: 5 starts in 40.
        assert_eq!(starts.len(), 5, "{calls:?}");
        assert_eq!(starts[0].1, LAYER_HEADER_LEN);
        for w in starts.windows(2) {
            assert_eq!(w[0].1 + w[0].2, w[1].1, "contiguous: {calls:?}");
        }
        for s in &starts {
            assert!(s.2 >= WRITE_BEHIND && s.2 < WRITE_BEHIND + (2 << 20));
        }
        let unstarted = head.next.end - (starts[4].1 + starts[4].2);
        assert!(unstarted < WRITE_BEHIND);
        // Waits are contiguous from the header on, each right after a start
        // and ending WRITE_BEHIND_LAG before the range that start began.
        let mut waited = LAYER_HEADER_LEN;
        for (i, c) in calls.iter().enumerate() {
            if c.0 == "wait" {
                assert_eq!(c.1, waited, "{calls:?}");
                waited += c.2;
                assert_eq!(calls[i - 1].0, "start");
                assert_eq!(waited, calls[i - 1].1 - WRITE_BEHIND_LAG);
            }
        }
        assert!(!waits.is_empty());
        assert!(head.next.end - waited <= WRITE_BEHIND_LAG + 2 * WRITE_BEHIND);
        let before_commit = calls.len();
        head.commit().unwrap();
        append(&mut head, 256 * 9);
        let calls = rec.calls.lock().unwrap().clone();
        let after: Vec<_> = calls[before_commit..].to_vec();
        assert_eq!(after[0].0, "sync");
        // After the sync, writeback starts where it ended, with nothing to
        // wait for.
        assert_eq!(after[1..].len(), 1, "{after:?}");
        assert_eq!((after[1].0, after[1].1), ("start", after[0].2));
    }
}
