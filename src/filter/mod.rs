//! Lua I/O filters (DESIGN §6): scripts that transform the bytes of an
//! object or of a volume block on their way to disk and back.
//!
//! # The model
//!
//! A **filter** is a Lua 5.4 script defining `encode(bytes, ctx)` and
//! `decode(bytes, ctx)`, and optionally `recover(ctx)` (see *Damage and
//! replicas*). A **chain** is a list of filters with their parameters
//! ([`Stage`]); [`Chain::encode`] applies each stage's `encode` in order,
//! [`Chain::decode`] each `decode` in reverse order. The heavy work (zstd,
//! CRC-32C, XChaCha20-Poly1305, replica files) is done by native helpers in
//! Rust ([`native`]) that scripts call through the `fk` table; a script is
//! glue: it picks helpers, parameters and framing.
//!
//! ```no_run
//! use fukastor::filter::{Chain, Ctx, Limits, Script, Stage};
//! # fn main() -> Result<(), fukastor::filter::FilterError> {
//! let dir = std::path::Path::new("examples/filters");
//! let chain = Chain::new(
//!     vec![
//!         Stage::new(Script::from_file(&dir.join("compress.lua"))?).param("level", 3),
//!         Stage::new(Script::from_file(&dir.join("checksum.lua"))?),
//!     ],
//!     Limits::default(),
//! )?;
//! let ctx = Ctx::Object { digest: "3c9d…".into(), size: 5 };
//! let stored = chain.encode(b"hello".to_vec(), &ctx)?;
//! assert_eq!(chain.decode(stored, &ctx)?, b"hello");
//! let record = chain.spec().to_json(); // what the image record / volume metadata keeps
//! # Ok(()) }
//! ```
//!
//! # What a script sees
//!
//! * `bytes`: the data, as a **bytes object** (a light userdata naming a
//!   Rust buffer, so a 1 MiB block is never copied into Lua and making
//!   one allocates nothing in Lua; see `bytes.rs` for how they are kept).
//!   `#b` and `b:len()` give its length, `b:str([i [, j]])` copies (part of) it into
//!   a Lua string, `b:sub(i [, j])` gives a new bytes object (a view of
//!   the same buffer, like the body `fk.checksum_open` returns: bytes
//!   objects never change, so a view is a copy that costs nothing; it is
//!   charged to the buffer budget like a copy; likewise
//!   `fk.checksum_seal(b)`, when `b` alone uses its whole buffer, appends
//!   the trailer to that buffer and returns a view of it, `b` still
//!   showing its old bytes),
//!   `tostring(b)` and `b .. x` work. `==` compares identity, as for
//!   tables (Lua never calls `__eq` for light userdata): compare contents
//!   with `fk.equal(a, b)`. Every helper that takes
//!   bytes accepts a bytes object or a Lua string, and `encode`/`decode`
//!   may return either; anything else is FK0904. Bytes objects are valid
//!   for the call that made them only: the engine frees every buffer when
//!   the call ends, so data cannot be kept from one object for the next.
//! * `ctx`: a read-only view of the call in progress (a userdata, one per
//!   Lua state): `ctx.kind` (`"object"` or `"block"`), `ctx.size` (the
//!   plain, unfiltered size), and `ctx.digest` (objects) or `ctx.volume`,
//!   `ctx.layer`, `ctx.block` (volume blocks); any other key is `nil`.
//!   `pairs(ctx)` lists the fields and `tostring(ctx)` describes the call.
//!   Assigning to it is an error, so a script keeps its own values in a
//!   local table; a `ctx` kept from an earlier call shows the call in
//!   progress. See [`Ctx`].
//! * `params`: the stage's parameters ([`Params`]), read-only.
//! * The `fk` table:
//!
//! | helper | does |
//! |---|---|
//! | `fk.bytes(s)` / `fk.concat(a, b, …)` | a bytes object from strings or bytes |
//! | `fk.equal(a, b)` | whether two bytes objects or strings hold the same bytes |
//! | `fk.zstd_compress(b [, level])` | one standard zstd frame (content size and checksum in the frame) |
//! | `fk.zstd_decompress(b)` | its inverse; a corrupt frame is damage (FK0905) |
//! | `fk.crc32c(b)` | the CRC-32C, an integer |
//! | `fk.checksum_seal(b)` / `fk.checksum_open(b)` | append / check and strip a CRC-32C trailer; a mismatch is damage |
//! | `fk.key{file = PATH}` / `fk.key{env = NAME}` | an opaque key (32 bytes or 64 hex digits); its bytes never reach Lua |
//! | `fk.encrypt(key, b)` / `fk.decrypt(key, b)` | XChaCha20-Poly1305, random nonce, bound to `ctx` ([`native::encrypt`]) |
//! | `fk.replica_write(dir, b)` / `fk.replica_read(dir)` | a second copy under `dir`, keyed by the call's `ctx` ([`native::replica_path`]) |
//! | `fk.damaged(msg)` / `fk.is_damaged(err)` | raise damage (FK0905) / tell whether a `pcall` caught damage |
//!
//! Helpers that need the object or block (encryption's associated data,
//! replica paths) take it from the engine's own copy of the call's [`Ctx`],
//! never from anything the script hands them, so a script cannot aim them
//! elsewhere.
//!
//! # The sandbox
//!
//! * Libraries: `string` (without `string.dump`), `table`, `math`, `utf8`,
//!   and from the base library `assert error ipairs next pairs select
//!   tonumber tostring type getmetatable setmetatable rawequal rawget rawlen
//!   rawset pcall xpcall _VERSION` and `print` (to the `tracing` log at
//!   debug level). No `io`, `os`, `package`, `require`, `debug`,
//!   `coroutine`, `load`, `loadstring`, `dofile`, `loadfile`,
//!   `collectgarbage`, `warn`. Scripts are loaded as text only: a
//!   precompiled chunk (`"\27Lua…"`) is refused (FK0900). Library tables
//!   are read-only and the string metatable is hidden. Lua runs finalizers
//!   and message handlers with hooks off, where a loop could not be
//!   stopped, so `setmetatable` refuses a `__gc` field and `xpcall`'s
//!   handler runs after the stack has unwound.
//! * Limits ([`Limits`]): a memory limit on the Lua heap (mlua
//!   `set_memory_limit`), a budget of Lua instructions per chain call
//!   (counted by a hook every 1000 instructions), and a budget of bytes
//!   that helpers may allocate per call (each object they make counts 128
//!   bytes besides its length, and one call makes at most 2²⁴). Exceeding
//!   one fails that call (FK0902, FK0903). `pcall`/`xpcall` cannot swallow these: the sandbox's
//!   versions re-raise them. A value other than a string thrown out of a
//!   stage is reported by its type; the engine never runs its
//!   `__tostring`. A script error, a runaway loop, deep recursion
//!   or a bad return value fails that one call with a coded error; the Lua
//!   state that ran it is then thrown away and rebuilt on the next call, so
//!   the engine stays usable and starts clean.
//! * Limits of the limits: the hook counts Lua instructions, so time spent
//!   inside one C function (a `string.find` with a pathological pattern on a
//!   large subject, say) is not interrupted; the memory limits bound how
//!   large such subjects can be.
//!
//! # States, threads, and what persists
//!
//! A [`Chain`] is `Send + Sync` and cheap to clone. Each thread that uses
//! a chain gets its own Lua state for it (a thread-local cache keyed by the
//! chain, at most 8 chains per thread, least recently used dropped), built
//! on first use: scripts are compiled and their top level run once per
//! state, not per call. The pull's hashing workers, FUSE worker threads and
//! the volume server can therefore all call the same chain concurrently.
//!
//! Per call, the engine sets up fresh bytes objects and fresh limits;
//! `ctx` cannot be written to and shows the call in progress. **Globals do
//! not persist between calls**: each script has its own global
//! environment, writable while its top level runs (defining `encode`,
//! `decode`, constants, a key) and read-only afterwards (an assignment to a
//! global inside `encode` is a script error, FK0901). So nothing a call
//! computes can reach a later call through globals, `ctx` or buffers.
//! What a script deliberately keeps in a table captured as an upvalue
//! does persist for the life of that state; scripts are configuration
//! chosen by the store's owner, and the example filters keep nothing.
//!
//! # Damage and replicas
//!
//! Helpers that detect damage (a checksum mismatch, an AEAD authentication
//! failure, a corrupt zstd frame) raise FK0905 ([`FilterError::Damaged`]).
//! When a stage's `decode` raises it, the chain looks for a stage that
//! comes **after** it in the chain (so was decoded before it) and defines
//! `recover(ctx)`; `recover` returns the bytes that stage received at
//! encode time (the replica), or `nil`. Decoding resumes from there; the
//! nearest such stage is tried first, then the next. When none serves good
//! bytes the call fails with the original damage error. So
//! `compress → checksum → replicate` writes the checksummed frame twice,
//! and a flipped byte in the primary is caught by `checksum`'s decode and
//! served from the replica. [`Chain::decode_report`] tells the caller when
//! a replica was used (to rewrite the primary); [`Chain::recover`] decodes
//! from the replica alone when the primary cannot be read at all.
//!
//! # Formats
//!
//! * Compressed: one standard zstd frame (`zstd -d` reads it).
//! * Encrypted: `"FKE1"`, key ID (8 bytes), nonce (24), ciphertext, tag
//!   (16); see [`native::encrypt`]. The nonce is random (XChaCha20's
//!   192-bit nonce makes random nonces safe for any realistic number of
//!   messages per key). A nonce derived from `ctx` is not used: a block is
//!   rewritten many times under the same (volume, block), and a counter
//!   would have to be stored and never roll back across snapshots and
//!   rollbacks, which is exactly what volumes do.
//! * Checksummed: the data then its CRC-32C, 4 bytes little-endian.
//! * The chain itself: [`ChainSpec`], JSON.
//!
//! # For the integration (pull, FUSE, volumes)
//!
//! * Build the chain once ([`Chain::new`], or [`Chain::from_spec`] with the
//!   spec read from a record), share it between threads, call
//!   [`Chain::encode`]/[`Chain::decode`] per object or block with a
//!   [`Ctx`]. Calls take owned buffers (`Vec<u8>`) so that no copy is made
//!   on the way into Lua; the output comes back without a copy either.
//! * Record [`Chain::spec`] (its JSON) in the image record or the volume
//!   metadata, and keep each script under the store by its SHA-256
//!   (`<sha256>.lua`) so that [`ChainSpec::resolve`] finds the exact text
//!   later; a changed script is FK0909 instead of silently different data.
//! * Errors are [`FilterError`] (codes FK0900–FK0909, `docs/errors.md`).
//!   [`FilterError::is_damage`] tells the errors a read repair or `fsck`
//!   should count as damaged data.

