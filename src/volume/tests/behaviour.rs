//! Targeted behaviour: what snapshots, clones and reads cost, base files,
//! reclaim, recovery details, damage detection, errors.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::super::{BLOCK_SIZE, Pool, StdBackend, Volume, VolumeError, VolumeOptions, VolumeStats};
use super::Rng;
use super::mem::{Counts, CrashMode, Mem};
use crate::error::Coded;

const BS: u64 = BLOCK_SIZE as u64;
const MIB: u64 = 1 << 20;

pub(super) fn mem_pool(seed: u64) -> (Mem, Pool) {
    let mem = Mem::new(seed);
    let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
    (mem, pool)
}

pub(super) fn cost(mem: &Mem, f: impl FnOnce()) -> Counts {
    let a = mem.counts();
    f();
    let b = mem.counts();
    Counts {
        ops: b.ops - a.ops,
        reads: b.reads - a.reads,
        bytes_read: b.bytes_read - a.bytes_read,
        writes: b.writes - a.writes,
        bytes_written: b.bytes_written - a.bytes_written,
        syncs: b.syncs - a.syncs,
    }
}

pub(super) fn block(seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    Rng::new(seed).fill(&mut b);
    b
}

pub(super) fn read(v: &Volume, off: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    v.read_at(off, &mut buf).unwrap();
    buf
}

