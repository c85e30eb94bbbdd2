//! Hostile and broken image sources, and the tar features a pull must honour.
//!
//! Every hostile case builds an OCI layout by hand in a temporary directory,
//! pulls one good image first so the store exists, then pulls the bad one and
//! checks the error contract of `docs/errors.md`: exit status 1, the exact
//! `error[FKnnnn]` code, a `  hint:` line, no panic; and that the failed pull
//! left everything as it was: the whole temporary directory (store, sources,
//! working directory, `TMPDIR`) is byte-for-byte unchanged, `images` is
//! unchanged, `fsck` is clean, and no file appeared outside it where a `../`,
//! absolute or symlinked path would have put it.
//!
//! The positive cases pull one image per feature (whiteouts, opaque
//! directories, hardlinks across layers, PAX and GNU long names, non-UTF-8
//! names, PAX xattrs, zstd and uncompressed layers) and check the result with
//! `fukastor dump` (composefs dumpfile) and the objects it points to.

#[path = "support/oci.rs"]
mod support;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use support::*;

// ---------------------------------------------------------------- setup ----

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    fk: Fk,
    good_id: String,
}

fn good_layer() -> Layer {
    let mut t = TarW::new();
    t.dir("etc");
    t.file("etc/hostname", b"good\n");
    t.file("etc/os-release", b"NAME=good\nID=good\n");
    t.dir("usr");
    t.dir("usr/bin");
    t.file_mode("usr/bin/tool", &Rng(7).bytes(6000), 0o755);
    t.symlink("bin", "usr/bin");
    Layer::new(t.finish(), Comp::Gzip)
}

/// A temporary directory with `store/` (holding one good image), `cwd/`
/// (working directory of every command) and `tmpdir/` (their `TMPDIR`).
fn setup() -> Env {
    let tmp = tempfile::Builder::new()
        .prefix("fk-hostile-")
        .tempdir()
        .unwrap();
    let root = tmp.path().to_path_buf();
    std::fs::create_dir(root.join("cwd")).unwrap();
    std::fs::create_dir(root.join("tmpdir")).unwrap();
    let mut fk = Fk::new(root.join("store"), root.join("cwd"));
    fk.tmpdir = Some(root.join("tmpdir"));
    fk.timeout = Duration::from_secs(120);
    let src = write_image(&root.join("good"), "latest", &[good_layer()]);
    let good_id = fk.pull(&src, "good");
    fk.assert_fsck_clean("after pulling the good image");
    Env {
        _tmp: tmp,
        root,
        fk,
        good_id,
    }
}

/// A name unique to this process and case, for files that must not appear.
fn token(case: &str) -> String {
    format!("{}-{case}", std::process::id())
}

/// Writes a layout at `ROOT/DIR` with the given layers; returns its source.
fn bad_image(env: &Env, dir: &str, layers: &[Layer]) -> String {
    write_image(&env.root.join(dir), "latest", layers)
}

/// A layout whose layer blobs are given as stored bytes, with explicit
/// diff_ids (so either can be made to lie).
fn bad_image_blobs(env: &Env, dir: &str, blobs: &[(Comp, Vec<u8>, String)]) -> String {
    let l = Layout::create(env.root.join(dir));
    let descs: Vec<Desc> = blobs
        .iter()
        .map(|(c, b, _)| l.put_blob(c.media_type(), b))
        .collect();
    let diff_ids: Vec<String> = blobs.iter().map(|(_, _, d)| d.clone()).collect();
    let config = l.put_config(&diff_ids);
    let m = l.put_manifest(&config, &descs);
    l.write_index(&[("latest", &m)]);
    oci_source(&l.dir, "latest")
}

fn diff_id_of(tar: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(tar))
}

/// Pulls `source` and checks that it is refused with one of `codes` and
/// that nothing changed anywhere, in the store or outside it.
fn expect_rejected(env: &Env, source: &str, codes: &[&str], sentinels: &[PathBuf]) {
    for s in sentinels {
        assert!(
            std::fs::symlink_metadata(s).is_err(),
            "test precondition: {} exists before the pull",
            s.display()
        );
    }
    let images_before = env.fk.images();
    let before = snapshot(&env.root);

    let out = env.fk.run(&["pull", source, "hostile"]);

    assert!(!out.panicked(), "pull panicked\n{}", out.describe());
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused pull must exit with status 1 (expected {codes:?})\n{}",
        out.describe()
    );
    let code = out.error_code();
    assert!(
        code.as_deref().is_some_and(|c| codes.contains(&c)),
        "expected error code {codes:?}, got {code:?}\n{}",
        out.describe()
    );
    assert!(
        out.has_hint(),
        "the error has no `  hint: ` line\n{}",
        out.describe()
    );

    let after = snapshot(&env.root);
    let diff = snapshot_diff(&before, &after);
    assert!(
        diff.is_empty(),
        "the refused pull changed files under {} (store, sources, cwd or TMPDIR):\n{diff}{}",
        env.root.display(),
        out.describe()
    );
    for s in sentinels {
        assert!(
            std::fs::symlink_metadata(s).is_err(),
            "the refused pull wrote outside the store: {}\n{}",
            s.display(),
            out.describe()
        );
    }
    assert_eq!(
        env.fk.images(),
        images_before,
        "`images` changed after a refused pull"
    );
    env.fk
        .assert_fsck_clean(&format!("after refused pull of {source}"));
    // The good image is still whole.
    let d = env.fk.dump(&env.good_id);
    d.assert_file(&env.fk.store, "/etc/hostname", b"good\n");
    d.assert_file(&env.fk.store, "/usr/bin/tool", &Rng(7).bytes(6000));
}

