//! Unit tests of the store: staging, publication, names, fsck and gc on the
//! states a crash can leave.

use std::fs;

use composefs::fsverity::FsVerityHashValue;

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s"), LockMode::Shared).unwrap();
    (dir, s)
}

fn record(id: &ObjectId, names: &[&str]) -> ImageRecord {
    ImageRecord {
        id: id.to_hex(),
        source: "test".into(),
        imported: 0,
        manifest_digest: None,
        config_digest: None,
        config: serde_json::json!({}),
        layers: vec![],
        stats: ImageStats::default(),
        names: names.iter().map(|s| s.to_string()).collect(),
        filter: None,
        named_configs: Default::default(),
    }
}

/// Stores a tiny image whose one file is `content`; returns (image, object).
fn image(s: &Store, content: &[u8], name: Option<&str>) -> (ObjectId, ObjectId) {
    use composefs::generic_tree::LeafContent;
    use composefs::tree::{Inode, RegularFile};
    let st = crate::tree::TreeBuilder::new().finish().root.stat.clone();
    let mut tree = Tree::new(st.clone());
    let staging = s.staging().unwrap();
    let obj = staging.put(content).unwrap();
    let leaf = tree.push_leaf(
        st,
        LeafContent::Regular(RegularFile::External(obj.clone(), content.len() as u64)),
    );
    tree.root
        .insert(std::ffi::OsStr::new("f"), Inode::leaf(leaf));
    let v = composefs::erofs::writer::ValidatedFileSystem::new(tree).unwrap();
    let id = staging
        .put(&composefs::erofs::writer::mkfs_erofs(&v))
        .unwrap();
    staging.publish().unwrap();
    let name = name.map(|n| ImageName::parse(n).unwrap());
    s.publish_image(
        &id,
        &record(&id, &name.iter().map(|n| n.as_str()).collect::<Vec<_>>()),
        name.as_ref(),
    )
    .unwrap();
    (id, obj)
}

#[test]
fn a_dropped_staging_leaves_nothing() {
    let (_d, s) = store();
    let staging = s.staging().unwrap();
    let id = staging.put(&[7u8; 5000]).unwrap();
    let mut w = staging.writer().unwrap();
    std::io::Write::write_all(&mut w, &[9u8; 10000]).unwrap();
    w.finish().unwrap();
    assert_eq!(staging.staged_count(), 2);
    drop(staging);
    assert!(!s.has_object(&id));
    assert_eq!(
        fs::read_dir(s.root().join("fukastor/staging"))
            .unwrap()
            .count(),
        0
    );
    let r = s.fsck(false, &[]).unwrap();
    assert!(r.clean && r.objects == 0, "{r:?}");
}

#[test]
fn streamed_and_buffered_objects_get_the_same_name() {
    let (_d, s) = store();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let staging = s.staging().unwrap();
    let a = staging.put(&data).unwrap();
    let mut w = staging.writer().unwrap();
    for chunk in data.chunks(777) {
        std::io::Write::write_all(&mut w, chunk).unwrap();
    }
    let b = w.finish().unwrap();
    assert_eq!(a, b);
    let stats = staging.publish().unwrap();
    assert_eq!(stats.new_objects, 1);
    assert_eq!(s.read_object(&a).unwrap(), data);
    assert_eq!(objects::verify_file(&s.object_path(&a)).unwrap(), a);
}

#[test]
fn names_resolve_and_prefixes_must_be_unique() {
    let (_d, s) = store();
    let (id, _) = image(&s, &[1u8; 100], Some("a/b:1"));
    assert_eq!(s.resolve("a/b:1").unwrap().0, id);
    assert_eq!(s.resolve(&id.to_hex()[..8]).unwrap().0, id);
    assert!(matches!(s.resolve("a/b"), Err(StoreError::NotFound(_))));
    assert!(matches!(s.resolve("../x"), Err(StoreError::BadName(..))));
    let (id2, _) = image(&s, &[2u8; 100], Some("c"));
    let common = id
        .to_hex()
        .chars()
        .zip(id2.to_hex().chars())
        .take_while(|(a, b)| a == b)
        .count();
    if common >= 4 {
        assert!(matches!(
            s.resolve(&id.to_hex()[..common]),
            Err(StoreError::Ambiguous(..))
        ));
    }
    assert_eq!(s.refs().unwrap().len(), 2);
    assert_eq!(
        s.remove_ref(&ImageName::parse("a/b:1").unwrap()).unwrap(),
        id
    );
    assert!(
        !s.root().join("images/refs/a").exists(),
        "empty repository directory left behind"
    );
}