pub(super) fn layer_files(mem: &Mem) -> BTreeSet<u64> {
    mem.names_in("layers")
        .iter()
        .filter_map(|n| n.strip_suffix(".data"))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Snapshot, clone and rollback after writing 1 MiB and 64 MiB (not
/// flushed: the snapshot's own flush is part of its cost): the same
/// operations, the same bytes written, the same syncs; except that the
/// snapshot writes the sealed layer's index file, 20 bytes per block.
#[test]
fn snapshot_clone_and_rollback_cost_does_not_grow_with_data() {
    let measure = |mib: u64| {
        let (mem, pool) = mem_pool(1);
        pool.create_volume("v", &VolumeOptions::new(128 * MIB))
            .unwrap();
        let v = pool.open_volume("v").unwrap();
        let chunk = vec![0xa5u8; MIB as usize];
        for i in 0..mib {
            v.write_at(i * MIB, &chunk).unwrap();
        }
        let snap = cost(&mem, || v.snapshot("s").unwrap());
        let clone = cost(&mem, || pool.clone_snapshot("v", "s", "c").unwrap());
        v.write_at(0, &chunk).unwrap();
        let rollback = cost(&mem, || v.rollback("s").unwrap());
        (snap, clone, rollback)
    };
    let (s1, c1, r1) = measure(1);
    let (s64, c64, r64) = measure(64);
    println!("snapshot after 1 MiB: {s1:?}\nsnapshot after 64 MiB: {s64:?}");
    println!("clone: {c1:?} / {c64:?}\nrollback: {r1:?} / {r64:?}");
    let index_entries = (64 - 1) * MIB / BS;
    assert_eq!(
        Counts {
            bytes_written: s1.bytes_written + 20 * index_entries,
            ..s1
        },
        s64
    );
    assert_eq!(c1, c64);
    // Rollback writes the same; it reads the snapshot's layers to rebuild
    // the in-memory index (as opening the volume does).
    assert_eq!(
        (r1.writes, r1.bytes_written, r1.syncs),
        (r64.writes, r64.bytes_written, r64.syncs)
    );
    // ... and reads the index file, not the data: 20 bytes per block.
    assert!(
        r64.bytes_read - r1.bytes_read <= 20 * index_entries + 1024,
        "{r1:?} / {r64:?}"
    );
}

/// Rolling back a closed volume through the pool writes only metadata (one
/// write, one sync, no layer file made), reads no layer, costs the same
/// after 1 or 64 MiB, and gives the snapshot's bytes; an open volume is
/// refused.
#[test]
fn pool_rollback_of_a_closed_volume_reads_no_data() {
    let measure = |mib: u64| {
        let (mem, pool) = mem_pool(3);
        pool.create_volume("v", &VolumeOptions::new(128 * MIB))
            .unwrap();
        let v = pool.open_volume("v").unwrap();
        let chunk = block(7).repeat((MIB / BS) as usize);
        for i in 0..mib {
            v.write_at(i * MIB, &chunk).unwrap();
        }
        v.snapshot("s").unwrap();
        let before = read(&v, 0, mib * MIB);
        v.write_at(0, &vec![0u8; MIB as usize]).unwrap();
        assert_eq!(pool.rollback("v", "s").unwrap_err().code(), "FK0706");
        v.close().unwrap();
        let files = mem.names_in("layers");
        let c = cost(&mem, || pool.rollback("v", "s").unwrap());
        assert_eq!(mem.names_in("layers"), files, "no layer file made");
        assert_eq!(pool.rollback("v", "nope").unwrap_err().code(), "FK0704");
        let v = pool.open_volume("v").unwrap();
        assert!(
            read(&v, 0, mib * MIB) == before,
            "rollback restores the snapshot"
        );
        c
    };
    let (c1, c64) = (measure(1), measure(64));
    println!("pool rollback after 1 MiB: {c1:?}; after 64 MiB: {c64:?}");
    assert_eq!(c1, c64);
    assert_eq!(
        c1.reads, 2,
        "the metadata file, twice: the update reads which slot is in force"
    );
    assert_eq!((c1.writes, c1.syncs), (1, 1), "one slot written and synced");
}

/// A pool with volume "v" (1 MiB) written with block 1 at 0, snapshot "s",
/// block 2 written over it, closed and rolled back to "s" through the pool.
fn rolled_back_while_closed(seed: u64) -> (Mem, Pool) {
    let (mem, pool) = snapshotted(seed, "v");
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(2)).unwrap();
    v.close().unwrap();
    pool.rollback("v", "s").unwrap();
    (mem, pool)
}

/// A pool with volume `name` (1 MiB), block 1 written at 0, snapshot "s",
/// closed.
fn snapshotted(seed: u64, name: &str) -> (Mem, Pool) {
    let (mem, pool) = mem_pool(seed);
    pool.create_volume(name, &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume(name).unwrap();
    v.write_at(0, &block(1)).unwrap();
    v.snapshot("s").unwrap();
    v.close().unwrap();
    (mem, pool)
}

/// A volume rolled back while closed is headless until it opens: the open
/// puts a new head on the snapshot's layers (one layer file, the metadata
/// written once), writes go there, and the snapshot keeps its bytes. A
/// second rollback before any open stays headless too.
#[test]
fn a_volume_rolled_back_while_closed_gets_its_head_when_opened() {
    let (mem, pool) = rolled_back_while_closed(21);
    pool.rollback("v", "s").unwrap();
    let snap = pool.info("v").unwrap().snapshots[0].layers.clone();
    assert_eq!(pool.info("v").unwrap().layers, snap, "headless");
    let files = mem.names_in("layers").len();
    let v = pool.open_volume("v").unwrap();
    let layers = pool.info("v").unwrap().layers;
    assert_eq!(layers.len(), snap.len() + 1);
    assert_eq!(layers[..snap.len()], snap[..]);
    assert_eq!(v.stats().layers, layers);
    assert_eq!(mem.names_in("layers").len(), files + 1, "one new layer");
    assert_eq!(read(&v, 0, BS), block(1));
    v.write_at(0, &block(3)).unwrap();
    v.close().unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(pool.info("v").unwrap().layers, layers, "opened as it was");
    assert_eq!(read(&v, 0, BS), block(3));
    v.rollback("s").unwrap();
    assert_eq!(read(&v, 0, BS), block(1), "the snapshot kept its bytes");
}

/// Opening a headless volume fails cleanly at each of its steps (every
/// operation from the k-th on fails) and, after a crash there, the volume
/// opens with the snapshot's bytes.
#[test]
fn opening_a_headless_volume_survives_a_crash_at_each_step() {
    let mut failed = 0;
    for k in 0..12 {
        let (mem, pool) = rolled_back_while_closed(40 + k);
        mem.fail_after(k);
        match pool.open_volume("v") {
            Ok(v) => drop(v),
            Err(e) => {
                assert!(matches!(e, VolumeError::Io { .. }), "k={k}: {e:?}");
                failed += 1;
            }
        }
        drop(pool);
        mem.crash(CrashMode::alternate(k));
        let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
        let v = pool.open_volume("v").unwrap();
        assert_eq!(read(&v, 0, BS), block(1), "k={k}");
        v.write_at(BS, &block(4)).unwrap();
        v.close().unwrap();
        let v = pool.open_volume("v").unwrap();
        assert_eq!(read(&v, 0, 2 * BS), [block(1), block(4)].concat(), "k={k}");
    }
    assert!(failed > 2, "the open failed at several steps ({failed})");
}

/// With 500 layers, reading a block is one backend read (one index lookup,
/// no walk of the stack); a block in no layer costs no read; a run of
/// blocks written together is one read.
#[test]
fn a_read_is_one_lookup_whatever_the_layer_count() {
    let (mem, pool) = mem_pool(2);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let mut v = pool.open_volume("v").unwrap();
    for i in 0..500u64 {
        v.write_at((i % 200) * BS, &block(i)).unwrap();
        v.snapshot(&format!("s{i}")).unwrap();
    }
    v.write_at(230 * BS, &[7u8; 8 * BS as usize]).unwrap();
    for round in 0..2 {
        assert_eq!(v.stats().layers.len(), 501);
        let c = cost(&mem, || assert_eq!(read(&v, 10 * BS, BS), block(410)));
        assert_eq!((c.ops, c.reads), (1, 1), "round {round}");
        let c = cost(&mem, || {
            assert_eq!(read(&v, 220 * BS, BS), vec![0; BS as usize])
        });
        assert_eq!(c.ops, 0);
        let c = cost(&mem, || {
            assert_eq!(read(&v, 230 * BS, 8 * BS), vec![7; 8 * BS as usize])
        });
        assert_eq!(c.reads, 1);
        let t = std::time::Instant::now();
        for b in 0..200 {
            read(&v, b * BS, BS);
        }
        println!(
            "500 layers, round {round}: {:?} per block read",
            t.elapsed() / 200
        );
        v.close().unwrap();
        v = pool.open_volume("v").unwrap();
    }
}

/// A base file is read in place: creating the volume copies nothing;
/// reads past its end are zeros; discards over it read as zeros; a base
/// whose length changed is refused.
#[test]
fn a_base_file_is_used_in_place() {
    let (mem, pool) = mem_pool(3);
    let mut base = vec![0u8; (10 * BS + 100) as usize];
    Rng::new(3).fill(&mut base);
    mem.put_file("base.img", &base);
    pool.create_volume("v", &VolumeOptions::with_base("base.img"))
        .unwrap();
    let info = pool.info("v").unwrap();
    assert_eq!(info.size, 11 * BS);
    let head = format!("layers/{}.data", info.layers[0]);
    assert_eq!(
        mem.read_file(&head).unwrap().len(),
        32,
        "only a header: nothing copied"
    );

    let v = pool.open_volume("v").unwrap();
    let mut want = base.clone();
    want.resize((11 * BS) as usize, 0);
    assert_eq!(read(&v, 0, 11 * BS), want);
    v.write_at(BS + 10, b"hello").unwrap();
    want[(BS + 10) as usize..(BS + 15) as usize].copy_from_slice(b"hello");
    v.discard(3 * BS - 7, 4 * BS).unwrap();
    want[(3 * BS - 7) as usize..(7 * BS - 7) as usize].fill(0);
    assert_eq!(read(&v, 0, 11 * BS), want);
    v.close().unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, 11 * BS), want);
    assert_eq!(
        mem.read_file("base.img").unwrap(),
        base,
        "the base is never written"
    );
    drop(v);

    mem.put_file("base.img", &base[..100]);
    let e = pool.open_volume("v").unwrap_err();
    assert!(matches!(e, VolumeError::BaseChanged { .. }), "{e:?}");
    assert_eq!(e.code(), "FK0712");
}

