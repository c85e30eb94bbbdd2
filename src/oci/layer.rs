//! Decoding layers into tree entries, on every core.
//!
//! One thread per layer (at most one per core at a time) reads the blob,
//! hashes it (blob digest), decompresses it, hashes the tar (diff_id) and
//! parses entries. File contents go to a pool of hashing workers, one per
//! core, which compute the fs-verity digest and stage the object. Files of
//! [`STREAM_THRESHOLD`] bytes or more are hashed and staged by the layer
//! thread as they stream, so memory stays bounded: at most
//! `2 × cores` jobs of less than that threshold are in flight.
//!
//! Digests are checked after the whole blob was read; a layer whose digest
//! is wrong fails the import, and its staged objects are dropped with the
//! staging directory.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use composefs::generic_tree::Stat;
use composefs::tree::RegularFile;
use sha2::{Digest, Sha256};

use super::OciError;
use crate::store::{ObjectId, Staging, StoreError};
use crate::tree::{Entry, EntryKind, TreeBuilder};

/// Files this large or larger are streamed by the layer thread.
pub(crate) const STREAM_THRESHOLD: u64 = 4 << 20;

/// Longest xattr value Linux accepts.
const MAX_XATTR_VALUE: usize = 64 * 1024;

/// Work for the hashing pool: a file's bytes and where its ID goes.
pub(crate) struct Job {
    pub data: Vec<u8>,
    pub layer: usize,
    pub entry: usize,
}

/// A result from the hashing pool.
pub(crate) type JobResult = (usize, usize, Result<ObjectId, StoreError>);

/// Runs hashing workers until the job channel closes.
pub(crate) fn worker(
    staging: &Staging<'_>,
    jobs: &Mutex<Receiver<Job>>,
    results: &Mutex<Vec<JobResult>>,
) {
    loop {
        let job = match jobs.lock().expect("not poisoned").recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let r = staging.put(&job.data);
        results
            .lock()
            .expect("not poisoned")
            .push((job.layer, job.entry, r));
    }
}

/// Shared state of a reader that hashes and counts what passes through.
#[derive(Default)]
struct HashState {
    hasher: Sha256,
    count: u64,
    failed: bool,
}

/// A reader that hashes what passes through into a shared state, so the
/// digest can be read after the reader was moved into a decoder.
struct HashReader<R> {
    inner: R,
    state: Arc<Mutex<HashState>>,
    progress: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let mut st = self.state.lock().expect("not poisoned");
                st.hasher.update(&buf[..n]);
                st.count += n as u64;
                if let Some(p) = &self.progress {
                    p.inc(n as u64);
                }
                Ok(n)
            }
            Err(e) => {
                self.state.lock().expect("not poisoned").failed = true;
                Err(e)
            }
        }
    }
}

/// Marks the shared state when the decoder fails, to tell a corrupt
/// compressed stream (FK0207) from a malformed tar (FK0215).
struct DecoderGuard<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for DecoderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }
}

/// Everything needed to decode one layer.
pub(crate) struct LayerInput {
    pub index: usize,
    pub label: String,
    pub reader: Box<dyn Read + Send>,
    pub digest: Option<String>,
    pub diff_id: Option<String>,
}