#[cfg(test)]
mod bench;
mod bytes;
mod engine;
pub mod floor;
pub mod native;
mod spec;
#[cfg(test)]
mod tests;

pub use engine::{Chain, Decoded};
pub use spec::{ChainSpec, FilterSpec, Param, Params, SPEC_VERSION, Script, Stage, save_scripts};

use crate::error::Coded;

/// What a filter call is about. The script sees it as `ctx`; helpers use
/// it for associated data and replica paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ctx {
    /// A store object (a regular file's content).
    Object {
        /// Its name: the fs-verity digest of the plain content, hex.
        digest: String,
        /// The plain (unfiltered) size.
        size: u64,
    },
    /// One block of a volume.
    Block {
        /// The volume's name.
        volume: String,
        /// The layer the block is written in (layer IDs are never reused).
        layer: u64,
        /// The virtual block number.
        block: u64,
        /// The plain block size.
        size: u64,
    },
}

impl Ctx {
    /// The plain size.
    pub fn size(&self) -> u64 {
        match self {
            Ctx::Object { size, .. } | Ctx::Block { size, .. } => *size,
        }
    }

    /// The associated data the encrypt helper binds a ciphertext to:
    /// `object:DIGEST`, or `block:N` for a volume block. The volume name
    /// and layer are left out on purpose: clones and snapshots share
    /// layers, and compaction may move a block to another layer, while the
    /// virtual block number stays.
    pub fn aad(&self) -> Vec<u8> {
        match self {
            Ctx::Object { digest, .. } => format!("object:{digest}").into_bytes(),
            Ctx::Block { block, .. } => format!("block:{block}").into_bytes(),
        }
    }