/// A layer ID reclaim removed is never handed out again while the pool is
/// open, even when the pool asks for its first new ID only afterwards (a
/// second reclaim that listed the same garbage could delete the new file).
#[test]
fn reclaimed_layer_ids_are_never_reused() {
    let (mem, pool) = mem_pool(8);
    pool.create_volume("a", &VolumeOptions::new(MIB)).unwrap();
    pool.create_volume("b", &VolumeOptions::new(MIB)).unwrap();
    let highest = *layer_files(&mem).iter().max().unwrap();
    assert_eq!(pool.info("b").unwrap().layers, [highest]);
    pool.delete_volume("b").unwrap();
    drop(pool);
    let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
    assert_eq!(pool.reclaim().unwrap().layers, 1);
    pool.create_volume("c", &VolumeOptions::new(MIB)).unwrap();
    let c = pool.info("c").unwrap().layers[0];
    assert!(c > highest, "layer {c} reuses an ID up to {highest}");
}

/// Layers are removed exactly when nothing references them any more.
#[test]
fn reclaim_removes_exactly_the_unreferenced_layers() {
    let (mem, pool) = mem_pool(4);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(1)).unwrap();
    v.snapshot("s1").unwrap();
    v.write_at(0, &block(2)).unwrap();
    v.snapshot("s2").unwrap();
    v.write_at(0, &block(3)).unwrap();
    pool.clone_snapshot("v", "s1", "c").unwrap();
    let referenced = |pool: &Pool| -> BTreeSet<u64> {
        let mut set = BTreeSet::new();
        for name in pool.volumes().unwrap() {
            let info = pool.info(&name).unwrap();
            set.extend(info.layers);
            set.extend(info.snapshots.into_iter().flat_map(|s| s.layers));
        }
        set
    };
    let check = |removed: usize| {
        let report = pool.reclaim().unwrap();
        assert_eq!(report.layers, removed);
        assert_eq!(layer_files(&mem), referenced(&pool));
    };
    check(0);
    v.rollback("s1").unwrap(); // the head holding block(3) is unreferenced
    assert_eq!(read(&v, 0, BS), block(1));
    check(1);
    v.delete_snapshot("s2").unwrap();
    check(1);
    v.delete_snapshot("s1").unwrap(); // still in v's and c's stacks
    check(0);
    pool.delete_volume("c").unwrap();
    check(1);
    assert_eq!(read(&v, 0, BS), block(1));
    drop(v);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, BS), block(1));

    // An unreadable metadata file stops reclaim before it deletes anything.
    drop(v);
    pool.create_volume("w", &VolumeOptions::new(MIB)).unwrap();
    let before = layer_files(&mem);
    mem.put_file("volumes/w.meta", &[0u8; 8192]);
    mem.put_file("layers/999.data", b"orphan");
    let e = pool.reclaim().unwrap_err();
    assert_eq!(e.code(), "FK0709");
    assert_eq!(layer_files(&mem).len(), before.len() + 1);
}

/// A volume opened deferred ([`Pool::open_volume_deferred`], the volume
/// server's attach) counts its sealed layers as shared, so its garbage
/// figures leave them out, until `refresh_sharing` counts them: then they
/// are what an exact open says. Reads are the same either way.
#[test]
fn a_deferred_open_counts_sealed_layers_after_a_refresh() {
    let (_mem, pool) = mem_pool(4);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(1)).unwrap();
    v.snapshot("s").unwrap();
    v.write_at(0, &block(2)).unwrap(); // block(1)'s record is garbage now
    v.flush().unwrap();
    v.delete_snapshot("s").unwrap(); // its layer is v's own again
    drop(v);
    let exact = pool.open_volume("v").unwrap().stats();
    assert!(exact.garbage_bytes > 0, "{exact:?}");
    let v = pool.open_volume_deferred("v").unwrap();
    assert_eq!(read(&v, 0, BS), block(2));
    let deferred = v.stats();
    assert!(
        deferred.garbage_bytes < exact.garbage_bytes,
        "{deferred:?} vs {exact:?}"
    );
    assert!(
        deferred.own_bytes < exact.own_bytes,
        "{deferred:?} vs {exact:?}"
    );
    v.refresh_sharing().unwrap();
    let refreshed = v.stats();
    assert_eq!(refreshed.garbage_bytes, exact.garbage_bytes);
    assert_eq!(refreshed.own_bytes, exact.own_bytes);
}

/// A clone outlives the volume it was cloned from (what a container does
/// when `create` removes the template of an older fukastor): deleting the
/// origin and reclaiming frees only the origin's own head, and the clone,
/// durable or ephemeral, reads what the snapshot held, before and after
/// it is reopened.
#[test]
fn a_clone_outlives_its_origin() {
    let (mem, pool) = mem_pool(4);
    pool.create_volume("t", &VolumeOptions::new(MIB)).unwrap();
    let t = pool.open_volume("t").unwrap();
    t.write_at(0, &block(7)).unwrap();
    t.snapshot("formatted").unwrap();
    t.write_at(BS, &block(8)).unwrap();
    t.flush().unwrap();
    drop(t);
    pool.clone_snapshot("t", "formatted", "durable").unwrap();
    pool.clone_ephemeral("t", "formatted", "ephemeral").unwrap();
    let before = layer_files(&mem).len();
    pool.delete_volume("t").unwrap();
    assert_eq!(
        pool.reclaim().unwrap().layers,
        1,
        "only t's head is garbage"
    );
    assert_eq!(layer_files(&mem).len(), before - 1);
    for name in ["durable", "ephemeral"] {
        let v = pool.open_volume(name).unwrap();
        assert_eq!(read(&v, 0, BS), block(7), "{name}");
        assert_eq!(read(&v, BS, BS), vec![0u8; BS as usize], "{name}");
        v.write_at(BS, &block(9)).unwrap();
        v.flush().unwrap();
        drop(v);
        let v = pool.open_volume(name).unwrap();
        assert_eq!(read(&v, 0, BS), block(7), "{name} reopened");
        assert_eq!(read(&v, BS, BS), block(9), "{name} reopened");
    }
    assert_eq!(pool.reclaim().unwrap().layers, 0);
}

