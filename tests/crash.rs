//! Crash safety and concurrency of `pull`, `gc` and `fsck`.
//!
//! The images (generated once, deterministically, and cached under
//! `CARGO_TARGET_TMPDIR`): `big` = layers A (gzip) + B (zstd), about 2000
//! files and 150 MiB of pseudo-random data, with overrides and whiteouts in B;
//! `other` = A + C, sharing layer A with `big`.
//!
//! - Failpoints: for each `FUKASTOR_FAILPOINT` (`pull:staged`,
//!   `pull:objects-published`, `pull:image-written`, `pull:ref-written`) the
//!   pull must die by SIGKILL; then `fsck` is clean (garbage allowed), the
//!   image is not listed (except after `pull:ref-written`, where a listed
//!   image must be complete), a new pull succeeds, `fsck` is clean, `gc` then
//!   `fsck` are clean and `dump` shows every file with its content.
//! - After a kill before the image exists, `gc` reclaims the partial data.
//! - Timing kills: pulls SIGKILLed after seeded pseudo-random delays, twice on
//!   the same store, then the same checks.
//! - Concurrency: two pulls of images sharing a layer, two pulls of the same
//!   image, and `gc` run in a loop while a pull runs (also while the pull
//!   deduplicates against unreferenced objects that gc wants to delete):
//!   every pull succeeds and the store stays clean and complete.
//! - `gc` SIGKILLed at random times: `fsck` clean, the image whole.
//!
//! The tests of this file run one at a time (each moves 150 MiB or more).

#[path = "support/oci.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use support::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------- images ----

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    File { size: u64, sha: String },
    Symlink(String),
    Dir,
}

impl Expect {
    fn file(data: &[u8]) -> Self {
        Expect::File {
            size: data.len() as u64,
            sha: sha256_hex(data),
        }
    }
    fn to_json(&self) -> serde_json::Value {
        match self {
            Expect::File { size, sha } => serde_json::json!(["f", size, sha]),
            Expect::Symlink(t) => serde_json::json!(["l", t]),
            Expect::Dir => serde_json::json!(["d"]),
        }
    }
    fn from_json(v: &serde_json::Value) -> Self {
        match v[0].as_str().unwrap() {
            "f" => Expect::File {
                size: v[1].as_u64().unwrap(),
                sha: v[2].as_str().unwrap().to_string(),
            },
            "l" => Expect::Symlink(v[1].as_str().unwrap().to_string()),
            _ => Expect::Dir,
        }
    }
}

type Tree = BTreeMap<String, Expect>;

#[derive(Debug)]
struct Images {
    dir: PathBuf,
    expected: BTreeMap<String, Tree>,
}

impl Images {
    fn source(&self, tag: &str) -> String {
        oci_source(&self.dir, tag)
    }
    fn tree(&self, tag: &str) -> &Tree {
        &self.expected[tag]
    }
}

const CACHE: &str = "fk-crash-images-v1";

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(CACHE);
        let exp = dir.join("expected.json");
        if !exp.exists() {
            let tmp = base.join(format!("{CACHE}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let expected = generate(&tmp.join("layout"));
            let j: serde_json::Map<String, serde_json::Value> = expected
                .iter()
                .map(|(tag, tree)| {
                    let t: serde_json::Map<String, serde_json::Value> =
                        tree.iter().map(|(p, e)| (p.clone(), e.to_json())).collect();
                    (tag.clone(), serde_json::Value::Object(t))
                })
                .collect();
            std::fs::write(tmp.join("expected.json"), serde_json::to_vec(&j).unwrap()).unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&exp).unwrap()).unwrap();
        let expected = j
            .as_object()
            .unwrap()
            .iter()
            .map(|(tag, t)| {
                let tree = t
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(p, e)| (p.clone(), Expect::from_json(e)))
                    .collect();
                (tag.clone(), tree)
            })
            .collect();
        Images {
            dir: dir.join("layout"),
            expected,
        }
    })
}