    /// For messages: `object 3c9d…` or `volume v1 layer 4 block 17`.
    pub fn describe(&self) -> String {
        match self {
            Ctx::Object { digest, .. } => format!("object {digest}"),
            Ctx::Block {
                volume,
                layer,
                block,
                ..
            } => format!("volume {volume} layer {layer} block {block}"),
        }
    }
}

/// Resource limits for each Lua state and call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the Lua heap of one state may use (scripts, their tables and
    /// strings). Default 64 MiB.
    pub memory: usize,
    /// Lua instructions per chain call (all stages, and the top level of
    /// each script when a state is built). Counted in steps of 1000.
    /// Default 10 million.
    pub instructions: u64,
    /// Bytes the helpers may allocate in one call, on top of 8 × (input
    /// size + plain size). Default 64 MiB.
    pub buffers: usize,
}

impl Limits {
    /// The limits users set: the defaults, each replaced by its
    /// environment variable when set to a number: `FUKASTOR_FILTER_MEMORY`
    /// (bytes of Lua heap per state), `FUKASTOR_FILTER_INSTRUCTIONS` (per
    /// call), `FUKASTOR_FILTER_BUFFERS` (helper bytes per call). A value
    /// that is not a number is ignored with a warning. What `pull`, the
    /// FUSE server and volumes use.
    pub fn configured() -> Limits {
        let mut l = Limits::default();
        let get = |name: &str| -> Option<u64> {
            let v = std::env::var(name).ok()?;
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    tracing::warn!(
                        "{name}={v:?} is not a positive number of bytes or instructions; ignored"
                    );
                    None
                }
            }
        };
        if let Some(n) = get("FUKASTOR_FILTER_MEMORY") {
            l.memory = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = get("FUKASTOR_FILTER_INSTRUCTIONS") {
            l.instructions = n;
        }
        if let Some(n) = get("FUKASTOR_FILTER_BUFFERS") {
            l.buffers = usize::try_from(n).unwrap_or(usize::MAX);
        }
        l
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            instructions: 10_000_000,
            buffers: 64 << 20,
        }
    }
}