// ------------------------------------------------------- paths: FK0210 ----

#[test]
fn dotdot_entry_is_refused() {
    let env = setup();
    let tok = token("dotdot");
    let name = format!("fk-escape-{tok}");
    let mut t = TarW::new();
    t.file("ok", b"fine");
    t.file(format!("../{name}"), b"pwned");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    let sentinels = vec![
        env.root.join(&name),
        env.root.parent().unwrap().join(&name),
        env.fk.store.join(&name),
    ];
    expect_rejected(&env, &src, &["FK0210"], &sentinels);
}

#[test]
fn deep_dotdot_entry_is_refused() {
    let env = setup();
    let tok = token("deepdotdot");
    let name = format!("fk-escape-{tok}");
    let mut t = TarW::new();
    t.file(format!("{}tmp/{name}", "../".repeat(20)), b"pwned");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::None)]);
    expect_rejected(
        &env,
        &src,
        &["FK0210"],
        &[PathBuf::from("/tmp").join(&name)],
    );
}

#[test]
fn dotdot_inside_entry_path_is_refused() {
    let env = setup();
    let tok = token("innerdotdot");
    let name = format!("fk-escape-{tok}");
    let mut t = TarW::new();
    t.dir("usr");
    t.file(format!("usr/../../{name}"), b"pwned");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    let sentinels = vec![env.root.join(&name), env.root.parent().unwrap().join(&name)];
    expect_rejected(&env, &src, &["FK0210"], &sentinels);
}

#[test]
fn dotdot_directory_entry_is_refused() {
    let env = setup();
    let tok = token("dotdotdir");
    let name = format!("fk-escape-{tok}");
    let mut t = TarW::new();
    t.dir(format!("../{name}"));
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    let sentinels = vec![env.root.join(&name), env.root.parent().unwrap().join(&name)];
    expect_rejected(&env, &src, &["FK0210"], &sentinels);
}

#[test]
fn absolute_entry_is_refused() {
    let env = setup();
    let tok = token("absolute");
    let abs = PathBuf::from(format!("/tmp/fk-abs-{tok}"));
    let mut t = TarW::new();
    t.file("ok", b"fine");
    t.file(abs.to_str().unwrap(), b"pwned");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0210"], &[abs]);
}

// ---------------------------------------------------- links: FK0211/14 ----

#[test]
fn hardlink_with_dotdot_target_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("ok", b"fine");
    t.hardlink("hl", "../../../../../../../../etc/passwd");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0211"], &[]);
}

#[test]
fn hardlink_with_inner_dotdot_target_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.dir("usr");
    t.file("usr/ok", b"fine");
    t.hardlink("hl", "usr/../../good/oci-layout");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::None)]);
    expect_rejected(&env, &src, &["FK0211"], &[]);
}

#[test]
fn hardlink_to_missing_target_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("ok", b"fine");
    t.hardlink("hl", "not-there");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0214"], &[]);
}

// --------------------------------------------- through symlink: FK0212 ----

#[test]
fn entry_through_symlink_from_earlier_layer_is_refused() {
    let env = setup();
    let tok = token("symlayer");
    let mut l1 = TarW::new();
    l1.symlink("link", "/etc");
    let mut l2 = TarW::new();
    l2.file(format!("link/fk-pwned-{tok}"), b"pwned");
    let src = bad_image(
        &env,
        "bad",
        &[
            Layer::new(l1.finish(), Comp::Gzip),
            Layer::new(l2.finish(), Comp::Gzip),
        ],
    );
    expect_rejected(
        &env,
        &src,
        &["FK0212"],
        &[PathBuf::from(format!("/etc/fk-pwned-{tok}"))],
    );
}