/// Adds a layer's entries to `tree`, honouring whiteouts.
struct LayerGen {
    tar: TarW,
    changes: Vec<(String, Option<Expect>)>,
}

impl LayerGen {
    fn new() -> Self {
        Self {
            tar: TarW::new(),
            changes: Vec::new(),
        }
    }
    fn dir(&mut self, p: &str) {
        self.tar.dir(p);
        self.changes.push((format!("/{p}"), Some(Expect::Dir)));
    }
    fn file(&mut self, p: &str, data: &[u8]) {
        self.tar.file(p, data);
        self.changes
            .push((format!("/{p}"), Some(Expect::file(data))));
    }
    fn symlink(&mut self, p: &str, target: &str) {
        self.tar.symlink(p, target);
        self.changes
            .push((format!("/{p}"), Some(Expect::Symlink(target.to_string()))));
    }
    /// Whiteout for `p` (a file or a whole directory).
    fn whiteout(&mut self, p: &str) {
        let (parent, name) = p.rsplit_once('/').unwrap();
        self.tar.file(format!("{parent}/.wh.{name}"), b"");
        self.changes.push((format!("/{p}"), None));
    }
    fn apply(&self, tree: &mut Tree) {
        for (p, e) in &self.changes {
            match e {
                Some(e) => {
                    tree.insert(p.clone(), e.clone());
                }
                None => {
                    let prefix = format!("{p}/");
                    tree.retain(|k, _| k != p && !k.starts_with(&prefix));
                }
            }
        }
    }
}

fn random_tree(g: &mut LayerGen, r: &mut Rng, top: &str, dirs: usize, per_dir: usize) {
    g.dir(top);
    for d in 0..dirs {
        g.dir(&format!("{top}/d{d:02}"));
        for f in 0..per_dir {
            let size = match f % 10 {
                0 => 0,
                1 => r.below(64),
                _ => r.below(56 * 1024),
            };
            let data = r.bytes(size as usize);
            g.file(&format!("{top}/d{d:02}/f{f:03}"), &data);
        }
    }
}

/// Writes the layout (tags `big` and `other`) and returns the expected trees.
fn generate(layout: &Path) -> BTreeMap<String, Tree> {
    let mut r = Rng(0xC0FF_EE00_2024);

    // Layer A: ~1000 small files, 4 big ones, duplicates, a symlink.
    let mut a = LayerGen::new();
    random_tree(&mut a, &mut r, "a", 20, 50);
    a.dir("a/big");
    for i in 0..4 {
        a.file(&format!("a/big/blob{i}"), &r.bytes(13 << 20));
    }
    a.dir("a/dup");
    for i in 0..30 {
        let data = format!("duplicated content number {}\n", i % 5).repeat(200);
        a.file(&format!("a/dup/f{i:02}"), data.as_bytes());
    }
    a.symlink("a/link", "d00/f002");

    // Layer B: another ~1000 files, overrides and whiteouts of A.
    let mut b = LayerGen::new();
    random_tree(&mut b, &mut r, "b", 20, 50);
    b.dir("b/big");
    for i in 0..4 {
        b.file(&format!("b/big/blob{i}"), &r.bytes(13 << 20));
    }
    b.dir("a");
    b.dir("a/d00");
    for f in 0..20 {
        let n = 1 + r.below(10_000) as usize;
        b.file(&format!("a/d00/f{f:03}"), &r.bytes(n));
    }
    b.whiteout("a/d18");
    b.dir("a/d19");
    b.whiteout("a/d19/f049");

    // Layer C (only in `other`): 200 files, one big, overrides of A.
    let mut c = LayerGen::new();
    random_tree(&mut c, &mut r, "c", 4, 50);
    c.file("c/blob", &r.bytes(8 << 20));
    c.dir("a");
    c.dir("a/d01");
    for f in 0..10 {
        c.file(&format!("a/d01/f{f:03}"), b"overridden by layer C\n");
    }

    let l = Layout::create(layout);
    let put = |g: &LayerGen, comp: Comp| -> (Desc, String) {
        // Every entry is padded already: add the end-of-archive blocks.
        let mut tar = g.tar.buf.clone();
        tar.extend_from_slice(&[0u8; 1024]);
        let d = l.put_blob(comp.media_type(), &compress(&tar, comp));
        (d, format!("sha256:{}", sha256_hex(&tar)))
    };
    let (da, ia) = put(&a, Comp::Gzip);
    let (db, ib) = put(&b, Comp::Zstd);
    let (dc, ic) = put(&c, Comp::Gzip);
    let cfg_big = l.put_config(&[ia.clone(), ib]);
    let m_big = l.put_manifest(&cfg_big, &[da.clone(), db]);
    let cfg_other = l.put_config(&[ia, ic]);
    let m_other = l.put_manifest(&cfg_other, &[da, dc]);
    l.write_index(&[("big", &m_big), ("other", &m_other)]);

    let mut big = Tree::new();
    big.insert("/".into(), Expect::Dir);
    a.apply(&mut big);
    let mut other = big.clone();
    b.apply(&mut big);
    c.apply(&mut other);
    BTreeMap::from([("big".to_string(), big), ("other".to_string(), other)])
}