/// What can go wrong filtering. `at` says which stage, operation and
/// object or block (empty when raised outside a call).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FilterError {
    /// A script file cannot be read.
    #[error("filter {script}: {why}")]
    Unreadable {
        /// The script's path.
        script: String,
        /// Why.
        why: String,
    },
    /// A `--filter` argument is malformed (`SCRIPT[,NAME=VALUE]...`).
    #[error("--filter {arg}: {why}")]
    BadArg {
        /// The argument.
        arg: String,
        /// Why.
        why: String,
    },
    /// A script cannot be compiled, or defines no `encode`/`decode`.
    #[error("filter {script}: {why}")]
    Load {
        /// The script's name or path.
        script: String,
        /// Why.
        why: String,
    },
    /// A script raised an error or failed at run time (including stack
    /// overflow, a global assignment in a call, a bad helper argument).
    #[error("{at}: script error: {msg}")]
    Script {
        /// Where.
        at: String,
        /// Lua's message.
        msg: String,
    },
    /// The Lua heap limit or the per-call buffer budget was exceeded.
    #[error("{at}: out of memory: {what}")]
    Memory {
        /// Where.
        at: String,
        /// Which limit.
        what: String,
    },
    /// The instruction budget was exceeded (a loop that does not end).
    #[error("{at}: instruction budget of {limit} exhausted")]
    Budget {
        /// Where.
        at: String,
        /// The budget.
        limit: u64,
    },
    /// `encode` or `decode` returned something other than bytes or a string.
    #[error("{at}: returned {got}, not bytes or a string")]
    BadReturn {
        /// Where.
        at: String,
        /// The Lua type returned.
        got: String,
    },
    /// The data is damaged (checksum mismatch, authentication failure,
    /// corrupt frame) and no replica served good data.
    #[error("{at}: damaged data: {why}")]
    Damaged {
        /// Where.
        at: String,
        /// What was found.
        why: String,
    },
    /// The data was encrypted with another key.
    #[error("{at}: encrypted with key {found}, this chain's key is {expected}")]
    WrongKey {
        /// Where.
        at: String,
        /// The key ID in the payload.
        found: String,
        /// The key ID of the configured key.
        expected: String,
    },
    /// The key cannot be loaded (file missing, variable unset, bad format).
    #[error("{at}: key: {why}")]
    Key {
        /// Where.
        at: String,
        /// Why.
        why: String,
    },
    /// A replica cannot be written or read.
    #[error("{at}: replica: {why}")]
    Replica {
        /// Where.
        at: String,
        /// Why.
        why: String,
    },
    /// A chain spec is malformed, or a script differs from the one recorded.
    #[error("filter chain: {why}")]
    Spec {
        /// Why.
        why: String,
    },
}

