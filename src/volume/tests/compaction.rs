//! Layer index files and compaction: what opening a volume reads, what
//! compaction frees and costs, what it must leave alone (snapshots, other
//! volumes' layers, discards masking what is below), and that reads and
//! writes go on while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::super::{BLOCK_SIZE, Pool, StdBackend, VolumeError, VolumeOptions};
use super::Rng;
use super::behaviour::{block, cost, layer_files, mem_pool, read};
use super::mem::CrashMode;
use crate::error::Coded;

const BS: u64 = BLOCK_SIZE as u64;
const MIB: u64 = 1 << 20;
/// A write record: header and payload.
const REC: u64 = 40 + BS;

/// Opening a volume reads its sealed layers' index files, not their data:
/// after 64 MiB written and a snapshot, it reads 20 bytes per block (about
/// 320 KiB), not 64 MiB. Without the index files it replays the layers
/// (reading all of them) and writes the index files again, so the next
/// opening is cheap again.
#[test]
fn opening_reads_the_index_files_not_the_data() {
    let measure = |mib: u64| {
        let (mem, pool) = mem_pool(11);
        pool.create_volume("v", &VolumeOptions::new(128 * MIB))
            .unwrap();
        let v = pool.open_volume("v").unwrap();
        let chunk = block(3).repeat((MIB / BS) as usize);
        for i in 0..mib {
            v.write_at(i * MIB, &chunk).unwrap();
        }
        v.snapshot("s").unwrap();
        let sealed = v.stats().layers[0];
        v.close().unwrap();
        let with_index = cost(&mem, || drop(pool.open_volume("v").unwrap()));
        mem.remove_file(&format!("layers/{sealed}.index"));
        let replayed = cost(&mem, || {
            let v = pool.open_volume("v").unwrap();
            assert_eq!(read(&v, (mib - 1) * MIB, BS), block(3));
        });
        let again = cost(&mem, || drop(pool.open_volume("v").unwrap()));
        (with_index, replayed, again)
    };
    let (i1, r1, a1) = measure(1);
    let (i64, r64, a64) = measure(64);
    println!("open after 1 MiB: {i1:?}\nopen after 64 MiB: {i64:?}");
    println!("without index files: {r1:?} / {r64:?}\nagain: {a1:?} / {a64:?}");
    assert_eq!((i1.ops, i1.reads), (i64.ops, i64.reads));
    assert_eq!(i64.bytes_read - i1.bytes_read, 20 * 63 * MIB / BS);
    assert!(i64.bytes_read < 400 << 10, "{i64:?}");
    assert!(
        r64.bytes_read > 64 * MIB,
        "a replay reads the layer: {r64:?}"
    );
    assert!(
        r64.bytes_written > 20 * 64 * MIB / BS,
        "and writes its index"
    );
    assert_eq!(a64, i64);
    assert_eq!(i64.bytes_written, 0, "a clean open writes nothing");
}

/// Sealing the head by itself (what the volume server does to a head that
/// grew large): the next opening reads the sealed layer's index instead of
/// replaying its 32 MiB of records; the content and the garbage figure are
/// as before, no snapshot is made, and an empty head is not sealed.
#[test]
fn a_sealed_head_is_opened_through_its_index() {
    let (mem, pool) = mem_pool(14);
    pool.create_volume("v", &VolumeOptions::new(128 * MIB))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    assert!(!v.seal_head().unwrap(), "an empty head stays");
    let chunk = block(5).repeat((MIB / BS) as usize);
    for i in 0..32 {
        v.write_at(i * MIB, &chunk).unwrap();
    }
    v.write_at(BS, &block(6)).unwrap();
    v.close().unwrap();
    let replayed = cost(&mem, || drop(pool.open_volume("v").unwrap()));
    assert!(
        replayed.bytes_read > 32 * MIB,
        "the head is replayed: {replayed:?}"
    );

    let v = pool.open_volume("v").unwrap();
    let before = v.stats();
    assert!(v.seal_head().unwrap());
    let after = v.stats();
    assert_eq!(after.layers.len(), before.layers.len() + 1);
    assert_eq!(after.layers[..before.layers.len()], before.layers[..]);
    assert_eq!(after.head_bytes, 32, "a new empty head");
    assert_eq!(after.garbage_bytes, before.garbage_bytes);
    assert_eq!(after.garbage_bytes, REC, "the block written twice");
    assert!(!v.seal_head().unwrap(), "nothing written since");
    assert!(v.snapshots().unwrap().is_empty());
    v.write_at(2 * BS, &block(7)).unwrap();
    v.close().unwrap();

    let indexed = cost(&mem, || {
        let v = pool.open_volume("v").unwrap();
        assert_eq!(read(&v, 0, BS), block(5));
        assert_eq!(read(&v, BS, BS), block(6));
        assert_eq!(read(&v, 2 * BS, BS), block(7));
        assert_eq!(read(&v, 31 * MIB, BS), block(5));
        assert_eq!(read(&v, 32 * MIB, BS), vec![0; BS as usize]);
    });
    assert!(
        indexed.bytes_read < MIB,
        "the sealed layer's index is read, not its records: {indexed:?}"
    );
}