#[test]
fn entry_through_symlink_in_same_layer_is_refused() {
    let env = setup();
    let outside = env.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut t = TarW::new();
    t.symlink("link", outside.to_str().unwrap());
    t.file("link/pwned", b"pwned");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0212"], &[outside.join("pwned")]);
}

#[test]
fn entry_through_relative_symlink_is_refused() {
    // `a/up -> ..` stays inside the tree; only the path through it is wrong.
    let env = setup();
    let mut t = TarW::new();
    t.dir("a");
    t.symlink("a/up", "..");
    t.file("a/up/x", b"through a symlink");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::None)]);
    expect_rejected(&env, &src, &["FK0212"], &[]);
}

#[test]
fn entry_through_climbing_symlink_is_refused() {
    // The symlink climbs above the root: refusing the symlink itself (FK0211)
    // or the path through it (FK0212) are both within the contract.
    let env = setup();
    let tok = token("symclimb");
    let mut t = TarW::new();
    t.dir("a");
    t.symlink("a/up", "../../../../../../../../../..");
    t.file(format!("a/up/tmp/fk-rel-{tok}"), b"pwned");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::None)]);
    expect_rejected(
        &env,
        &src,
        &["FK0211", "FK0212"],
        &[PathBuf::from(format!("/tmp/fk-rel-{tok}"))],
    );
}

#[test]
fn entry_through_regular_file_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("f", b"a file");
    t.file("f/x", b"under a file");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0212"], &[]);
}

// ------------------------------------------------------ duplicates: FK0213 ----

#[test]
fn duplicate_entry_in_one_layer_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("dup", b"first");
    t.file("other", b"x");
    t.file("dup", b"second");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0213"], &[]);
}

// ------------------------------------------------ malformed tar: FK0215 ----

fn tar_with_big_file() -> (Vec<u8>, Vec<u8>) {
    let data = Rng(11).bytes(20_000);
    let mut t = TarW::new();
    t.file("small", b"small");
    t.file("big", &data);
    (t.finish(), data)
}

#[test]
fn truncated_tar_is_refused() {
    let env = setup();
    let (tar, _) = tar_with_big_file();
    // Cut inside the data of "big": header of "small" + its block + header of "big" + 7000.
    let cut = tar[..512 * 3 + 7000].to_vec();
    let src = bad_image(&env, "bad", &[Layer::new(cut, Comp::None)]);
    expect_rejected(&env, &src, &["FK0215"], &[]);
}

#[test]
fn truncated_tar_in_complete_gzip_is_refused() {
    let env = setup();
    let (tar, _) = tar_with_big_file();
    let cut = tar[..512 * 3 + 7000].to_vec();
    let src = bad_image(&env, "bad", &[Layer::new(cut, Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0215"], &[]);
}

#[test]
fn absurd_size_in_gnu_header_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("ok", b"fine");
    // 1 TiB declared in base-256, no data after it.
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..4].copy_from_slice(b"huge");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(1 << 40);
    h.set_cksum();
    assert_eq!(h.size().unwrap(), 1 << 40);
    t.raw_header(&h);
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0215"], &[]);
}

#[test]
fn absurd_size_in_pax_header_is_refused() {
    // PAX and header agree on 1 TiB (base-256 in the header); no data follows.
    let env = setup();
    let mut t = TarW::new();
    t.file("ok", b"fine");
    t.pax(&[("size", b"1099511627776")]);
    let h = TarW::header(b"huge", tar::EntryType::Regular, 0o644, 1 << 40, b"");
    assert_eq!(h.size().unwrap(), 1 << 40);
    t.raw_header(&h);
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0215"], &[]);
}

#[test]
fn absurd_pax_size_over_small_header_is_refused() {
    // Only the PAX record declares 1 TiB; the header says 0. Reading it as
    // 1 TiB (truncated: FK0215) or refusing the disagreement (FK0208) are
    // both refusals.
    let env = setup();
    let mut t = TarW::new();
    t.file("ok", b"fine");
    t.pax(&[("size", b"1099511627776")]);
    let h = TarW::header(b"huge", tar::EntryType::Regular, 0o644, 0, b"");
    t.raw_header(&h);
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0215", "FK0208"], &[]);
}

#[test]
fn entry_size_beyond_the_blob_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("ok", b"fine");
    // Declares 4096 bytes, holds 100, then the end-of-archive blocks: the
    // entry swallows them and the stream ends early.
    let h = TarW::header(b"liar", tar::EntryType::Regular, 0o644, 4096, b"");
    t.entry(&h, &[b'x'; 100]);
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    expect_rejected(&env, &src, &["FK0215"], &[]);
}