// -------------------------------------------------------------- checks ----

struct Store {
    _tmp: tempfile::TempDir,
    fk: Fk,
}

fn new_store() -> Store {
    let tmp = tempfile::Builder::new()
        .prefix("fk-crash-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(tmp.path().join("cwd")).unwrap();
    let mut fk = Fk::new(tmp.path().join("store"), tmp.path().join("cwd"));
    fk.timeout = Duration::from_secs(600);
    Store { _tmp: tmp, fk }
}

/// `dump` lists exactly the expected files, and every file's content is in
/// the store.
fn check_image(fk: &Fk, id: &str, tree: &Tree, ctx: &str) {
    let d = fk.dump(id);
    for (path, e) in tree {
        let de = d
            .get(path.as_bytes())
            .unwrap_or_else(|| panic!("{ctx}: dump of {id} has no {path}"));
        match e {
            Expect::File { size, sha } => {
                assert!(de.is_reg(), "{ctx}: {path} is not a regular file: {de:?}");
                assert_eq!(de.size, *size, "{ctx}: size of {path}");
                check_content_sha(&fk.store, de, *size, sha);
            }
            Expect::Symlink(t) => {
                assert!(
                    de.is_symlink() && de.payload.as_deref() == Some(t.as_bytes()),
                    "{ctx}: {path} is not a symlink to {t}: {de:?}"
                );
            }
            Expect::Dir => assert!(de.is_dir(), "{ctx}: {path} is not a directory: {de:?}"),
        }
    }
    let extra: Vec<String> = d
        .entries
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| !tree.contains_key(k))
        .collect();
    assert!(
        extra.is_empty(),
        "{ctx}: dump of {id} lists paths that are not in the image: {:?}",
        &extra[..extra.len().min(20)]
    );
}

fn listed(fk: &Fk, id: &str) -> usize {
    fk.image_ids().iter().filter(|i| *i == id).count()
}

/// Every image the store lists must be complete (it is one of `big`/`other`).
fn check_listed_images_complete(fk: &Fk, imgs: &Images, ctx: &str) {
    for e in fk.images().as_array().unwrap() {
        let id = e["id"].as_str().expect("image entry without id");
        let name = e["name"].as_str().unwrap_or("");
        let tag = if name.contains("other") {
            "other"
        } else {
            "big"
        };
        check_image(
            fk,
            id,
            imgs.tree(tag),
            &format!("{ctx}: listed image {name}"),
        );
    }
}

