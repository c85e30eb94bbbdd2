//! Lua filters on store objects, end to end (issue 6): `pull --filter`
//! stores objects encoded; FUSE mounts, `restore`, `export`, `fsck` and
//! `gc` decode or account for them; the kernel mount refuses them.
//!
//! What is compared: the FUSE mount of a filtered image with the kernel
//! mount of the same image pulled without a filter (every path, type, mode,
//! owner, size, content digest, link target, xattr), and their dumpfiles,
//! byte for byte. Encryption: no plaintext of a known file anywhere in the
//! store; a wrong key is FK0906. Corruption: a flipped byte is FK0905 /
//! EIO with checksum, and the replica serves good data with replicate.
//!
//! Needs root (kernel mounts), /dev/fuse and the fixtures; run as root:
//! `cargo test --release --test filters`.

mod common;
#[path = "support/oci.rs"]
mod support;

use std::path::{Path, PathBuf};

use common::{Store, fixtures, require_root, scratch_dir, walk};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/filters")
        .join(format!("{name}.lua"))
        .display()
        .to_string()
}

/// A key file with 64 hex digits.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, hex::encode([byte; 32])).unwrap();
    p
}

/// `pull SOURCE NAME --filter …` (each filter spec as typed).
fn pull_filtered(store: &Store, source: &str, name: &str, filters: &[String]) -> String {
    let mut args = vec!["-q".to_string(), "pull".into(), source.into(), name.into()];
    for f in filters {
        args.push("--filter".into());
        args.push(f.clone());
    }
    let run = store.ok(&args);
    run.stdout_str().trim().to_owned()
}

/// `restore IMAGE PATH DEST`.
fn restore(store: &Store, image: &str, path: &str, dest: &Path) -> common::Run {
    use std::ffi::OsStr;
    store.run([
        OsStr::new("restore"),
        OsStr::new(image),
        OsStr::new(path),
        dest.as_os_str(),
    ])
}

/// `restore IMAGE PATH DEST`, which must succeed.
fn restore_ok(store: &Store, image: &str, path: &str, dest: &Path) {
    restore(store, image, path, dest).assert_success();
}

/// The error code of a failed run (`error[FKnnnn]`), checking exit status 1
/// and a hint line.
fn code_of(run: &common::Run) -> String {
    assert_eq!(
        run.status.code(),
        Some(1),
        "expected a coded failure: {run}"
    );
    assert!(run.stderr.contains("  hint: "), "no hint line: {run}");
    let at = run
        .stderr
        .find("error[FK")
        .unwrap_or_else(|| panic!("no error code: {run}"));
    run.stderr[at + 6..at + 12].to_owned()
}

/// Files of the store, biggest first, under `fukastor/filters/chains`.
fn filtered_objects(store: &Store) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![store.path().join("fukastor/filters/chains")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && e.path()
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .ends_with("objects")
            {
                out.push(e.path());
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    out
}

/// Counts the regular files under `root` and lists those containing `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> (usize, Vec<PathBuf>) {
    let (mut files, mut hits) = (0, Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files += 1;
                let data = std::fs::read(e.path()).unwrap();
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(e.path());
                }
            }
        }
    }
    (files, hits)
}

fn flip_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(support::sha256_hex(&std::fs::read(path)?))
}

/// The chains the round-trip test runs, as `--filter` arguments.
fn chains(keys: &Path, replica: &Path) -> Vec<(&'static str, Vec<String>)> {
    let key = key_file(keys, "k1", 7);
    let enc = format!("{},key_file={}", example("encrypt"), key.display());
    let rep = format!("{},dir={}", example("replicate"), replica.display());
    vec![
        ("compress", vec![format!("{},level=3", example("compress"))]),
        ("checksum", vec![example("checksum")]),
        ("encrypt", vec![enc.clone()]),
        ("replicate", vec![rep.clone()]),
        (
            "compress+encrypt+checksum",
            vec![example("compress"), enc, example("checksum")],
        ),
        (
            "compress+checksum+replicate",
            vec![example("compress"), example("checksum"), rep],
        ),
    ]
}