/// Decodes one layer into entries. Regular files below the stream threshold
/// get a placeholder `Inline` content and a job; the caller patches in the
/// object IDs from the job results.
pub(crate) fn decode(
    input: LayerInput,
    staging: &Staging<'_>,
    jobs: &SyncSender<Job>,
    abort: &AtomicBool,
    progress: Option<indicatif::ProgressBar>,
) -> Result<super::pull::Decoded, OciError> {
    let LayerInput {
        index,
        label,
        reader,
        digest,
        diff_id,
    } = input;
    let blob_state = Arc::new(Mutex::new(HashState::default()));
    let raw = Arc::new(Mutex::new(reader));
    let mut blob = BufReader::with_capacity(
        256 << 10,
        HashReader {
            inner: SharedReader(raw.clone()),
            state: blob_state.clone(),
            progress,
        },
    );
    let magic = blob
        .fill_buf()
        .map_err(|e| tar_err(&label, e))?
        .get(..4)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let decoder_failed = Arc::new(AtomicBool::new(false));
    let decoder: Box<dyn Read + Send + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(blob))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(blob).map_err(|e| {
            OciError::Compression {
                layer: label.clone(),
                why: e.to_string(),
            }
        })?)
    } else {
        Box::new(blob)
    };
    let tar_state = Arc::new(Mutex::new(HashState::default()));
    let tar_reader = HashReader {
        inner: DecoderGuard {
            inner: decoder,
            failed: decoder_failed.clone(),
        },
        state: tar_state.clone(),
        progress: None,
    };

    let mut archive = tar::Archive::new(tar_reader);
    let mut result = parse_entries(&mut archive, index, &label, staging, jobs, abort);
    // Drain: the digests cover every byte, padding and trailing data included.
    if result.is_ok()
        && let Err(e) = io::copy(&mut archive.into_inner(), &mut io::sink())
    {
        result = Err(tar_err(&label, e));
    }
    let digest_of = |st: &Arc<Mutex<HashState>>| {
        format!(
            "sha256:{}",
            hex::encode(st.lock().expect("not poisoned").hasher.clone().finalize())
        )
    };
    let blob_mismatch = |actual: String| {
        digest
            .as_ref()
            .filter(|d| **d != actual)
            .map(|expected| OciError::DigestMismatch {
                what: format!("layer {label}"),
                expected: expected.clone(),
                actual,
            })
    };
    match result {
        Ok(entries) => {
            let blob_digest = digest_of(&blob_state);
            if let Some(e) = blob_mismatch(blob_digest.clone()) {
                return Err(e);
            }
            let actual = digest_of(&tar_state);
            if let Some(expected) = &diff_id
                && &actual != expected
            {
                return Err(OciError::DiffIdMismatch {
                    layer: label,
                    expected: expected.clone(),
                    actual,
                });
            }
            let size = blob_state.lock().expect("not poisoned").count;
            let tar_bytes = tar_state.lock().expect("not poisoned").count;
            Ok(super::pull::Decoded {
                entries,
                digest: blob_digest,
                diff_id: actual,
                size,
                tar_bytes,
                cached: false,
            })
        }
        Err(e) if abort.load(Ordering::Relaxed) => Err(e),
        Err(e) => {
            // A blob that does not match its digest is the root cause of
            // whatever the decoder or the tar parser said: read the rest of
            // the blob and check.
            let mut rest = raw.lock().expect("not poisoned");
            let mut buf = vec![0u8; 256 << 10];
            let mut st = blob_state.lock().expect("not poisoned");
            let drained = loop {
                match rest.read(&mut buf) {
                    Ok(0) => break !st.failed,
                    Ok(n) => st.hasher.update(&buf[..n]),
                    Err(_) => break false,
                }
            };
            drop(st);
            if drained && let Some(mismatch) = blob_mismatch(digest_of(&blob_state)) {
                return Err(mismatch);
            }
            match e {
                OciError::Tar { why, .. } if decoder_failed.load(Ordering::Relaxed) => {
                    Err(OciError::Compression { layer: label, why })
                }
                e => Err(e),
            }
        }
    }
}

/// A reader shared between the decoding chain and the error path.
struct SharedReader(Arc<Mutex<Box<dyn Read + Send>>>);

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").read(buf)
    }
}

fn tar_err(label: &str, e: io::Error) -> OciError {
    OciError::Tar {
        layer: label.to_string(),
        why: e.to_string(),
    }
}

/// Largest PAX header or GNU long name accepted.
const MAX_EXTENSION: u64 = 1 << 20;

