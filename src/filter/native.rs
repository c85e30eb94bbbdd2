//! The native helpers, in Rust. Scripts reach them through the `fk` table
//! (see the module docs); Rust code (and the benchmark's "native floor")
//! can call them directly.
//!
//! Errors carry an empty `at`; the engine fills in which stage and which
//! object or block they concern.

use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zstd::zstd_safe;

use super::{Ctx, FilterError, Result};

/// Length of the checksum trailer: a CRC-32C, little-endian.
pub const CHECKSUM_LEN: usize = 4;

/// Magic of an encrypted payload.
pub const SEALED_MAGIC: &[u8; 4] = b"FKE1";
/// Length of a key ID.
pub const KEY_ID_LEN: usize = 8;
/// Length of an XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted payload adds: magic, key ID, nonce, tag.
pub const SEALED_OVERHEAD: usize = 4 + KEY_ID_LEN + NONCE_LEN + TAG_LEN;
const SEALED_HEADER: usize = 4 + KEY_ID_LEN + NONCE_LEN;

fn damaged(why: impl Into<String>) -> FilterError {
    FilterError::Damaged {
        at: String::new(),
        why: why.into(),
    }
}

thread_local! {
    static CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` into one standard zstd frame (content size and a
/// content checksum in the frame, so `zstd -d` reads it and checks it).
/// Uses a per-thread compression context.
pub fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| FilterError::Script {
        at: String::new(),
        msg: format!("zstd compression failed: {e}"),
    };
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut c = zstd::bulk::Compressor::new(level).map_err(fail)?;
            c.set_parameter(zstd_safe::CParameter::ChecksumFlag(true))
                .map_err(fail)?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("set above");
        c.compress(data).map_err(fail)
    })
}

/// Decompresses one zstd frame, refusing more than `max` bytes of output
/// (FK0902). A corrupt or truncated frame is damage (FK0905).
pub fn zstd_decompress(data: &[u8], max: usize) -> Result<Vec<u8>> {
    let too_big = |n: u64| FilterError::Memory {
        at: String::new(),
        what: format!("a zstd frame of {n} bytes is over the call's buffer budget of {max} bytes"),
    };
    match zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) => {
            if n > max as u64 {
                return Err(too_big(n));
            }
            DCTX.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot =
                        Some(zstd::bulk::Decompressor::new().map_err(|e| damaged(e.to_string()))?);
                }
                let d = slot.as_mut().expect("set above");
                let out = d
                    .decompress(data, n as usize)
                    .map_err(|e| damaged(format!("corrupt zstd frame: {e}")))?;
                if out.len() as u64 != n {
                    return Err(damaged(format!(
                        "zstd frame declares {n} bytes but holds {}",
                        out.len()
                    )));
                }
                Ok(out)
            })
        }
        Ok(None) => {
            // Written by a streaming tool: no size in the header.
            let mut out = Vec::new();
            let dec = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| damaged(format!("corrupt zstd frame: {e}")))?;
            dec.single_frame()
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| damaged(format!("corrupt zstd frame: {e}")))?;
            if out.len() > max {
                return Err(too_big(out.len() as u64));
            }
            Ok(out)
        }
        Err(_) => Err(damaged("not a zstd frame (bad magic or header)")),
    }
}

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// `data` followed by its CRC-32C, little-endian.
pub fn checksum_seal(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + CHECKSUM_LEN);
    out.extend_from_slice(data);
    checksum_append(out)
}

/// [`checksum_seal`] on an owned buffer: appends the trailer in place,
/// without copying the body (unless `data` has no room for 4 more bytes
/// and its allocation cannot grow where it is).
pub fn checksum_append(mut data: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&data);
    data.extend_from_slice(&crc.to_le_bytes());
    data
}

/// Checks and strips what [`checksum_seal`] appended; a mismatch is
/// damage (FK0905).
pub fn checksum_open(data: &[u8]) -> Result<Vec<u8>> {
    let body = checksum_verify(data)?;
    Ok(body.to_vec())
}

/// [`checksum_open`] on an owned buffer: checks the trailer and cuts it
/// off in place, without copying the body.
pub fn checksum_strip(mut data: Vec<u8>) -> Result<Vec<u8>> {
    let body = checksum_verify(&data)?.len();
    data.truncate(body);
    Ok(data)
}

/// Checks the trailer and returns the body, without copying.
pub fn checksum_verify(data: &[u8]) -> Result<&[u8]> {
    if data.len() < CHECKSUM_LEN {
        return Err(damaged(format!(
            "{} bytes: too short to hold a checksum",
            data.len()
        )));
    }
    let (body, tail) = data.split_at(data.len() - CHECKSUM_LEN);
    let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(damaged(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        )));
    }
    Ok(body)
}

/// A 256-bit key for the AEAD cipher. Its bytes never reach Lua; its ID
/// (the first 8 bytes of SHA-256("fukastor filter key v1\0" ‖ key)) is
/// stored in every ciphertext so a wrong key is told apart from damage.
#[derive(Clone)]
pub struct Key {
    cipher: XChaCha20Poly1305,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", hex::encode(self.id))
    }
}

fn key_err(why: String) -> FilterError {
    FilterError::Key {
        at: String::new(),
        why,
    }
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        let mut h = Sha256::new();
        h.update(b"fukastor filter key v1\0");
        h.update(bytes);
        let digest = h.finalize();
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Key {
            cipher: XChaCha20Poly1305::new(&bytes.into()),
            id,
        }
    }

    /// A key from text or raw bytes: exactly 32 bytes, or 64 hex digits
    /// (surrounding whitespace ignored).
    pub fn parse(raw: &[u8]) -> std::result::Result<Key, String> {
        if let Ok(bytes) = <[u8; 32]>::try_from(raw) {
            return Ok(Key::from_bytes(bytes));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| format!("{} bytes: a key is 32 bytes or 64 hex digits", raw.len()))?
            .trim();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| "a key is 32 bytes or 64 hex digits".to_owned())?;
        Ok(Key::from_bytes(bytes))
    }

    /// Reads a key file (32 raw bytes, or 64 hex digits and a newline).
    /// The path must be absolute.
    pub fn from_file(path: &Path) -> Result<Key> {
        if !path.is_absolute() {
            return Err(key_err(format!(
                "key file {}: the path must be absolute",
                path.display()
            )));
        }
        let raw = std::fs::read(path)
            .map_err(|e| key_err(format!("key file {}", crate::error::io_at(path, &e))))?;
        Key::parse(&raw).map_err(|why| key_err(format!("key file {}: {why}", path.display())))
    }

    /// Reads a key from an environment variable (64 hex digits).
    pub fn from_env(name: &str) -> Result<Key> {
        let value = std::env::var_os(name)
            .ok_or_else(|| key_err(format!("environment variable {name} is not set")))?;
        Key::parse(value.as_encoded_bytes())
            .map_err(|why| key_err(format!("environment variable {name}: {why}")))
    }

    /// The key's ID, hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// Encrypts with XChaCha20-Poly1305 and a fresh random 192-bit nonce.
///
/// Payload: `"FKE1"` | key ID (8) | nonce (24) | ciphertext (len) | tag (16).
/// The authenticated data is the first 12 bytes (magic and key ID) followed
/// by `aad` (the engine passes [`Ctx::aad`]), so a payload moved to another
/// object or block fails to decrypt.
pub fn encrypt(key: &Key, aad: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| key_err(format!("no random numbers: {e}")))?;
    let mut out = Vec::with_capacity(data.len() + SEALED_OVERHEAD);
    out.extend_from_slice(SEALED_MAGIC);
    out.extend_from_slice(&key.id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(data);
    let full_aad = full_aad(&out[..4 + KEY_ID_LEN], aad);
    let tag = key
        .cipher
        .encrypt_inout_detached(
            &XNonce::from(nonce),
            &full_aad,
            (&mut out[SEALED_HEADER..]).into(),
        )
        .map_err(|_| FilterError::Script {
            at: String::new(),
            msg: "message too long to encrypt".into(),
        })?;
    out.extend_from_slice(tag.as_slice());
    Ok(out)
}

fn full_aad(head: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(head.len() + aad.len());
    v.extend_from_slice(head);
    v.extend_from_slice(aad);
    v
}

/// Decrypts what [`encrypt`] wrote. Another key's payload is FK0906; a
/// payload that fails authentication (damaged, or moved from another
/// object or block) is damage (FK0905).
pub fn decrypt(key: &Key, aad: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    if data.len() < SEALED_OVERHEAD || &data[..4] != SEALED_MAGIC {
        return Err(damaged("not an encrypted payload (bad magic or too short)"));
    }
    let id = &data[4..4 + KEY_ID_LEN];
    if id != key.id {
        return Err(FilterError::WrongKey {
            at: String::new(),
            found: hex::encode(id),
            expected: key.id_hex(),
        });
    }
    let nonce: [u8; NONCE_LEN] = data[4 + KEY_ID_LEN..SEALED_HEADER]
        .try_into()
        .expect("24 bytes");
    let (body, tag) = data[SEALED_HEADER..].split_at(data.len() - SEALED_HEADER - TAG_LEN);
    let tag: [u8; TAG_LEN] = tag.try_into().expect("16 bytes");
    let mut out = body.to_vec();
    key.cipher
        .decrypt_inout_detached(
            &XNonce::from(nonce),
            &full_aad(&data[..4 + KEY_ID_LEN], aad),
            out.as_mut_slice().into(),
            &Tag::from(tag),
        )
        .map_err(|_| {
            damaged("authentication failed: the ciphertext is damaged or belongs to another object or block")
        })?;
    Ok(out)
}

fn replica_err(path: &Path, why: String) -> FilterError {
    FilterError::Replica {
        at: String::new(),
        why: format!("{}: {why}", path.display()),
    }
}

/// Where the replica of `ctx` lives under `dir`:
/// `DIR/objects/XX/DIGEST` for an object, `DIR/blocks/LAYER/BLOCK` for a
/// volume block.
pub fn replica_path(dir: &Path, ctx: &Ctx) -> Result<PathBuf> {
    if !dir.is_absolute() {
        return Err(replica_err(
            dir,
            "the replica directory must be absolute".into(),
        ));
    }
    Ok(match ctx {
        Ctx::Object { digest, .. } => {
            let safe = !digest.is_empty()
                && !digest.starts_with('.')
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b));
            if !safe {
                return Err(replica_err(dir, format!("{digest:?} is not a digest")));
            }
            let fan = digest.get(..2).unwrap_or("xx");
            dir.join("objects").join(fan).join(digest)
        }
        Ctx::Block { layer, block, .. } => dir
            .join("blocks")
            .join(layer.to_string())
            .join(block.to_string()),
    })
}

/// Writes `data` as the replica of `ctx` under `dir` (a temporary file
/// renamed into place; not fsynced: durability follows the caller's
/// `syncfs`/`fsync` policy).
pub fn replica_write(dir: &Path, ctx: &Ctx, data: &[u8]) -> Result<()> {
    let path = replica_path(dir, ctx)?;
    let parent = path.parent().expect("under dir");
    std::fs::create_dir_all(parent).map_err(|e| replica_err(parent, e.to_string()))?;
    let tmp = parent.join(format!(
        ".tmp.{}.{:?}.{}",
        std::process::id(),
        std::thread::current().id(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, data).map_err(|e| replica_err(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        replica_err(&path, e.to_string())
    })
}

/// Reads the replica of `ctx` under `dir`; `None` when there is none.
pub fn replica_read(dir: &Path, ctx: &Ctx, max: usize) -> Result<Option<Vec<u8>>> {
    let path = replica_path(dir, ctx)?;
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(replica_err(&path, e.to_string())),
    };
    let mut out = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| replica_err(&path, e.to_string()))?;
    if out.len() > max {
        return Err(FilterError::Memory {
            at: String::new(),
            what: format!(
                "replica {} is over the call's buffer budget",
                path.display()
            ),
        });
    }
    Ok(Some(out))
}