/// Writes after the last flush are cut off when the volume reopens, and
/// the head continues right after its last commit.
#[test]
fn reopening_cuts_the_uncommitted_tail() {
    let (mem, pool) = mem_pool(5);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(1)).unwrap();
    v.flush().unwrap();
    let committed = v.stats().head_bytes;
    assert_eq!(committed, 32 + 40 + BS + 40);
    v.write_at(0, &block(2)).unwrap();
    v.discard(BS, 10 * BS).unwrap();
    assert_eq!(v.stats().unflushed_records, 2);
    drop(v); // no flush: like a power cut for a disk with a write cache
    let v = pool.open_volume("v").unwrap();
    let VolumeStats {
        head_bytes,
        unflushed_records,
        ..
    } = v.stats();
    assert_eq!((head_bytes, unflushed_records), (committed, 0));
    assert_eq!(read(&v, 0, BS), block(1));
    v.write_at(BS, &block(3)).unwrap();
    v.flush().unwrap();
    drop(v);
    mem.crash(CrashMode::DropUnsynced);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, 2 * BS), [block(1), block(3)].concat());
}

/// Discarding a whole 1 GiB volume (as mkfs does) is one 40-byte record.
#[test]
fn discarding_everything_is_one_record() {
    let (_mem, pool) = mem_pool(6);
    pool.create_volume("v", &VolumeOptions::new(1 << 30))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(5 << 20, &block(1)).unwrap();
    let before = v.stats().head_bytes;
    v.discard(0, 1 << 30).unwrap();
    assert_eq!(v.stats().head_bytes, before + 40);
    assert_eq!(read(&v, 5 << 20, BS), vec![0; BS as usize]);
    v.close().unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 5 << 20, BS), vec![0; BS as usize]);
}

/// Damage is reported, never returned as data: a flipped payload byte is a
/// checksum error on read; a flipped record header in a sealed layer makes
/// the volume refuse to open when the layer is replayed (without its index
/// file); a damaged index file is replayed around and written again.
#[test]
fn damage_is_detected() {
    let (mem, pool) = mem_pool(7);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(3 * BS, &block(1)).unwrap();
    v.snapshot("s").unwrap();
    let sealed = format!("layers/{}.data", v.stats().layers[0]);
    drop(v);
    mem.flip_byte(&sealed, 32 + 40 + 100);
    let v = pool.open_volume("v").unwrap();
    let mut buf = vec![0u8; BS as usize];
    let e = v.read_at(3 * BS, &mut buf).unwrap_err();
    assert!(matches!(e, VolumeError::Corrupt { block: 3, .. }), "{e:?}");
    assert_eq!(e.code(), "FK0710");
    assert_eq!(
        read(&v, 4 * BS, BS),
        vec![0; BS as usize],
        "other blocks still read"
    );
    drop(v);
    mem.flip_byte(&sealed, 32 + 40 + 100); // repair the payload
    assert_eq!(read(&pool.open_volume("v").unwrap(), 3 * BS, BS), block(1));
    let index = sealed.replace(".data", ".index");
    let good_index = mem.read_file(&index).unwrap();
    mem.flip_byte(&index, 70); // damage the index: replayed around, rewritten
    assert_eq!(read(&pool.open_volume("v").unwrap(), 3 * BS, BS), block(1));
    assert_eq!(mem.read_file(&index).unwrap(), good_index);
    mem.flip_byte(&sealed, 32 + 10); // damage a record header
    // The index does not read record headers (payloads are still checked):
    assert_eq!(read(&pool.open_volume("v").unwrap(), 3 * BS, BS), block(1));
    mem.remove_file(&index); // a replay does, and refuses the layer
    let e = pool.open_volume("v").unwrap_err();
    assert_eq!(e.code(), "FK0709", "{e}");
}

/// Misuse is an error with a stable code, never a panic.
#[test]
fn errors_have_stable_codes() {
    let (_mem, pool) = mem_pool(8);
    let code = |e: VolumeError| e.code();
    assert_eq!(
        code(
            pool.create_volume("a/b", &VolumeOptions::new(BS))
                .unwrap_err()
        ),
        "FK0703"
    );
    assert_eq!(
        code(
            pool.create_volume(".a", &VolumeOptions::new(BS))
                .unwrap_err()
        ),
        "FK0703"
    );
    assert_eq!(
        code(
            pool.create_volume("a", &VolumeOptions::new(100))
                .unwrap_err()
        ),
        "FK0708"
    );
    assert_eq!(
        code(pool.create_volume("a", &VolumeOptions::new(0)).unwrap_err()),
        "FK0708"
    );
    let huge = VolumeOptions::new(super::super::MAX_SIZE + BS);
    assert_eq!(code(pool.create_volume("a", &huge).unwrap_err()), "FK0708");
    assert_eq!(
        code(
            pool.create_volume("a", &VolumeOptions::with_base("nope"))
                .unwrap_err()
        ),
        "FK0700"
    );
    pool.create_volume("a", &VolumeOptions::new(4 * BS))
        .unwrap();
    assert_eq!(
        code(
            pool.create_volume("a", &VolumeOptions::new(BS))
                .unwrap_err()
        ),
        "FK0702"
    );
    assert_eq!(code(pool.open_volume("b").unwrap_err()), "FK0701");
    let v = pool.open_volume("a").unwrap();
    assert_eq!(code(pool.open_volume("a").unwrap_err()), "FK0706");
    assert_eq!(code(pool.delete_volume("a").unwrap_err()), "FK0706");
    assert_eq!(code(v.write_at(4 * BS - 1, b"xy").unwrap_err()), "FK0707");
    assert_eq!(
        code(v.read_at(u64::MAX, &mut [0u8; 2]).unwrap_err()),
        "FK0707"
    );
    assert_eq!(code(v.discard(5 * BS, 1).unwrap_err()), "FK0707");
    assert_eq!(code(v.rollback("s").unwrap_err()), "FK0704");
    assert_eq!(
        code(pool.clone_snapshot("a", "s", "c").unwrap_err()),
        "FK0704"
    );
    v.snapshot("s").unwrap();
    assert_eq!(code(v.snapshot("s").unwrap_err()), "FK0705");
    assert_eq!(
        code(pool.clone_snapshot("a", "s", "a").unwrap_err()),
        "FK0702"
    );
    assert_eq!(code(pool.delete_snapshot("a", "t").unwrap_err()), "FK0704");
    drop(v);
    pool.delete_volume("a").unwrap();
    assert_eq!(pool.volumes().unwrap(), Vec::<String>::new());
}