#[test]
fn entry_size_short_of_its_data_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("ok", b"fine");
    // Declares 100 bytes, holds 3000: the rest is read as a header (garbage).
    let h = TarW::header(b"liar", tar::EntryType::Regular, 0o644, 100, b"");
    t.entry(&h, &[b'A'; 3000]);
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::None)]);
    expect_rejected(&env, &src, &["FK0215"], &[]);
}

// ------------------------------------------------ compression: FK0207 ----

/// Compressible, text-like data (so deflate uses Huffman blocks).
fn texty(seed: u64, n: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "store", "object", "layer", "image", "digest", "tar", "mount", "erofs", "fuse", "volume",
        "snapshot", "the", "a", "of", "and", "kernel",
    ];
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        v.extend_from_slice(WORDS[r.below(WORDS.len() as u64) as usize].as_bytes());
        v.push(if r.below(9) == 0 { b'\n' } else { b' ' });
    }
    v.truncate(n);
    v
}

fn texty_tar() -> Vec<u8> {
    let mut t = TarW::new();
    t.dir("doc");
    for i in 0..4 {
        t.file(format!("doc/file{i}.txt"), &texty(100 + i, 60_000));
    }
    t.finish()
}

#[test]
fn truncated_gzip_is_refused() {
    let env = setup();
    let tar = texty_tar();
    let gz = compress(&tar, Comp::Gzip);
    let cut = gz[..gz.len() / 2].to_vec();
    assert!(
        gunzip(&cut).is_err(),
        "precondition: truncated gzip must not decode"
    );
    let src = bad_image_blobs(&env, "bad", &[(Comp::Gzip, cut, diff_id_of(&tar))]);
    expect_rejected(&env, &src, &["FK0207"], &[]);
}

#[test]
fn corrupt_gzip_is_refused() {
    let env = setup();
    let tar = texty_tar();
    let gz = compress(&tar, Comp::Gzip);
    // Find a corruption that makes inflate fail well before the end of the
    // stream (not only at the CRC), so the error cannot be anything else.
    let mut chosen = None;
    for off in (gz.len() / 3..gz.len() / 2).step_by(97) {
        let mut bad = gz.clone();
        for b in &mut bad[off..off + 16] {
            *b ^= 0xff;
        }
        let mut dec = flate2::read::GzDecoder::new(&bad[..]);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let failed = loop {
            match dec.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break true,
            }
        };
        if failed && out.len() < tar.len() * 3 / 4 {
            chosen = Some(bad);
            break;
        }
    }
    let bad = chosen.expect("precondition: found no corruption that breaks inflate");
    // The manifest digest matches the corrupt bytes: only the stream is bad.
    let src = bad_image_blobs(&env, "bad", &[(Comp::Gzip, bad, diff_id_of(&tar))]);
    expect_rejected(&env, &src, &["FK0207"], &[]);
}

#[test]
fn truncated_zstd_is_refused() {
    let env = setup();
    let tar = texty_tar();
    let z = compress(&tar, Comp::Zstd);
    let cut = z[..z.len() / 2].to_vec();
    assert!(
        zstd::decode_all(&cut[..]).is_err(),
        "precondition: truncated zstd must not decode"
    );
    let src = bad_image_blobs(&env, "bad", &[(Comp::Zstd, cut, diff_id_of(&tar))]);
    expect_rejected(&env, &src, &["FK0207"], &[]);
}

// ---------------------------------------------------- digests: FK0205/6 ----

