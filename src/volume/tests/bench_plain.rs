//! Sequential overwrites of an unfiltered volume on the host filesystem,
//! the write path the FUSE export takes for a loop device's 1 MiB writes:
//! an ignored test (a benchmark, no timing assertions), in release mode:
//!
//! ```text
//! cargo test --release --lib volume::tests::bench_plain -- --ignored --nocapture --test-threads 1
//! ```
//!
//! A volume of `FK_BENCH_MIB` MiB (default 512) in a fresh pool under
//! `TMPDIR` is written in full once, flushed, then overwritten
//! `FK_BENCH_ROUNDS` times (default 3) by `FK_BENCH_THREADS` threads
//! (default 2, like the FUSE export on 2 cores) taking 1 MiB writes in
//! turn, with a flush at the end of each round. Per round: MB/s (write +
//! flush) and the process's CPU time (user + system) per GiB written,
//! which, unlike MB/s, hardly depends on what else the machine runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::super::{Pool, StdBackend, VolumeOptions};
use super::Rng;

const MIB: usize = 1 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of this process so far, in seconds (from
/// `/proc/self/stat`, in clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (in parentheses): utime and stime are
    // the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0] + f[1]) / 100.0
}

#[test]
#[ignore = "benchmark: run by hand (see the module docs)"]
fn volume_bench_plain_overwrites() {
    let (mib, rounds, threads) = (
        env("FK_BENCH_MIB", 512),
        env("FK_BENCH_ROUNDS", 3),
        env("FK_BENCH_THREADS", 2).max(1),
    );
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::with_backend(Arc::new(StdBackend::new(dir.path()))).unwrap();
    pool.create_volume("bench", &VolumeOptions::new((mib * MIB) as u64))
        .unwrap();
    let v = Arc::new(pool.open_volume("bench").unwrap());
    let mut rng = Rng::new(7);
    let chunks: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..8)
            .map(|_| {
                let mut c = vec![0u8; MIB];
                rng.fill(&mut c);
                c
            })
            .collect(),
    );
    println!();
    println!("{mib} MiB volume, 1 MiB writes by {threads} threads + flush, per round:");
    for round in 0..=rounds {
        let next = Arc::new(AtomicUsize::new(0));
        let (start, cpu) = (Instant::now(), cpu_secs());
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (v, next, chunks) = (v.clone(), next.clone(), chunks.clone());
                std::thread::spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= mib {
                            break;
                        }
                        v.write_at((i * MIB) as u64, &chunks[(i + round) % chunks.len()])
                            .unwrap();
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        v.flush().unwrap();
        let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_secs() - cpu);
        println!(
            "{:>10}: {:>7.0} MB/s, {:>5.0} ms CPU per GiB",
            if round == 0 {
                "fill".to_string()
            } else {
                format!("overwrite {round}")
            },
            (mib * MIB) as f64 / secs / 1e6,
            cpu * 1e3 * 1024.0 / mib as f64
        );
    }
}