/// Pull without failpoint, then fsck, dump, gc, fsck, dump.
fn pull_and_check_all(st: &Store, imgs: &Images, tag: &str, ctx: &str) -> String {
    let id = st.fk.pull(&imgs.source(tag), tag);
    st.fk.assert_fsck_clean(&format!("{ctx}: after the pull"));
    assert_eq!(
        listed(&st.fk, &id),
        1,
        "{ctx}: images must list {id} once: {}",
        st.fk.images()
    );
    check_image(
        &st.fk,
        &id,
        imgs.tree(tag),
        &format!("{ctx}: after the pull"),
    );
    st.fk.gc();
    st.fk.assert_fsck_clean(&format!("{ctx}: after gc"));
    assert_eq!(listed(&st.fk, &id), 1, "{ctx}: gc lost the image");
    check_image(&st.fk, &id, imgs.tree(tag), &format!("{ctx}: after gc"));
    id
}

// ---------------------------------------------------------- failpoints ----

fn failpoint_case(fp: &str) {
    let _g = serial();
    let imgs = images();
    let st = new_store();
    let out = st.fk.run_env(
        &["-q", "pull", &imgs.source("big"), "big"],
        &[("FUKASTOR_FAILPOINT", fp)],
    );
    assert_eq!(
        out.killed_by(),
        Some(libc::SIGKILL),
        "with FUKASTOR_FAILPOINT={fp} the pull must die by SIGKILL\n{}",
        out.describe()
    );
    st.fk.assert_fsck_clean(&format!("after kill at {fp}"));
    let listed_now = st.fk.images();
    if fp == "pull:ref-written" {
        // The image may be listed; if it is, it must be whole.
        check_listed_images_complete(&st.fk, imgs, &format!("after kill at {fp}"));
    } else {
        assert_eq!(
            listed_now,
            serde_json::json!([]),
            "after a kill at {fp} no image may be listed"
        );
    }
    pull_and_check_all(&st, imgs, "big", &format!("failpoint {fp}"));
}

#[test]
fn failpoint_pull_staged() {
    failpoint_case("pull:staged");
}

#[test]
fn failpoint_pull_objects_published() {
    failpoint_case("pull:objects-published");
}

#[test]
fn failpoint_pull_image_written() {
    failpoint_case("pull:image-written");
}

#[test]
fn failpoint_pull_ref_written() {
    failpoint_case("pull:ref-written");
}

/// After a kill before any image record exists, the partial data is garbage
/// and `gc` reclaims it (the image holds 150 MiB; less than 2 MiB may stay).
#[test]
fn gc_reclaims_garbage_of_killed_pulls() {
    let _g = serial();
    let imgs = images();
    for fp in ["pull:staged", "pull:objects-published"] {
        let st = new_store();
        let out = st.fk.run_env(
            &["-q", "pull", &imgs.source("big"), "big"],
            &[("FUKASTOR_FAILPOINT", fp)],
        );
        assert_eq!(
            out.killed_by(),
            Some(libc::SIGKILL),
            "with FUKASTOR_FAILPOINT={fp} the pull must die by SIGKILL\n{}",
            out.describe()
        );
        let before = tree_bytes(&st.fk.store);
        st.fk.gc();
        st.fk
            .assert_fsck_clean(&format!("after kill at {fp} and gc"));
        let after = tree_bytes(&st.fk.store);
        assert!(
            after < 2 << 20,
            "after a kill at {fp}, gc left {after} bytes in the store (before gc: {before})"
        );
        assert_eq!(st.fk.images(), serde_json::json!([]));
    }
}

// -------------------------------------------------------- timing kills ----

#[test]
fn kills_at_random_times() {
    let _g = serial();
    let imgs = images();
    let src = imgs.source("big");

    // How long a whole pull takes here.
    let reference = new_store();
    let t0 = Instant::now();
    reference.fk.pull(&src, "big");
    let full = t0.elapsed();
    drop(reference);
    eprintln!("a full pull takes {full:?}");

    let mut rng = Rng(0x5eed_0001);
    for run in 0..10 {
        let st = new_store();
        let mut delays = Vec::new();
        for k in 0..2 {
            let delay = full.mul_f64(rng.below(1100) as f64 / 1000.0);
            delays.push(delay);
            let ctx = format!("run {run}, kill {k} after {delay:?}");
            let mut p = st.fk.spawn(&["-q", "pull", &src, "big"], &[]);
            std::thread::sleep(delay);
            p.kill();
            let out = p.wait(Duration::from_secs(600));
            match out.killed_by() {
                Some(s) if s == libc::SIGKILL => {}
                None => {
                    // It finished before the kill: it must have succeeded.
                    pull_id(&out);
                }
                other => panic!("{ctx}: unexpected end {other:?}\n{}", out.describe()),
            }
            st.fk.assert_fsck_clean(&ctx);
            check_listed_images_complete(&st.fk, imgs, &ctx);
        }
        pull_and_check_all(
            &st,
            imgs,
            "big",
            &format!("run {run} (kills at {delays:?})"),
        );
    }
}