/// The garbage figure follows writes, overwrites, discards and sharing,
/// without I/O.
#[test]
fn garbage_is_counted_as_blocks_are_overwritten() {
    let (_mem, pool) = mem_pool(12);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &[1u8; 10 * BS as usize]).unwrap();
    assert_eq!(v.stats().garbage_bytes, 0);
    v.write_at(2 * BS, &[2u8; 5 * BS as usize]).unwrap();
    assert_eq!(v.stats().garbage_bytes, 5 * REC);
    v.discard(8 * BS, 2 * BS).unwrap();
    v.flush().unwrap();
    let s = v.stats();
    assert_eq!(s.garbage_bytes, 7 * REC);
    assert_eq!(s.own_bytes, s.layer_bytes);
    assert_eq!(s.layer_bytes, 32 + 15 * REC + 40 + 40);
    // A snapshot shares its layers: their garbage is not this volume's to
    // free, and the new head has none.
    v.snapshot("s").unwrap();
    v.write_at(0, &[3u8; BS as usize]).unwrap();
    let s = v.stats();
    assert_eq!((s.garbage_bytes, s.own_bytes), (0, 32 + REC));
    // Deleting the snapshot makes them the volume's own again.
    v.delete_snapshot("s").unwrap();
    assert_eq!(v.stats().garbage_bytes, 8 * REC);
    drop(v);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(v.stats().garbage_bytes, 7 * REC, "unflushed write lost");
}

/// Rewriting the same 1 MiB 100 times (as a filesystem journal does) takes
/// 100 MiB in the head; compaction brings the volume's layers back to
/// about 1 MiB, reading and writing only the live blocks, and reclaim
/// frees the rest. The bytes are the same, before and after reopening.
#[test]
fn compaction_frees_overwritten_blocks() {
    let (mem, pool) = mem_pool(13);
    pool.create_volume("v", &VolumeOptions::new(64 * MIB))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(10 * MIB, &block(9).repeat(512)).unwrap(); // 2 MiB written once
    for i in 0..100u64 {
        v.write_at(0, &block(i).repeat(256)).unwrap();
        if i % 10 == 0 {
            v.flush().unwrap();
        }
    }
    let want = read(&v, 0, 64 * MIB);
    let before = v.stats();
    println!("before: {before:?}");
    assert_eq!(before.garbage_bytes, 99 * 256 * REC);
    let c = cost(&mem, || {
        let r = v.compact().unwrap();
        println!("{r:?}");
        assert_eq!(r.blocks, 3 * 256);
        assert_eq!(r.garbage_after, 0);
        assert_eq!(r.replaced, before.layers);
    });
    println!("compaction: {c:?}");
    let after = v.stats();
    println!("after: {after:?}");
    assert_eq!(after.garbage_bytes, 0);
    assert!(after.layer_bytes < 3 * 256 * REC + 4096, "{after:?}");
    // Reads: the index of the sealed head is in memory; the live blocks
    // are read once, in runs of up to 1 MiB. Writes: the live blocks once,
    // plus the index files and the metadata.
    assert!(c.bytes_read < 3 * 256 * REC + 64 * 1024, "{c:?}");
    assert!(c.bytes_written < 3 * 256 * REC + 128 * 1024, "{c:?}");
    assert_eq!(read(&v, 0, 64 * MIB), want);
    let r = pool.reclaim().unwrap();
    assert_eq!((r.layers, r.index_files), (1, 1));
    assert!(r.bytes > 100 * 256 * REC, "{r:?}");
    drop(v);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, 64 * MIB), want);
    assert_eq!(v.stats().layer_bytes, after.layer_bytes);
    // Nothing to free: it only flushes.
    v.write_at(20 * MIB, &block(1)).unwrap();
    let r = v.compact().unwrap();
    assert_eq!((r.layer, r.blocks), (None, 0));
    assert_eq!(v.stats().unflushed_records, 0);
}