#[test]
fn filtered_images_read_back_identical_through_fuse_restore_and_export() {
    require_root();
    let fx = fixtures();
    let store = Store::new();
    let work = scratch_dir("fk-filters-");
    let source = fx.oci("busybox");
    store.ok(["-q", "pull", &source, "plain:1"]);
    let plain_dump = store.ok(["dump", "plain:1"]).stdout;
    let kmnt = scratch_dir("fk-filters-kernel-");
    let kernel = store.mount_kernel("plain:1", kmnt.path());
    let reference = walk(kernel.path());
    for (label, filters) in chains(work.path(), &work.path().join("replica")) {
        let name = format!("f-{}:1", label.replace('+', "-"));
        let id = pull_filtered(&store, &source, &name, &filters);
        // Same tree, same dumpfile; a separate image with its own ID.
        let dump = store.ok(["dump", &name]).stdout;
        assert!(
            dump == plain_dump,
            "{label}: the dumpfile differs from the unfiltered image's"
        );
        assert!(
            !store.path().join("images").join(&id).exists(),
            "{label}: a filtered image must not be in images/"
        );
        // The kernel refuses it, with the FUSE hint.
        let mp = scratch_dir("fk-filters-mnt-");
        let run = store.run([
            "mount".as_ref(),
            name.as_ref(),
            mp.path().as_os_str(),
            "--kernel".as_ref(),
        ]);
        assert_eq!(code_of(&run), "FK0306", "{label}: {run}");
        // FUSE serves exactly the plain tree.
        let m = store.mount_fuse(&name, mp.path());
        let served = walk(m.path());
        common::assert_trees_eq(
            label,
            "kernel mount (no filter)",
            &reference,
            "FUSE (filtered)",
            &served,
        );
        m.unmount();
        // restore gives the same bytes.
        let dest = work.path().join(format!("restore-{label}"));
        restore_ok(&store, &name, "/bin", &dest);
        assert_eq!(
            sha256_file(&dest.join("busybox")).unwrap(),
            sha256_file(&kernel.path().join("bin/busybox")).unwrap(),
            "{label}: restored /bin/busybox differs"
        );
        // export, then pull back without a filter: the same dumpfile.
        let layout = work.path().join(format!("export-{label}"));
        store.ok([
            "export".to_string(),
            name.clone(),
            format!("oci:{}:x", layout.display()),
        ]);
        let back = format!("back-{}:1", label.replace('+', "-"));
        store.ok([
            "-q".to_string(),
            "pull".into(),
            format!("oci:{}:x", layout.display()),
            back.clone(),
        ]);
        let back_dump = store.ok(["dump", &back]).stdout;
        assert!(
            back_dump == plain_dump,
            "{label}: export and re-import changed the tree"
        );
    }
    kernel.unmount();
    store.assert_fsck_clean();
    // Without its names, gc removes every filtered object and image.
    for (label, _) in chains(work.path(), &work.path().join("replica")) {
        store.ok([
            "rmi".to_string(),
            format!("f-{}:1", label.replace('+', "-")),
        ]);
    }
    store.ok(["gc"]);
    assert!(
        filtered_objects(&store).is_empty(),
        "gc left filtered objects behind"
    );
    let images = std::fs::read_dir(store.path().join("fukastor/filters/images"))
        .unwrap()
        .count();
    assert_eq!(images, 0, "gc left filtered images behind");
    store.assert_fsck_clean();
}