impl FilterError {
    /// True for damaged data (FK0905): what a read repair, `fsck` or a
    /// replica fallback acts on.
    pub fn is_damage(&self) -> bool {
        matches!(self, FilterError::Damaged { .. })
    }

    /// True when the Lua state that raised it must not be reused (the
    /// script failed, not the data).
    pub(crate) fn poisons_state(&self) -> bool {
        matches!(
            self,
            FilterError::Script { .. }
                | FilterError::Memory { .. }
                | FilterError::Budget { .. }
                | FilterError::BadReturn { .. }
                | FilterError::Load { .. }
                | FilterError::Unreadable { .. }
                | FilterError::BadArg { .. }
        )
    }

    /// Fills in `at` when the error does not say yet.
    pub(crate) fn located(mut self, place: &str) -> FilterError {
        match &mut self {
            FilterError::Script { at, .. }
            | FilterError::Memory { at, .. }
            | FilterError::Budget { at, .. }
            | FilterError::BadReturn { at, .. }
            | FilterError::Damaged { at, .. }
            | FilterError::WrongKey { at, .. }
            | FilterError::Key { at, .. }
            | FilterError::Replica { at, .. } => {
                if at.is_empty() {
                    *at = place.to_owned();
                }
            }
            FilterError::Load { .. }
            | FilterError::Unreadable { .. }
            | FilterError::BadArg { .. }
            | FilterError::Spec { .. } => {}
        }
        self
    }
}

impl Coded for FilterError {
    fn code(&self) -> &'static str {
        match self {
            FilterError::Load { .. }
            | FilterError::Unreadable { .. }
            | FilterError::BadArg { .. } => "FK0900",
            FilterError::Script { .. } => "FK0901",
            FilterError::Memory { .. } => "FK0902",
            FilterError::Budget { .. } => "FK0903",
            FilterError::BadReturn { .. } => "FK0904",
            FilterError::Damaged { .. } => "FK0905",
            FilterError::WrongKey { .. } => "FK0906",
            FilterError::Key { .. } => "FK0907",
            FilterError::Replica { .. } => "FK0908",
            FilterError::Spec { .. } => "FK0909",
        }
    }

    fn hint(&self) -> String {
        match self {
            FilterError::BadArg { .. } => {
                "write --filter SCRIPT.lua or --filter SCRIPT.lua,NAME=VALUE,... (a name of 1-64 of A-Za-z0-9._-)".into()
            }
            FilterError::Unreadable { .. } => {
                "check the script's path: the file must exist and be readable".into()
            }
            FilterError::Load { .. } => {
                "fix the script: it must be Lua 5.4 text defining encode(bytes, ctx) and decode(bytes, ctx)".into()
            }
            FilterError::Script { .. } => {
                "fix the filter script (the message gives the line); only string, table, math, utf8 and fk are available".into()
            }
            FilterError::Memory { .. } => {
                "the script allocates too much: fix it, or raise the filter memory limit".into()
            }
            FilterError::Budget { .. } => {
                "the script loops too long: fix it, or raise the filter instruction budget".into()
            }
            FilterError::BadReturn { .. } => {
                "encode and decode must return the bytes (a bytes object or a string)".into()
            }
            FilterError::Damaged { .. } => {
                "the stored data is damaged: restore it from a replica or backup, or pull the image again; run `fsck`".into()
            }
            FilterError::WrongKey { .. } => {
                "configure the key this data was encrypted with (the file or variable the chain names)".into()
            }
            FilterError::Key { .. } => {
                "provide the key: a file with 32 bytes or 64 hex digits (absolute path), or an environment variable with 64 hex digits".into()
            }
            FilterError::Replica { .. } => {
                "check that the replica directory exists, is writable and has space".into()
            }
            FilterError::Spec { .. } => {
                "restore the exact filter scripts the data was written with (they are named by SHA-256)".into()
            }
        }
    }
}

/// Shorthand.
pub type Result<T, E = FilterError> = std::result::Result<T, E>;
