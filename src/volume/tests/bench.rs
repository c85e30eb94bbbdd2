//! Sequential writes to a volume through filter chains: an ignored test
//! (a benchmark, no timing assertions), in release mode:
//!
//! ```text
//! cargo test --release --lib volume::tests::bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! For each row it creates a volume in a fresh pool on the host
//! filesystem (a temporary directory: `TMPDIR`), writes `FK_BENCH_MIB`
//! MiB (default 256) with 1 MiB [`Volume::write_at`] calls from the start,
//! then one [`Volume::flush`], and reports MB/s (10^6 bytes of plain data
//! per second, write + flush): the best of `FK_BENCH_ROUNDS` rounds
//! (default 2), the rounds of a row's two sides interleaved so that a busy
//! disk hurts both alike.
//!
//! - "Lua": a filtered volume, the example filter(s) run by the volume's
//!   [`crate::filter::Chain`];
//! - "native": the floor: the same filtered volume with its chain run by
//!   [`crate::filter::floor`] (the example filters' logic calling the same
//!   native helpers from Rust, no Lua), so both sides store the same bytes;
//! - overhead: how much longer a byte takes through Lua than through the
//!   floor: native MB/s ÷ Lua MB/s − 1.
//!
//! The data: each 4 KiB block is 2 KiB of random bytes and 2 KiB of
//! repeated text (zstd level 3 makes it about 52 % of its size).
//! `FK_BENCH_FILTERS=none,compress` limits the rows.

use std::sync::Arc;
use std::time::Instant;

use super::super::{BLOCK_SIZE, Pool, StdBackend, VolumeOptions};
use super::Rng;
use super::filters::Env;

const BS: usize = BLOCK_SIZE as usize;
const MIB: usize = 1 << 20;

/// One MiB of half-compressible blocks.
fn data(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let text = b"fukastor volume block, partly text, partly noise. ".repeat(50);
    let mut out = vec![0u8; MIB];
    for b in out.chunks_mut(BS) {
        rng.fill(&mut b[..BS / 2]);
        b[BS / 2..].copy_from_slice(&text[..BS / 2]);
    }
    out
}

/// Seconds to write `mib` MiB (1 MiB writes) and flush, through the
/// filters `filter` (`+`-separated example names) run by Lua, or, with
/// `native`, by their helpers from Rust in front of an unfiltered volume.
fn time_writes(env: &Env, filter: &str, native: bool, mib: usize) -> (f64, f64) {
    // Every run starts without replicas (a run replacing the files an
    // earlier run left, freeing their blocks, would be slowed), and with
    // the earlier runs' writes on disk (their writeback would slow it too).
    match std::fs::remove_dir_all(env.replicas()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
        _ => {}
    }
    rustix::fs::syncfs(std::fs::File::open(env.dir.path()).unwrap()).unwrap();
    let work = tempfile::tempdir_in(env.dir.path()).unwrap();
    let backend = Arc::new(StdBackend::new(work.path()));
    let pool = Pool::with_backend_and_filters(backend, Some(env.filters())).unwrap();
    let mut opts = VolumeOptions::new((mib * MIB) as u64);
    if filter != "none" {
        let names: Vec<&str> = filter.split('+').collect();
        opts = opts.filters(env.chain(&names));
    }
    pool.create_volume("bench", &opts).unwrap();
    // The volume's chain is built when it is opened: natively or in Lua.
    crate::filter::floor::force(native);
    let v = pool.open_volume("bench");
    crate::filter::floor::force(false);
    let v = v.unwrap();
    if let Some(chain) = v.chain() {
        assert_eq!(
            chain.runs_natively(),
            native,
            "{filter}: the floor does not know this chain"
        );
    }
    let chunks: Vec<Vec<u8>> = (0..4).map(data).collect();
    let start = Instant::now();
    for i in 0..mib {
        v.write_at((i * MIB) as u64, &chunks[i % chunks.len()])
            .unwrap();
    }
    v.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stored = v.stats().layer_bytes as f64 / (mib * MIB) as f64;
    eprintln!(
        "{filter:>26} {:>6}: {:>8.1} MB/s, {:.0} % stored",
        if native { "native" } else { "Lua" },
        (mib * MIB) as f64 / secs / 1e6,
        stored * 100.0
    );
    (secs, stored)
}

#[test]
#[ignore = "benchmark: run by hand (see the module docs)"]
fn volume_bench_filtered_writes() {
    let mib = std::env::var("FK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256usize);
    let rounds = std::env::var("FK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2usize);
    let only = std::env::var("FK_BENCH_FILTERS").unwrap_or_default();
    let env = Env::new();
    let filters = [
        "none",
        "compress",
        "checksum",
        "encrypt",
        "replicate",
        "compress+encrypt+checksum",
    ];
    let mut rows = Vec::new();
    for f in filters
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o == *f))
    {
        let (mut floor, mut lua, mut stored) = (f64::MAX, f64::MAX, 0.0);
        for round in 0..rounds {
            if f == "none" {
                let (secs, s) = time_writes(&env, f, true, mib);
                floor = floor.min(secs);
                (lua, stored) = (floor, s); // the same volume: unfiltered
                continue;
            }
            // Native first in even rounds, Lua first in odd ones.
            for native in [round % 2 == 0, round % 2 == 1] {
                let (secs, s) = time_writes(&env, f, native, mib);
                if native {
                    floor = floor.min(secs);
                } else {
                    lua = lua.min(secs);
                    stored = s;
                }
            }
        }
        rows.push((f, floor, lua, stored));
    }
    let mb = |secs: f64| (mib * MIB) as f64 / secs / 1e6;
    println!();
    println!("{mib} MiB of 1 MiB writes + flush, per filter:");
    println!();
    println!("| filter | native floor MB/s | Lua MB/s | Lua overhead | stored / written |");
    println!("|---|--:|--:|--:|--:|");
    for (f, floor, lua, stored) in rows {
        let over = if f == "none" {
            "–".to_owned()
        } else {
            format!("{:+.1} %", (lua / floor - 1.0) * 100.0)
        };
        println!(
            "| {f} | {:.0} | {:.0} | {over} | {:.0} % |",
            mb(floor),
            mb(lua),
            stored * 100.0
        );
    }
}
