//! The layer cache: what a layer decoded to, so that a layer imported once
//! is never read again.
//!
//! `fukastor/cache/layers/<diff_id hex>` holds a layer's entries with their
//! object IDs (no file data). A pull looks each layer up by its diff_id (the
//! digest of the uncompressed tar, which the image config states and which
//! was verified when the entry was written) and, when the entry is there and
//! every object it names is in the store, uses it instead of reading the
//! blob. This is what makes importing a second image on the same base cheap.
//!
//! It is only a cache: deleting any file costs time only. A file that is
//! truncated or damaged fails its checksum and is ignored; an entry whose
//! objects were removed by `gc` is ignored. Entries are written atomically
//! after the pull that decoded the layer has published its objects.
//!
//! Format (little-endian): `FKLAYER1`, then entries, then the SHA-256 of
//! everything before it. An entry: path (u32 length + bytes), mode, uid,
//! gid (u32 each), mtime seconds (i64), nanoseconds (u32), xattr count (u32)
//! and each xattr (u32 + name, u32 + value), a kind byte and its payload:
//! 0 directory; 1 inline file (u32 + bytes); 2 object file (32-byte ID, u64
//! size); 3 symlink (u32 + target); 4 hardlink (u32 + target path);
//! 5 char device, 6 block device (u64 rdev); 7 fifo; 8 socket.

use std::fs;
use std::path::{Path, PathBuf};

use composefs::fsverity::FsVerityHashValue;
use composefs::generic_tree::Stat;
use composefs::tree::RegularFile;
use sha2::{Digest, Sha256};

use crate::store::{ObjectId, Store};
use crate::tree::{Entry, EntryKind};

const MAGIC: &[u8; 8] = b"FKLAYER1";

fn path(store: &Store, diff_id: &str) -> Option<PathBuf> {
    let hex = diff_id.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| store.root().join("fukastor/cache/layers").join(hex))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode(entries: &[Entry]) -> Option<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    for e in entries {
        put_bytes(&mut out, &e.path);
        for v in [e.stat.st_mode, e.stat.st_uid, e.stat.st_gid] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&e.stat.st_mtim_sec.to_le_bytes());
        out.extend_from_slice(&e.stat.st_mtim_nsec.to_le_bytes());
        out.extend_from_slice(&(e.stat.xattrs.len() as u32).to_le_bytes());
        for (k, v) in &e.stat.xattrs {
            put_bytes(&mut out, k.as_encoded_bytes());
            put_bytes(&mut out, v);
        }
        match &e.kind {
            EntryKind::Directory => out.push(0),
            EntryKind::File(RegularFile::Inline(d)) => {
                out.push(1);
                put_bytes(&mut out, d);
            }
            EntryKind::File(
                RegularFile::External(id, size) | RegularFile::ExternalNoVerity(id, size),
            ) => {
                out.push(2);
                out.extend_from_slice(&hex::decode(id.to_hex()).expect("hex"));
                out.extend_from_slice(&size.to_le_bytes());
            }
            // A placeholder the pool never filled: do not cache.
            EntryKind::File(RegularFile::Sparse(_)) => return None,
            EntryKind::Symlink(t) => {
                out.push(3);
                put_bytes(&mut out, t.as_encoded_bytes());
            }
            EntryKind::HardLink(t) => {
                out.push(4);
                put_bytes(&mut out, t);
            }
            EntryKind::CharDevice(d) => {
                out.push(5);
                out.extend_from_slice(&d.to_le_bytes());
            }
            EntryKind::BlockDevice(d) => {
                out.push(6);
                out.extend_from_slice(&d.to_le_bytes());
            }
            EntryKind::Fifo => out.push(7),
            EntryKind::Socket => out.push(8),
        }
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn os(b: &[u8]) -> Box<std::ffi::OsStr> {
    Box::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b))
}

