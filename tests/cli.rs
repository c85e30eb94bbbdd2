//! End-to-end checks of the CLI on images made here: `dir:` commits (and
//! that a second commit only stores and reads what changed), `restore`,
//! names (`tag`, `rmi`, `images --json`), `df`, and the kernel mount's
//! bookkeeping and error codes. Needs root for the mount tests.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};

fn fk(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fukastor"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("FUKASTOR_STORE")
        .output()
        .expect("run fukastor")
}

fn ok(store: &Path, args: &[&str]) -> String {
    let o = fk(store, args);
    assert!(
        o.status.success(),
        "fukastor {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The exit status of fukastor's own failure of command line `args`
/// (options before the subcommand included): `run` and `start` exit 125
/// (podman's convention: 1 may be their container's status), other
/// commands `other`.
fn failure_status(args: &[&str], other: i32) -> i32 {
    match args.iter().find(|a| !a.starts_with('-')) {
        Some(&"run" | &"start") => 125,
        _ => other,
    }
}

fn fails_with(store: &Path, args: &[&str], code: &str) {
    let o = fk(store, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(failure_status(args, 1)),
        "fukastor {args:?}: {err}"
    );
    assert!(
        err.contains(&format!("error[{code}]")),
        "fukastor {args:?}: expected {code}, got: {err}"
    );
    assert!(err.contains("hint: "), "no hint: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn json(store: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(store, &a)).expect("JSON output")
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts filesystems and needs root: run integration/run-tests.sh as root"
    );
}

/// A directory with big and small files, a symlink, a hardlink pair.
fn make_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    for i in 0..20u32 {
        let data: Vec<u8> = (0..50_000u32)
            .map(|j| ((i * 7919 + j) % 251) as u8)
            .collect();
        fs::write(dir.join(format!("sub/big-{i}")), data).unwrap();
    }
    fs::write(dir.join("small"), b"tiny").unwrap();
    fs::write(dir.join("sub/deeper/exec"), vec![b'x'; 1000]).unwrap();
    fs::set_permissions(
        dir.join("sub/deeper/exec"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    symlink("sub/big-0", dir.join("link")).unwrap();
    fs::hard_link(dir.join("sub/big-1"), dir.join("hard")).unwrap();
}

#[test]
fn dir_commit_again_stores_and_reads_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("s"), t.path().join("src"));
    make_tree(&src);
    let first = json(
        &store,
        &["pull", &format!("dir:{}", src.display()), "tree:1"],
    );
    assert_eq!(first["new_objects"].as_u64().unwrap(), 22, "{first}"); // 20 big + exec + EROFS
    assert!(first["content_bytes"].as_u64().unwrap() >= 20 * 50_000);

    let again = json(
        &store,
        &["pull", &format!("dir:{}", src.display()), "tree:2"],
    );
    assert_eq!(again["new_objects"], 0, "{again}");
    assert_eq!(again["id"], first["id"], "same tree, same image ID");
    assert!(
        again["content_bytes"].as_u64().unwrap() < 100,
        "unchanged files were read again: {again}"
    );

    fs::write(src.join("sub/big-3"), vec![9u8; 70_000]).unwrap();
    let third = json(
        &store,
        &["pull", &format!("dir:{}", src.display()), "tree:3"],
    );
    assert_eq!(
        third["new_objects"], 2,
        "one changed file and a new EROFS: {third}"
    );
    assert_eq!(third["content_bytes"].as_u64().unwrap(), 70_000 + 4);

    // The committed tree: hardlink, symlink, setuid mode.
    let dump = ok(&store, &["dump", "tree:3"]);
    let line = |p: &str| {
        dump.lines()
            .find(|l| l.split(' ').next() == Some(p))
            .unwrap_or_else(|| panic!("{p} missing"))
            .to_string()
    };
    assert!(line("/link").contains(" 120777 "), "{}", line("/link"));
    assert!(
        line("/sub/deeper/exec").contains(" 104755 "),
        "{}",
        line("/sub/deeper/exec")
    );
    let hard = [line("/hard"), line("/sub/big-1")];
    assert!(
        hard.iter().any(|l| l.contains(" @120000 "))
            || hard.iter().all(|l| l.split(' ').nth(3) == Some("2")),
        "{hard:?}"
    );

    // Deleting the cache costs time only.
    for e in fs::read_dir(store.join("fukastor/cache")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    let fourth = json(
        &store,
        &["pull", &format!("dir:{}", src.display()), "tree:4"],
    );
    assert_eq!(fourth["id"], third["id"]);
    assert_eq!(fourth["new_objects"], 0);
    ok(&store, &["fsck"]);
}

#[test]
fn restore_copies_files_with_metadata_and_refuses_existing_destinations() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("s"), t.path().join("src"));
    make_tree(&src);
    ok(&store, &["pull", &format!("dir:{}", src.display()), "tree"]);
    let dest = t.path().join("out");
    ok(&store, &["restore", "tree", "/", dest.to_str().unwrap()]);
    for rel in ["sub/big-7", "small", "sub/deeper/exec", "hard"] {
        let (a, b) = (
            fs::symlink_metadata(src.join(rel)).unwrap(),
            fs::symlink_metadata(dest.join(rel)).unwrap(),
        );
        assert_eq!(
            fs::read(src.join(rel)).unwrap(),
            fs::read(dest.join(rel)).unwrap(),
            "{rel}"
        );
        assert_eq!(a.mode(), b.mode(), "{rel} mode");
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "{rel} mtime"
        );
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{rel} owner");
    }
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("sub/big-0")
    );
    let (h1, h2) = (
        fs::metadata(dest.join("hard")).unwrap(),
        fs::metadata(dest.join("sub/big-1")).unwrap(),
    );
    assert_eq!(h1.ino(), h2.ino(), "hardlinks stay hardlinks");

    let one = t.path().join("one");
    ok(
        &store,
        &["restore", "tree", "sub/deeper/exec", one.to_str().unwrap()],
    );
    assert_eq!(fs::metadata(&one).unwrap().mode() & 0o7777, 0o4755);
    fails_with(
        &store,
        &["restore", "tree", "/sub", dest.to_str().unwrap()],
        "FK0401",
    );
    fails_with(
        &store,
        &[
            "restore",
            "tree",
            "/nope",
            t.path().join("x").to_str().unwrap(),
        ],
        "FK0400",
    );
    fails_with(
        &store,
        &["restore", "tree", "/small", "/nonexistent-dir/x"],
        "FK0401",
    );
}

