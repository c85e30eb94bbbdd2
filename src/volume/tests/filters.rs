//! Filtered volumes (`docs/volume-format.md`, "Filtered volumes"): the
//! model test and the crash-at-every-step test with filter chains, damage
//! caught by the chain (and served from a replica), encryption that leaves
//! no plaintext in the pool and refuses a wrong key, misbehaving scripts,
//! metadata and clones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::{BLOCK_SIZE, Pool, StdBackend, VolumeError, VolumeOptions};
use super::crash::{ALL_OPS, crash_at_every_step};
use super::harness::Harness;
use super::mem::{CrashMode, Mem};
use super::{Rng, behaviour::block};
use crate::error::Coded;
use crate::filter::{Chain, ChainSpec, Limits, Script, Stage, save_scripts};

const BS: u64 = BLOCK_SIZE as u64;
const MIB: u64 = 1 << 20;

/// Where a test keeps its scripts, key and replicas.
pub(super) struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The pool's filter directory.
    pub fn filters(&self) -> PathBuf {
        self.dir.path().join("filters")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key")
    }

    pub fn replicas(&self) -> PathBuf {
        self.dir.path().join("replicas")
    }

    /// The spec of the example filters `names` (in encode order), their
    /// scripts saved in [`Env::filters`]; writes a key file on first use.
    pub fn chain(&self, names: &[&str]) -> ChainSpec {
        let stages: Vec<Stage> = names.iter().map(|n| self.stage(n)).collect();
        save_scripts(&stages, &self.filters()).unwrap();
        Chain::new(stages, Limits::default())
            .unwrap()
            .spec()
            .clone()
    }

    fn stage(&self, name: &str) -> Stage {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/filters");
        let script = |n: &str| Script::from_file(&examples.join(format!("{n}.lua"))).unwrap();
        match name {
            "compress" => Stage::new(script("compress")).param("level", 3),
            "checksum" => Stage::new(script("checksum")),
            "encrypt" => {
                if !self.key().exists() {
                    std::fs::write(self.key(), hex::encode([7u8; 32])).unwrap();
                }
                Stage::new(script("encrypt")).param("key_file", self.key().to_str().unwrap())
            }
            "replicate" => {
                Stage::new(script("replicate")).param("dir", self.replicas().to_str().unwrap())
            }
            "pass" => Stage::new(Script::new(
                "pass",
                "function encode(b) return b end function decode(b) return b end",
            )),
            other => Stage::new(Script::new(other, custom(other))),
        }
    }

    /// A pool on a fresh in-memory backend with this filter directory.
    pub fn mem_pool(&self, seed: u64) -> (Mem, Pool) {
        let mem = Mem::new(seed);
        let pool =
            Pool::with_backend_and_filters(Arc::new(mem.clone()), Some(self.filters())).unwrap();
        (mem, pool)
    }
}

/// Misbehaving scripts, by name.
fn custom(name: &str) -> &'static str {
    match name {
        "fails" => {
            "function encode(b, ctx) if ctx.block == 5 then error('no block 5') end return b end \
             function decode(b) return b end"
        }
        "grows" => {
            "function encode(b) return string.rep('x', 70000) end function decode(b) return b end"
        }
        "shrinks" => "function encode(b) return b end function decode(b) return b:sub(1, 100) end",
        "loops" => "function encode(b) return b end function decode(b) while true do end end",
        other => panic!("no script {other}"),
    }
}

/// The chains the model and crash tests run with.
const CHAINS: [&[&str]; 5] = [
    &["compress"],
    &["checksum"],
    &["encrypt"],
    &["compress", "encrypt", "checksum"],
    &["checksum", "replicate"],
];