/// A volume overwritten in full since its last compaction: its last sealed
/// layer holds only live blocks, so compaction leaves it where it is and
/// rewrites the layer below, copying only the blocks the kept layer does
/// not hold. The bytes are the same, also after a crash (which loses the
/// unflushed head: what the kept layer holds shows again, never the old
/// copies left out of the new layer) and after a rollback of a snapshot
/// taken before.
#[test]
fn compaction_keeps_a_live_top_layer_and_copies_only_what_it_does_not_hold() {
    let (mem, pool) = mem_pool(19);
    pool.create_volume("v", &VolumeOptions::new(64 * MIB))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(1).repeat(1024)).unwrap();
    v.write_at(0, &block(2).repeat(1024)).unwrap();
    v.write_at(8 * MIB, &block(3).repeat(16)).unwrap();
    let r = v.compact().unwrap();
    assert_eq!(r.blocks, 1040);
    // 4 MiB overwritten: 1024 of the compacted layer's blocks are garbage.
    v.write_at(0, &block(4).repeat(1024)).unwrap();
    let want = read(&v, 0, 64 * MIB);
    let before = v.stats();
    assert_eq!(before.garbage_bytes, 1024 * REC);
    let c = cost(&mem, || {
        let r = v.compact().unwrap();
        println!("{r:?}");
        assert_eq!(r.blocks, 16, "only the blocks the kept layer does not hold");
        assert_eq!(r.replaced, vec![before.layers[0]]);
        assert_eq!(r.garbage_after, 0);
    });
    assert!(c.bytes_written < 16 * REC + 128 * 1024, "{c:?}");
    let after = v.stats();
    assert_eq!(after.layers.len(), 3, "new layer, kept layer, head");
    assert_eq!(after.layers[1], before.layers[1], "the sealed head is kept");
    assert_eq!(read(&v, 0, 64 * MIB), want);
    v.snapshot("s").unwrap();
    // Unflushed writes over blocks the kept layer holds, then a crash.
    v.write_at(0, &block(5).repeat(8)).unwrap();
    v.write_at(8 * MIB, &block(6).repeat(4)).unwrap();
    drop(v);
    mem.crash(CrashMode::DropUnsynced);
    let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
    pool.reclaim().unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, 64 * MIB), want);
    v.write_at(0, &block(7).repeat(2048)).unwrap();
    v.flush().unwrap();
    drop(v);
    pool.rollback("v", "s").unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, 64 * MIB), want);
}

/// Compaction rewrites only the layers no snapshot and no other volume
/// uses; snapshots, clones and rollbacks read the same afterwards. Once a
/// clone and the snapshot are gone, those layers are compacted too.
#[test]
fn compaction_leaves_shared_layers_alone() {
    let (mem, pool) = mem_pool(14);
    pool.create_volume("v", &VolumeOptions::new(4 * MIB))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    for i in 0..20 {
        v.write_at(0, &block(i).repeat(64)).unwrap();
    }
    v.snapshot("s").unwrap();
    let s_layers = v.stats().layers[..1].to_vec();
    let s_bytes = read(&v, 0, 4 * MIB);
    for i in 20..40 {
        v.write_at(0, &block(i).repeat(32)).unwrap();
    }
    pool.clone_snapshot("v", "s", "c").unwrap();
    let r = v.compact().unwrap();
    assert_eq!(r.replaced.len(), 1, "only the head: {r:?}");
    assert!(!r.replaced.contains(&s_layers[0]));
    let stack = v.stats().layers;
    assert_eq!(stack[0], s_layers[0]);
    pool.reclaim().unwrap();
    assert!(layer_files(&mem).contains(&s_layers[0]));
    let c = pool.open_volume("c").unwrap();
    assert_eq!(read(&c, 0, 4 * MIB), s_bytes);
    // The snapshot's layer is still shared (the clone uses it) after the
    // snapshot is deleted; once the clone is gone too, it is this
    // volume's own, and its garbage goes.
    let now = read(&v, 0, 4 * MIB);
    v.delete_snapshot("s").unwrap();
    v.write_at(0, &block(99)).unwrap();
    let r = v.compact().unwrap();
    assert!(!r.replaced.contains(&s_layers[0]), "{r:?}");
    drop(c);
    pool.delete_volume("c").unwrap();
    let r = v.compact().unwrap();
    assert_eq!(r.replaced[0], s_layers[0], "{r:?}");
    assert_eq!(
        v.stats().layers.len(),
        2,
        "one compacted layer and the head"
    );
    let mut want = now;
    want[..BS as usize].copy_from_slice(&block(99));
    assert_eq!(read(&v, 0, 4 * MIB), want);
    pool.reclaim().unwrap();
    drop(v);
    assert_eq!(read(&pool.open_volume("v").unwrap(), 0, 4 * MIB), want);

    // A rollback after compaction: the snapshot's layers are intact.
    let w = {
        pool.create_volume("w", &VolumeOptions::new(MIB)).unwrap();
        pool.open_volume("w").unwrap()
    };
    w.write_at(0, &block(1).repeat(16)).unwrap();
    w.snapshot("t").unwrap();
    let t_bytes = read(&w, 0, MIB);
    for i in 0..10 {
        w.write_at(0, &block(100 + i).repeat(16)).unwrap();
    }
    w.compact().unwrap();
    pool.reclaim().unwrap();
    w.rollback("t").unwrap();
    assert_eq!(read(&w, 0, MIB), t_bytes);
}