#[test]
fn layer_blob_digest_mismatch_is_refused() {
    let env = setup();
    let tar = texty_tar();
    let gz = compress(&tar, Comp::Gzip);
    // Change the gzip header's MTIME: still a valid gzip of the same tar, but
    // the bytes no longer match the digest they are stored under.
    let mut other = gz.clone();
    other[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    assert_ne!(other, gz);
    assert_eq!(gunzip(&other).unwrap(), tar, "precondition: still decodes");
    let l = Layout::create(env.root.join("bad"));
    let layer = l.put_blob_named(Comp::Gzip.media_type(), &sha256_hex(&gz), &other);
    let config = l.put_config(&[diff_id_of(&tar)]);
    let m = l.put_manifest(&config, &[layer]);
    l.write_index(&[("latest", &m)]);
    expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0205"], &[]);
}

#[test]
fn uncompressed_layer_digest_mismatch_is_refused() {
    let env = setup();
    let (tar, _) = tar_with_big_file();
    let mut other = tar.clone();
    // Flip a byte inside the data of "big": still a well-formed tar.
    other[512 * 3 + 100] ^= 0x55;
    let l = Layout::create(env.root.join("bad"));
    let layer = l.put_blob_named(Comp::None.media_type(), &sha256_hex(&tar), &other);
    let config = l.put_config(&[diff_id_of(&tar)]);
    let m = l.put_manifest(&config, &[layer]);
    l.write_index(&[("latest", &m)]);
    expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0205"], &[]);
}

#[test]
fn layer_declared_size_mismatch_is_refused() {
    let env = setup();
    for (i, delta) in [1i64, -1].into_iter().enumerate() {
        let tar = texty_tar();
        let gz = compress(&tar, Comp::Gzip);
        let l = Layout::create(env.root.join(format!("bad{i}")));
        let mut layer = l.put_blob(Comp::Gzip.media_type(), &gz);
        layer.size = (layer.size as i64 + delta) as u64;
        let config = l.put_config(&[diff_id_of(&tar)]);
        let m = l.put_manifest(&config, &[layer]);
        l.write_index(&[("latest", &m)]);
        expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0205"], &[]);
    }
}

#[test]
fn diff_id_mismatch_is_refused() {
    let env = setup();
    for (i, comp) in [Comp::Gzip, Comp::Zstd, Comp::None].into_iter().enumerate() {
        let tar = texty_tar();
        let wrong = diff_id_of(b"not the layer");
        let src = bad_image_blobs(
            &env,
            &format!("bad{i}"),
            &[(comp, compress(&tar, comp), wrong)],
        );
        expect_rejected(&env, &src, &["FK0206"], &[]);
    }
}

#[test]
fn diff_id_mismatch_on_second_layer_is_refused() {
    let env = setup();
    let mut t1 = TarW::new();
    t1.file("one", b"1");
    let t1 = t1.finish();
    let tar = texty_tar();
    let src = bad_image_blobs(
        &env,
        "bad",
        &[
            (Comp::Gzip, compress(&t1, Comp::Gzip), diff_id_of(&t1)),
            (Comp::Gzip, compress(&tar, Comp::Gzip), diff_id_of(&t1)),
        ],
    );
    expect_rejected(&env, &src, &["FK0206"], &[]);
}

// ------------------------------------------------------- JSON: FK0202 ----

fn one_layer_blob(l: &Layout) -> (Desc, String) {
    let mut t = TarW::new();
    t.file("f", b"content");
    let tar = t.finish();
    let gz = compress(&tar, Comp::Gzip);
    (l.put_blob(Comp::Gzip.media_type(), &gz), diff_id_of(&tar))
}

#[test]
fn manifest_not_json_is_refused() {
    let env = setup();
    let l = Layout::create(env.root.join("bad"));
    one_layer_blob(&l);
    let m = l.put_blob(
        "application/vnd.oci.image.manifest.v1+json",
        b"this is { not json at all",
    );
    l.write_index(&[("latest", &m)]);
    expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0202"], &[]);
}

#[test]
fn manifest_of_wrong_shape_is_refused() {
    let env = setup();
    let l = Layout::create(env.root.join("bad"));
    let (layer, _) = one_layer_blob(&l);
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "layers": "not a list",
        "config": layer.json(),
    }))
    .unwrap();
    let m = l.put_blob("application/vnd.oci.image.manifest.v1+json", &body);
    l.write_index(&[("latest", &m)]);
    expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0202"], &[]);
}

#[test]
fn config_not_json_is_refused() {
    let env = setup();
    let l = Layout::create(env.root.join("bad"));
    let (layer, _) = one_layer_blob(&l);
    let config = l.put_blob("application/vnd.oci.image.config.v1+json", b"\x00\x01 nope");
    let m = l.put_manifest(&config, &[layer]);
    l.write_index(&[("latest", &m)]);
    expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0202"], &[]);
}

#[test]
fn index_not_json_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("f", b"content");
    let src = bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    std::fs::write(env.root.join("bad/index.json"), b"{{{ garbage").unwrap();
    expect_rejected(&env, &src, &["FK0202"], &[]);
}

// ---------------------------------------------- missing things: FK0203/4 ----

#[test]
fn missing_layer_blob_is_refused() {
    let env = setup();
    let l = Layout::create(env.root.join("bad"));
    let mut t = TarW::new();
    t.file("f", b"content");
    let layers = [Layer::new(t.finish(), Comp::Gzip)];
    let m = l.put_image(&layers);
    l.write_index(&[("latest", &m)]);
    let blob = sha256_hex(&compress(&layers[0].tar, Comp::Gzip));
    std::fs::remove_file(l.blob_path(&blob)).unwrap();
    expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0204"], &[]);
}

#[test]
fn missing_config_blob_is_refused() {
    let env = setup();
    let l = Layout::create(env.root.join("bad"));
    let (layer, diff_id) = one_layer_blob(&l);
    let config = l.put_config(&[diff_id]);
    let m = l.put_manifest(&config, &[layer]);
    l.write_index(&[("latest", &m)]);
    std::fs::remove_file(l.blob_path(config.hex())).unwrap();
    expect_rejected(&env, &oci_source(&l.dir, "latest"), &["FK0204"], &[]);
}

