//! `fukastor export IMAGE oci:DIR[:TAG]`.
//!
//! One source image with every kind of entry a layer can hold (nested
//! directories, inline, external and streamed files, a symlink with a long
//! target, a hardlink pair, a fifo, a character device, xattrs through PAX,
//! setuid, uid/gid 1000, nanosecond mtimes, long and non-UTF-8 names, and a
//! second layer with a whiteout) is built with `LayoutBuilder`, pulled,
//! exported, and:
//! 1. pulled back into a second store: both `dump`s must be identical;
//! 2. read by `skopeo inspect`;
//! 3. unpacked by `umoci unpack`, and the files checked on disk.
//!
//! skopeo and umoci must be installed: a missing tool fails the test with
//! its name, it is never skipped.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fukastor::oci::layout::{Compression, LayoutBuilder};
use sha2::{Digest, Sha256};

const MTIME: u64 = 1_700_000_000;

// ------------------------------------------------------------- helpers ----

fn fk(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fukastor"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run fukastor")
}

fn fk_ok(store: &Path, args: &[&str]) -> String {
    let out = fk(store, args);
    assert!(
        out.status.success(),
        "fukastor {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs an external tool; a tool that is not installed fails the test.
fn tool(name: &str, args: &[&OsStr]) -> Output {
    match Command::new(name).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{name} is not installed: it is required by this test (apt-get install {name})")
        }
        Err(e) => panic!("cannot run {name}: {e}"),
    }
}

