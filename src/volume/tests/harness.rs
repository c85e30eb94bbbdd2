//! Random operations on a pool, checked against a model.
//!
//! For every volume the harness keeps two models: `cur`, what reads must
//! return now, and `dur`, the state as of its last durable operation (flush,
//! close, snapshot, rollback, clone, snapshot deletion). Every read is
//! compared with `cur`.
//!
//! **The recovery invariant.** After a crash (or after a failure, then
//! reopening), each volume must be *exactly* one of its candidate states,
//! whole: same bytes in every block, same snapshots with the same bytes.
//! The candidates are `dur` (nothing after the last durable operation
//! survived), plus, only if an operation failed, the states that operation
//! would have left had it got further (`extra`): a failed flush may have
//! committed `cur`; a failed snapshot may have committed the data with or
//! without the snapshot; a failed rollback may be in force; a failed clone
//! may or may not have created the clone; a failed deletion may or may not
//! have happened. Writes after the last flush are never in a candidate:
//! they are lost, together, and never half-applied. This is stronger than
//! "every block holds its value at the last flush or a value written since":
//! blocks never mix states.
//!
//! A compaction changes no byte of a volume: it flushes, so a failed one
//! may have committed `cur`, and nothing else. After a successful one the
//! volume is sometimes dropped and reopened at once, and read whole.
//!
//! Index files are accelerators: the harness damages or removes them now
//! and then (in memory), and nothing read may change.
//!
//! With a filter chain ([`Harness::in_memory_filtered`]), every volume of
//! the pool is filtered (clones inherit the chain) and everything above
//! holds the same; the scripts and any replicas live on the host
//! filesystem, outside the crashing backend.
//!
//! The harness stops issuing operations after the first failure, except in
//! "chaos" phases where every backend operation fails (nothing can change
//! on disk then), and recovers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use super::super::{BLOCK_SIZE, Backend, Pool, Volume, VolumeError, VolumeOptions};
use super::Rng;
use super::mem::{CrashMode, Mem};
use crate::filter::ChainSpec;

const BS: u64 = BLOCK_SIZE as u64;

/// A volume's bytes and its snapshots' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Model {
    pub data: Vec<u8>,
    pub snaps: BTreeMap<String, Arc<Vec<u8>>>,
}

struct Tracked {
    vol: Option<Volume>,
    cur: Model,
    dur: Model,
    /// A write failed: reads may see part of it until recovery.
    suspect: bool,
}

/// The operations of the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Write,
    Read,
    Discard,
    Flush,
    Snapshot,
    Rollback,
    Clone,
    DeleteSnapshot,
    Close,
    DropUnflushed,
    Reopen,
    DeleteVolume,
    Reclaim,
    MakeSpares,
    ReadAll,
    Compact,
    SealHead,
    DamageIndex,
}

/// Counters printed by the tests.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub ops: u64,
    pub reads_checked: u64,
    /// Of `reads_checked`, those of a volume that decodes its blocks
    /// through a filter chain.
    pub filtered_reads_checked: u64,
    pub failures: u64,
    pub recoveries: u64,
    /// Recoveries where a volume came back in a state other than `dur`.
    pub beyond_durable: u64,
    pub snapshots_checked: u64,
    /// Compactions that replaced layers.
    pub compactions: u64,
    /// Index files damaged or removed.
    pub indexes_damaged: u64,
}

pub(crate) struct Harness {
    pub rng: Rng,
    backend: Arc<dyn Backend>,
    pub mem: Option<Mem>,
    pool: Pool,
    vols: BTreeMap<String, Tracked>,
    extra: BTreeMap<String, Vec<Option<Model>>>,
    /// An operation failed since the last recovery.
    pub failed: bool,
    /// Errors are test failures.
    pub strict: bool,
    counter: u64,
    log: VecDeque<String>,
    pub stats: Stats,
    /// The pool's filter directory, for a filtered pool.
    filter_dir: Option<PathBuf>,
}