#[test]
fn names_tag_rmi_and_gc() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("s"), t.path().join("src"));
    make_tree(&src);
    let id = ok(
        &store,
        &["-q", "pull", &format!("dir:{}", src.display()), "a"],
    )
    .trim()
    .to_string();
    assert_eq!(id.len(), 64);
    ok(&store, &["tag", "a", "registry.example:5000/team/b:v1"]);
    ok(&store, &["tag", &id[..6], "c"]);
    let images = json(&store, &["images"]);
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a:latest", "c:latest", "registry.example:5000/team/b:v1"]
    );
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] == id.as_str())
    );
    let inspect = json(&store, &["inspect", "c"]);
    assert_eq!(inspect["names"].as_array().unwrap().len(), 3);

    fails_with(&store, &["tag", "a", "../evil"], "FK0111");
    fails_with(&store, &["rmi", "nope"], "FK0110");
    ok(&store, &["rmi", "a", "c"]);
    let gc = json(&store, &["gc", "--dry-run"]);
    assert_eq!(gc["objects"], 0, "the image still has a name: {gc}");
    ok(&store, &["rmi", "registry.example:5000/team/b:v1"]);
    assert_eq!(json(&store, &["images"]).as_array().unwrap().len(), 0);
    let gc = json(&store, &["gc"]);
    assert_eq!(gc["objects"].as_u64().unwrap(), 22, "{gc}");
    let fsck = json(&store, &["fsck"]);
    assert_eq!(
        (fsck["clean"].as_bool(), fsck["objects"].as_u64()),
        (Some(true), Some(0)),
        "{fsck}"
    );
    assert!(!store.join("images/refs/registry.example:5000").exists());
}