/// The fsx-style model test (random operations, crashes, compaction,
/// damaged index files) with each chain.
#[test]
fn fsx_with_filter_chains() {
    for (c, names) in CHAINS.iter().enumerate() {
        let env = Env::new();
        let spec = env.chain(names);
        let (mut reads, mut filtered, mut compactions, mut recoveries) = (0, 0, 0, 0);
        for seed in 0..2 {
            let filters = Some((spec.clone(), env.filters()));
            let mut h = Harness::in_memory_filtered(500 + 10 * c as u64 + seed, filters);
            for _ in 0..700 {
                h.step();
                if h.rng.chance(1, 150) {
                    h.recover(Some(CrashMode::Random));
                }
            }
            h.recover(Some(CrashMode::DropUnsynced));
            reads += h.stats.reads_checked;
            filtered += h.stats.filtered_reads_checked;
            compactions += h.stats.compactions;
            recoveries += h.stats.recoveries;
        }
        println!(
            "fsx with {names:?}: {reads} reads checked, {compactions} compactions, {recoveries} recoveries"
        );
        assert!(reads > 300 && compactions > 5, "{names:?}");
        // Every volume of the run (v0, its clones, reopened ones) decoded
        // through the chain: none fell back to plain blocks.
        assert_eq!(filtered, reads, "{names:?}: reads of unfiltered volumes");
    }
}

/// A crash at every step of every operation that writes, on filtered
/// volumes (fewer seeds than the unfiltered test: the machinery is the
/// same, the records are not).
#[test]
fn crash_at_every_step_with_filters() {
    for names in [&["compress", "checksum"][..], &["encrypt"]] {
        let env = Env::new();
        let spec = env.chain(names);
        let make = |seed| Harness::in_memory_filtered(seed, Some((spec.clone(), env.filters())));
        let r = crash_at_every_step(&ALL_OPS, 2, 16, 2, 60, &make);
        println!(
            "crash at every step with {names:?}: {} runs, {} past the last durable state, \
             {} filtered reads checked, compactions: {} stopped, {} completed",
            r.runs, r.beyond, r.filtered_reads, r.compact_failed, r.compact_done
        );
        assert!(r.compact_failed > 30 && r.compact_done > 0, "{names:?}");
        assert!(
            r.beyond > 0,
            "{names:?}: no crash left more than the last flush"
        );
        assert!(
            r.filtered_reads > 100,
            "{names:?}: too few filtered reads checked"
        );
    }
}

/// Writes block 3 (and 4) of a new filtered volume, seals it in a
/// snapshot, flips byte `at` of block 3's stored payload, and reads it back.
fn read_after_flip(names: &[&str], at: u64) -> Result<Vec<u8>, VolumeError> {
    let env = Env::new();
    let spec = env.chain(names);
    let (mem, pool) = env.mem_pool(1);
    pool.create_volume("v", &VolumeOptions::new(MIB).filters(spec))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(3 * BS, &block(3)).unwrap();
    v.write_at(4 * BS, &block(4)).unwrap();
    v.snapshot("s").unwrap();
    let layer = format!("layers/{}.data", v.stats().layers[0]);
    drop(v);
    // The first record's payload starts at 32 + 40.
    mem.flip_byte(&layer, 32 + 40 + at);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(
        super::behaviour::read(&v, 4 * BS, BS),
        block(4),
        "{names:?}: the other block still reads"
    );
    let mut buf = vec![0u8; BS as usize];
    v.read_at(3 * BS, &mut buf).map(|()| buf)
}

