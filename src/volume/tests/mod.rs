//! Tests of volumes against models.
//!
//! - `mem.rs`: a backend that counts, fails and crashes on demand;
//! - `harness.rs`: random operations on a pool, each checked against an
//!   in-memory model of every volume's bytes and snapshots, with the
//!   recovery invariant checked after each crash or failure;
//! - `model.rs`: fsx-style runs without faults (in memory and on disk);
//! - `crash.rs`: crashes at random points, failures after N operations,
//!   single transient failures;
//! - `behaviour.rs`: costs (snapshot, read), base files, reclaim, errors;
//! - `compaction.rs`: layer index files (what opening costs, damage) and
//!   compaction (what it frees, what it leaves alone, discards, costs,
//!   concurrency);
//! - `filters.rs`: filtered volumes: the model and crash tests with filter
//!   chains, damage, encryption, misbehaving scripts, metadata;
//! - `bench.rs`: sequential writes through filter chains (ignored: a
//!   benchmark).

mod behaviour;
mod bench;
mod bench_plain;
mod compaction;
mod crash;
mod filters;
mod harness;
pub(super) mod mem;
mod model;

/// A small seeded PRNG (splitmix64): tests need reproducible randomness,
/// not quality.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
