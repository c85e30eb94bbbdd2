//! The benchmark floor: what the example filters cost without Lua.
//!
//! [`Floor`] runs the logic of the example filters shipped in
//! `examples/filters/` (compress, checksum, encrypt, replicate) by calling
//! the same native helpers straight from Rust. It is built only for a chain
//! made entirely of those scripts, recognised by the SHA-256 of their exact
//! text, so it computes exactly what the Lua chain computes; the stored
//! bytes are interchangeable. The benchmarks use it to measure how much
//! the Lua dispatch costs (`integration/bench-filters.sh`); it is switched
//! on only by `FUKASTOR_BENCH_NATIVE_FILTERS=1`, never by default, because
//! a user's chain is whatever their scripts say. When it is on, every
//! [`super::Chain`] built from such scripts runs its encode and decode
//! here instead of in Lua.
//!
//! Replica recovery is not part of the floor: it measures the path where
//! nothing is damaged (a damaged block is an error, not served from the
//! replica).

use std::path::PathBuf;

use super::native::{self, Key};
use super::{ChainSpec, Ctx, FilterError, Param, Result, Script};

const COMPRESS: &str = include_str!("../../examples/filters/compress.lua");
const CHECKSUM: &str = include_str!("../../examples/filters/checksum.lua");
const ENCRYPT: &str = include_str!("../../examples/filters/encrypt.lua");
const REPLICATE: &str = include_str!("../../examples/filters/replicate.lua");

#[cfg(test)]
static FORCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For in-process benchmarks: chains built from now on use the floor (or not).
#[cfg(test)]
pub(crate) fn force(on: bool) {
    FORCE.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// The text of an example filter shipped in `examples/filters/`
/// (`compress`, `checksum`, `encrypt`, `replicate`), for the demo.
pub fn example_script(name: &str) -> Option<&'static str> {
    match name {
        "compress" => Some(COMPRESS),
        "checksum" => Some(CHECKSUM),
        "encrypt" => Some(ENCRYPT),
        "replicate" => Some(REPLICATE),
        _ => None,
    }
}

/// True when the benchmark switch is on.
pub fn enabled() -> bool {
    #[cfg(test)]
    if FORCE.load(std::sync::atomic::Ordering::SeqCst) {
        return true;
    }
    std::env::var_os("FUKASTOR_BENCH_NATIVE_FILTERS").is_some_and(|v| v == "1")
}

#[derive(Debug)]
enum Step {
    Compress(i32),
    Checksum,
    Encrypt(Key),
    Replicate(PathBuf),
}

/// A chain of example filters, run natively. See the module doc.
#[derive(Debug)]
pub struct Floor {
    steps: Vec<Step>,
}

fn sha(text: &str) -> String {
    Script::new("x", text.as_bytes()).sha256().to_owned()
}

impl Floor {
    /// The native equivalent of `spec`, when every stage is an unmodified
    /// example filter with valid parameters.
    pub fn for_spec(spec: &ChainSpec) -> Option<Floor> {
        let mut steps = Vec::new();
        for f in &spec.filters {
            let step = if f.sha256 == sha(COMPRESS) {
                let level = match f.params.get("level") {
                    None => 3,
                    Some(Param::Int(n)) => i32::try_from(*n).ok()?,
                    Some(_) => return None,
                };
                Step::Compress(level)
            } else if f.sha256 == sha(CHECKSUM) {
                Step::Checksum
            } else if f.sha256 == sha(ENCRYPT) {
                let key = match (f.params.get("key_file"), f.params.get("key_env")) {
                    (Some(Param::Str(p)), _) => Key::from_file(std::path::Path::new(p)).ok()?,
                    (None, Some(Param::Str(v))) => Key::from_env(v).ok()?,
                    _ => return None,
                };
                Step::Encrypt(key)
            } else if f.sha256 == sha(REPLICATE) {
                match f.params.get("dir") {
                    Some(Param::Str(d)) => Step::Replicate(PathBuf::from(d)),
                    _ => return None,
                }
            } else {
                return None;
            };
            steps.push(step);
        }
        Some(Floor { steps })
    }

    /// Encodes like the chain: each step in order.
    pub fn encode(&self, mut data: Vec<u8>, ctx: &Ctx) -> Result<Vec<u8>> {
        for s in &self.steps {
            data = match s {
                Step::Compress(level) => native::zstd_compress(&data, *level)?,
                Step::Checksum => native::checksum_append(data),
                Step::Encrypt(key) => native::encrypt(key, &ctx.aad(), &data)?,
                Step::Replicate(dir) => {
                    native::replica_write(dir, ctx, &data)?;
                    data
                }
            };
        }
        Ok(data)
    }

    /// Decodes like the chain: each step in reverse order.
    pub fn decode(&self, mut data: Vec<u8>, ctx: &Ctx) -> Result<Vec<u8>> {
        for s in self.steps.iter().rev() {
            data = match s {
                Step::Compress(_) => {
                    let max = usize::try_from(ctx.size()).map_err(|_| FilterError::Memory {
                        at: ctx.describe(),
                        what: "the plain size does not fit in memory".into(),
                    })?;
                    native::zstd_decompress(&data, max)?
                }
                Step::Checksum => native::checksum_strip(data)?,
                Step::Encrypt(key) => native::decrypt(key, &ctx.aad(), &data)?,
                Step::Replicate(_) => data,
            };
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Chain, Limits, Stage};

    #[test]
    fn floor_computes_what_the_lua_chain_computes() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        let replica = dir.path().join("replica");
        let script = |name: &str, text: &str| Script::new(name, text.as_bytes());
        let chain = Chain::new(
            vec![
                Stage::new(script("compress", COMPRESS)).param("level", 5),
                Stage::new(script("checksum", CHECKSUM)),
                Stage::new(script("encrypt", ENCRYPT)).param("key_file", key.display().to_string()),
                Stage::new(script("replicate", REPLICATE))
                    .param("dir", replica.display().to_string()),
            ],
            Limits::default(),
        )
        .unwrap();
        let floor = Floor::for_spec(chain.spec()).expect("the example scripts are recognised");
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let ctx = Ctx::Object {
            digest: "ab".repeat(32),
            size: data.len() as u64,
        };
        let by_floor = floor.encode(data.clone(), &ctx).unwrap();
        assert_eq!(chain.decode(by_floor, &ctx).unwrap(), data);
        let by_lua = chain.encode(data.clone(), &ctx).unwrap();
        assert_eq!(floor.decode(by_lua, &ctx).unwrap(), data);

        // A script that differs by one byte is not an example: no floor.
        let changed = Chain::new(
            vec![Stage::new(script("compress", &format!("{COMPRESS}\n")))],
            Limits::default(),
        )
        .unwrap();
        assert!(Floor::for_spec(changed.spec()).is_none());
    }
}