// --------------------------------------------------------- concurrency ----

#[test]
fn concurrent_pulls_of_images_sharing_a_layer() {
    let _g = serial();
    let imgs = images();
    for round in 0..3 {
        let st = new_store();
        let a = st
            .fk
            .spawn(&["-q", "pull", &imgs.source("big"), "big"], &[]);
        let b = st
            .fk
            .spawn(&["-q", "pull", &imgs.source("other"), "other"], &[]);
        let oa = a.wait(Duration::from_secs(600));
        let ob = b.wait(Duration::from_secs(600));
        let ida = pull_id(&oa);
        let idb = pull_id(&ob);
        assert_ne!(ida, idb, "two different images got the same ID");
        let ctx = format!("round {round}");
        st.fk.assert_fsck_clean(&ctx);
        assert_eq!(listed(&st.fk, &ida), 1, "{ctx}: {}", st.fk.images());
        assert_eq!(listed(&st.fk, &idb), 1, "{ctx}: {}", st.fk.images());
        check_image(&st.fk, &ida, imgs.tree("big"), &ctx);
        check_image(&st.fk, &idb, imgs.tree("other"), &ctx);
        st.fk.gc();
        st.fk.assert_fsck_clean(&format!("{ctx}: after gc"));
        check_image(&st.fk, &ida, imgs.tree("big"), &format!("{ctx}: after gc"));
        check_image(
            &st.fk,
            &idb,
            imgs.tree("other"),
            &format!("{ctx}: after gc"),
        );
    }
}

#[test]
fn concurrent_pulls_of_the_same_image() {
    let _g = serial();
    let imgs = images();
    let st = new_store();
    let a = st
        .fk
        .spawn(&["-q", "pull", &imgs.source("big"), "big"], &[]);
    let b = st
        .fk
        .spawn(&["-q", "pull", &imgs.source("big"), "big"], &[]);
    let ida = pull_id(&a.wait(Duration::from_secs(600)));
    let idb = pull_id(&b.wait(Duration::from_secs(600)));
    assert_eq!(ida, idb, "the same image pulled twice got two IDs");
    st.fk
        .assert_fsck_clean("after two concurrent pulls of one image");
    assert_eq!(listed(&st.fk, &ida), 1, "{}", st.fk.images());
    check_image(&st.fk, &ida, imgs.tree("big"), "same image twice");
}