/// Discards in the compacted layers keep masking what is below them (a
/// base file, a snapshot's layer): the new layer starts with their ranges.
/// Without anything below (no base, the run at the bottom), they go.
#[test]
fn compaction_keeps_discards_that_mask_lower_layers() {
    let (mem, pool) = mem_pool(15);
    let mut base = vec![0u8; (256 * BS) as usize];
    Rng::new(15).fill(&mut base);
    mem.put_file("base.img", &base);
    pool.create_volume("b", &VolumeOptions::with_base("base.img"))
        .unwrap();
    let v = pool.open_volume("b").unwrap();
    let mut want = base.clone();
    for i in 0..5u64 {
        v.write_at(10 * BS, &block(i).repeat(20)).unwrap();
    }
    want[(10 * BS) as usize..(30 * BS) as usize].copy_from_slice(&block(4).repeat(20));
    v.discard(20 * BS, 100 * BS).unwrap(); // over written blocks and the base
    want[(20 * BS) as usize..(120 * BS) as usize].fill(0);
    v.write_at(50 * BS, &block(7)).unwrap(); // discarded, then written
    want[(50 * BS) as usize..(51 * BS) as usize].copy_from_slice(&block(7));
    let r = v.compact().unwrap();
    assert_eq!(r.blocks, 11);
    assert_eq!(r.bytes_after, 32 + 40 + 11 * REC + 40, "one discard record");
    assert_eq!(read(&v, 0, 256 * BS), want);
    drop(v);
    assert_eq!(read(&pool.open_volume("b").unwrap(), 0, 256 * BS), want);

    // Over a snapshot's layer.
    pool.create_volume("s", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("s").unwrap();
    v.write_at(0, &block(1).repeat(64)).unwrap();
    v.snapshot("one").unwrap();
    v.discard(0, 32 * BS).unwrap();
    v.write_at(40 * BS, &block(2)).unwrap();
    v.write_at(40 * BS, &block(3)).unwrap();
    let want = read(&v, 0, MIB);
    assert_eq!(want[..(32 * BS) as usize], vec![0u8; (32 * BS) as usize]);
    let r = v.compact().unwrap();
    assert_eq!(r.bytes_after, 32 + 40 + REC + 40);
    assert_eq!(read(&v, 0, MIB), want);
    drop(v);
    assert_eq!(read(&pool.open_volume("s").unwrap(), 0, MIB), want);

    // Nothing below: no discard record.
    pool.create_volume("z", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("z").unwrap();
    v.write_at(0, &block(1).repeat(64)).unwrap();
    v.discard(0, 32 * BS).unwrap();
    let r = v.compact().unwrap();
    assert_eq!(r.bytes_after, 32 + 32 * REC + 40);
    assert_eq!(
        read(&v, 0, MIB),
        [
            vec![0u8; 32 * BS as usize],
            block(1).repeat(32),
            vec![0u8; (MIB - 64 * BS) as usize]
        ]
        .concat()
    );
}

/// A damaged block is not copied under a fresh checksum: compaction stops
/// with FK0710 and changes nothing; a cancelled one gives up with FK0721.
#[test]
fn compaction_stops_on_damage_and_on_cancel() {
    let (mem, pool) = mem_pool(16);
    pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
    let v = pool.open_volume("v").unwrap();
    v.write_at(0, &block(1).repeat(4)).unwrap();
    v.write_at(0, &block(2)).unwrap();
    v.cancel_compaction();
    let e = v.compact().unwrap_err();
    assert_eq!(e.code(), "FK0721", "{e}");
    assert_eq!(v.stats().layers.len(), 1, "nothing happened");
    let head = v.stats().layers[0];
    v.flush().unwrap();
    mem.flip_byte(&format!("layers/{head}.data"), 32 + 40 + REC + 7); // block 1
    let e = v.compact().unwrap_err();
    assert!(matches!(e, VolumeError::Corrupt { block: 1, .. }), "{e:?}");
    assert_eq!(pool.info("v").unwrap().layers, v.stats().layers);
    v.write_at(BS, &block(5)).unwrap(); // still writable
    assert_eq!(read(&v, 0, BS), block(2));
}

/// A crash at any point of a compaction leaves the old stack or the new
/// one: the bytes are the same either way, and nothing but unreferenced
/// layer files is left over (removed by reclaim).
#[test]
fn a_crash_during_compaction_leaves_one_stack_or_the_other() {
    let mut outcomes = [0; 2];
    for k in 0..120 {
        let (mem, pool) = mem_pool(17 + k);
        pool.create_volume("v", &VolumeOptions::new(MIB)).unwrap();
        let v = pool.open_volume("v").unwrap();
        v.write_at(0, &block(1).repeat(64)).unwrap();
        v.snapshot("s").unwrap();
        for i in 0..5 {
            v.write_at(8 * BS, &block(10 + i).repeat(40)).unwrap();
            v.flush().unwrap();
        }
        let want = read(&v, 0, MIB);
        let old = v.stats().layers;
        mem.fail_after(k);
        let res = v.compact();
        drop(v);
        mem.crash(CrashMode::alternate(k + 1));
        let pool = Pool::with_backend(Arc::new(mem.clone())).unwrap();
        let v = pool.open_volume("v").unwrap();
        assert_eq!(read(&v, 0, MIB), want, "k={k} ({res:?})");
        let now = v.stats().layers;
        // The old stack, the old one sealed under a new head, or the
        // compacted one: the snapshot's layer at the bottom either way.
        assert_eq!(now[0], old[0], "k={k}");
        outcomes[usize::from(now.len() == 3 && !now.contains(&old[1]))] += 1;
        drop(v);
        pool.reclaim().unwrap();
        let c = {
            pool.clone_snapshot("v", "s", "c").unwrap();
            pool.open_volume("c").unwrap()
        };
        assert_eq!(read(&c, 0, 64 * BS), block(1).repeat(64), "k={k}");
    }
    println!("crash during compaction: {outcomes:?} (old stack, compacted)");
    assert!(outcomes[0] > 10 && outcomes[1] > 10);
}

/// Reads and writes go on while compactions run (on the real filesystem):
/// a region nobody writes always reads the same, every write lands;
/// snapshots taken meanwhile make a compaction give up (FK0721), never
/// lose anything; reclaim running all the while never removes the layer
/// being written.
#[test]
fn compaction_runs_alongside_reads_writes_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::with_backend(Arc::new(StdBackend::new(dir.path()))).unwrap();
    pool.create_volume("v", &VolumeOptions::new(8 * MIB))
        .unwrap();
    let v = Arc::new(pool.open_volume("v").unwrap());
    let fixed = block(77).repeat(256);
    v.write_at(7 * MIB, &fixed).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (v, done) = (v.clone(), done.clone());
        std::thread::spawn(move || {
            let mut model = vec![0u8; (4 * MIB) as usize];
            let mut rng = Rng::new(18);
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) || i < 2000 {
                let b = rng.below(4 * MIB / BS - 8);
                let n = rng.range(1, 8);
                let data = block(i).repeat(n as usize);
                v.write_at(b * BS, &data).unwrap();
                model[(b * BS) as usize..((b + n) * BS) as usize].copy_from_slice(&data);
                match i % 1000 {
                    0 => v.snapshot(&format!("s{i}")).unwrap(),
                    n if n % 97 == 0 => v.flush().unwrap(),
                    _ => {}
                }
                i += 1;
            }
            model
        })
    };
    let reader = {
        let (v, done, fixed) = (v.clone(), done.clone(), fixed.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(19);
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let off = 7 * MIB + rng.below(MIB - 64 * 1024);
                let at = (off - 7 * MIB) as usize;
                assert_eq!(read(&v, off, 64 * 1024), fixed[at..at + 64 * 1024]);
                read(&v, rng.below(4 * MIB - 8 * BS), 8 * BS);
                n += 1;
            }
            n
        })
    };
    let reclaimer = {
        let (pool, done) = (pool.clone(), done.clone());
        std::thread::spawn(move || {
            let mut files = 0;
            while !done.load(Ordering::Relaxed) {
                files += pool.reclaim().unwrap().layers;
            }
            files
        })
    };
    let (mut done_n, mut gave_up) = (0, 0);
    for _ in 0..300 {
        if done_n >= 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        match v.compact() {
            Ok(r) if r.layer.is_some() => done_n += 1,
            Ok(_) => {}
            Err(e) if e.code() == "FK0721" => gave_up += 1,
            Err(e) => panic!("compaction: {e}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    let model = writer.join().unwrap();
    let reads = reader.join().unwrap();
    let reclaimed = reclaimer.join().unwrap();
    println!("alongside: {reclaimed} layer files reclaimed meanwhile");
    println!("alongside: {done_n} compactions, {gave_up} gave up, {reads} reads checked");
    assert!(done_n > 5);
    assert_eq!(read(&v, 0, 4 * MIB), model);
    assert_eq!(read(&v, 7 * MIB, MIB), fixed);
    let stack = v.stats().layers;
    v.flush().unwrap();
    drop(v);
    pool.reclaim().unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(v.stats().layers, stack);
    assert_eq!(read(&v, 0, 4 * MIB)[..], model[..], "after reopening");
}

/// Figures on the real filesystem (run by hand: `cargo test --release --lib
/// measure_on_disk -- --ignored --nocapture`): opening a volume after 1 GiB
/// written and a snapshot, with and without index files; compacting a
/// 256 MiB region rewritten 4 times.
#[test]
#[ignore]
fn measure_on_disk() {
    use std::time::Instant;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let pool = Pool::open(dir.path()).unwrap();
    pool.create_volume("v", &VolumeOptions::new(4 << 30))
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    let mut chunk = vec![0u8; MIB as usize];
    let mut rng = Rng::new(20);
    for i in 0..1024u64 {
        rng.fill(&mut chunk);
        v.write_at(i * MIB, &chunk).unwrap();
    }
    v.snapshot("s").unwrap();
    let sealed = v.stats().layers[0];
    v.close().unwrap();
    // Evicts the pool's layer files from the page cache: a cold open.
    let evict = || {
        for e in std::fs::read_dir(dir.path().join("layers")).unwrap() {
            let f = std::fs::File::open(e.unwrap().path()).unwrap();
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        }
    };
    let open = || {
        evict();
        let t = Instant::now();
        let v = pool.open_volume("v").unwrap();
        let e = t.elapsed();
        drop(v);
        e
    };
    let with_index = (open(), open());
    std::fs::remove_file(dir.path().join(format!("layers/{sealed}.index"))).unwrap();
    let replayed = open();
    let rewritten = open();
    println!(
        "cold open after 1 GiB + snapshot: with index {:?} / {:?}; without (replay) {replayed:?}; after rewriting the index {rewritten:?}",
        with_index.0, with_index.1
    );

    pool.create_volume("w", &VolumeOptions::new(1 << 30))
        .unwrap();
    let w = pool.open_volume("w").unwrap();
    for _ in 0..4 {
        for i in 0..256u64 {
            rng.fill(&mut chunk);
            w.write_at(i * MIB, &chunk).unwrap();
        }
        w.flush().unwrap();
    }
    let before = w.stats();
    let t = Instant::now();
    let r = w.compact().unwrap();
    let e = t.elapsed();
    let after = w.stats();
    println!(
        "compaction of 256 MiB written 4 times: {e:?}; layer bytes {} -> {}, garbage {} -> {}; {r:?}",
        before.layer_bytes, after.layer_bytes, before.garbage_bytes, after.garbage_bytes
    );
    let rec = pool.reclaim().unwrap();
    println!("reclaim: {rec:?}");
}