#[test]
fn encrypted_store_holds_no_plaintext_and_a_wrong_key_is_coded() {
    require_root();
    let store = Store::new();
    let work = scratch_dir("fk-filters-enc-");
    // A tree with a known text: one big file (an object) and one small file
    // (inline in the EROFS image, which is encoded too).
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    let marker = "fukastor-known-plaintext-6f1d2c";
    let big: String = (0..4000).map(|i| format!("{marker} line {i}\n")).collect();
    std::fs::write(src.join("etc/big.txt"), &big).unwrap();
    std::fs::write(src.join("etc/small"), marker).unwrap();
    let key = key_file(work.path(), "key", 3);
    let enc = format!("{},key_file={}", example("encrypt"), key.display());
    // Encryption alone: compression in front of it could hide the text
    // by itself.
    pull_filtered(
        &store,
        &format!("dir:{}", src.display()),
        "secret:1",
        &[enc],
    );

    // No file of the store contains the marker (nor its first half)...
    let needle = &marker.as_bytes()[..16];
    let (files, hits) = files_containing(store.path(), needle);
    assert!(hits.is_empty(), "plaintext found in {hits:?}");
    assert!(
        files > 5,
        "the store has only {files} files: nothing was checked"
    );
    // ...while the same tree pulled without a filter shows it in both its
    // object and its EROFS image (the search does find what is there).
    let plain = Store::new();
    plain.ok(["-q", "pull", &format!("dir:{}", src.display()), "open:1"]);
    let (_, hits) = files_containing(plain.path(), needle);
    assert!(
        hits.len() >= 2,
        "the unfiltered store should show the marker in an object and an image: {hits:?}"
    );

    // The right key reads it back.
    let dest = work.path().join("out");
    restore_ok(&store, "secret:1", "/etc", &dest);
    assert_eq!(std::fs::read_to_string(dest.join("big.txt")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(dest.join("small")).unwrap(), marker);

    // Another key: FK0906 from every reader, never garbage.
    std::fs::write(&key, hex::encode([4u8; 32])).unwrap();
    let run = restore(&store, "secret:1", "/etc", &work.path().join("out2"));
    assert_eq!(code_of(&run), "FK0906", "{run}");
    assert!(
        !work.path().join("out2").exists(),
        "a failed restore left files behind"
    );
    let run = store.run(["dump", "secret:1"]);
    assert_eq!(code_of(&run), "FK0906", "{run}");
    // No key at all: FK0907.
    std::fs::remove_file(&key).unwrap();
    let run = store.run(["dump", "secret:1"]);
    assert_eq!(code_of(&run), "FK0907", "{run}");
    // fsck reports that it cannot check, and --repair deletes nothing.
    let before = filtered_objects(&store).len();
    let run = store.run(["fsck", "--repair"]);
    assert!(
        !run.success() && run.stdout_str().contains("filter-unavailable"),
        "{run}"
    );
    assert_eq!(
        filtered_objects(&store).len(),
        before,
        "fsck --repair deleted data it could not read"
    );
    // Nor its name, so gc keeps it too; with the key back it reads again.
    store.ok(["gc"]);
    assert_eq!(
        filtered_objects(&store).len(),
        before,
        "gc after fsck --repair"
    );
    std::fs::write(&key, hex::encode([3u8; 32])).unwrap();
    restore_ok(&store, "secret:1", "/etc", &work.path().join("out3"));
    store.assert_fsck_clean();
}

#[test]
fn flipped_byte_is_caught_by_checksum_and_served_from_the_replica() {
    require_root();
    let fx = fixtures();
    let work = scratch_dir("fk-filters-damage-");
    let source = fx.oci("busybox");

    // checksum only: the damaged object is an error everywhere.
    let store = Store::new();
    store.ok(["-q", "pull", &source, "plain:1"]);
    let kmnt = scratch_dir("fk-filters-k-");
    let kernel = store.mount_kernel("plain:1", kmnt.path());
    let good = sha256_file(&kernel.path().join("bin/busybox")).unwrap();
    kernel.unmount();
    pull_filtered(
        &store,
        &source,
        "sum:1",
        &[example("compress"), example("checksum")],
    );
    let victim = filtered_objects(&store)[0].clone(); // the biggest: busybox
    flip_byte(&victim);
    let run = restore(&store, "sum:1", "/bin", &work.path().join("r1"));
    assert_eq!(code_of(&run), "FK0905", "{run}");
    let mp = scratch_dir("fk-filters-mnt-");
    let m = store.mount_fuse("sum:1", mp.path());
    let err = std::fs::read(m.path().join("bin/busybox")).expect_err("a damaged object was served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    m.unmount();
    let log = std::fs::read_dir(store.path().join("fukastor/mounts"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        log.contains("FK0905"),
        "the server did not log the damage:\n{log}"
    );
    let run = store.run(["fsck"]);
    assert!(
        !run.success() && run.stdout_str().contains("corrupt-object"),
        "{run}"
    );

    // checksum + replicate: the replica serves the good copy.
    let store = Store::new();
    let rep = format!(
        "{},dir={}",
        example("replicate"),
        work.path().join("replica").display()
    );
    pull_filtered(&store, &source, "rep:1", &[example("checksum"), rep]);
    let victim = filtered_objects(&store)[0].clone();
    flip_byte(&victim);
    // The flip is caught: with the replica out of the way the read fails...
    let replica = work.path().join("replica");
    let aside = work.path().join("replica-aside");
    std::fs::rename(&replica, &aside).unwrap();
    let run = restore(&store, "rep:1", "/bin", &work.path().join("r2-none"));
    assert_eq!(code_of(&run), "FK0905", "{run}");
    std::fs::rename(&aside, &replica).unwrap();
    // ...and with it back, the good copy is served.
    let dest = work.path().join("r2");
    restore_ok(&store, "rep:1", "/bin", &dest);
    assert_eq!(sha256_file(&dest.join("busybox")).unwrap(), good);
    let m = store.mount_fuse("rep:1", mp.path());
    assert_eq!(sha256_file(&m.path().join("bin/busybox")).unwrap(), good);
    m.unmount();
    // Even a missing primary is served from the replica.
    std::fs::remove_file(&victim).unwrap();
    let dest = work.path().join("r3");
    restore_ok(&store, "rep:1", "/bin", &dest);
    assert_eq!(sha256_file(&dest.join("busybox")).unwrap(), good);
}

#[test]
fn bad_filters_are_refused_and_leave_the_store_as_it_was() {
    let fx = fixtures();
    let store = Store::new();
    let work = scratch_dir("fk-filters-bad-");
    let source = fx.oci("busybox");
    store.ok(["-q", "pull", &source, "plain:1"]);
    let write = |name: &str, text: &str| {
        let p = work.path().join(format!("{name}.lua"));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // (--filter, the codes it may give, a piece of the hint it must give)
    let cases: Vec<(String, &[&str], Option<&str>)> = vec![
        (
            work.path().join("missing.lua").display().to_string(),
            &["FK0900"],
            Some("hint: check the script's path"),
        ),
        (
            write("noencode", "function decode(b) return b end"),
            &["FK0900"],
            None,
        ),
        (
            write(
                "escape",
                "os.execute('touch /tmp/fk-escaped')\nfunction encode(b) return b end\nfunction decode(b) return b end",
            ),
            &["FK0900", "FK0901"],
            None,
        ),
        (
            write(
                "io",
                "function encode(b) io.open('/tmp/fk-escaped','w') return b end\nfunction decode(b) return b end",
            ),
            &["FK0901"],
            None,
        ),
        (
            write(
                "loop",
                "function encode(b) while true do end end\nfunction decode(b) return b end",
            ),
            &["FK0903"],
            None,
        ),
        (
            write(
                "bomb",
                "function encode(b) local s = string.rep('x', 1 << 40) return b end\nfunction decode(b) return b end",
            ),
            &["FK0902", "FK0901"],
            None,
        ),
        (
            write(
                "badret",
                "function encode(b) return 42 end\nfunction decode(b) return b end",
            ),
            &["FK0904"],
            None,
        ),
        (
            format!("{},key_env=FK_TEST_NO_SUCH_VARIABLE", example("encrypt")),
            &["FK0907"],
            None,
        ),
        (
            format!("{},notaparam", example("compress")),
            &["FK0900"],
            Some("hint: write --filter SCRIPT.lua or --filter SCRIPT.lua,NAME=VALUE"),
        ),
    ];
    let before = support::snapshot(store.path());
    for (filter, codes, hint) in cases {
        let run = store.run(["pull", &source, "bad:1", "--filter", &filter]);
        let code = code_of(&run);
        assert!(
            codes.contains(&code.as_str()),
            "--filter {filter}: expected {codes:?}: {run}"
        );
        if let Some(hint) = hint {
            assert!(
                run.stderr.contains(hint),
                "--filter {filter}: expected the hint {hint:?}: {run}"
            );
        }
        let after = support::snapshot(store.path());
        let diff = support::snapshot_diff(&before, &after);
        assert!(
            diff.is_empty(),
            "--filter {filter} changed the store:\n{diff}"
        );
        assert!(
            !Path::new("/tmp/fk-escaped").exists(),
            "--filter {filter} escaped the sandbox"
        );
    }
    assert!(
        store.run(["inspect", "bad:1"]).status.code() == Some(1),
        "a refused pull left a name"
    );
    store.assert_fsck_clean();
}

#[test]
fn a_filtered_pull_killed_at_each_step_leaves_only_garbage() {
    let fx = fixtures();
    let source = fx.oci("busybox");
    let work = scratch_dir("fk-filters-crash-");
    let key = key_file(work.path(), "key", 9);
    let filters = [
        example("compress"),
        format!("{},key_file={}", example("encrypt"), key.display()),
    ];
    for fp in [
        "pull:staged",
        "pull:objects-published",
        "pull:image-written",
        "pull:ref-written",
    ] {
        let store = Store::new();
        let mut cmd = store.command();
        cmd.args(["-q", "pull", &source, "enc:1"])
            .env("FUKASTOR_FAILPOINT", fp);
        for f in &filters {
            cmd.arg("--filter").arg(f);
        }
        let run = common::run_command(cmd);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            run.status.signal(),
            Some(9),
            "FUKASTOR_FAILPOINT={fp} must kill the pull: {run}"
        );
        // Only garbage (or, after the name, the complete image): fsck is clean.
        store.assert_fsck_clean();
        let named = store.run(["dump", "enc:1"]);
        if fp == "pull:ref-written" {
            assert!(
                named.success(),
                "{fp}: the named image must be whole: {named}"
            );
        } else {
            assert_eq!(
                named.status.code(),
                Some(1),
                "{fp}: a name appeared before its image was durable: {named}"
            );
        }
        // gc then a new pull: the image reads back.
        store.ok(["gc"]);
        if fp != "pull:ref-written" {
            assert_eq!(
                dir_names(&store.path().join("fukastor/filters/chains")),
                Vec::<String>::new(),
                "{fp}: gc left the unnamed chain"
            );
        }
        pull_filtered(&store, &source, "enc:1", &filters);
        let dest = work.path().join(format!("r-{}", fp.replace(':', "-")));
        restore_ok(&store, "enc:1", "/bin/busybox", &dest);
        store.assert_fsck_clean();
    }
}

/// The names in `dir` (none when it does not exist), sorted.
/// How many files are under `dir`, at any depth.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => files_under(&e.path()),
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `gc` removes a chain no named image is stored through, and the scripts
/// only it named; another chain, its scripts and its image stay readable.
/// `--dry-run` counts them and removes nothing.
#[test]
fn gc_removes_unused_chains_and_their_scripts() {
    let fx = fixtures();
    let store = Store::new();
    let source = fx.oci("busybox");
    let compress = example("compress");
    let checksum = example("checksum");
    pull_filtered(
        &store,
        &source,
        "c:1",
        &[compress.clone(), checksum.clone()],
    );
    pull_filtered(&store, &source, "k:1", std::slice::from_ref(&checksum));
    let chains = store.path().join("fukastor/filters/chains");
    let scripts = store.path().join("fukastor/filters/scripts");
    assert_eq!(dir_names(&chains).len(), 2);
    assert_eq!(dir_names(&scripts).len(), 2);
    let kept = store.ok(["dump", "k:1"]).stdout_str();
    store.ok(["rmi", "c:1"]);
    let dry = store.ok(["--json", "gc", "--dry-run"]);
    let report: serde_json::Value = serde_json::from_str(dry.stdout_str().trim()).unwrap();
    assert_eq!(
        (report["chains"].as_u64(), report["scripts"].as_u64()),
        (Some(1), Some(1)),
        "{dry}"
    );
    assert_eq!(dir_names(&chains).len(), 2, "--dry-run removed a chain");
    let run = store.ok(["gc"]);
    assert!(
        run.stdout_str()
            .contains("1 unused filter chains, 1 unused filter scripts"),
        "{run}"
    );
    assert_eq!(dir_names(&chains).len(), 1);
    let compress_sha = sha256_file(Path::new(&compress)).unwrap();
    let checksum_sha = sha256_file(Path::new(&checksum)).unwrap();
    assert_eq!(dir_names(&scripts), vec![format!("{checksum_sha}.lua")]);
    assert_ne!(compress_sha, checksum_sha);
    similar_asserts::assert_eq!(store.ok(["dump", "k:1"]).stdout_str(), kept);
    store.assert_fsck_clean();
    // The removed chain comes back with the next pull through it.
    pull_filtered(&store, &source, "c:2", &[compress, checksum]);
    similar_asserts::assert_eq!(store.ok(["dump", "c:2"]).stdout_str(), kept);
    store.assert_fsck_clean();
}

#[test]
fn filter_limits_are_set_from_the_environment() {
    let fx = fixtures();
    let store = Store::new();
    let work = scratch_dir("fk-filters-limits-");
    let source = fx.oci("busybox");
    let script = work.path().join("busy.lua");
    // 100k loop iterations and a 10 MB string per call: within the defaults.
    std::fs::write(
        &script,
        "function encode(b) local n = 0 for i = 1, 100000 do n = n + i end \
         local s = string.rep('x', 10000000) return b end\n\
         function decode(b) return b end",
    )
    .unwrap();
    let script = script.display().to_string();
    let pull = |env: &[(&str, &str)], name: &str| {
        let mut cmd = store.command();
        cmd.args(["-q", "pull", &source, name, "--filter", &script]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        common::run_command(cmd)
    };
    let run = pull(&[], "ok:1");
    assert!(run.success(), "within the default limits: {run}");
    let run = pull(&[("FUKASTOR_FILTER_INSTRUCTIONS", "20000")], "few:1");
    assert_eq!(code_of(&run), "FK0903", "{run}");
    let run = pull(&[("FUKASTOR_FILTER_MEMORY", "4000000")], "small:1");
    assert_eq!(code_of(&run), "FK0902", "{run}");
    store.assert_fsck_clean();
}

/// A record whose chain digest is not its chain's (here: another chain of
/// the store, so its objects would be looked for, and kept, in the wrong
/// directory) is refused as damaged by every reader; `fsck` reports it and
/// `--repair` forgets the image; the other image is untouched.
#[test]
fn a_record_naming_another_chain_is_damaged() {
    let fx = fixtures();
    let store = Store::new();
    let source = fx.oci("busybox");
    let id = pull_filtered(
        &store,
        &source,
        "c:1",
        &[example("compress"), example("checksum")],
    );
    pull_filtered(&store, &source, "k:1", &[example("checksum")]);
    let kept = store.ok(["dump", "k:1"]).stdout_str();
    let chains = dir_names(&store.path().join("fukastor/filters/chains"));
    let path = store
        .path()
        .join("fukastor/records")
        .join(format!("{id}.json"));
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let own = record["filter"]["chain_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = chains.iter().find(|c| **c != own).expect("two chains");
    record["filter"]["chain_digest"] = other.clone().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();

    let run = store.run(["dump", "c:1"]);
    assert_eq!(code_of(&run), "FK0104", "{run}");
    assert!(run.stderr.contains("chain digest"), "{run}");
    let run = store.run(["fsck"]);
    assert!(
        !run.success() && run.stdout_str().contains("broken-image"),
        "{run}"
    );
    // gc before the repair goes on past the damaged record and keeps the
    // objects of every chain it could name: its own chain's as well.
    let own_objects = store
        .path()
        .join("fukastor/filters/chains")
        .join(&own)
        .join("objects");
    let before = files_under(&own_objects);
    assert!(before > 0, "no objects under {}", own_objects.display());
    store.ok(["gc"]);
    assert_eq!(
        files_under(&own_objects),
        before,
        "gc removed objects of c:1's chain"
    );
    similar_asserts::assert_eq!(store.ok(["dump", "k:1"]).stdout_str(), kept);
    store.ok(["fsck", "--repair"]);
    store.ok(["gc"]);
    similar_asserts::assert_eq!(store.ok(["dump", "k:1"]).stdout_str(), kept);
    store.assert_fsck_clean();
}