#[test]
fn gc_while_pulling() {
    let _g = serial();
    let imgs = images();
    for round in 0..2 {
        let ctx = format!("round {round}");
        let st = new_store();
        // An image already in the store: layer A is shared with `big`.
        let other = st.fk.pull(&imgs.source("other"), "other");
        let mut p = st
            .fk
            .spawn(&["-q", "pull", &imgs.source("big"), "big"], &[]);
        let (mut gcs, mut locked) = (0, 0);
        loop {
            let g = st.fk.run(&["gc"]);
            assert!(!g.panicked(), "{ctx}: gc panicked\n{}", g.describe());
            if g.ok() {
                gcs += 1;
            } else {
                // Waiting for the pull is fine; failing any other way is not.
                assert_eq!(
                    g.error_code().as_deref(),
                    Some("FK0102"),
                    "{ctx}: gc during a pull failed\n{}",
                    g.describe()
                );
                locked += 1;
            }
            if p.child.try_wait().unwrap().is_some() {
                break;
            }
        }
        eprintln!("{ctx}: {gcs} gc runs succeeded, {locked} found the store locked");
        let big = pull_id(&p.wait(Duration::from_secs(600)));
        st.fk
            .assert_fsck_clean(&format!("{ctx}: after pull with concurrent gc"));
        assert_eq!(listed(&st.fk, &big), 1, "{ctx}: {}", st.fk.images());
        assert_eq!(listed(&st.fk, &other), 1, "{ctx}: {}", st.fk.images());
        check_image(&st.fk, &big, imgs.tree("big"), &ctx);
        check_image(&st.fk, &other, imgs.tree("other"), &ctx);
        st.fk.gc();
        st.fk.assert_fsck_clean(&format!("{ctx}: after a last gc"));
        check_image(
            &st.fk,
            &big,
            imgs.tree("big"),
            &format!("{ctx}: after a last gc"),
        );
        check_image(
            &st.fk,
            &other,
            imgs.tree("other"),
            &format!("{ctx}: after a last gc"),
        );
    }
}

/// Kills a pull at `fp`; asserts it died by SIGKILL.
fn kill_at(st: &Store, imgs: &Images, tag: &str, fp: &str) {
    let out = st.fk.run_env(
        &["-q", "pull", &imgs.source(tag), tag],
        &[("FUKASTOR_FAILPOINT", fp)],
    );
    assert_eq!(
        out.killed_by(),
        Some(libc::SIGKILL),
        "with FUKASTOR_FAILPOINT={fp} the pull must die by SIGKILL\n{}",
        out.describe()
    );
}

/// The race between deduplication and gc: a killed pull left every object of
/// `big` in `objects/` unreferenced; a new pull finds them there ("an existing
/// object means success") while `gc` runs in a loop and wants to delete them.
/// The pull must end with an image whose objects all exist.
#[test]
fn gc_while_pulling_over_garbage() {
    let _g = serial();
    let imgs = images();
    for round in 0..3 {
        let ctx = format!("round {round}");
        let st = new_store();
        kill_at(&st, imgs, "big", "pull:objects-published");
        let mut p = st
            .fk
            .spawn(&["-q", "pull", &imgs.source("big"), "big"], &[]);
        // Start gc at a slightly different point of the pull in each round.
        std::thread::sleep(Duration::from_millis(50 * round));
        let mut gcs = 0;
        loop {
            let g = st.fk.run(&["gc"]);
            assert!(!g.panicked(), "{ctx}: gc panicked\n{}", g.describe());
            assert!(
                g.ok() || g.error_code().as_deref() == Some("FK0102"),
                "{ctx}: gc during a pull failed\n{}",
                g.describe()
            );
            gcs += 1;
            if p.child.try_wait().unwrap().is_some() {
                break;
            }
        }
        eprintln!("{ctx}: {gcs} gc runs");
        let big = pull_id(&p.wait(Duration::from_secs(600)));
        st.fk
            .assert_fsck_clean(&format!("{ctx}: after pull with concurrent gc"));
        check_image(&st.fk, &big, imgs.tree("big"), &ctx);
        st.fk.gc();
        st.fk.assert_fsck_clean(&format!("{ctx}: after a last gc"));
        check_image(
            &st.fk,
            &big,
            imgs.tree("big"),
            &format!("{ctx}: after a last gc"),
        );
    }
}