/// What extension headers said about the next entry.
#[derive(Default)]
struct Pending {
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn pax(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Parses PAX records: `LEN KEY=VALUE\n`, where LEN counts the whole
/// record. Values may hold any byte, newlines included (the `tar` crate
/// splits on newlines, which breaks binary xattrs, so we parse ourselves).
fn parse_pax(mut data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = &data[sp + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=')?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Some(out)
}

fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    label: &str,
) -> Result<Vec<u8>, OciError> {
    if entry.size() > MAX_EXTENSION {
        return Err(OciError::TooLarge {
            layer: label.into(),
            path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            what: format!(
                "extension header of {} bytes (limit {MAX_EXTENSION})",
                entry.size()
            ),
        });
    }
    let mut data = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut data)
        .map_err(|e| tar_err(label, e))?;
    if (data.len() as u64) < entry.size() {
        return Err(OciError::Tar {
            layer: label.into(),
            why: "truncated extension header".into(),
        });
    }
    Ok(data)
}

fn parse_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    layer: usize,
    label: &str,
    staging: &Staging<'_>,
    jobs: &SyncSender<Job>,
    abort: &AtomicBool,
) -> Result<Vec<Entry>, OciError> {
    let mut out = Vec::new();
    let entries = archive.entries().map_err(|e| tar_err(label, e))?.raw(true);
    let mut pending = Pending::default();
    for entry in entries {
        if abort.load(Ordering::Relaxed) {
            return Err(OciError::Tar {
                layer: label.into(),
                why: "aborted".into(),
            });
        }
        let mut entry = entry.map_err(|e| tar_err(label, e))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::XHeader => {
                let data = read_extension(&mut entry, label)?;
                pending.pax = parse_pax(&data).ok_or_else(|| OciError::Tar {
                    layer: label.into(),
                    why: "malformed PAX extended header".into(),
                })?;
                continue;
            }
            tar::EntryType::XGlobalHeader => {
                read_extension(&mut entry, label)?;
                continue;
            }
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {
                let mut data = read_extension(&mut entry, label)?;
                while data.last() == Some(&0) {
                    data.pop();
                }
                if kind == tar::EntryType::GNULongName {
                    pending.long_name = Some(data);
                } else {
                    pending.long_link = Some(data);
                }
                continue;
            }
            _ => {}
        }
        let p = std::mem::take(&mut pending);
        let raw_path = match p.pax(b"path").map(<[u8]>::to_vec).or(p.long_name.clone()) {
            Some(path) => path,
            None => entry.path_bytes().into_owned(),
        };
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        if p.pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse."))
            || kind == tar::EntryType::GNUSparse
        {
            return Err(OciError::EntryType {
                layer: label.into(),
                path: shown,
                kind: "GNU sparse file".into(),
            });
        }
        if let Some(size) = p.pax(b"size") {
            let size: Option<u64> = std::str::from_utf8(size).ok().and_then(|s| s.parse().ok());
            if size != Some(entry.size()) {
                return Err(OciError::Unsupported(format!(
                    "layer {label}: entry {shown:?} has a PAX size record that differs from its header"
                )));
            }
        }
        let path = TreeBuilder::normalize(&raw_path).map_err(|e| OciError::Layer {
            layer: label.into(),
            source: e,
        })?;
        let stat = stat_of(&entry, &p, label, &shown)?;
        let size = entry.size();
        let link = || -> Result<Vec<u8>, OciError> {
            p.pax(b"linkpath")
                .map(<[u8]>::to_vec)
                .or(p.long_link.clone())
                .or_else(|| entry.link_name_bytes().map(|c| c.into_owned()))
                .filter(|t| !t.is_empty())
                .ok_or_else(|| OciError::Tar {
                    layer: label.into(),
                    why: format!("link {shown:?} has no target"),
                })
        };
        let kind = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let content = read_file(
                    &mut entry,
                    size,
                    label,
                    &shown,
                    staging,
                    jobs,
                    layer,
                    out.len(),
                )?;
                EntryKind::File(content)
            }
            tar::EntryType::Directory => EntryKind::Directory,
            tar::EntryType::Symlink => {
                let target = link()?;
                if target.len() > 4095 {
                    return Err(OciError::TooLarge {
                        layer: label.into(),
                        path: shown,
                        what: "symlink target longer than 4095 bytes".into(),
                    });
                }
                EntryKind::Symlink(Box::from(std::ffi::OsStr::from_bytes(&target)))
            }
            tar::EntryType::Link => {
                let target = link()?;
                let t = TreeBuilder::normalize(&target).map_err(|_| OciError::Layer {
                    layer: label.into(),
                    source: crate::tree::TreeError::LinkEscapes(
                        shown.clone(),
                        String::from_utf8_lossy(&target).into(),
                    ),
                })?;
                EntryKind::HardLink(t)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let dev = rustix::fs::makedev(major, minor);
                if kind == tar::EntryType::Char {
                    EntryKind::CharDevice(dev)
                } else {
                    EntryKind::BlockDevice(dev)
                }
            }
            tar::EntryType::Fifo => EntryKind::Fifo,
            other => {
                return Err(OciError::EntryType {
                    layer: label.into(),
                    path: shown,
                    kind: format!("{other:?}"),
                });
            }
        };
        out.push(Entry { path, stat, kind });
    }
    Ok(out)
}

