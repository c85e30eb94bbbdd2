//! The dispatch benchmark: what running a helper through a Lua filter
//! costs over calling the same helper from Rust. An ignored test, run by
//! `integration/bench-filters.sh` (in release mode):
//!
//! ```text
//! cargo test --release --lib filter::bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! For each filter and block size it times round trips (encode then
//! decode) of one block, feeding each decode's output to the next encode
//! so no copy is added. "native" calls the helpers of [`super::native`]
//! directly; "Lua" runs the example script through a [`Chain`]. Each cell
//! is the best of `FK_BENCH_ROUNDS` rounds (default 5) of at least
//! `FK_BENCH_MS` milliseconds (default 200), rounds of the two sides
//! interleaved, so a busy machine hurts both alike. MB/s is plain bytes
//! (10^6) through encode + decode per second. Overhead is how much longer
//! a byte takes through Lua: native MB/s ÷ Lua MB/s − 1.
//! `FK_BENCH_FILTERS=checksum,encrypt` limits the run to some rows,
//! `FK_BENCH_SIZES=64,1024` to some block sizes (KiB).

use std::path::Path;
use std::time::{Duration, Instant};

use super::native::{self, Key};
use super::tests::{compressible, example, key_file, obj};
use super::{Chain, Ctx, Limits, Script, Stage};

type Native<'a> = Box<dyn FnMut(Vec<u8>) -> Vec<u8> + 'a>;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Round trips per second of `f` over `block`, for about `ms` milliseconds.
fn time_round_trips(block: &[u8], f: &mut dyn FnMut(Vec<u8>) -> Vec<u8>, ms: u64) -> f64 {
    let mut data = block.to_vec();
    // Warm up (states, contexts, page cache).
    for _ in 0..3 {
        data = f(data);
    }
    let budget = Duration::from_millis(ms);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..8 {
            data = f(data);
        }
        n += 8;
    }
    assert_eq!(data.len(), block.len(), "round trip changed the size");
    n as f64 / start.elapsed().as_secs_f64()
}

fn native_for<'a>(name: &str, key: &'a Key, dir: &'a Path, ctx: &'a Ctx) -> Native<'a> {
    let aad = ctx.aad();
    match name {
        "none" | "pass-through" => Box::new(|d| d),
        "compress" => Box::new(|d| {
            let e = native::zstd_compress(&d, 3).unwrap();
            native::zstd_decompress(&e, 64 << 20).unwrap()
        }),
        "encrypt" => Box::new(move |d| {
            let e = native::encrypt(key, &aad, &d).unwrap();
            native::decrypt(key, &aad, &e).unwrap()
        }),
        "checksum" => Box::new(|d| {
            let e = native::checksum_append(d);
            native::checksum_strip(e).unwrap()
        }),
        "replicate" => Box::new(move |d| {
            native::replica_write(dir, ctx, &d).unwrap();
            d
        }),
        "compress+encrypt+checksum" => Box::new(move |d| {
            let e = native::zstd_compress(&d, 3).unwrap();
            let e = native::encrypt(key, &aad, &e).unwrap();
            let e = native::checksum_append(e);
            let p = native::checksum_strip(e).unwrap();
            let p = native::decrypt(key, &aad, &p).unwrap();
            native::zstd_decompress(&p, 64 << 20).unwrap()
        }),
        other => unreachable!("{other}"),
    }
}

fn stages_for(name: &str, key: &Path, dir: &Path) -> Vec<Stage> {
    let one = |n: &str| match n {
        "compress" => example("compress").param("level", 3),
        "encrypt" => example("encrypt").param("key_file", key.to_str().unwrap()),
        "checksum" => example("checksum"),
        "replicate" => example("replicate").param("dir", dir.to_str().unwrap()),
        other => unreachable!("{other}"),
    };
    match name {
        "none" => Vec::new(),
        "pass-through" => vec![Stage::new(Script::new(
            "pass-through",
            "function encode(b) return b end function decode(b) return b end",
        ))],
        "compress+encrypt+checksum" => vec![one("compress"), one("encrypt"), one("checksum")],
        n => vec![one(n)],
    }
}

#[test]
#[ignore = "benchmark: run by integration/bench-filters.sh"]
fn filter_bench_dispatch() {
    let rounds = env_num("FK_BENCH_ROUNDS", 5);
    let ms = env_num("FK_BENCH_MS", 200);
    let tmp = tempfile::tempdir().unwrap();
    let key_path = key_file(tmp.path(), 42);
    let key = Key::from_file(&key_path).unwrap();
    let replicas = tmp.path().join("replicas");
    let filters = [
        "none",
        "pass-through",
        "checksum",
        "compress",
        "encrypt",
        "replicate",
        "compress+encrypt+checksum",
    ];
    let only = std::env::var("FK_BENCH_FILTERS").unwrap_or_default();
    let filters: Vec<&str> = filters
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o == *f))
        .collect();
    let sizes: Vec<usize> = match std::env::var("FK_BENCH_SIZES") {
        Ok(v) if !v.is_empty() => v
            .split(',')
            .map(|k| k.parse::<usize>().unwrap() << 10)
            .collect(),
        _ => vec![4 << 10, 64 << 10, 1 << 20],
    };

    let mut rows = Vec::new();
    for filter in filters {
        for &size in &sizes {
            let block = compressible(size, size as u64);
            let ctx = match obj(1) {
                Ctx::Object { digest, .. } => Ctx::Object {
                    digest,
                    size: size as u64,
                },
                other => other,
            };
            let chain =
                Chain::new(stages_for(filter, &key_path, &replicas), Limits::default()).unwrap();
            let mut native = native_for(filter, &key, &replicas, &ctx);
            let mut lua = |d: Vec<u8>| {
                let e = chain.encode(d, &ctx).unwrap();
                chain.decode(e, &ctx).unwrap()
            };
            let (mut best_native, mut best_lua) = (0f64, 0f64);
            for _ in 0..rounds {
                best_native = best_native.max(time_round_trips(&block, &mut native, ms));
                best_lua = best_lua.max(time_round_trips(&block, &mut lua, ms));
            }
            let mb = |rt: f64| rt * size as f64 / 1e6;
            rows.push((filter, size, mb(best_native), mb(best_lua)));
            eprintln!(
                "{filter:>26} {:>5} KiB: native {:>9.1} MB/s, Lua {:>9.1} MB/s",
                size >> 10,
                mb(best_native),
                mb(best_lua)
            );
        }
    }

    println!();
    println!(
        "| filter | block | native MB/s | Lua MB/s | Lua overhead | Lua cost per round trip |"
    );
    println!("|---|--:|--:|--:|--:|--:|");
    for (filter, size, n, l) in rows {
        // bytes ÷ (MB/s) is microseconds.
        let per_trip_us = size as f64 / l - size as f64 / n;
        let size = if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{} KiB", size >> 10)
        };
        let over = if filter == "none" || filter == "pass-through" {
            "–".to_owned()
        } else {
            format!("{:+.1} %", (n / l - 1.0) * 100.0)
        };
        println!("| {filter} | {size} | {n:.0} | {l:.0} | {over} | {per_trip_us:.2} µs |");
    }
}