impl Harness {
    /// A pool on `backend` with one open volume `v0` of a random size,
    /// on a base (a file named by `base_path`, written by `put_base`) one
    /// time in three.
    pub fn new(
        seed: u64,
        backend: Arc<dyn Backend>,
        mem: Option<Mem>,
        base_path: PathBuf,
        put_base: impl FnOnce(&[u8]),
    ) -> Harness {
        Harness::with_filters(seed, backend, mem, base_path, put_base, None)
    }

    /// [`Harness::new`], its volumes filtered through `filters` (a spec and
    /// the directory holding its scripts).
    pub fn with_filters(
        seed: u64,
        backend: Arc<dyn Backend>,
        mem: Option<Mem>,
        base_path: PathBuf,
        put_base: impl FnOnce(&[u8]),
        filters: Option<(ChainSpec, PathBuf)>,
    ) -> Harness {
        let mut rng = Rng::new(seed);
        let blocks = *rng.pick(&[16, 64, 300, 300, 1100]); // 1100: across index chunks
        let size = blocks * BS;
        let filter_dir = filters.as_ref().map(|(_, d)| d.clone());
        let pool = Pool::with_backend_and_filters(backend.clone(), filter_dir.clone())
            .expect("opening the pool");
        let mut data = vec![0u8; size as usize];
        let opts = if rng.chance(1, 3) {
            let len = rng.range(1, size + 3 * BS) as usize;
            let mut base = vec![0u8; len];
            rng.fill(&mut base);
            put_base(&base);
            let n = len.min(size as usize);
            data[..n].copy_from_slice(&base[..n]);
            VolumeOptions::with_base(base_path).size(size)
        } else {
            VolumeOptions::new(size)
        };
        let opts = match filters {
            Some((spec, _)) => opts.filters(spec),
            None => opts,
        };
        pool.create_volume("v0", &opts).expect("creating v0");
        let vol = pool.open_volume("v0").expect("opening v0");
        let m = Model {
            data,
            snaps: BTreeMap::new(),
        };
        let mut vols = BTreeMap::new();
        vols.insert(
            "v0".into(),
            Tracked {
                vol: Some(vol),
                cur: m.clone(),
                dur: m,
                suspect: false,
            },
        );
        Harness {
            rng,
            backend,
            mem,
            pool,
            vols,
            extra: BTreeMap::new(),
            failed: false,
            strict: true,
            counter: 0,
            log: VecDeque::new(),
            stats: Stats::default(),
            filter_dir,
        }
    }

    /// A harness on a fresh in-memory backend.
    pub fn in_memory(seed: u64) -> Harness {
        Harness::in_memory_filtered(seed, None)
    }