/// Every code is documented in docs/volume-format.md, once.
#[test]
fn every_code_is_documented() {
    let doc = include_str!("../../../docs/volume-format.md");
    for n in 0..=22 {
        let code = format!("FK07{n:02}");
        assert_eq!(
            doc.matches(&format!("| {code} |")).count(),
            1,
            "{code} in the table"
        );
    }
}

/// Reads run while another thread writes, flushes and snapshots: no
/// deadlock, and a region nobody writes always reads the same.
#[test]
fn reads_run_alongside_writes_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::with_backend(Arc::new(StdBackend::new(dir.path()))).unwrap();
    pool.create_volume("v", &VolumeOptions::new(4 * MIB))
        .unwrap();
    let v = Arc::new(pool.open_volume("v").unwrap());
    let fixed = vec![0x3cu8; MIB as usize];
    v.write_at(3 * MIB, &fixed).unwrap();
    let writer = {
        let v = v.clone();
        std::thread::spawn(move || {
            for i in 0..300u64 {
                v.write_at((i % 700) * BS, &block(i)).unwrap();
                match i % 50 {
                    0 => v.snapshot(&format!("s{i}")).unwrap(),
                    25 => v.flush().unwrap(),
                    _ => {}
                }
            }
        })
    };
    let mut rng = Rng::new(9);
    while !writer.is_finished() {
        let off = 3 * MIB + rng.below(MIB - 64 * 1024);
        assert_eq!(read(&v, off, 64 * 1024), fixed[..64 * 1024]);
        read(&v, rng.below(700) * BS, 2 * BS);
    }
    writer.join().unwrap();
}

/// A snapshot or rollback that fails after its metadata may have changed
/// stops the volume: it must not write on a head that may be sealed (or
/// no longer in its stack). One that fails before leaves it usable.
#[test]
fn a_failed_snapshot_or_rollback_stops_the_volume_when_in_doubt() {
    for rollback in [false, true] {
        let mut stopped = 0;
        for k in 1..=16 {
            let (mem, pool) = mem_pool(10 + k);
            pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
            let v = pool.open_volume("v").unwrap();
            v.write_at(0, &block(1)).unwrap();
            v.snapshot("s").unwrap();
            v.write_at(0, &block(2)).unwrap();
            // Every operation from the k-th on fails: a single failure of
            // the metadata update is mended by writing a new file.
            mem.fail_after(k);
            let res = if rollback {
                v.rollback("s")
            } else {
                v.snapshot("t")
            };
            mem.heal();
            let moved = pool.info("v").unwrap().layers != v.stats().layers;
            let write = v.write_at(BS, &block(3));
            match res {
                Ok(()) => assert!(!moved && write.is_ok(), "k={k}"),
                Err(e) => {
                    assert!(matches!(e, VolumeError::Io { .. }), "k={k}: {e:?}");
                    if moved {
                        let e = write.unwrap_err();
                        assert_eq!(e.code(), "FK0711", "k={k}: a moved volume must stop");
                        stopped += 1;
                    }
                }
            }
            drop(v);
            let v = pool.open_volume("v").unwrap();
            let want = if rollback && moved {
                block(1)
            } else {
                read(&v, 0, BS)
            };
            assert_eq!(read(&v, 0, BS), want);
        }
        assert!(
            stopped > 0,
            "some failure hit after the metadata rename (rollback: {rollback})"
        );
    }
}