fn decode(data: &[u8]) -> Option<Vec<Entry>> {
    let (body, sum) = data.split_at(data.len().checked_sub(32)?);
    if Sha256::digest(body).as_slice() != sum || !body.starts_with(MAGIC) {
        return None;
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let path = r.bytes()?.to_vec();
        let (st_mode, st_uid, st_gid) = (r.u32()?, r.u32()?, r.u32()?);
        let st_mtim_sec = r.u64()? as i64;
        let st_mtim_nsec = r.u32()?;
        let mut xattrs = std::collections::BTreeMap::new();
        for _ in 0..r.u32()? {
            let k = os(r.bytes()?);
            xattrs.insert(k, Box::from(r.bytes()?));
        }
        let kind = match r.take(1)?[0] {
            0 => EntryKind::Directory,
            1 => EntryKind::File(RegularFile::Inline(Box::from(r.bytes()?))),
            2 => {
                let id = ObjectId::from_hex(hex::encode(r.take(32)?)).ok()?;
                EntryKind::File(RegularFile::External(id, r.u64()?))
            }
            3 => EntryKind::Symlink(os(r.bytes()?)),
            4 => EntryKind::HardLink(r.bytes()?.to_vec()),
            5 => EntryKind::CharDevice(r.u64()?),
            6 => EntryKind::BlockDevice(r.u64()?),
            7 => EntryKind::Fifo,
            8 => EntryKind::Socket,
            _ => return None,
        };
        let stat = Stat {
            st_mode,
            st_uid,
            st_gid,
            st_mtim_sec,
            st_mtim_nsec,
            xattrs,
        };
        out.push(Entry { path, stat, kind });
    }
    Some(out)
}

/// The cached entries of layer `diff_id`, if present, intact, and every
/// object they name is in the store.
pub(crate) fn get(store: &Store, diff_id: &str) -> Option<Vec<Entry>> {
    let data = fs::read(path(store, diff_id)?).ok()?;
    let entries = decode(&data)?;
    let complete = entries.iter().all(|e| match &e.kind {
        EntryKind::File(RegularFile::External(id, _)) => store.has_object(id),
        _ => true,
    });
    complete.then_some(entries)
}

/// Caches a decoded layer (best effort: a failure only costs time later).
pub(crate) fn put(store: &Store, diff_id: &str, entries: &[Entry]) {
    // Content that later layers replaced was not published: such a layer
    // cannot be rebuilt from the store, so it is not cached.
    let complete = entries.iter().all(|e| match &e.kind {
        EntryKind::File(RegularFile::External(id, _)) => store.has_object(id),
        _ => true,
    });
    let (true, Some(p), Some(data)) = (complete, path(store, diff_id), encode(entries)) else {
        return;
    };
    let write = || -> std::io::Result<()> {
        fs::create_dir_all(p.parent().expect("has a parent"))?;
        crate::store::write_atomic(&p, &data)
    };
    if let Err(e) = write() {
        tracing::warn!("could not cache layer {diff_id}: {e}");
    }
}

/// Removes cached layers not in `keep` (diff_ids); returns how many.
pub(crate) fn prune(store_root: &Path, keep: &std::collections::HashSet<String>) -> u64 {
    let Ok(dir) = fs::read_dir(store_root.join("fukastor/cache/layers")) else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&format!("sha256:{name}")) && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let mut stat = crate::tree::TreeBuilder::new().finish().root.stat.clone();
        stat.xattrs.insert(os(b"user.x"), Box::from(&b"\n\0v"[..]));
        stat.st_mtim_sec = -5;
        stat.st_mtim_nsec = 7;
        let id: ObjectId = composefs::fsverity::compute_verity(b"hello world, long enough");
        let entries = vec![
            Entry {
                path: b"d".to_vec(),
                stat: stat.clone(),
                kind: EntryKind::Directory,
            },
            Entry {
                path: b"d/\xff".to_vec(),
                stat: stat.clone(),
                kind: EntryKind::File(RegularFile::Inline(Box::from(&b"x"[..]))),
            },
            Entry {
                path: b"big".to_vec(),
                stat: stat.clone(),
                kind: EntryKind::File(RegularFile::External(id, 99)),
            },
            Entry {
                path: b"l".to_vec(),
                stat: stat.clone(),
                kind: EntryKind::Symlink(os(b"/t")),
            },
            Entry {
                path: b"h".to_vec(),
                stat: stat.clone(),
                kind: EntryKind::HardLink(b"big".to_vec()),
            },
            Entry {
                path: b"c".to_vec(),
                stat: stat.clone(),
                kind: EntryKind::CharDevice(0x0105),
            },
            Entry {
                path: b".wh.gone".to_vec(),
                stat,
                kind: EntryKind::Fifo,
            },
        ];
        let data = encode(&entries).unwrap();
        let back = decode(&data).unwrap();
        assert_eq!(format!("{entries:?}"), format!("{back:?}"));
        let mut bad = data.clone();
        bad[20] ^= 1;
        assert!(decode(&bad).is_none());
        assert!(decode(&data[..data.len() - 1]).is_none());
        let placeholder = vec![Entry {
            kind: EntryKind::File(RegularFile::Sparse(5)),
            ..entries[1].clone()
        }];
        assert!(encode(&placeholder).is_none());
    }
}