    /// A harness on a fresh in-memory backend, its volumes filtered through
    /// `filters` (a spec and the directory holding its scripts) if given.
    pub fn in_memory_filtered(seed: u64, filters: Option<(ChainSpec, PathBuf)>) -> Harness {
        let mem = Mem::new(seed);
        let m2 = mem.clone();
        Harness::with_filters(
            seed,
            Arc::new(mem.clone()),
            Some(mem),
            "base.img".into(),
            move |b| m2.put_file("base.img", b),
            filters,
        )
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 80 {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    fn die(&self, msg: String) -> ! {
        let log: Vec<&str> = self.log.iter().map(|s| s.as_str()).collect();
        panic!("{msg}\nlast operations:\n  {}", log.join("\n  "));
    }

    /// Records a failed operation and the states it may have left.
    fn failure(&mut self, what: &str, e: VolumeError, extras: Vec<(String, Option<Model>)>) {
        self.note(format!("  -> error: {e}"));
        if self.strict {
            self.die(format!("{what} failed: {e}"));
        }
        if !matches!(e, VolumeError::Io { .. } | VolumeError::Failed { .. }) {
            self.die(format!(
                "{what}: an injected I/O failure gave an unexpected error: {e:?}"
            ));
        }
        self.stats.failures += 1;
        self.failed = true;
        if matches!(e, VolumeError::Failed { .. }) {
            return; // refused before any I/O: nothing can have changed
        }
        for (name, m) in extras {
            self.extra.entry(name).or_default().push(m);
        }
    }

    fn open_names(&self) -> Vec<String> {
        self.vols
            .iter()
            .filter(|(_, t)| t.vol.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn closed_names(&self) -> Vec<String> {
        self.vols
            .iter()
            .filter(|(_, t)| t.vol.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A byte range of a volume of `size` bytes: mostly small, often
    /// aligned, often in a hot region, sometimes large.
    fn range(&mut self, size: u64) -> (u64, u64) {
        let r = &mut self.rng;
        let hot = |r: &mut Rng| {
            if r.chance(7, 10) {
                r.below(40.min(size / BS))
            } else {
                r.below(size / BS)
            }
        };
        let (off, len) = match r.below(10) {
            0..=3 => (hot(r) * BS, r.range(1, 8) * BS),
            4..=6 => (hot(r) * BS + r.below(BS), r.range(1, 3 * BS)),
            7 => (hot(r) * BS, r.range(1, 300) * BS),
            8 => (r.below(size), r.range(1, 16)),
            _ => (r.below(size), r.range(1, 64 << 10)),
        };
        let off = off.min(size - 1);
        (off, len.min(size - off))
    }

    /// One random operation.
    pub fn step(&mut self) {
        let op = match self.rng.below(100) {
            0..=27 => Op::Write,
            28..=47 => Op::Read,
            48..=55 => Op::Discard,
            56..=64 => Op::Flush,
            65..=70 => Op::Snapshot,
            71..=74 => Op::Rollback,
            75..=77 => Op::Clone,
            78..=80 => Op::DeleteSnapshot,
            81..=83 => Op::Close,
            84..=85 => Op::DropUnflushed,
            86..=87 => Op::Reopen,
            88..=89 => Op::DeleteVolume,
            90 => Op::Reclaim,
            91 => Op::MakeSpares,
            92..=94 => Op::Compact,
            95 => Op::DamageIndex,
            96 => Op::SealHead,
            _ => Op::ReadAll,
        };
        self.run(op);
    }

    /// Operation `op` on a random open volume.
    pub fn run(&mut self, op: Op) {
        self.stats.ops += 1;
        if self.open_names().is_empty() {
            return self.reopen();
        }
        let names = self.open_names();
        let name = self.rng.pick(&names).clone();
        match op {
            Op::Write => self.write(&name),
            Op::Read => self.read(&name),
            Op::Discard => self.discard(&name),
            Op::Flush => self.flush(&name),
            Op::Snapshot => self.snapshot(&name),
            Op::Rollback => self.rollback(&name),
            Op::Clone => self.clone_snapshot(&name),
            Op::DeleteSnapshot => self.delete_snapshot(&name),
            Op::Close => self.close(&name),
            Op::DropUnflushed => self.drop_unflushed(&name),
            Op::Reopen => self.reopen(),
            Op::DeleteVolume => self.delete_volume(),
            Op::Reclaim => self.reclaim(),
            Op::MakeSpares => self.make_spares(),
            Op::ReadAll => self.read_all(&name),
            Op::Compact => self.compact(&name),
            Op::SealHead => self.seal_head(&name),
            Op::DamageIndex => self.damage_index(),
        }
    }

    fn compact(&mut self, name: &str) {
        self.note(format!("{name}: compact"));
        let t = self.vols.get_mut(name).unwrap();
        match t.vol.as_ref().unwrap().compact() {
            Ok(r) => {
                t.dur.data = t.cur.data.clone();
                self.note(format!("  -> {:?} replaced by {:?}", r.replaced, r.layer));
                if r.layer.is_some() {
                    self.stats.compactions += 1;
                }
                if self.rng.chance(1, 2) {
                    // Reopen at once: the new stack is what is on disk.
                    self.note(format!("{name}: drop and reopen"));
                    self.vols.get_mut(name).unwrap().vol = None;
                    match self.pool.open_volume(name) {
                        Ok(v) => self.vols.get_mut(name).unwrap().vol = Some(v),
                        Err(e) => return self.failure("open", e, vec![]),
                    }
                    self.read_all(name);
                }
            }
            Err(e) => {
                let m = Model {
                    data: t.cur.data.clone(),
                    snaps: t.dur.snaps.clone(),
                };
                self.failure("compact", e, vec![(name.into(), Some(m))]);
            }
        }
    }

    fn seal_head(&mut self, name: &str) {
        self.note(format!("{name}: seal the head"));
        let t = self.vols.get_mut(name).unwrap();
        match t.vol.as_ref().unwrap().seal_head() {
            // Sealing flushes first; an empty head holds nothing unflushed.
            Ok(sealed) => {
                if sealed {
                    t.dur.data = t.cur.data.clone();
                }
                self.note(format!("  -> sealed: {sealed}"));
            }
            Err(e) => {
                let m = Model {
                    data: t.cur.data.clone(),
                    snaps: t.dur.snaps.clone(),
                };
                self.failure("seal the head", e, vec![(name.into(), Some(m))]);
            }
        }
    }

    /// Removes an index file, or flips a byte of one (in memory only).
    fn damage_index(&mut self) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        let names: Vec<String> = mem
            .names_in("layers")
            .into_iter()
            .filter(|n| n.ends_with(".index"))
            .collect();
        if names.is_empty() {
            return;
        }
        let path = format!("layers/{}", self.rng.pick(&names));
        if self.rng.chance(1, 2) {
            self.note(format!("remove {path}"));
            mem.remove_file(&path);
        } else {
            let len = mem.read_file(&path).unwrap().len() as u64;
            let at = self.rng.below(len);
            self.note(format!("flip byte {at} of {path}"));
            mem.flip_byte(&path, at);
        }
        self.stats.indexes_damaged += 1;
    }

    fn write(&mut self, name: &str) {
        let size = self.vols[name].cur.data.len() as u64;
        let (off, len) = self.range(size);
        let mut data = vec![0u8; len as usize];
        if self.rng.chance(9, 10) {
            self.rng.fill(&mut data);
        }
        self.note(format!("{name}: write {off} +{len}"));
        let t = self.vols.get_mut(name).unwrap();
        match t.vol.as_ref().unwrap().write_at(off, &data) {
            Ok(()) => t.cur.data[off as usize..(off + len) as usize].copy_from_slice(&data),
            Err(e) => {
                t.suspect = true;
                self.failure("write", e, vec![]);
            }
        }
    }

    fn discard(&mut self, name: &str) {
        let size = self.vols[name].cur.data.len() as u64;
        let (off, len) = if self.rng.chance(1, 20) {
            (0, size)
        } else {
            self.range(size)
        };
        self.note(format!("{name}: discard {off} +{len}"));
        let t = self.vols.get_mut(name).unwrap();
        match t.vol.as_ref().unwrap().discard(off, len) {
            Ok(()) => t.cur.data[off as usize..(off + len) as usize].fill(0),
            Err(e) => {
                t.suspect = true;
                self.failure("discard", e, vec![]);
            }
        }
    }

    fn check_read(&mut self, name: &str, off: u64, len: u64) {
        let mut buf = vec![0u8; len as usize];
        let t = &self.vols[name];
        match t.vol.as_ref().unwrap().read_at(off, &mut buf) {
            Ok(()) if t.suspect => {}
            Ok(()) => {
                let want = &t.cur.data[off as usize..(off + len) as usize];
                if buf != want {
                    let at = buf.iter().zip(want).position(|(a, b)| a != b).unwrap() as u64;
                    self.die(format!(
                        "{name}: read {off} +{len} differs from the model at byte {} (block {})",
                        off + at,
                        (off + at) / BS
                    ));
                }
                self.stats.reads_checked += 1;
                if t.vol.as_ref().unwrap().chain().is_some() {
                    self.stats.filtered_reads_checked += 1;
                }
            }
            Err(e) => self.failure("read", e, vec![]),
        }
    }

    fn read(&mut self, name: &str) {
        let size = self.vols[name].cur.data.len() as u64;
        let (off, len) = self.range(size);
        self.note(format!("{name}: read {off} +{len}"));
        self.check_read(name, off, len);
    }

    fn read_all(&mut self, name: &str) {
        let size = self.vols[name].cur.data.len() as u64;
        self.note(format!("{name}: read all"));
        self.check_read(name, 0, size);
    }

    fn flush(&mut self, name: &str) {
        self.note(format!("{name}: flush"));
        let t = self.vols.get_mut(name).unwrap();
        match t.vol.as_ref().unwrap().flush() {
            Ok(()) => t.dur.data = t.cur.data.clone(),
            Err(e) => {
                let m = Some(t.cur.clone());
                self.failure("flush", e, vec![(name.into(), m)]);
            }
        }
    }

    fn close(&mut self, name: &str) {
        self.note(format!("{name}: close"));
        let t = self.vols.get_mut(name).unwrap();
        match t.vol.take().unwrap().close() {
            Ok(()) => t.dur.data = t.cur.data.clone(),
            Err(e) => {
                let m = Some(t.cur.clone());
                t.cur = t.dur.clone();
                self.failure("close", e, vec![(name.into(), m)]);
            }
        }
    }

    fn drop_unflushed(&mut self, name: &str) {
        self.note(format!("{name}: drop without flushing"));
        let t = self.vols.get_mut(name).unwrap();
        t.vol = None;
        t.cur = t.dur.clone();
    }

    fn reopen(&mut self) {
        let closed = self.closed_names();
        if closed.is_empty() {
            return;
        }
        let name = self.rng.pick(&closed).clone();
        self.note(format!("{name}: open"));
        match self.pool.open_volume(&name) {
            Ok(v) => self.vols.get_mut(&name).unwrap().vol = Some(v),
            Err(e) => self.failure("open", e, vec![]),
        }
    }

    fn snapshot(&mut self, name: &str) {
        self.counter += 1;
        let snap = format!("s{}", self.counter);
        self.note(format!("{name}: snapshot {snap}"));
        let t = self.vols.get_mut(name).unwrap();
        match t.vol.as_ref().unwrap().snapshot(&snap) {
            Ok(()) => {
                t.cur.snaps.insert(snap, Arc::new(t.cur.data.clone()));
                t.dur = t.cur.clone();
            }
            Err(e) => {
                let flushed = Model {
                    data: t.cur.data.clone(),
                    snaps: t.dur.snaps.clone(),
                };
                let mut taken = flushed.clone();
                taken.snaps.insert(snap, Arc::new(t.cur.data.clone()));
                let extras = vec![(name.into(), Some(flushed)), (name.into(), Some(taken))];
                self.failure("snapshot", e, extras);
            }
        }
    }

    fn pick_snapshot(&mut self, name: &str) -> Option<String> {
        let snaps: Vec<String> = self.vols[name].cur.snaps.keys().cloned().collect();
        (!snaps.is_empty()).then(|| self.rng.pick(&snaps).clone())
    }

    fn rollback(&mut self, name: &str) {
        let Some(snap) = self.pick_snapshot(name) else {
            return;
        };
        if self.rng.chance(1, 2) {
            return self.rollback_closed(name, &snap);
        }
        self.note(format!("{name}: rollback to {snap}"));
        let t = self.vols.get_mut(name).unwrap();
        let image = t.cur.snaps[&snap].as_ref().clone();
        match t.vol.as_ref().unwrap().rollback(&snap) {
            Ok(()) => {
                t.cur.data = image;
                t.dur = t.cur.clone();
            }
            Err(e) => {
                let m = Model {
                    data: image,
                    snaps: t.dur.snaps.clone(),
                };
                self.failure("rollback", e, vec![(name.into(), Some(m))]);
            }
        }
    }

    /// Closes volume `name`, rolls it back through the pool (which leaves
    /// its metadata headless) and opens it again (which gives it a head).
    fn rollback_closed(&mut self, name: &str, snap: &str) {
        self.note(format!(
            "{name}: close, rollback to {snap} while closed, open"
        ));
        let t = self.vols.get_mut(name).unwrap();
        let image = t.cur.snaps[snap].as_ref().clone();
        if let Err(e) = t.vol.take().unwrap().close() {
            let m = Some(t.cur.clone());
            t.cur = t.dur.clone();
            return self.failure("close", e, vec![(name.into(), m)]);
        }
        t.dur.data = t.cur.data.clone();
        if let Err(e) = self.pool.rollback(name, snap) {
            let m = Model {
                data: image,
                snaps: t.dur.snaps.clone(),
            };
            return self.failure("rollback", e, vec![(name.into(), Some(m))]);
        }
        t.cur.data = image;
        t.dur = t.cur.clone();
        match self.pool.open_volume(name) {
            Ok(v) => t.vol = Some(v),
            Err(e) => self.failure("open", e, vec![]),
        }
    }

    fn clone_snapshot(&mut self, name: &str) {
        let Some(snap) = self.pick_snapshot(name) else {
            return;
        };
        self.counter += 1;
        let new = format!("c{}", self.counter);
        self.note(format!("{name}: clone {snap} as {new}"));
        let image = self.vols[name].cur.snaps[&snap].as_ref().clone();
        let m = Model {
            data: image,
            snaps: BTreeMap::new(),
        };
        match self.pool.clone_snapshot(name, &snap, &new) {
            Ok(()) => {
                let t = Tracked {
                    vol: None,
                    cur: m.clone(),
                    dur: m,
                    suspect: false,
                };
                self.vols.insert(new.clone(), t);
                if self.open_names().len() < 4 {
                    match self.pool.open_volume(&new) {
                        Ok(v) => self.vols.get_mut(&new).unwrap().vol = Some(v),
                        Err(e) => self.failure("open", e, vec![]),
                    }
                }
            }
            Err(e) => self.failure("clone", e, vec![(new.clone(), None), (new, Some(m))]),
        }
    }

    fn delete_snapshot(&mut self, name: &str) {
        let Some(snap) = self.pick_snapshot(name) else {
            return;
        };
        self.note(format!("{name}: delete snapshot {snap}"));
        let t = &self.vols[name];
        let res = if self.rng.chance(1, 2) {
            t.vol.as_ref().unwrap().delete_snapshot(&snap)
        } else {
            self.pool.delete_snapshot(name, &snap)
        };
        let t = self.vols.get_mut(name).unwrap();
        match res {
            Ok(()) => {
                t.cur.snaps.remove(&snap);
                t.dur.snaps.remove(&snap);
            }
            Err(e) => {
                let mut m = t.dur.clone();
                m.snaps.remove(&snap);
                self.failure("delete snapshot", e, vec![(name.into(), Some(m))]);
            }
        }
    }

    fn delete_volume(&mut self) {
        let closed = self.closed_names();
        if closed.is_empty() || self.vols.len() < 2 {
            return;
        }
        let name = self.rng.pick(&closed).clone();
        self.note(format!("{name}: delete volume"));
        match self.pool.delete_volume(&name) {
            Ok(()) => {
                self.vols.remove(&name);
            }
            Err(e) => self.failure("delete volume", e, vec![(name, None)]),
        }
    }

    fn reclaim(&mut self) {
        self.note("reclaim".into());
        if let Err(e) = self.pool.reclaim() {
            self.failure("reclaim", e, vec![]);
        }
    }

    /// Makes the pool's spare heads: the next snapshot, rollback, clone or
    /// volume creation takes one instead of creating its head layer.
    pub fn make_spares(&mut self) {
        self.note("make spare heads".into());
        if let Err(e) = self.pool.make_spares() {
            self.failure("making spare heads", e, vec![]);
        }
    }

    /// Drops every open volume, crashes the backend if `crash` is given
    /// (else only stops injecting failures), reopens the pool and checks
    /// the recovery invariant for every volume; then continues from the
    /// recovered states.
    pub fn recover(&mut self, crash: Option<CrashMode>) {
        self.note(format!("recover (crash: {crash:?})"));
        self.stats.recoveries += 1;
        for t in self.vols.values_mut() {
            t.vol = None;
        }
        if let Some(mem) = &self.mem {
            match crash {
                Some(mode) => mem.crash(mode),
                None => mem.heal(),
            }
        }
        self.strict = true;
        self.pool =
            match Pool::with_backend_and_filters(self.backend.clone(), self.filter_dir.clone()) {
                Ok(p) => p,
                Err(e) => self.die(format!("the pool does not reopen: {e}")),
            };
        let existing = self
            .pool
            .volumes()
            .unwrap_or_else(|e| self.die(format!("listing: {e}")));
        let mut names: BTreeSet<String> = self.vols.keys().cloned().collect();
        names.extend(self.extra.keys().cloned());
        names.extend(existing.iter().cloned());
        for name in names {
            let mut cands: Vec<Option<Model>> = vec![self.vols.get(&name).map(|t| t.dur.clone())];
            cands.extend(self.extra.remove(&name).unwrap_or_default());
            let found = existing.contains(&name).then(|| self.load(&name));
            let matched = cands.iter().find(|c| match (c, &found) {
                (None, None) => true,
                (Some(m), Some((data, snaps))) => {
                    m.data == *data && m.snaps.keys().eq(snaps.iter())
                }
                _ => false,
            });
            let Some(matched) = matched.cloned() else {
                let describe = |c: &Option<Model>| match (c, &found) {
                    (None, _) => "absent".to_string(),
                    (Some(m), Some((data, _))) => format!(
                        "snapshots {:?}, first differing byte {:?}",
                        m.snaps.keys().collect::<Vec<_>>(),
                        m.data.iter().zip(data).position(|(a, b)| a != b)
                    ),
                    (Some(_), None) => "present".to_string(),
                };
                let got = match &found {
                    None => "absent".to_string(),
                    Some((_, snaps)) => format!("present with snapshots {snaps:?}"),
                };
                let cands: Vec<String> = cands.iter().map(describe).collect();
                self.die(format!(
                    "{name}: recovered {got}, matching no candidate: {cands:?}"
                ));
            };
            match matched {
                None => {
                    self.vols.remove(&name);
                }
                Some(m) => {
                    if self.vols.get(&name).is_none_or(|t| t.dur != m) {
                        self.stats.beyond_durable += 1;
                    }
                    self.check_snapshots(&name, &m);
                    let t = Tracked {
                        vol: None,
                        cur: m.clone(),
                        dur: m,
                        suspect: false,
                    };
                    self.vols.insert(name, t);
                }
            }
        }
        self.failed = false;
        if let Err(e) = self.pool.reclaim() {
            self.die(format!("reclaim after recovery: {e}"));
        }
        for _ in 0..2 {
            self.reopen();
        }
    }

    /// The bytes and snapshot names of a closed volume.
    fn load(&self, name: &str) -> (Vec<u8>, Vec<String>) {
        let vol = match self.pool.open_volume(name) {
            Ok(v) => v,
            Err(e) => self.die(format!("{name} does not reopen: {e}")),
        };
        let mut data = vec![0u8; vol.size() as usize];
        if let Err(e) = vol.read_at(0, &mut data) {
            self.die(format!("{name}: reading after recovery: {e}"));
        }
        let mut snaps: Vec<String> = match vol.snapshots() {
            Ok(s) => s.into_iter().map(|s| s.name).collect(),
            Err(e) => self.die(format!("{name}: listing snapshots: {e}")),
        };
        snaps.sort();
        (data, snaps)
    }

    /// Checks the bytes of up to two snapshots of `name` through clones.
    fn check_snapshots(&mut self, name: &str, m: &Model) {
        let snaps: Vec<&String> = m.snaps.keys().collect();
        for _ in 0..snaps.len().min(2) {
            let snap = self.rng.pick(&snaps).to_string();
            let res = self
                .pool
                .clone_snapshot(name, &snap, "check")
                .and_then(|()| self.pool.open_volume("check"))
                .and_then(|v| {
                    let mut data = vec![0u8; v.size() as usize];
                    v.read_at(0, &mut data).map(|()| data)
                })
                .and_then(|data| self.pool.delete_volume("check").map(|()| data));
            match res {
                Ok(data) if data == *m.snaps[&snap] => self.stats.snapshots_checked += 1,
                Ok(_) => self.die(format!("{name}: snapshot {snap} has other bytes")),
                Err(e) => self.die(format!("{name}: checking snapshot {snap}: {e}")),
            }
        }
    }
}