#[test]
fn df_counts_each_distinct_content_once() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("s"), t.path().join("src"));
    make_tree(&src);
    ok(&store, &["pull", &format!("dir:{}", src.display()), "one"]);
    fs::write(src.join("extra"), vec![1u8; 10_000]).unwrap();
    ok(&store, &["pull", &format!("dir:{}", src.display()), "two"]);
    let df = json(&store, &["df"]);
    assert_eq!(df["images"], 2);
    let files = 20 + 1 + 1; // big files, exec, small (hardlink counted once)
    assert_eq!(df["files_in_images"].as_u64().unwrap(), 2 * files + 1);
    assert_eq!(df["objects_referenced"].as_u64().unwrap(), 21 + 1);
    let unique = df["unique_bytes"].as_u64().unwrap();
    assert_eq!(unique, 20 * 50_000 + 1000 + 10_000 + 2 * 4, "{df}");
    assert!(df["dedup_ratio"].as_f64().unwrap() > 1.9, "{df}");
}

#[test]
fn kernel_mount_shows_its_source_and_umount_only_takes_ours() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let (store, src, mnt) = (
        t.path().join("s"),
        t.path().join("src"),
        t.path().join("mnt"),
    );
    make_tree(&src);
    fs::create_dir(&mnt).unwrap();
    ok(&store, &["pull", &format!("dir:{}", src.display()), "m"]);
    ok(&store, &["mount", "m", mnt.to_str().unwrap(), "--kernel"]);
    let guard = scopeguard(&mnt);
    let f = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE"])
        .arg(&mnt)
        .output()
        .unwrap();
    let f = String::from_utf8_lossy(&f.stdout);
    assert!(
        f.contains("composefs:m:latest@")
            && f.contains(store.to_str().unwrap())
            && f.contains("overlay"),
        "{f}"
    );
    assert_eq!(
        fs::read(mnt.join("sub/big-5")).unwrap(),
        fs::read(src.join("sub/big-5")).unwrap()
    );
    let mounts = json(&store, &["mounts"]);
    assert!(
        mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountpoint"] == mnt.to_str().unwrap()),
        "{mounts}"
    );
    assert!(
        fs::write(mnt.join("new"), b"x").is_err(),
        "the mount is read-only"
    );
    ok(&store, &["umount", mnt.to_str().unwrap()]);
    std::mem::forget(guard);
    assert!(!mnt.join("small").exists());

    fails_with(&store, &["umount", mnt.to_str().unwrap()], "FK0303");
    fails_with(&store, &["umount", "/proc"], "FK0303");
    fails_with(
        &store,
        &["mount", "m", t.path().join("missing").to_str().unwrap()],
        "FK0301",
    );
    fails_with(
        &store,
        &["mount", "m", src.join("small").to_str().unwrap()],
        "FK0301",
    );
    fails_with(&store, &["mount", "nope", mnt.to_str().unwrap()], "FK0110");
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}
fn scopeguard(p: &Path) -> Unmount {
    Unmount(p.to_path_buf())
}

