//! Crashes and injected failures, each followed by the recovery check of
//! `harness.rs` (the volume is exactly one of its candidate states).

use super::harness::{Harness, Op};
use super::mem::CrashMode;

fn mode(h: &mut Harness) -> CrashMode {
    if h.rng.chance(1, 2) {
        CrashMode::Random
    } else {
        CrashMode::DropUnsynced
    }
}

/// Crash at random points: after a random number of operations, drop what
/// was not synced (or keep a random, partly torn, part of it), reopen,
/// check, go on, crash again.
#[test]
fn crash_at_random_points() {
    let mut recoveries = 0;
    for seed in 1000..1120 {
        let mut h = Harness::in_memory(seed);
        for _ in 0..3 {
            let n = h.rng.range(1, 120);
            for _ in 0..n {
                h.step();
            }
            let m = mode(&mut h);
            h.recover(Some(m));
            recoveries += 1;
        }
    }
    println!("crash at random points: {recoveries} crashes recovered");
}

/// Every backend operation after the N-th fails: errors come back as
/// errors (never a panic), more operations keep failing cleanly, and the
/// pool reopens consistently (with or without a crash).
#[test]
fn failure_after_n_operations() {
    let (mut runs, mut failures, mut beyond) = (0, 0, 0);
    for seed in 2000..2250 {
        let mut h = Harness::in_memory(seed);
        for _ in 0..h.rng.range(0, 60) {
            h.step();
        }
        let n = h.rng.range(0, 80);
        h.mem.as_ref().unwrap().fail_after(n);
        h.strict = false;
        for _ in 0..300 {
            h.step();
            if h.failed {
                break;
            }
        }
        // Chaos: everything fails now; nothing may panic or change the disk.
        for _ in 0..20 {
            h.step();
        }
        let crash = match h.rng.below(3) {
            0 => None,
            1 => Some(CrashMode::DropUnsynced),
            _ => Some(CrashMode::Random),
        };
        failures += h.stats.failures;
        h.recover(crash);
        beyond += h.stats.beyond_durable;
        for _ in 0..30 {
            h.step();
        }
        let m = mode(&mut h);
        h.recover(Some(m));
        runs += 1;
    }
    println!(
        "failure after N operations: {runs} runs, {failures} failed operations, \
         {beyond} volumes recovered past their last durable state"
    );
    assert!(failures > runs);
}

/// One operation fails, the others do not: the volume stops accepting
/// writes, and reopening it (after a crash or not) is consistent.
#[test]
fn single_transient_failures() {
    let mut hit = 0;
    for seed in 3000..3250 {
        let mut h = Harness::in_memory(seed);
        for _ in 0..h.rng.range(0, 60) {
            h.step();
        }
        let n = h.rng.range(1, 60);
        h.mem.as_ref().unwrap().fail_once(n);
        h.strict = false;
        for _ in 0..200 {
            h.step();
            if h.failed {
                hit += 1;
                break;
            }
        }
        let crash = if h.rng.chance(1, 2) {
            None
        } else {
            Some(mode(&mut h))
        };
        h.recover(crash);
        for _ in 0..30 {
            h.step();
        }
        h.recover(Some(CrashMode::DropUnsynced));
    }
    println!("single transient failures: {hit} runs hit the failure");
    assert!(hit > 120);
}

/// A crash at every step of every operation that writes: the backend
/// fails every operation after the k-th of the operation under test (so
/// it stops there, as if the machine stopped), then crashes, keeping a
/// random, partly torn, part of what was not synced.
#[test]
fn crash_at_every_step_of_every_operation() {
    let r = crash_at_every_step(&ALL_OPS, 6, 16, 4, 90, &Harness::in_memory);
    println!(
        "crash at every step: {} runs, {} volumes recovered past their last durable state; \
         compactions: {} stopped by the crash, {} completed before it",
        r.runs, r.beyond, r.compact_failed, r.compact_done
    );
    assert!(r.beyond > 0);
    assert!(r.compact_failed > 150 && r.compact_done > 10);
}

/// Every operation that writes.
pub(super) const ALL_OPS: [Op; 13] = [
    Op::Write,
    Op::Discard,
    Op::Flush,
    Op::Close,
    Op::Snapshot,
    Op::Rollback,
    Op::Clone,
    Op::DeleteSnapshot,
    Op::DeleteVolume,
    Op::Reclaim,
    Op::MakeSpares,
    Op::Compact,
    Op::SealHead,
];

/// What [`crash_at_every_step`] counted.
#[derive(Debug, Default)]
pub(super) struct StepRuns {
    pub runs: u64,
    pub beyond: u64,
    /// Reads checked against the model on volumes with a filter chain.
    pub filtered_reads: u64,
    pub compact_failed: u64,
    pub compact_done: u64,
}

/// For each of `ops`, `seeds` harnesses (made by `make` from a seed), each
/// stopped after its k-th backend operation within the operation under
/// test for k in `0..steps` (compaction: `compact_seeds`, `compact_steps`:
/// it has many more steps: seal, index, new layer, switch), crashed and
/// checked.
pub(super) fn crash_at_every_step(
    ops: &[Op],
    seeds: u64,
    steps: u64,
    compact_seeds: u64,
    compact_steps: u64,
    make: &dyn Fn(u64) -> Harness,
) -> StepRuns {
    let mut r = StepRuns::default();
    for (i, &op) in ops.iter().enumerate() {
        let (seeds, steps) = if op == Op::Compact {
            (compact_seeds, compact_steps)
        } else {
            (seeds, steps)
        };
        for seed in 0..seeds {
            for k in 0..steps {
                let mut h = make(seed * 1000 + i as u64 * 100 + k);
                for _ in 0..30 {
                    h.step();
                }
                for _ in 0..h.rng.range(0, 6) {
                    h.run(Op::Write); // a batch for the flush to commit
                }
                if op == Op::Compact {
                    h.run(Op::Flush);
                    for _ in 0..h.rng.range(1, 6) {
                        h.run(Op::Write); // garbage for it to free
                    }
                }
                if (seed + k) % 2 == 1 {
                    h.make_spares(); // the operation takes a spare head
                }
                h.mem.as_ref().unwrap().fail_after(k);
                h.strict = false;
                let before = h.stats.compactions;
                h.run(op);
                if op == Op::Compact {
                    r.compact_failed += u64::from(h.failed);
                    r.compact_done += h.stats.compactions - before;
                }
                let m = if k % 3 == 0 {
                    CrashMode::DropUnsynced
                } else {
                    CrashMode::Random
                };
                h.recover(Some(m));
                r.beyond += h.stats.beyond_durable;
                r.filtered_reads += h.stats.filtered_reads_checked;
                r.runs += 1;
            }
        }
    }
    r
}