/// A flipped byte in a stored payload is never served: the chain's checks
/// catch it (FK0905), a replica serves the right bytes, and a chain that
/// checks nothing is caught by the record's CRC (FK0710) unless it has a
/// replica.
#[test]
fn damaged_payloads_are_caught_or_served_from_a_replica() {
    // Byte 60: in the data (past an encrypted payload's magic, key ID and
    // nonce); byte 5: in the key ID.
    for (names, at, code) in [
        (&["checksum"][..], 60, "FK0905"),
        (&["compress"], 60, "FK0905"),
        (&["encrypt"], 60, "FK0905"),
        (&["compress", "encrypt", "checksum"], 60, "FK0905"),
        (&["pass"], 60, "FK0710"),
        (&["encrypt"], 5, "FK0710"),
    ] {
        let e = read_after_flip(names, at).unwrap_err();
        assert_eq!(e.code(), code, "{names:?}: {e}");
        assert!(e.to_string().contains("block 3"), "{names:?}: {e}");
    }
    for names in [&["checksum", "replicate"][..], &["replicate"]] {
        assert_eq!(read_after_flip(names, 60).unwrap(), block(3), "{names:?}");
    }
}

/// Every file of a directory tree.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Plaintext written to an encrypted volume appears nowhere in the pool
/// (head, sealed layer, compacted layer, index files); another key is
/// FK0906, never garbage.
#[test]
fn encrypted_volumes_keep_no_plaintext_and_refuse_a_wrong_key() {
    let env = Env::new();
    let spec = env.chain(&["compress", "encrypt"]);
    let dir = env.dir.path().join("pool");
    std::fs::create_dir_all(&dir).unwrap();
    let backend = Arc::new(StdBackend::new(&dir));
    let pool = Pool::with_backend_and_filters(backend, Some(env.filters())).unwrap();
    pool.create_volume("v", &VolumeOptions::new(4 * MIB).filters(spec))
        .unwrap();
    let pattern = b"fukastor plaintext pattern 0123456789 ".repeat(2000);
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &pattern).unwrap();
    v.snapshot("s").unwrap();
    v.write_at(8192, &pattern[..3 * BS as usize]).unwrap();
    v.delete_snapshot("s").unwrap();
    assert!(v.compact().unwrap().layer.is_some());
    v.write_at(MIB, &pattern).unwrap();
    v.flush().unwrap();
    assert_eq!(
        super::behaviour::read(&v, MIB, pattern.len() as u64),
        pattern
    );
    drop(v);
    let mut all = Vec::new();
    files(&dir, &mut all);
    assert!(all.len() >= 3, "{all:?}");
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(24).any(|w| w == &pattern[..24]),
            "{} holds plaintext",
            f.display()
        );
    }
    // Another key in the key file: reading is FK0906.
    std::fs::write(env.key(), hex::encode([8u8; 32])).unwrap();
    let v = pool.open_volume("v").unwrap();
    let mut buf = vec![0u8; BS as usize];
    let e = v.read_at(MIB, &mut buf).unwrap_err();
    assert_eq!(e.code(), "FK0906", "{e}");
    // Without the key file, the volume does not open: FK0907.
    drop(v);
    std::fs::remove_file(env.key()).unwrap();
    let e = pool.open_volume("v").unwrap_err();
    assert_eq!(e.code(), "FK0907", "{e}");
}

/// A script that fails, loops, or returns what a block cannot be fails
/// that one request with a coded error; the volume keeps working.
#[test]
fn misbehaving_scripts_fail_one_request() {
    let env = Env::new();
    let (_mem, pool) = env.mem_pool(2);
    let make = |name: &str, chain: &[&str]| {
        let spec = env.chain(chain);
        pool.create_volume(name, &VolumeOptions::new(MIB).filters(spec))
            .unwrap();
        pool.open_volume(name).unwrap()
    };
    let v = make("fails", &["fails"]);
    let e = v.write_at(4 * BS, &[1u8; 3 * BS as usize]).unwrap_err();
    assert_eq!(e.code(), "FK0901", "{e}");
    v.write_at(0, &block(1)).unwrap(); // not stopped
    v.flush().unwrap();
    assert_eq!(super::behaviour::read(&v, 0, BS), block(1));

    let v = make("grows", &["grows"]);
    let e = v.write_at(0, &block(1)).unwrap_err();
    assert_eq!(e.code(), "FK0722", "{e}");

    let v = make("shrinks", &["shrinks"]);
    v.write_at(0, &block(1)).unwrap();
    let mut buf = vec![0u8; BS as usize];
    let e = v.read_at(0, &mut buf).unwrap_err();
    assert_eq!(e.code(), "FK0722", "{e}");
    assert_eq!(super::behaviour::read(&v, BS, BS), vec![0; BS as usize]);

    let v = make("loops", &["loops"]);
    v.write_at(0, &block(1)).unwrap();
    let e = v.read_at(0, &mut buf).unwrap_err();
    assert_eq!(e.code(), "FK0903", "{e}");
}