#[test]
fn missing_tag_is_refused() {
    let env = setup();
    let mut t = TarW::new();
    t.file("f", b"content");
    bad_image(&env, "bad", &[Layer::new(t.finish(), Comp::Gzip)]);
    let src = oci_source(&env.root.join("bad"), "no-such-tag");
    expect_rejected(&env, &src, &["FK0203"], &[]);
}

// --------------------------------------------- source spelling: FK0200/1 ----

#[test]
fn unknown_transport_is_refused() {
    let env = setup();
    expect_rejected(&env, "foo:bar", &["FK0200"], &[]);
    expect_rejected(&env, "no-transport-at-all", &["FK0200"], &[]);
}

#[test]
fn nonexistent_source_path_is_refused() {
    let env = setup();
    let tok = token("nonexistent");
    for src in [
        format!("oci:/nonexistent-{tok}/layout:latest"),
        format!("oci:/nonexistent-{tok}/layout"),
        format!("oci-archive:/nonexistent-{tok}/image.tar"),
        format!("docker-archive:/nonexistent-{tok}/image.tar"),
    ] {
        expect_rejected(&env, &src, &["FK0201"], &[]);
    }
}

#[test]
fn json_error_object_on_stderr() {
    let env = setup();
    let out = env.fk.run(&["--json", "pull", "foo:bar", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    let obj = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v.get("error").is_some())
        .unwrap_or_else(|| {
            panic!(
                "no {{\"error\":…}} JSON object on stderr\n{}",
                out.describe()
            )
        });
    assert_eq!(obj["error"]["code"], "FK0200", "{}", out.describe());
    assert!(
        obj["error"]["message"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
            && obj["error"]["hint"].as_str().is_some_and(|s| !s.is_empty()),
        "JSON error needs a message and a hint\n{}",
        out.describe()
    );
}

// ------------------------------------------------------ positive cases ----

struct Pulled {
    _tmp: tempfile::TempDir,
    fk: Fk,
    dump: Dump,
}

impl Pulled {
    fn file(&self, path: impl AsRef<[u8]>, data: &[u8]) {
        self.dump.assert_file(&self.fk.store, path, data);
    }
    fn absent(&self, path: impl AsRef<[u8]>) {
        self.dump.assert_absent(path);
    }
    fn no_whiteouts(&self) {
        for p in self.dump.entries.keys() {
            let s = String::from_utf8_lossy(p);
            assert!(
                !s.contains(".wh."),
                "whiteout file {s:?} left in the image\n{}",
                self.dump.text
            );
        }
    }
}

/// Pulls an image made of `layers` into a fresh store; checks fsck and images.
fn pull_layers(layers: &[Layer]) -> Pulled {
    let tmp = tempfile::Builder::new()
        .prefix("fk-feature-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    std::fs::create_dir(root.join("cwd")).unwrap();
    let mut fk = Fk::new(root.join("store"), root.join("cwd"));
    fk.timeout = Duration::from_secs(120);
    let src = write_image(&root.join("src"), "v1", layers);
    let id = fk.pull(&src, "feature");
    fk.assert_fsck_clean("after pull");
    assert!(
        fk.image_ids().contains(&id),
        "images does not list {id}: {}",
        fk.images()
    );
    let dump = fk.dump(&id);
    assert!(dump.has("/"), "dump has no root\n{}", dump.text);
    Pulled {
        _tmp: tmp,
        fk,
        dump,
    }
}

#[test]
fn whiteout_removes_lower_entries() {
    let mut l1 = TarW::new();
    l1.dir("d");
    l1.file("d/a", b"a");
    l1.file("d/b", b"b");
    l1.file("top", b"top");
    l1.dir("gone");
    l1.file("gone/x", b"x");
    let mut l2 = TarW::new();
    l2.dir("d");
    l2.file("d/.wh.a", b"");
    l2.file(".wh.top", b"");
    l2.file(".wh.gone", b"");
    l2.file("added", b"added");
    let p = pull_layers(&[
        Layer::new(l1.finish(), Comp::Gzip),
        Layer::new(l2.finish(), Comp::Gzip),
    ]);
    p.file("/d/b", b"b");
    p.file("/added", b"added");
    p.absent("/d/a");
    p.absent("/top");
    p.absent("/gone");
    p.absent("/gone/x");
    p.no_whiteouts();
}

#[test]
fn opaque_whiteout_hides_lower_directory() {
    let mut l1 = TarW::new();
    l1.dir("o");
    l1.file("o/x", b"x");
    l1.file("o/y", b"y");
    l1.dir("o/sub");
    l1.file("o/sub/z", b"z");
    l1.file("keep", b"keep");
    let mut l2 = TarW::new();
    l2.dir("o");
    l2.file("o/.wh..wh..opq", b"");
    l2.file("o/new", b"new");
    let p = pull_layers(&[
        Layer::new(l1.finish(), Comp::Gzip),
        Layer::new(l2.finish(), Comp::Gzip),
    ]);
    assert!(p.dump.must("/o").is_dir());
    p.file("/o/new", b"new");
    p.file("/keep", b"keep");
    p.absent("/o/x");
    p.absent("/o/y");
    p.absent("/o/sub");
    p.absent("/o/sub/z");
    p.no_whiteouts();
}

/// Asserts that `a` and `b` are one inode: one line is a `@` hardlink to the
/// other, which is a regular file with `nlink` links and content `data`.
fn assert_hardlinked(p: &Pulled, a: &str, b: &str, nlink: u32, data: &[u8]) {
    let ea = p.dump.must(a);
    let eb = p.dump.must(b);
    let (primary, link) = match (ea.is_hardlink(), eb.is_hardlink()) {
        (false, true) => (ea, eb),
        (true, false) => (eb, ea),
        _ => panic!(
            "{a} and {b} are not hardlinked in the dump\n{}",
            p.dump.text
        ),
    };
    assert_eq!(
        link.payload.as_deref(),
        Some(&primary.path[..]),
        "hardlink line must name the other path\n{}",
        p.dump.text
    );
    assert!(primary.is_reg(), "{primary:?}");
    assert_eq!(primary.nlink, nlink.to_string(), "nlink of {primary:?}");
    assert_eq!(primary.size, data.len() as u64);
    check_content(&p.fk.store, primary, data);
}

#[test]
fn hardlink_across_layers() {
    let data = Rng(3).bytes(5000);
    let mut l1 = TarW::new();
    l1.dir("h");
    l1.file("h/orig", &data);
    l1.file("h/one", b"in-layer link source");
    l1.hardlink("h/two", "h/one");
    let mut l2 = TarW::new();
    l2.dir("h");
    l2.hardlink("h/link", "h/orig");
    let p = pull_layers(&[
        Layer::new(l1.finish(), Comp::Gzip),
        Layer::new(l2.finish(), Comp::Zstd),
    ]);
    assert_hardlinked(&p, "/h/orig", "/h/link", 2, &data);
    assert_hardlinked(&p, "/h/one", "/h/two", 2, b"in-layer link source");
}

#[test]
fn pax_long_names() {
    let dir = format!("pax/{}", "d".repeat(120));
    let file = format!("{dir}/{}", "f".repeat(140));
    let target = format!("/{}", "t".repeat(150));
    let data = Rng(5).bytes(3000);
    let mut t = TarW::new();
    t.dir("pax");
    t.pax(&[("path", format!("{dir}/").as_bytes())]);
    t.dir(&dir[..99]);
    t.pax(&[("path", file.as_bytes())]);
    t.file(&file.as_bytes()[..100], &data);
    t.pax(&[("linkpath", target.as_bytes())]);
    t.symlink("pax/ln", &target.as_bytes()[..100]);
    let p = pull_layers(&[Layer::new(t.finish(), Comp::Gzip)]);
    assert!(p.dump.must(format!("/{dir}")).is_dir());
    p.file(format!("/{file}"), &data);
    let ln = p.dump.must("/pax/ln");
    assert!(ln.is_symlink(), "{ln:?}");
    assert_eq!(
        ln.payload.as_deref(),
        Some(target.as_bytes()),
        "symlink target"
    );
    // The truncated ustar names must not show up.
    p.absent(format!("/{}", &file[..100]));
}

#[test]
fn gnu_long_names() {
    let dir = format!("gnu/{}", "e".repeat(150));
    let file = format!("{dir}/{}", "g".repeat(200));
    let target = format!("/{}", "k".repeat(180));
    let data = Rng(6).bytes(2500);
    let mut t = TarW::new();
    t.dir("gnu");
    t.gnu_long_name(format!("{dir}/").as_bytes());
    t.dir(&dir[..99]);
    t.gnu_long_name(file.as_bytes());
    t.file(&file.as_bytes()[..100], &data);
    t.gnu_long_link(target.as_bytes());
    t.symlink("gnu/ln", &target.as_bytes()[..100]);
    let p = pull_layers(&[Layer::new(t.finish(), Comp::Gzip)]);
    assert!(p.dump.must(format!("/{dir}")).is_dir());
    p.file(format!("/{file}"), &data);
    let ln = p.dump.must("/gnu/ln");
    assert!(ln.is_symlink(), "{ln:?}");
    assert_eq!(
        ln.payload.as_deref(),
        Some(target.as_bytes()),
        "symlink target"
    );
    p.absent(format!("/{}", &file[..100]));
}

#[test]
fn non_utf8_and_odd_file_names() {
    let names: [&[u8]; 5] = [
        b"n/caf\xe9",
        b"n/\xff\xfe\x80",
        b"n/with space",
        b"n/new\nline",
        b"n/back\\slash=eq",
    ];
    let mut t = TarW::new();
    t.dir("n");
    for (i, n) in names.iter().enumerate() {
        t.file(n, format!("content {i}").as_bytes());
    }
    let p = pull_layers(&[Layer::new(t.finish(), Comp::Gzip)]);
    for (i, n) in names.iter().enumerate() {
        let mut path = b"/".to_vec();
        path.extend_from_slice(n);
        p.file(&path, format!("content {i}").as_bytes());
    }
}

#[test]
fn pax_xattrs() {
    let bin_value: &[u8] = b"\x00\x01\xff=x y";
    let mut t = TarW::new();
    t.dir("x");
    t.pax(&[
        ("SCHILY.xattr.user.foo", b"bar"),
        ("SCHILY.xattr.user.bin", bin_value),
    ]);
    t.file("x/attr", b"has xattrs");
    t.file("x/plain", b"no xattrs");
    let p = pull_layers(&[Layer::new(t.finish(), Comp::Gzip)]);
    p.file("/x/attr", b"has xattrs");
    let e = p.dump.must("/x/attr");
    let find = |k: &[u8]| {
        e.xattrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        find(b"user.foo").as_deref(),
        Some(&b"bar"[..]),
        "xattr user.foo\n{}",
        p.dump.text
    );
    assert_eq!(
        find(b"user.bin").as_deref(),
        Some(bin_value),
        "xattr user.bin\n{}",
        p.dump.text
    );
    let plain = p.dump.must("/x/plain");
    assert!(
        !plain.xattrs.iter().any(|(n, _)| n.starts_with(b"user.")),
        "a PAX header must apply to the next entry only: {plain:?}"
    );
}

fn simple_layer_files(seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut r = Rng(seed);
    vec![
        ("f/empty".into(), Vec::new()),
        ("f/tiny".into(), b"tiny".to_vec()),
        ("f/medium".into(), r.bytes(10_000)),
        ("f/large".into(), r.bytes(3 << 20)),
    ]
}

fn check_simple_layer(comp: Comp) {
    let files = simple_layer_files(comp as u64 + 40);
    let mut t = TarW::new();
    t.dir("f");
    for (n, d) in &files {
        t.file(n, d);
    }
    t.symlink("f/ln", "large");
    let p = pull_layers(&[Layer::new(t.finish(), comp)]);
    for (n, d) in &files {
        p.file(format!("/{n}"), d);
    }
    let ln = p.dump.must("/f/ln");
    assert!(
        ln.is_symlink() && ln.payload.as_deref() == Some(&b"large"[..]),
        "{ln:?}"
    );
}

#[test]
fn zstd_layer() {
    check_simple_layer(Comp::Zstd);
}

#[test]
fn uncompressed_layer() {
    check_simple_layer(Comp::None);
}

#[test]
fn mixed_compression_layers_override() {
    let mut l1 = TarW::new();
    l1.file("a", b"from gzip");
    l1.file("b", b"from gzip");
    l1.file("c", b"from gzip");
    let mut l2 = TarW::new();
    l2.file("b", b"from zstd");
    l2.file("c", b"from zstd");
    let mut l3 = TarW::new();
    l3.file("c", b"from plain tar");
    let p = pull_layers(&[
        Layer::new(l1.finish(), Comp::Gzip),
        Layer::new(l2.finish(), Comp::Zstd),
        Layer::new(l3.finish(), Comp::None),
    ]);
    p.file("/a", b"from gzip");
    p.file("/b", b"from zstd");
    p.file("/c", b"from plain tar");
}

#[test]
fn directory_replaces_symlink_from_lower_layer() {
    // The legitimate counterpart of the FK0212 case: an upper layer that
    // first replaces the symlink with a directory may put files in it.
    let mut l1 = TarW::new();
    l1.symlink("link", "/etc");
    let mut l2 = TarW::new();
    l2.dir("link");
    l2.file("link/x", b"inside");
    let p = pull_layers(&[
        Layer::new(l1.finish(), Comp::Gzip),
        Layer::new(l2.finish(), Comp::Gzip),
    ]);
    assert!(p.dump.must("/link").is_dir(), "{:?}", p.dump.must("/link"));
    p.file("/link/x", b"inside");
}