#[test]
fn crash_leftovers_are_garbage_not_problems() {
    let (_d, s) = store();
    let (named, _) = image(&s, &[3u8; 200], Some("keep"));
    // An import killed after publishing objects and the image, before its name.
    let (unnamed, orphan_obj) = image(&s, &[4u8; 300], None);
    // One killed while staging.
    fs::create_dir_all(s.root().join("fukastor/staging/123-456")).unwrap();
    fs::write(s.root().join("fukastor/staging/123-456/partial-0"), b"x").unwrap();
    let r = s.fsck(false, &[]).unwrap();
    assert!(r.clean, "{r:?}");
    assert_eq!((r.garbage.unnamed_images, r.garbage.staging_dirs), (1, 1));
    // A mounted image is kept although it has no name.
    let g = s.gc(false, std::slice::from_ref(&unnamed)).unwrap();
    assert_eq!((g.images, g.staging_dirs), (0, 1));
    assert!(s.has_object(&orphan_obj));
    let g = s.gc(false, &[]).unwrap();
    assert_eq!((g.images, g.staging_dirs), (1, 0));
    assert!(!s.has_object(&orphan_obj) && !s.has_object(&unnamed));
    assert!(s.has_object(&named));
    let r = s.fsck(false, &[]).unwrap();
    assert!(
        r.clean && r.garbage.objects == 0 && r.garbage.staging_dirs == 0,
        "{r:?}"
    );
}

#[test]
fn corruption_is_a_problem_and_repair_drops_the_image() {
    let (_d, s) = store();
    let (id, obj) = image(&s, &[5u8; 5000], Some("victim"));
    let path = s.object_path(&obj);
    let mut data = fs::read(&path).unwrap();
    data[100] ^= 1;
    fs::write(&path, data).unwrap();
    let r = s.fsck(false, &[]).unwrap();
    assert!(!r.clean);
    let kinds: Vec<_> = r.problems.iter().map(|p| p.kind).collect();
    assert!(
        kinds.contains(&"corrupt-object") && kinds.contains(&"broken-image"),
        "{kinds:?}"
    );
    drop(s);
    let s = Store::open(&_d.path().join("s"), LockMode::Exclusive).unwrap();
    let r = s.fsck(true, &[]).unwrap();
    assert!(r.clean, "{r:?}");
    assert!(s.resolve("victim").is_err());
    assert!(!s.root().join("images").join(id.to_hex()).exists());
    assert!(s.fsck(false, &[]).unwrap().clean);
}

#[test]
fn repair_restores_a_lost_name_from_the_record() {
    let (_d, s) = store();
    let (id, _) = image(&s, &[6u8; 100], Some("lost:1"));
    fs::remove_file(s.root().join("images/refs/lost:1")).unwrap();
    let r = s.fsck(false, &[]).unwrap();
    assert_eq!(r.garbage.unnamed_images, 1);
    let r = s.fsck(true, &[]).unwrap();
    assert!(r.clean && r.garbage.unnamed_images == 0, "{r:?}");
    assert_eq!(s.resolve("lost:1").unwrap().0, id);
}

#[test]
fn a_newer_format_is_refused() {
    let (d, s) = store();
    drop(s);
    fs::write(d.path().join("s/fukastor/format"), "2\n").unwrap();
    assert!(matches!(
        Store::open(&d.path().join("s"), LockMode::Shared),
        Err(StoreError::Format { .. })
    ));
}

#[test]
fn an_exclusive_lock_waits_for_shared_holders() {
    let (d, s) = store();
    unsafe_env_timeout();
    let r = Store::open(&d.path().join("s"), LockMode::Exclusive);
    assert!(matches!(r, Err(StoreError::Busy(_))), "{r:?}");
    drop(s);
    assert!(Store::open(&d.path().join("s"), LockMode::Exclusive).is_ok());
}

fn unsafe_env_timeout() {
    // Tests run in threads of one process; the lock timeout is read per call.
    lock::set_timeout_for_tests(std::time::Duration::from_millis(200));
}