#[test]
fn usage_errors_have_codes() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    fails_with(&store, &["pull", "foo:bar"], "FK0200");
    fails_with(&store, &["pull", "nonsense"], "FK0200");
    fails_with(&store, &["pull", "oci:/nonexistent/layout"], "FK0201");
    fails_with(&store, &["pull", "dir:/nonexistent/dir"], "FK0220");
    fails_with(&store, &["inspect", "zzzz"], "FK0110");
    // What the argument parser refuses: exit status 2 (125 for `run` and
    // `start`), coded like the rest (one line, a hint naming the command's
    // help), and as JSON with --json; nothing is written (the store is not
    // even created).
    let unmade = t.path().join("unmade");
    for (args, says, hint) in [
        (
            &["frobnicate"][..],
            "unrecognized subcommand 'frobnicate'",
            "see `fukastor --help`",
        ),
        (
            &["run", "--size", "-3", "img"],
            "unexpected argument '-3' found",
            "use '-- -3'; see `fukastor run --help`",
        ),
        (
            &["volume", "create"],
            "the following required arguments were not provided: --size <SIZE>, <NAME>",
            "see `fukastor volume create --help`",
        ),
        (
            &["mounts", "--bogus"],
            "unexpected argument '--bogus' found",
            "see `fukastor mounts --help`",
        ),
        (
            &["start"],
            "the following required arguments were not provided: <CONTAINER>",
            "see `fukastor start --help`",
        ),
    ] {
        let status = failure_status(args, 2);
        let o = fk(&unmade, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(status), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {err}");
        assert_eq!(lines[0], format!("error[FK0501]: {says}"), "{args:?}");
        assert!(
            lines[1].starts_with("  hint: ") && lines[1].ends_with(hint),
            "{args:?}: {err}"
        );
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let o = fk(&unmade, &with_json);
        let first = String::from_utf8_lossy(&o.stderr)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let v: serde_json::Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("{args:?}: {e}: {first}"));
        assert_eq!(v["error"]["code"], "FK0501", "{args:?}");
        assert_eq!(v["error"]["message"], says, "{args:?}");
        assert_eq!(o.status.code(), Some(status), "{args:?}");
    }
    // No subcommand at all: the help, as a usage error; after an option,
    // coded like the rest.
    for args in [&[][..], &["volume"]] {
        let o = Command::new(env!("CARGO_BIN_EXE_fukastor"))
            .args(args)
            .env_remove("FUKASTOR_STORE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("Usage: ") && !err.contains("error["),
            "{args:?}: {err}"
        );
    }
    let o = fk(&unmade, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error[FK0501]: 'fukastor' requires a subcommand"),
        "{err}"
    );
    assert!(!unmade.exists(), "a refused command line created the store");
    // A command that needs an image, where no store was ever made: the
    // image is not found (FK0110), and no store is made for it.
    let dest = t.path().join("dest");
    let dest = dest.to_str().unwrap();
    for args in [
        &["inspect", "nope"][..],
        &["tag", "nope", "other"],
        &["rmi", "nope"],
        &["dump", "nope"],
        &["restore", "nope", "/etc", dest],
        &["export", "nope", dest],
        &["mount", "nope", dest],
        &["create", "nope"],
        &["run", "--rm", "nope", "--", "true"],
    ] {
        fails_with(&unmade, args, "FK0110");
        assert!(!unmade.exists(), "fukastor {args:?} made a store");
    }
    assert!(!Path::new(dest).exists());
    let o = fk(&store, &["--json", "inspect", "nope"]);
    let first = String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["error"]["code"], "FK0110");

    // The environment: an empty FUKASTOR_STORE is unset (not a usage
    // error); FUKASTOR_JSON takes the usual switch spellings.
    let env_run = |vars: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fukastor"));
        c.env_remove("FUKASTOR_STORE").env_remove("FUKASTOR_JSON");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.args(args).output().unwrap()
    };
    let o = env_run(&[("FUKASTOR_STORE", "")], &["--json", "mounts"]);
    assert!(o.status.success(), "FUKASTOR_STORE= : {o:?}");
    let store_s = store.to_str().unwrap();
    for (value, json) in [
        ("", false),
        ("0", false),
        ("no", false),
        ("OFF", false),
        ("1", true),
        ("true", true),
        ("yes", true),
    ] {
        let o = env_run(
            &[("FUKASTOR_STORE", store_s), ("FUKASTOR_JSON", value)],
            &["inspect", "nope"],
        );
        let first = String::from_utf8_lossy(&o.stderr)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&first).is_ok(),
            json,
            "FUKASTOR_JSON={value:?}: {o:?}"
        );
        assert!(first.contains("FK0110"), "FUKASTOR_JSON={value:?}: {o:?}");
    }
}

/// `fukastor demo`, the README's first command, runs every step and
/// leaves nothing behind: its work directory (under TMPDIR) is gone, and
/// nothing of it stays mounted (the volume server it started keeps its
/// FUSE mount in there until it exits by itself).
#[test]
fn demo_runs_and_leaves_nothing_behind() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fukastor"))
        .arg("demo")
        .env_remove("FUKASTOR_STORE")
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run fukastor demo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "fukastor demo failed:\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("fsck the store"),
        "the demo stopped early:\n{out}"
    );
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = tmp.path().to_string_lossy();
    assert!(
        !mounts.lines().any(|l| l.contains(dir.as_ref())),
        "something of the demo is still mounted:\n{mounts}"
    );
}