/// `gc` SIGKILLed at random times, with garbage to delete and an image to
/// keep: `fsck` stays clean and the image stays whole.
#[test]
fn gc_killed_at_random_times() {
    let _g = serial();
    let imgs = images();
    let st = new_store();
    let big = st.fk.pull(&imgs.source("big"), "big");
    // How long a gc with garbage (layer C's objects and a staging dir) takes.
    kill_at(&st, imgs, "other", "pull:objects-published");
    kill_at(&st, imgs, "other", "pull:staged");
    let t0 = Instant::now();
    st.fk.gc();
    let full = t0.elapsed();
    eprintln!("a gc with garbage takes {full:?}");
    let mut rng = Rng(0x6c_0002);
    for run in 0..10 {
        let fp = if run % 2 == 0 {
            "pull:objects-published"
        } else {
            "pull:image-written"
        };
        kill_at(&st, imgs, "other", fp);
        kill_at(&st, imgs, "other", "pull:staged");
        let delay = full.mul_f64(rng.below(1200) as f64 / 1000.0);
        let ctx = format!("gc run {run} killed after {delay:?} (garbage from {fp})");
        let mut g = st.fk.spawn(&["gc"], &[]);
        std::thread::sleep(delay);
        g.kill();
        let out = g.wait(Duration::from_secs(600));
        assert!(
            out.killed_by() == Some(libc::SIGKILL) || out.ok(),
            "{ctx}: gc failed\n{}",
            out.describe()
        );
        st.fk.assert_fsck_clean(&ctx);
        assert_eq!(listed(&st.fk, &big), 1, "{ctx}: {}", st.fk.images());
        check_image(&st.fk, &big, imgs.tree("big"), &ctx);
    }
    st.fk.gc();
    st.fk.assert_fsck_clean("after a last gc");
    check_image(&st.fk, &big, imgs.tree("big"), "after a last gc");
    // `other` can still be pulled over whatever the killed gc runs left.
    let other = st.fk.pull(&imgs.source("other"), "other");
    st.fk.assert_fsck_clean("after pulling other");
    check_image(&st.fk, &other, imgs.tree("other"), "after pulling other");
}

// ------------------------------------------------- the oracle itself ----

/// A small store with one image; returns it with the object path of a file.
fn small_store_with_object() -> (Store, String, PathBuf) {
    let st = new_store();
    let src_dir = st.fk.cwd.join("src");
    let mut t = TarW::new();
    t.dir("d");
    t.file("d/one", &Rng(1).bytes(20_000));
    t.file("d/two", &Rng(2).bytes(30_000));
    let src = write_image(&src_dir, "v1", &[Layer::new(t.finish(), Comp::Gzip)]);
    let id = st.fk.pull(&src, "small");
    st.fk.assert_fsck_clean("fresh small store");
    let d = st.fk.dump(&id);
    let payload = d
        .must("/d/one")
        .payload
        .clone()
        .expect("a 20 kB file is an external object");
    let obj = st
        .fk
        .store
        .join("objects")
        .join(String::from_utf8(payload).unwrap());
    assert!(obj.is_file(), "{} is not a file", obj.display());
    (st, id, obj)
}

fn assert_fsck_finds_damage(st: &Store, what: &str) {
    let (out, v) = st.fk.fsck_raw();
    assert_eq!(
        out.status.code(),
        Some(1),
        "fsck must fail when {what}\n{}",
        out.describe()
    );
    assert_eq!(
        out.error_code().as_deref(),
        Some("FK0500"),
        "fsck must report FK0500 when {what}\n{}",
        out.describe()
    );
    let v = v.unwrap_or_else(|| panic!("fsck printed no JSON report\n{}", out.describe()));
    assert_eq!(v["clean"], false, "{}", out.describe());
    assert!(
        v["problems"].as_array().is_some_and(|p| !p.is_empty()),
        "fsck must list the problem when {what}\n{}",
        out.describe()
    );
}

/// The crash tests trust `fsck`: it must not call a damaged store clean.
#[test]
fn fsck_finds_a_missing_object() {
    let (st, _id, obj) = small_store_with_object();
    std::fs::remove_file(&obj).unwrap();
    assert_fsck_finds_damage(&st, "an object of an image is missing");
}

#[test]
fn fsck_finds_a_corrupt_object() {
    let (st, _id, obj) = small_store_with_object();
    let mut data = std::fs::read(&obj).unwrap();
    data[100] ^= 0x01;
    // Objects may be read-only: replace the file rather than write into it.
    std::fs::remove_file(&obj).unwrap();
    std::fs::write(&obj, &data).unwrap();
    assert_fsck_finds_damage(&st, "an object's content does not match its name");
}