/// A snapshot whose index is written in the background: the index file
/// appears, and the volume reopens with the same bytes (with or without
/// it).
#[test]
fn snapshot_with_the_index_written_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::with_backend(Arc::new(StdBackend::new(dir.path()))).unwrap();
    pool.create_volume("v", &VolumeOptions::new(16 * MIB))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    let data = block(11).repeat(64);
    v.write_at(MIB, &data).unwrap();
    let sealed = *v.stats().layers.last().unwrap();
    v.snapshot_index_in_background("s").unwrap();
    v.write_at(MIB, &vec![0u8; data.len()]).unwrap();
    let index = dir.path().join(format!("layers/{sealed}.index"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !index.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(index.exists(), "the index of layer {sealed} was written");
    v.close().unwrap();
    pool.rollback("v", "s").unwrap();
    let v = pool.open_volume("v").unwrap();
    assert!(read(&v, MIB, data.len() as u64) == data);
}

/// An ephemeral clone (a `run --rm` container's volume) is a volume like
/// any other, whose creation, metadata updates and deletion sync nothing:
/// its head is made without syncs, and a spare head made ahead is left for
/// the durable volumes that need one.
#[test]
fn an_ephemeral_clone_syncs_nothing() {
    let (mem, pool) = snapshotted(31, "t");
    let c = cost(&mem, || pool.clone_ephemeral("t", "s", "x").unwrap());
    assert_eq!(c.syncs, 0, "no spare made: {c:?}");
    pool.want_spare(false);
    pool.make_spares().unwrap();
    let spare = *layer_files(&mem).iter().max().unwrap();
    let c = cost(&mem, || pool.clone_ephemeral("t", "s", "e").unwrap());
    assert_eq!(c.syncs, 0, "{c:?}");
    pool.delete_volume("x").unwrap();
    assert_ne!(
        pool.open_volume("e").unwrap().stats().layers.last(),
        Some(&spare),
        "the ephemeral clone took the spare"
    );
    let c = cost(&mem, || pool.clone_snapshot("t", "s", "d").unwrap());
    assert_eq!(
        pool.open_volume("d").unwrap().stats().layers.last(),
        Some(&spare),
        "the durable clone did not get the spare: {c:?}"
    );
    pool.delete_volume("d").unwrap();
    assert_eq!(pool.volumes().unwrap(), ["e", "t"]);
    let e = pool.open_volume("e").unwrap();
    assert_eq!(read(&e, 0, BS), block(1));
    e.write_at(0, &block(2)).unwrap();
    e.flush().unwrap();
    e.close().unwrap();
    let m = super::super::meta::read(&mem, "e").unwrap();
    let c = cost(&mem, || super::super::meta::write(&mem, "e", &m).unwrap());
    assert_eq!(
        (c.writes, c.syncs),
        (1, 0),
        "an update in place, not synced"
    );
    let e = pool.open_volume("e").unwrap();
    assert_eq!(read(&e, 0, BS), block(2));
    e.close().unwrap();
    let c = cost(&mem, || pool.delete_volume("e").unwrap());
    assert_eq!(c.syncs, 0, "{c:?}");
    assert_eq!(pool.volumes().unwrap(), ["t"]);
}

/// After a crash (a new boot), an ephemeral clone is gone, whether or not
/// its unsynced metadata file survived (a leftover is stale, never read),
/// and its head is garbage; a durable clone made with it stays.
#[test]
fn an_ephemeral_clone_is_gone_after_a_crash() {
    let mut leftovers = 0;
    for seed in 0..8 {
        let (mem, pool) = snapshotted(50 + seed, "t");
        pool.clone_ephemeral("t", "s", "e").unwrap();
        pool.clone_snapshot("t", "s", "d").unwrap();
        let e = pool.open_volume("e").unwrap();
        e.write_at(BS, &block(3)).unwrap();
        e.flush().unwrap();
        let head = *e.stats().layers.last().unwrap();
        drop(e);
        drop(pool);
        mem.crash(CrashMode::Random);
        let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
        assert_eq!(pool.volumes().unwrap(), ["d", "t"], "seed {seed}");
        assert_eq!(pool.info("e").unwrap_err().code(), "FK0701");
        let left = mem.names_in("volumes/ephemeral").len();
        leftovers += left;
        let r = pool.reclaim().unwrap();
        assert_eq!(r.temp_files, left, "seed {seed}: {r:?}");
        assert!(mem.names_in("volumes/ephemeral").is_empty());
        assert!(!layer_files(&mem).contains(&head), "its head is garbage");
        let d = pool.open_volume("d").unwrap();
        assert_eq!(
            read(&d, 0, 2 * BS),
            [block(1), vec![0; BS as usize]].concat()
        );
    }
    assert!(leftovers > 0, "some crash kept the ephemeral file's name");
}

/// A durable clone of a snapshot of an ephemeral volume survives a crash of
/// the machine with its data: the layers it shares with the ephemeral
/// volume include that volume's head, made without syncs (and, when nothing
/// was written to it, sealed without one), and the clone makes them and
/// their names durable before its metadata names them.
#[test]
fn a_durable_clone_of_an_ephemeral_volume_survives_a_crash() {
    for seed in 0..16 {
        let (mem, pool) = snapshotted(70 + seed, "t");
        pool.clone_ephemeral("t", "s", "e").unwrap();
        let e = pool.open_volume("e").unwrap();
        let written = seed < 8;
        if written {
            e.write_at(BS, &block(4)).unwrap();
        }
        e.snapshot("es").unwrap();
        e.close().unwrap();
        pool.clone_snapshot("e", "es", "d").unwrap();
        drop(pool);
        mem.crash(CrashMode::alternate(seed));
        let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
        assert_eq!(pool.volumes().unwrap(), ["d", "t"], "seed {seed}");
        let d = pool
            .open_volume("d")
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let second = if written {
            block(4)
        } else {
            vec![0; BS as usize]
        };
        assert_eq!(
            read(&d, 0, 2 * BS),
            [block(1), second].concat(),
            "seed {seed}"
        );
    }
}

/// A spare head made ahead ([`Pool::make_spares`]) is what the next
/// snapshot or rollback takes: two syncs fewer on its path (no layer file
/// created), and reclaim leaves it alone while the pool is open; once the
/// pool is closed, an unused spare is garbage.
#[test]
fn spare_heads_save_two_syncs_and_are_garbage_only_once_closed() {
    let (mem, pool) = mem_pool(7);
    pool.create_volume("v", &VolumeOptions::new(16 * MIB))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(1)).unwrap();
    let without = cost(&mem, || v.snapshot("a").unwrap());
    pool.make_spares().unwrap();
    let spare = *layer_files(&mem).iter().max().unwrap();
    assert_eq!(pool.reclaim().unwrap().layers, 0, "a spare is pinned");
    assert!(layer_files(&mem).contains(&spare));
    v.write_at(0, &block(2)).unwrap();
    let with = cost(&mem, || v.snapshot("b").unwrap());
    assert_eq!(v.stats().layers.last(), Some(&spare));
    assert_eq!(with.syncs + 2, without.syncs, "{with:?} vs {without:?}");
    pool.make_spares().unwrap();
    let spare = *layer_files(&mem).iter().max().unwrap();
    v.rollback("a").unwrap();
    assert_eq!(v.stats().layers.last(), Some(&spare));
    assert_eq!(read(&v, 0, BS), block(1));
    pool.make_spares().unwrap();
    let unused = *layer_files(&mem).iter().max().unwrap();
    v.close().unwrap();
    drop(pool);
    let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
    pool.reclaim().unwrap();
    assert!(!layer_files(&mem).contains(&unused));
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, BS), block(1));
}

/// [`Pool::drop_spares`] deletes a ready spare at once (reclaim then finds
/// nothing), and the next head needed is created on the way and makes the
/// pool keep a spare again.
#[test]
fn dropped_spares_leave_no_layer_behind() {
    let (mem, pool) = mem_pool(12);
    pool.create_volume("v", &VolumeOptions::new(16 * MIB))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    let named = layer_files(&mem);
    pool.want_spare(false);
    pool.make_spares().unwrap();
    assert_eq!(layer_files(&mem).len(), named.len() + 1, "a spare was made");
    pool.drop_spares().unwrap();
    assert_eq!(layer_files(&mem), named, "the spare is gone");
    pool.make_spares().unwrap();
    assert_eq!(layer_files(&mem), named, "no spare is wanted after a drop");
    v.write_at(0, &block(3)).unwrap();
    v.snapshot("a").unwrap();
    let named = layer_files(&mem);
    pool.make_spares().unwrap();
    assert_eq!(
        layer_files(&mem).len(),
        named.len() + 1,
        "a head was needed again"
    );
    pool.drop_spares().unwrap();
    assert_eq!(
        pool.reclaim().unwrap().layers,
        0,
        "nothing left for reclaim"
    );
    assert_eq!(read(&v, 0, BS), block(3));
}