/// The metadata records the chain (format 2) and clones inherit it;
/// unfiltered metadata is as before; a chain whose script is missing is
/// refused (FK0909) before anything is written.
#[test]
fn metadata_records_the_chain_and_clones_inherit_it() {
    let env = Env::new();
    let spec = env.chain(&["compress", "checksum"]);
    let (mem, pool) = env.mem_pool(3);
    pool.create_volume("plain", &VolumeOptions::new(MIB))
        .unwrap();
    let plain = String::from_utf8_lossy(&mem.read_file("volumes/plain.meta").unwrap()).into_owned();
    assert!(
        plain.contains("\"format\": 1") && !plain.contains("filters"),
        "{plain}"
    );

    pool.create_volume("v", &VolumeOptions::new(MIB).filters(spec.clone()))
        .unwrap();
    let meta = String::from_utf8_lossy(&mem.read_file("volumes/v.meta").unwrap()).into_owned();
    assert!(meta.contains("\"format\": 2"), "{meta}");
    assert!(meta.contains(&spec.filters[0].sha256), "{meta}");
    assert_eq!(pool.info("v").unwrap().filters, ["compress", "checksum"]);
    let v = pool.open_volume("v").unwrap();
    let mut rng = Rng::new(9);
    let mut data = vec![0u8; 64 << 10];
    rng.fill(&mut data[..32 << 10]); // half random, half zeros
    v.write_at(BS, &data).unwrap();
    v.snapshot("s").unwrap();
    let layer = v.stats().layers[0];
    drop(v);
    let stored = mem.read_file(&format!("layers/{layer}.data")).unwrap();
    assert_eq!(stored[20], 2, "a filtered layer is format version 2");
    assert_eq!(stored[32 + 4], 4, "its writes are filtered-write records");
    assert!(
        (stored.len() as u64) < 16 * (BS + 40),
        "zeros compress: {} bytes",
        stored.len()
    );
    pool.clone_snapshot("v", "s", "c").unwrap();
    assert_eq!(pool.info("c").unwrap().filters, ["compress", "checksum"]);
    let c = pool.open_volume("c").unwrap();
    assert_eq!(super::behaviour::read(&c, BS, data.len() as u64), data);
    c.write_at(0, &block(2)).unwrap();
    c.flush().unwrap();
    let head = c.stats().layers.last().copied().unwrap();
    let stored = mem.read_file(&format!("layers/{head}.data")).unwrap();
    assert_eq!(stored[20], 2, "the clone's head is filtered too");
    drop(c);

    // A pool without a filter directory cannot open a filtered volume.
    let bare = Pool::with_backend(Arc::new(mem.clone())).unwrap();
    assert_eq!(bare.open_volume("v").unwrap_err().code(), "FK0909");

    // A spec naming a script that is not there: refused, nothing written.
    let mut missing = spec.clone();
    missing.filters[0].sha256 = "0".repeat(64);
    missing.filters[0].name = "nothere".into();
    let before = (mem.names_in("layers"), mem.names_in("volumes"));
    let e = pool
        .create_volume("w", &VolumeOptions::new(MIB).filters(missing))
        .unwrap_err();
    assert_eq!(e.code(), "FK0909", "{e}");
    assert_eq!((mem.names_in("layers"), mem.names_in("volumes")), before);
}