/// Reads one file's content: small files inline, medium ones to the hashing
/// pool (the entry gets a placeholder the caller patches), large ones
/// streamed into a staged object here. A stream shorter than the declared
/// size is a truncated layer.
#[allow(clippy::too_many_arguments)]
fn read_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    size: u64,
    label: &str,
    shown: &str,
    staging: &Staging<'_>,
    jobs: &SyncSender<Job>,
    layer: usize,
    index: usize,
) -> Result<RegularFile<ObjectId>, OciError> {
    let short = |got: u64| OciError::Tar {
        layer: label.into(),
        why: format!("entry {shown:?} declares {size} bytes but the stream ends after {got}"),
    };
    if size >= STREAM_THRESHOLD {
        let mut w = staging.writer()?;
        let n = io::copy(entry, &mut w).map_err(|e| tar_err(label, e))?;
        if n != size {
            return Err(short(n));
        }
        return Ok(RegularFile::External(w.finish()?, n));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut data)
        .map_err(|e| tar_err(label, e))?;
    if data.len() as u64 != size {
        return Err(short(data.len() as u64));
    }
    if size <= composefs::INLINE_CONTENT_MAX_V0 as u64 {
        return Ok(RegularFile::Inline(data.into_boxed_slice()));
    }
    match jobs.send(Job {
        data,
        layer,
        entry: index,
    }) {
        // Placeholder: the pool's result replaces it (see `pull::patch`).
        Ok(()) => Ok(RegularFile::Sparse(size)),
        // The pool is gone (another layer failed): hash here.
        Err(e) => Ok(RegularFile::External(staging.put(&e.0.data)?, size)),
    }
}

/// Metadata from the header and PAX records (PAX wins: it carries large
/// ids, nanosecond mtimes and xattrs).
fn stat_of<R: Read>(
    entry: &tar::Entry<'_, R>,
    p: &Pending,
    label: &str,
    shown: &str,
) -> Result<Stat, OciError> {
    let h = entry.header();
    let bad = |what: &str| OciError::Tar {
        layer: label.into(),
        why: format!("entry {shown:?}: bad {what} field"),
    };
    let mut stat = Stat {
        st_mode: h.mode().map_err(|_| bad("mode"))? & 0o7777,
        st_uid: u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?,
        st_gid: u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?,
        st_mtim_sec: i64::try_from(h.mtime().map_err(|_| bad("mtime"))?)
            .map_err(|_| bad("mtime"))?,
        st_mtim_nsec: 0,
        xattrs: Default::default(),
    };
    for (key, value) in &p.pax {
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            if name.is_empty() || name.len() > 255 || value.len() > MAX_XATTR_VALUE {
                return Err(OciError::TooLarge {
                    layer: label.into(),
                    path: shown.into(),
                    what: "xattr name or value beyond Linux limits".into(),
                });
            }
            stat.xattrs.insert(
                Box::from(std::ffi::OsStr::from_bytes(name)),
                Box::from(value.as_slice()),
            );
            continue;
        }
        let text = std::str::from_utf8(value).unwrap_or_default();
        match key.as_slice() {
            b"uid" => stat.st_uid = text.parse().map_err(|_| bad("PAX uid"))?,
            b"gid" => stat.st_gid = text.parse().map_err(|_| bad("PAX gid"))?,
            b"mtime" => {
                (stat.st_mtim_sec, stat.st_mtim_nsec) =
                    parse_pax_time(text).ok_or_else(|| bad("PAX mtime"))?;
            }
            _ => {}
        }
    }
    Ok(stat)
}

/// `SECONDS[.FRACTION]`, possibly negative, as (seconds, nanoseconds) with
/// nanoseconds in `0..1e9` (so `-1.5` is `(-2, 500000000)`).
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (s, frac) = body.split_once('.').unwrap_or((body, ""));
    if s.is_empty()
        || !s.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = s.parse().ok()?;
    let digits = &frac[..frac.len().min(9)];
    let ns: u32 = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    Some(match (neg, ns) {
        (false, ns) => (secs, ns),
        (true, 0) => (-secs, 0),
        (true, ns) => (-secs - 1, 1_000_000_000 - ns),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_their_sign() {
        assert_eq!(parse_pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("-0.25"), Some((-1, 750_000_000)));
        assert_eq!(parse_pax_time("-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time("12.1234567891"), Some((12, 123_456_789)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.-5"), None);
    }

    #[test]
    fn pax_records_may_hold_newlines() {
        let v = b"\x00\n\xff=";
        let mut rec = b"SCHILY.xattr.user.b=".to_vec();
        rec.extend_from_slice(v);
        rec.push(b'\n');
        let total = rec.len() + 3; // "NN " prefix
        let mut data = format!("{total} ").into_bytes();
        data.extend_from_slice(&rec);
        data.extend_from_slice(b"19 mtime=1.5000000\n");
        let p = parse_pax(&data).unwrap();
        assert_eq!(p[0], (b"SCHILY.xattr.user.b".to_vec(), v.to_vec()));
        assert_eq!(p[1], (b"mtime".to_vec(), b"1.5000000".to_vec()));
        assert!(parse_pax(b"99 path=x\n").is_none());
        assert_eq!(parse_pax(b"5 a=\n").unwrap(), vec![(b"a".to_vec(), vec![])]);
        assert!(
            parse_pax(b"5 a\n").is_none(),
            "a record without '=' is malformed"
        );
    }
}