/// A backend whose directory syncs wait, while it is armed, until the
/// test lets them go: a spare being made stops inside [`layer::create`].
#[derive(Debug)]
struct HeldSyncs {
    mem: Mem,
    /// Armed: a sync says it arrived on `arrived` and waits on `go`.
    armed: std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
    /// The next directory sync panics.
    panic_next: std::sync::atomic::AtomicBool,
}

impl crate::volume::backend::Backend for HeldSyncs {
    fn open(
        &self,
        path: &std::path::Path,
        writable: bool,
    ) -> std::io::Result<Arc<dyn crate::volume::backend::BackendFile>> {
        self.mem.open(path, writable)
    }
    fn create(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Arc<dyn crate::volume::backend::BackendFile>> {
        self.mem.create(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.mem.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.mem.remove(path)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.mem.list(dir)
    }
    fn create_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.mem.create_dir(dir)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        if self
            .panic_next
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("an injected panic in a directory sync");
        }
        let armed = self.armed.lock().unwrap().take();
        if let Some((arrived, go)) = armed {
            arrived.send(()).unwrap();
            go.recv().unwrap();
        }
        self.mem.sync_dir(dir)
    }
}

/// A pool on a [`HeldSyncs`] backend, with a volume `v`.
fn held_pool(seed: u64) -> (Mem, Arc<HeldSyncs>, Pool) {
    let mem = Mem::new(seed);
    let backend = Arc::new(HeldSyncs {
        mem: mem.clone(),
        armed: std::sync::Mutex::new(None),
        panic_next: Default::default(),
    });
    let pool = Pool::with_backend(backend.clone()).unwrap();
    pool.create_volume("v", &VolumeOptions::new(16 * MIB))
        .unwrap();
    // Spares are made (what the tests hold up), whatever creating a
    // volume asks for.
    pool.want_spare(false);
    (mem, backend, pool)
}

/// [`Pool::drop_spares`] waits for a spare being made and deletes it too:
/// no spare is left, or still being written, once the pool's owner lets
/// the pool go.
#[test]
fn dropping_spares_waits_for_one_being_made() {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    use std::time::Duration;
    let (mem, backend, pool) = held_pool(13);
    let named = layer_files(&mem);
    let (arrived_tx, arrived) = channel();
    let (go, go_rx) = channel();
    *backend.armed.lock().unwrap() = Some((arrived_tx, go_rx));
    let maker = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.make_spares())
    };
    arrived
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the spare maker reached the held sync within 10 s");
    let (dropped_tx, dropped) = channel();
    let dropper = {
        let pool = pool.clone();
        std::thread::spawn(move || dropped_tx.send(pool.drop_spares()).unwrap())
    };
    // Not a timing assertion: had the drop ended before the spare was
    // made, the spare would be left below.
    let early = match dropped.recv_timeout(Duration::from_millis(100)) {
        Err(RecvTimeoutError::Timeout) => None,
        other => {
            eprintln!("drop_spares ended while a spare was being made: {other:?}");
            other.ok()
        }
    };
    go.send(()).unwrap();
    maker.join().unwrap().unwrap();
    let result = early.unwrap_or_else(|| {
        dropped
            .recv_timeout(Duration::from_secs(30))
            .expect("drop_spares still waits once the spare is made")
    });
    result.unwrap();
    dropper.join().unwrap();
    assert_eq!(
        layer_files(&mem),
        named,
        "a spare made while dropping was left"
    );
    assert_eq!(
        pool.reclaim().unwrap().layers,
        0,
        "nothing left for reclaim"
    );
}

/// A spare whose making panicked does not keep [`Pool::drop_spares`]
/// waiting (for its 30 s limit): the maker's guard says it ended.
#[test]
fn a_panicking_spare_maker_does_not_hold_up_dropping_spares() {
    use std::time::Duration;
    let (_, backend, pool) = held_pool(14);
    backend
        .panic_next
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let maker = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.make_spares())
    };
    assert!(maker.join().is_err(), "the injected panic");
    let (tx, rx) = std::sync::mpsc::channel();
    let dropper = {
        let pool = pool.clone();
        std::thread::spawn(move || tx.send(pool.drop_spares()).unwrap())
    };
    rx.recv_timeout(Duration::from_secs(10))
        .expect("drop_spares waits for a maker that panicked")
        .unwrap();
    dropper.join().unwrap();
}

/// The generation in slot `i` of a two-slot metadata file, if its magic is
/// there (the CRC is the reader's business).
fn slot_generation(file: &[u8], i: usize) -> Option<u64> {
    let s = &file[i * file.len() / 2..];
    (&s[..8] == b"FKVMETA1").then(|| u64::from_le_bytes(s[8..16].try_into().unwrap()))
}