fn tool_ok(name: &str, args: &[&OsStr]) -> String {
    let out = tool(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Deterministic pseudo-random bytes (xorshift).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A tar stream built entry by entry with the `tar` crate.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    /// A PAX extended header for the next entry.
    fn pax(&mut self, records: &[(&[u8], &[u8])]) {
        let mut data = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + base.to_string().len();
            if len.to_string().len() != base.to_string().len() {
                len = base + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} ").as_bytes());
            data.extend_from_slice(k);
            data.push(b'=');
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders.0/next").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data.as_slice()).unwrap();
    }

    fn path(p: &[u8]) -> &Path {
        Path::new(OsStr::from_bytes(p))
    }

    fn dir(&mut self, path: &[u8], mode: u32, owner: u64) {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        h.set_uid(owner);
        h.set_gid(owner);
        self.0
            .append_data(&mut h, Self::path(path), std::io::empty())
            .unwrap();
    }

    fn file(&mut self, path: &[u8], data: &[u8], mode: u32) {
        self.file_owned(path, data, mode, 0);
    }

    fn file_owned(&mut self, path: &[u8], data: &[u8], mode: u32, owner: u64) {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(owner);
        h.set_gid(owner);
        self.0.append_data(&mut h, Self::path(path), data).unwrap();
    }

    fn symlink(&mut self, path: &[u8], target: &[u8]) {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0
            .append_link(&mut h, Self::path(path), Self::path(target))
            .unwrap();
    }

    fn hardlink(&mut self, path: &[u8], target: &[u8]) {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.0
            .append_link(&mut h, Self::path(path), Self::path(target))
            .unwrap();
    }

    fn special(&mut self, path: &[u8], kind: tar::EntryType, mode: u32, dev: (u32, u32)) {
        let mut h = Self::header(kind, mode, 0);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        self.0
            .append_data(&mut h, Self::path(path), std::io::empty())
            .unwrap();
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

// --------------------------------------------------------- the image ----

const LONG_DIR: &str = "long/dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
const LONG_FILE: &str =
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff.txt";
const NOTES_MTIME: &str = "1700000123.123456789";
const XATTR_VALUE: &[u8] = b"value";
const BIN_XATTR: &[u8] = b"a\0b\xffc\nd=e";

fn long_target() -> String {
    format!("/usr/share/{}", "t".repeat(120))
}

/// Contents of the image's regular files, by path.
struct Contents {
    tool: Vec<u8>,
    big: Vec<u8>,
    suid: Vec<u8>,
}

/// Writes the source layout at `dir` with tag `v1`.
fn build_source(dir: &Path) -> Contents {
    let c = Contents {
        tool: bytes(1, 5000),
        big: bytes(2, 5 << 20),
        suid: bytes(3, 200),
    };
    let mut lb = LayoutBuilder::new(dir).unwrap();

    // Layer 1: most of the tree, and two things layer 2 changes.
    let mut t = Tar::new();
    t.dir(b"./", 0o755, 0);
    t.dir(b"etc/", 0o755, 0);
    t.file(b"etc/hostname", b"old-name\n", 0o644);
    t.file(b"etc/obsolete", b"to be deleted by layer 2\n", 0o644);
    t.pax(&[
        (b"SCHILY.xattr.user.test", XATTR_VALUE),
        (b"SCHILY.xattr.user.binary", BIN_XATTR),
    ]);
    t.file(b"etc/xattr-file", b"has xattrs\n", 0o644);
    t.dir(b"usr/", 0o755, 0);
    t.dir(b"usr/bin/", 0o755, 0);
    t.file(b"usr/bin/tool", &c.tool, 0o755);
    t.hardlink(b"usr/bin/tool-alias", b"usr/bin/tool");
    t.file(b"usr/bin/suid", &c.suid, 0o4755);
    t.symlink(b"bin", b"usr/bin");
    t.symlink(b"share-link", long_target().as_bytes());
    t.dir(b"home/", 0o755, 0);
    t.dir(b"home/user/", 0o700, 1000);
    t.pax(&[(b"mtime", NOTES_MTIME.as_bytes())]);
    t.file_owned(b"home/user/notes.txt", b"private notes\n", 0o640, 1000);
    t.dir(b"data/", 0o755, 0);
    t.file(b"data/big.bin", &c.big, 0o644);
    t.file(b"data/empty", b"", 0o600);
    t.file(b"data/64", &[b'x'; 64], 0o644);
    t.file(b"data/65", &[b'y'; 65], 0o644);
    t.dir(b"run/", 0o755, 0);
    t.special(b"run/pipe", tar::EntryType::Fifo, 0o600, (0, 0));
    t.dir(b"dev/", 0o755, 0);
    t.special(b"dev/zero", tar::EntryType::Char, 0o666, (1, 5));
    t.file(
        format!("{LONG_DIR}/{LONG_FILE}").as_bytes(),
        b"long name\n",
        0o644,
    );
    t.dir(b"names/", 0o755, 0);
    t.file(b"names/caf\xe9.txt", b"latin-1 name\n", 0o644);
    lb.layer(&t.finish(), Compression::Gzip).unwrap();

    // Layer 2: a whiteout and a replaced file.
    let mut t = Tar::new();
    t.file(b"etc/.wh.obsolete", b"", 0o644);
    t.file(b"etc/hostname", b"fukastor-export-test\n", 0o644);
    lb.layer(&t.finish(), Compression::Zstd).unwrap();

    lb.image(
        "v1",
        serde_json::json!({"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/tool"]}),
    )
    .unwrap();
    c
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store_a: PathBuf,
    contents: Contents,
}

fn setup() -> Env {
    let tmp = tempfile::Builder::new()
        .prefix("fk-export-")
        .tempdir()
        .unwrap();
    let root = tmp.path().to_path_buf();
    let contents = build_source(&root.join("src"));
    let store_a = root.join("store-a");
    let src = format!("oci:{}:v1", root.join("src").display());
    fk_ok(&store_a, &["pull", &src, "src:v1"]);
    Env {
        _tmp: tmp,
        root,
        store_a,
        contents,
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The manifest the layout at `dir` has under `tag`.
fn manifest_of(dir: &Path, tag: &str) -> (String, serde_json::Value) {
    let index = read_json(&dir.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {index}"))
        .clone();
    let digest = desc["digest"].as_str().unwrap().to_string();
    let m = read_json(&dir.join("blobs/sha256").join(&digest[7..]));
    (digest, m)
}

// --------------------------------------------------------------- tests ----

#[test]
fn export_round_trips_and_tools_read_it() {
    let env = setup();
    let out_dir = env.root.join("out");
    let dest = format!("oci:{}:out", out_dir.display());

    let json = fk_ok(&env.store_a, &["--json", "export", "src:v1", &dest]);
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(report["tag"], "out");

    // The layout on disk is what the report says.
    assert_eq!(
        read_json(&out_dir.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let (manifest_digest, manifest) = manifest_of(&out_dir, "out");
    assert_eq!(report["manifest_digest"], manifest_digest.as_str());
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one flattened layer: {manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(report["layer_bytes"], layers[0]["size"]);
    let layer_digest = layers[0]["digest"].as_str().unwrap().to_string();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = read_json(&out_dir.join("blobs/sha256").join(&config_digest[7..]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/tool"]));
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(config["history"][0]["created_by"], "fukastor export");
    // Every blob matches its name, and the diff_id matches the tar.
    for entry in std::fs::read_dir(out_dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let data = std::fs::read(entry.path()).unwrap();
        assert_eq!(sha(&data), entry.file_name().to_str().unwrap());
    }
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(out_dir.join("blobs/sha256").join(&layer_digest[7..])).unwrap(),
    )
    .read_to_end(&mut tar)
    .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", sha(&tar))
    );
    // No temporary files left behind.
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            ["blobs", "index.json", "oci-layout"].contains(&name.to_str().unwrap()),
            "unexpected {name:?} in the layout"
        );
    }

    // (1) Fidelity: pull the export back into another store; same dumpfile.
    let store_b = env.root.join("store-b");
    fk_ok(&store_b, &["pull", &dest, "back:v1"]);
    let dump_a = fk_ok(&env.store_a, &["dump", "src:v1"]);
    let dump_b = fk_ok(&store_b, &["dump", "back:v1"]);
    similar_asserts::assert_eq!(dump_a, dump_b);
    assert!(
        dump_a.contains("user.test"),
        "the dump shows xattrs:\n{dump_a}"
    );
    assert!(!dump_a.contains("obsolete"), "whiteout applied:\n{dump_a}");

    // Exporting again is deterministic, and adds tags to the same layout.
    let again = fk_ok(&env.store_a, &["--json", "export", "src:v1", &dest]);
    let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["manifest_digest"], manifest_digest.as_str());
    let second = format!("oci:{}:second", out_dir.display());
    fk_ok(&env.store_a, &["export", "src:v1", &second]);
    let index = read_json(&out_dir.join("index.json"));
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(tags, ["out", "second"]);

    // (2) skopeo reads it.
    let inspect = tool_ok(
        "skopeo",
        &[os("inspect"), os(&format!("oci:{}:out", out_dir.display()))],
    );
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Layers"], serde_json::json!([layer_digest]));
    assert_eq!(inspect["Digest"], manifest_digest.as_str());
    let raw = tool_ok(
        "skopeo",
        &[
            os("inspect"),
            os("--config"),
            os(&format!("oci:{}:out", out_dir.display())),
        ],
    );
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["config"]["Env"], serde_json::json!(["PATH=/usr/bin"]));

    // (3) umoci unpacks it (as root: owners, devices and xattrs are real).
    let bundle = env.root.join("bundle");
    tool_ok(
        "umoci",
        &[
            os("unpack"),
            os("--image"),
            os(&format!("{}:out", out_dir.display())),
            bundle.as_os_str(),
        ],
    );
    check_rootfs(&bundle.join("rootfs"), &env.contents);
}

fn check_rootfs(r: &Path, c: &Contents) {
    let md = |p: &str| std::fs::symlink_metadata(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let read = |p: &str| std::fs::read(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let perm = |p: &str| md(p).permissions().mode() & 0o7777;

    assert_eq!(read("etc/hostname"), b"fukastor-export-test\n");
    assert!(!r.join("etc/obsolete").exists());
    assert_eq!(read("usr/bin/tool"), c.tool);
    assert_eq!(perm("usr/bin/tool"), 0o755);
    assert_eq!(md("usr/bin/tool").ino(), md("usr/bin/tool-alias").ino());
    assert_eq!(md("usr/bin/tool").nlink(), 2);
    assert_eq!(read("usr/bin/suid"), c.suid);
    assert_eq!(perm("usr/bin/suid"), 0o4755, "setuid bit kept");
    assert_eq!(sha(&read("data/big.bin")), sha(&c.big));
    assert_eq!(read("data/empty"), b"");
    assert_eq!(perm("data/empty"), 0o600);
    assert_eq!(read("data/64"), [b'x'; 64]);
    assert_eq!(read("data/65"), [b'y'; 65]);
    assert_eq!(
        std::fs::read_link(r.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        std::fs::read_link(r.join("share-link")).unwrap(),
        Path::new(&long_target())
    );
    let notes = md("home/user/notes.txt");
    assert_eq!((notes.uid(), notes.gid()), (1000, 1000));
    assert_eq!(notes.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        (notes.mtime(), notes.mtime_nsec()),
        (1_700_000_123, 123_456_789)
    );
    let home = md("home/user");
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o700)
    );
    assert_eq!(md("etc/hostname").mtime(), MTIME as i64);
    assert!(md("run/pipe").file_type().is_fifo());
    assert_eq!(perm("run/pipe"), 0o600);
    let zero = md("dev/zero");
    assert!(zero.file_type().is_char_device());
    assert_eq!(zero.rdev(), rustix::fs::makedev(1, 5));
    assert_eq!(read(&format!("{LONG_DIR}/{LONG_FILE}")), b"long name\n");
    let latin1 = r.join(OsStr::from_bytes(b"names/caf\xe9.txt"));
    assert_eq!(std::fs::read(&latin1).unwrap(), b"latin-1 name\n");

    let mut buf = vec![0u8; 256];
    let xattr = |name: &str, buf: &mut Vec<u8>| -> Vec<u8> {
        let n = rustix::fs::lgetxattr(r.join("etc/xattr-file"), name, &mut buf[..])
            .unwrap_or_else(|e| panic!("xattr {name} on etc/xattr-file: {e}"));
        buf[..n].to_vec()
    };
    assert_eq!(xattr("user.test", &mut buf), XATTR_VALUE);
    assert_eq!(xattr("user.binary", &mut buf), BIN_XATTR);
}

/// Exit status 1 and the given code on stderr.
fn assert_fails(out: &Output, codes: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        codes
            .iter()
            .any(|c| stderr.contains(&format!("error[{c}]"))),
        "expected one of {codes:?}, got: {stderr}"
    );
    assert!(stderr.contains("  hint: "), "no hint: {stderr}");
}

#[test]
fn export_refuses_bad_destinations() {
    let env = setup();

    let archive = env.root.join("x.tar");
    let out = fk(
        &env.store_a,
        &[
            "export",
            "src:v1",
            &format!("docker-archive:{}", archive.display()),
        ],
    );
    assert_fails(&out, &["FK0230", "FK0200"]);
    assert!(!archive.exists());

    let out = fk(&env.store_a, &["export", "src:v1", "no-transport-here"]);
    assert_fails(&out, &["FK0230", "FK0200"]);

    // A directory with something else in it is left alone.
    let busy = env.root.join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), b"mine\n").unwrap();
    let out = fk(
        &env.store_a,
        &["export", "src:v1", &format!("oci:{}", busy.display())],
    );
    assert_fails(&out, &["FK0230"]);
    let names: Vec<_> = std::fs::read_dir(&busy)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);

    // A regular file is not a directory.
    let out = fk(
        &env.store_a,
        &[
            "export",
            "src:v1",
            &format!("oci:{}", busy.join("notes.txt").display()),
        ],
    );
    assert_fails(&out, &["FK0230"]);

    // A layout whose index.json is not JSON is not overwritten.
    let broken = env.root.join("broken");
    std::fs::create_dir_all(broken.join("blobs/sha256")).unwrap();
    std::fs::write(
        broken.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(broken.join("index.json"), b"{not json").unwrap();
    let out = fk(
        &env.store_a,
        &["export", "src:v1", &format!("oci:{}", broken.display())],
    );
    assert_fails(&out, &["FK0230"]);
    assert_eq!(
        std::fs::read(broken.join("index.json")).unwrap(),
        b"{not json"
    );

    // An unknown image is the store's error.
    let out = fk(
        &env.store_a,
        &[
            "export",
            "nope:v1",
            &format!("oci:{}", env.root.join("n").display()),
        ],
    );
    assert_fails(&out, &["FK0110"]);
}

#[test]
fn export_into_existing_layout_keeps_other_images() {
    let env = setup();
    // The source layout itself: it has `v1`; add `flat` next to it.
    let src = env.root.join("src");
    let (v1_digest, _) = manifest_of(&src, "v1");
    fk_ok(
        &env.store_a,
        &["export", "src:v1", &format!("oci:{}:flat", src.display())],
    );
    let (v1_after, _) = manifest_of(&src, "v1");
    assert_eq!(v1_digest, v1_after);
    let (_, flat) = manifest_of(&src, "flat");
    assert_eq!(flat["layers"].as_array().unwrap().len(), 1);
    // The default tag is `latest`, in a directory created with its parents.
    let deep = env.root.join("a/b/c");
    fk_ok(
        &env.store_a,
        &["export", "src:v1", &format!("oci:{}", deep.display())],
    );
    manifest_of(&deep, "latest");
    // Both read back.
    let store_b = env.root.join("store-b");
    fk_ok(
        &store_b,
        &["pull", &format!("oci:{}:flat", src.display()), "flat:1"],
    );
    fk_ok(
        &store_b,
        &["pull", &format!("oci:{}", deep.display()), "deep:1"],
    );
    similar_asserts::assert_eq!(
        fk_ok(&store_b, &["dump", "flat:1"]),
        fk_ok(&store_b, &["dump", "deep:1"])
    );
}

#[test]
fn interrupted_export_leaves_no_dangling_index() {
    let env = setup();
    let out_dir = env.root.join("crash");
    let out = Command::new(env!("CARGO_BIN_EXE_fukastor"))
        .arg("--store")
        .arg(&env.store_a)
        .args(["export", "src:v1", &format!("oci:{}", out_dir.display())])
        .env("FUKASTOR_FAILPOINT", "export:blobs-written")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    // Killed after the blobs, before index.json.
    assert!(!out_dir.join("index.json").exists());
    assert_eq!(
        std::fs::read_dir(out_dir.join("blobs/sha256"))
            .unwrap()
            .count(),
        3
    );
    // The directory is still usable: export again, and read it back.
    let dest = format!("oci:{}", out_dir.display());
    fk_ok(&env.store_a, &["export", "src:v1", &dest]);
    let store_b = env.root.join("store-b");
    fk_ok(&store_b, &["pull", &dest, "back:1"]);
    similar_asserts::assert_eq!(
        fk_ok(&env.store_a, &["dump", "src:v1"]),
        fk_ok(&store_b, &["dump", "back:1"])
    );
}
