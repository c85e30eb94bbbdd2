//! fsx-style runs without injected faults: random writes, reads,
//! discards, flushes, snapshots, rollbacks, clones, deletions and reclaims,
//! every read compared with the model; with crashes in memory, and with
//! reopenings on the real filesystem.

use std::sync::Arc;

use super::super::StdBackend;
use super::harness::Harness;
use super::mem::CrashMode;

#[test]
fn fsx_in_memory_with_crashes() {
    let mut total = Vec::new();
    for seed in 0..8 {
        let mut h = Harness::in_memory(seed);
        for _ in 0..2500 {
            h.step();
            if h.rng.chance(1, 200) {
                let mode = if h.rng.chance(1, 2) {
                    CrashMode::Random
                } else {
                    CrashMode::DropUnsynced
                };
                h.recover(Some(mode));
            }
        }
        h.recover(Some(CrashMode::Random));
        total.push(h.stats.clone());
    }
    let reads: u64 = total.iter().map(|s| s.reads_checked).sum();
    let recoveries: u64 = total.iter().map(|s| s.recoveries).sum();
    let snaps: u64 = total.iter().map(|s| s.snapshots_checked).sum();
    let compactions: u64 = total.iter().map(|s| s.compactions).sum();
    let damaged: u64 = total.iter().map(|s| s.indexes_damaged).sum();
    println!(
        "fsx in memory: {reads} reads checked, {recoveries} crashes recovered, {snaps} snapshots checked, \
         {compactions} compactions, {damaged} index files damaged"
    );
    assert!(reads > 3000 && recoveries > 50 && snaps > 20);
    assert!(compactions > 100 && damaged > 50);
}

#[test]
fn fsx_on_the_real_filesystem() {
    for seed in 100..102 {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let base = dir.path().join("base.img");
        let b2 = base.clone();
        let backend = Arc::new(StdBackend::new(&pool));
        std::fs::create_dir_all(&pool).unwrap();
        let mut h = Harness::new(seed, backend, None, base, move |b| {
            std::fs::write(&b2, b).unwrap()
        });
        for i in 0..1500 {
            h.step();
            if i % 300 == 299 {
                h.recover(None); // close without flushing, reopen
            }
        }
        h.recover(None);
        println!("fsx on disk (seed {seed}): {:?}", h.stats);
        assert!(h.stats.reads_checked > 300 && h.stats.compactions > 5);
    }
}