/// Metadata updates write the slot not in force, in place: the file keeps
/// its length, the generations alternate between the slots, the version
/// before stays readable in the other slot, and one sync (no rename, no
/// directory sync) makes it durable. A damaged slot in force (what a torn
/// write leaves) gives the version before it.
#[test]
fn metadata_updates_alternate_slots_in_place() {
    let (mem, pool) = mem_pool(11);
    pool.want_spare(false);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let f0 = mem.read_file("volumes/v.meta").unwrap();
    assert_eq!(f0.len(), 8192);
    assert_eq!(
        (slot_generation(&f0, 0), slot_generation(&f0, 1)),
        (Some(1), None)
    );
    let v = pool.open_volume("v").unwrap();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        v.write_at(0, &block(i as u64)).unwrap();
        v.flush().unwrap();
        pool.make_spares().unwrap();
        let c = cost(&mem, || v.snapshot(name).unwrap());
        let f = mem.read_file("volumes/v.meta").unwrap();
        assert_eq!(f.len(), 8192);
        let g = i as u64 + 2;
        let (now, before) = ((i + 1) % 2, i % 2);
        assert_eq!(slot_generation(&f, now), Some(g), "{name}");
        assert_eq!(slot_generation(&f, before), Some(g - 1), "{name}");
        // Two syncs: the metadata's and the sealed layer's index file's
        // (the head takes the spare; nothing was left to flush).
        assert!(mem.names_in("volumes").iter().all(|n| n == "v.meta"));
        assert_eq!(c.syncs, 2, "{name}: {c:?}");
    }
    assert_eq!(pool.info("v").unwrap().snapshots.len(), 3);
    drop(v);
    // Generation 4 (snapshot "c") is in slot 1; damage it.
    mem.flip_byte("volumes/v.meta", 4096 + 40);
    let names: Vec<String> = pool
        .info("v")
        .unwrap()
        .snapshots
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    // Both slots damaged: an error (FK0709), and no update writes over it.
    mem.flip_byte("volumes/v.meta", 40);
    assert_eq!(pool.info("v").unwrap_err().code(), "FK0709");
    let before = mem.read_file("volumes/v.meta").unwrap();
    assert_eq!(pool.delete_snapshot("v", "a").unwrap_err().code(), "FK0709");
    assert_eq!(mem.read_file("volumes/v.meta").unwrap(), before);
}

/// Metadata that outgrows its slot is written whole to a new, larger file
/// (temp file and rename), and updates go on in place in that one.
#[test]
fn metadata_that_outgrows_its_slot_moves_to_a_larger_file() {
    let (mem, pool) = mem_pool(12);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    let long = |i: usize| format!("{i:03}{}", "s".repeat(100));
    for i in 0..40 {
        v.snapshot(&long(i)).unwrap();
    }
    let f = mem.read_file("volumes/v.meta").unwrap();
    assert!(f.len() > 8192, "{}", f.len());
    assert!(mem.names_in("volumes").iter().all(|n| n == "v.meta"));
    drop(v);
    let info = pool.info("v").unwrap();
    assert_eq!(info.snapshots.len(), 40);
    assert_eq!(info.snapshots[39].name, long(39));
    pool.delete_snapshot("v", &long(0)).unwrap();
    assert_eq!(mem.read_file("volumes/v.meta").unwrap().len(), f.len());
    assert_eq!(pool.info("v").unwrap().snapshots.len(), 39);
}

/// Metadata written by fukastor before the two-slot file (plain JSON in
/// `volumes/<name>.json`) is read as it is, and replaced by a `.meta` file
/// at its first update; the volume's bytes are untouched.
#[test]
fn legacy_json_metadata_is_read_and_replaced_on_update() {
    let (mem, pool) = mem_pool(13);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(BS, &block(5)).unwrap();
    v.snapshot("old").unwrap();
    v.close().unwrap();
    // What an older fukastor wrote: the JSON alone, under `.json`.
    let f = mem.read_file("volumes/v.meta").unwrap();
    let g = |i: usize| slot_generation(&f, i).unwrap_or(0);
    let at = if g(0) > g(1) { 0 } else { f.len() / 2 };
    let len = u32::from_le_bytes(f[at + 16..at + 20].try_into().unwrap()) as usize;
    let json = f[at + 32..at + 32 + len].to_vec();
    assert!(json.starts_with(b"{"));
    mem.remove_file("volumes/v.meta");
    mem.put_file("volumes/v.json", &json);

    assert_eq!(pool.volumes().unwrap(), ["v"]);
    assert_eq!(pool.info("v").unwrap().snapshots.len(), 1);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, BS, BS), block(5));
    v.snapshot("new").unwrap();
    assert_eq!(mem.names_in("volumes"), ["v.meta"]);
    v.close().unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, BS, BS), block(5));
    assert_eq!(pool.info("v").unwrap().snapshots.len(), 2);
    drop(v);
    // A crash between the rename and the removal leaves both files: the
    // `.meta` is read, and reclaim removes the `.json`.
    mem.put_file("volumes/v.json", &json);
    assert_eq!(pool.volumes().unwrap(), ["v"]);
    assert_eq!(pool.info("v").unwrap().snapshots.len(), 2);
    assert_eq!(pool.reclaim().unwrap().temp_files, 1);
    assert_eq!(mem.names_in("volumes"), ["v.meta"]);
    pool.delete_volume("v").unwrap();
    assert!(mem.names_in("volumes").is_empty());
}

/// Opening a volume whose head holds only its header (just created,
/// cloned or rolled back) syncs nothing: the header was synced before any
/// metadata named the layer. A head with records is synced once.
#[test]
fn opening_a_fresh_head_syncs_nothing() {
    let (mem, pool) = mem_pool(14);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let c = cost(&mem, || drop(pool.open_volume("v").unwrap()));
    assert_eq!(c.syncs, 0, "{c:?}");
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(1)).unwrap();
    v.close().unwrap();
    let c = cost(&mem, || drop(pool.open_volume("v").unwrap()));
    assert_eq!(c.syncs, 1, "{c:?}");
}

/// A single failed write or sync of an in-place metadata update is mended
/// by writing the version as a new file: the snapshot succeeds, and the
/// new file holds it in its first slot with the second one empty (in
/// place, the version before would still be in the other slot).
#[test]
fn a_failed_in_place_update_is_written_as_a_new_file() {
    let mut mended = 0;
    for k in 1..=16 {
        let (mem, pool) = mem_pool(30 + k);
        pool.want_spare(false);
        pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
        let v = pool.open_volume("v").unwrap();
        v.snapshot("a").unwrap();
        pool.make_spares().unwrap();
        mem.fail_once(k);
        let r = v.snapshot("b");
        mem.heal();
        let f = mem.read_file("volumes/v.meta").unwrap();
        if r.is_ok() && slot_generation(&f, 0) == Some(3) && slot_generation(&f, 1).is_none() {
            mended += 1;
            assert_eq!(pool.info("v").unwrap().snapshots.len(), 2, "k={k}");
            assert!(mem.names_in("volumes").iter().all(|n| n == "v.meta"));
        }
    }
    assert!(mended > 0, "no failure hit the in-place update");
}
