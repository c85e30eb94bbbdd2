//! Shared helpers for fukastor's integration tests (`mod common;`).
//!
//! - [`Store`]: runs the `fukastor` binary against a throw-away store and
//!   captures its output; [`MountGuard`] unmounts in `Drop`, so a failing test
//!   leaves no mount behind.
//! - [`fixtures`]: the reference images built by `integration/fixtures.sh`.
//!   Missing fixtures, tools or privileges make a test FAIL with a message
//!   saying what to do ([`require_root`], [`require_tool`]); nothing is skipped.
//! - [`walk`]: every path under a directory with the metadata a container
//!   image must preserve; [`assert_trees_eq`] compares two walks and prints a
//!   readable, size-capped diff.
//! - [`umoci_reference`]: the walk of `umoci unpack` of a fixture tag, the
//!   reference that fukastor's mounts are compared with.
//! - [`parse_dump`]: a strict parser for composefs dumpfiles (`fukastor dump`).
//!
//! Only the command-line contract of fukastor is used, never its library.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------

/// Panics unless the test runs as root (mounting and `umoci unpack` need it).
pub fn require_root() {
    if !rustix::process::geteuid().is_root() {
        panic!(
            "this test needs root: it mounts images and unpacks reference images with umoci.\n\
             Run it as root, e.g. `sudo -E cargo test --release` or integration/run-tests.sh."
        );
    }
}

/// Finds `tool` in `PATH`, or panics naming the Debian package that has it.
pub fn require_tool(tool: &str, debian_package: &str) -> PathBuf {
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin"));
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{tool}` is not installed (not found in PATH): install the Debian package \
         `{debian_package}` (integration/run-tests.sh installs everything the tests need)"
    );
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The reference images built by `integration/fixtures.sh`.
#[derive(Debug, Clone)]
pub struct Fixtures {
    pub dir: PathBuf,
}

/// Locates the fixtures (`$FUKASTOR_FIXTURES`, default
/// `/var/tmp/fukastor-fixtures`) and panics if they are not built.
pub fn fixtures() -> Fixtures {
    let dir = std::env::var_os("FUKASTOR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/fukastor-fixtures"));
    let stamp = dir.join("STAMP");
    if !stamp.is_file() || !dir.join("oci/index.json").is_file() {
        panic!(
            "the test fixtures are missing: {} not found.\n\
             Build them with `integration/fixtures.sh` (as root; it needs umoci, skopeo, debootstrap, \
             busybox-static, libcap2-bin, attr, jq and a Debian mirror), or run every test with \
             `integration/run-tests.sh`, which installs the tools and builds them.\n\
             FUKASTOR_FIXTURES selects another fixtures directory.",
            stamp.display()
        );
    }
    Fixtures { dir }
}

impl Fixtures {
    /// The OCI layout holding every tag.
    pub fn layout(&self) -> PathBuf {
        self.dir.join("oci")
    }

    /// The tags present in the layout's `index.json`.
    pub fn tags(&self) -> Vec<String> {
        let index = std::fs::read(self.layout().join("index.json")).expect("read index.json");
        let index: serde_json::Value = serde_json::from_slice(&index).expect("index.json is JSON");
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .map(str::to_owned)
            .collect()
    }

    /// `oci:LAYOUT:TAG`, after checking that the tag exists.
    pub fn oci(&self, tag: &str) -> String {
        let tags = self.tags();
        if !tags.iter().any(|t| t == tag) {
            panic!(
                "fixture tag `{tag}` is missing from {} (it has {tags:?}): rebuild the fixtures \
                 with `FUKASTOR_FIXTURES_FORCE=1 integration/fixtures.sh`",
                self.layout().display()
            );
        }
        format!("oci:{}:{tag}", self.layout().display())
    }

    /// A file at the fixtures' top level (e.g. `busybox.docker.tar`).
    pub fn file(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        if !path.is_file() {
            panic!(
                "fixture {} is missing: rebuild the fixtures with \
                 `FUKASTOR_FIXTURES_FORCE=1 integration/fixtures.sh`",
                path.display()
            );
        }
        path
    }
}

// ---------------------------------------------------------------------------
// Running fukastor
// ---------------------------------------------------------------------------

/// The `fukastor` binary built by cargo for these tests.
pub fn fukastor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fukastor"))
}

/// Whether `pid` runs the fukastor binary under test (so that clean-up
/// never signals a process it did not start, even after pid reuse).
pub fn is_fukastor_process(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let bin = fukastor_bin()
        .canonicalize()
        .unwrap_or_else(|_| fukastor_bin());
    let exe = exe.as_os_str().as_bytes();
    exe.strip_suffix(b" (deleted)").unwrap_or(exe) == bin.as_os_str().as_bytes()
}

/// The processes `fukastor --store STORE volume-serve` of the store at
/// canonical path `store`, found in /proc: a stopping server removes
/// `server.json` first and then still reclaims, deletes its spare head
/// layers and unmounts its FUSE export, so a test that waits for it to be
/// gone must look for the process itself.
pub fn volume_server_processes(store: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The program first: reading another process's `cmdline`
            // takes its memory map's lock, which a stuck process may hold
            // (`/proc/PID/exe` does not).
            if !is_fukastor_process(*pid) {
                return false;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&&b"volume-serve"[..])
                && args.windows(2).any(|w| {
                    w[0] == b"--store"
                        && Path::new(OsStr::from_bytes(w[1]))
                            .canonicalize()
                            .ok()
                            .as_deref()
                            == Some(store)
                })
        })
        .collect()
}

/// How long one fukastor (or helper) command may run before the test fails.
fn command_timeout() -> Duration {
    let secs = std::env::var("FUKASTOR_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// The captured result of one command.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with the command, its status and its output unless it succeeded.
    pub fn assert_success(&self) -> &Self {
        if !self.success() {
            panic!("command failed: {self}");
        }
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 4000;
        let cap = |s: &str| -> String {
            if s.len() > MAX {
                let mut end = MAX;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}… ({} bytes in all)", &s[..end], s.len())
            } else {
                s.to_owned()
            }
        };
        write!(
            f,
            "`{}` -> {} after {:.1?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.command,
            self.status,
            self.elapsed,
            cap(&self.stdout_str()),
            cap(&self.stderr)
        )
    }
}

/// Runs a command with stdin closed and a timeout, capturing its output.
pub fn run_command(cmd: Command) -> Run {
    run_command_inner(cmd, None)
}

/// Runs a command with `input` on its stdin (then closed) and a timeout,
/// capturing its output (for hooks, which read JSON on stdin).
pub fn run_command_with_input(cmd: Command, input: &[u8]) -> Run {
    run_command_inner(cmd, Some(input.to_vec()))
}

fn run_command_inner(mut cmd: Command, input: Option<Vec<u8>>) -> Run {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let start = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
    // Fed from a thread: a child that does not read its stdin (or fails
    // first) must not block the test.
    let in_thread = input.map(|data| {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        })
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let timeout = command_timeout();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{command}` did not finish within {timeout:?} (FUKASTOR_TEST_TIMEOUT); killed it"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_thread.join().unwrap();
    let stderr = String::from_utf8_lossy(&err_thread.join().unwrap()).into_owned();
    if let Some(t) = in_thread {
        let _ = t.join();
    }
    Run {
        command,
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// A throw-away fukastor store, deleted (after unmounting) when dropped.
#[derive(Debug)]
pub struct Store {
    dir: tempfile::TempDir,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fukastor-test-store-")
            .tempdir()
            .expect("create a temporary store directory");
        Store { dir }
    }

    /// A store in a new directory under `parent` (a filesystem of the
    /// test's choosing).
    pub fn new_in(parent: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fukastor-test-store-")
            .tempdir_in(parent)
            .expect("create a temporary store directory");
        Store { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `fukastor --store DIR` without further arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(fukastor_bin());
        cmd.arg("--store").arg(self.path());
        cmd
    }

    /// Runs `fukastor --store DIR ARGS...` (the result may be a failure).
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        run_command(cmd)
    }

    /// Runs `fukastor --store DIR ARGS...` and panics unless it succeeds.
    pub fn ok<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let run = self.run(args);
        run.assert_success();
        run
    }

    /// `fukastor -q pull SOURCE`: returns the 64-hex image ID.
    pub fn pull(&self, source: &str) -> String {
        let run = self.ok(["-q", "pull", source]);
        let id = run.stdout_str().trim().to_owned();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "`pull -q` must print only the 64-hex image ID, got {id:?}\n{run}"
        );
        id
    }

    /// `fukastor mount IMAGE MNT --kernel`; the guard unmounts when dropped.
    pub fn mount_kernel(&self, image: &str, mountpoint: &Path) -> MountGuard {
        self.mount_with(image, mountpoint, "--kernel")
    }

    /// `fukastor mount IMAGE MNT --fuse`; the guard unmounts when dropped.
    pub fn mount_fuse(&self, image: &str, mountpoint: &Path) -> MountGuard {
        self.mount_with(image, mountpoint, "--fuse")
    }

    fn mount_with(&self, image: &str, mountpoint: &Path, flag: &str) -> MountGuard {
        let run = self.run([
            OsStr::new("mount"),
            OsStr::new(image),
            mountpoint.as_os_str(),
            OsStr::new(flag),
        ]);
        let guard = MountGuard {
            store: self.path().to_owned(),
            mountpoint: mountpoint.to_owned(),
            active: true,
        };
        if !run.success() {
            // The guard still cleans up a half-done mount.
            drop(guard);
            panic!("mount {flag} failed: {run}");
        }
        guard
    }

    /// `fukastor --json fsck`, asserting exit status 0 and `"clean": true`.
    pub fn assert_fsck_clean(&self) {
        let run = self.run(["--json", "fsck"]);
        let report: Result<serde_json::Value, _> = serde_json::from_slice(&run.stdout);
        let clean = report.as_ref().ok().and_then(|r| r["clean"].as_bool());
        assert!(
            run.success() && clean == Some(true),
            "fsck does not call the store clean: {run}"
        );
    }
}

/// A mounted image; unmounts (with `fukastor umount`, then `umount -l` as a
/// last resort) when dropped, so a failing test leaves no mount behind.
#[derive(Debug)]
pub struct MountGuard {
    store: PathBuf,
    mountpoint: PathBuf,
    active: bool,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts now and asserts that `fukastor umount` succeeded.
    pub fn unmount(mut self) {
        self.active = false;
        let run = self.umount_command();
        let still = is_mountpoint(&self.mountpoint);
        if still {
            force_unmount(&self.mountpoint);
        }
        run.assert_success();
        assert!(
            !still,
            "`fukastor umount` succeeded but {} is still a mount point",
            self.mountpoint.display()
        );
    }

    fn umount_command(&self) -> Run {
        let mut cmd = Command::new(fukastor_bin());
        cmd.arg("--store")
            .arg(&self.store)
            .arg("umount")
            .arg(&self.mountpoint);
        run_command(cmd)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        let run = self.umount_command();
        if !run.success() {
            eprintln!("cleanup: fukastor umount failed: {run}");
        }
        if is_mountpoint(&self.mountpoint) {
            eprintln!(
                "cleanup: {} still mounted, detaching it with umount -l",
                self.mountpoint.display()
            );
            force_unmount(&self.mountpoint);
        }
    }
}

fn force_unmount(path: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stdin(Stdio::null())
        .status();
}

/// Undoes the octal escapes (`\040`) of /proc/self/mountinfo.
pub fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Whether `path` is a mount point right now (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == path.as_os_str().as_bytes())
}

/// `findmnt -n -o SOURCE,FSTYPE MNT` as (source, fstype).
pub fn findmnt_source_fstype(mountpoint: &Path) -> (String, String) {
    require_tool("findmnt", "util-linux");
    let mut cmd = Command::new("findmnt");
    cmd.args(["-n", "-o", "SOURCE,FSTYPE"]).arg(mountpoint);
    let run = run_command(cmd);
    run.assert_success();
    let out = run.stdout_str();
    let mut fields = out.split_whitespace();
    let source = fields.next().unwrap_or_default().to_owned();
    let fstype = fields.next().unwrap_or_default().to_owned();
    (source, fstype)
}

/// A fresh empty directory (under the system temp dir) to mount on or unpack into.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a scratch directory")
}

// ---------------------------------------------------------------------------
// Tree walks
// ---------------------------------------------------------------------------

/// A path as raw bytes (names need not be UTF-8), always starting with `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawPath(pub Vec<u8>);

impl RawPath {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_os_string(&self) -> OsString {
        OsString::from_vec(self.0.clone())
    }
}

impl fmt::Debug for RawPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl fmt::Display for RawPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// File type, as `stat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

/// What an image must preserve of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files only.
    pub size: Option<u64>,
    /// Hex sha256 of the content, regular files only.
    pub sha256: Option<String>,
    /// Symlinks only: the target, raw bytes.
    pub symlink: Option<Vec<u8>>,
    /// Device nodes only: (major, minor).
    pub rdev: Option<(u32, u32)>,
    /// Every xattr except `trusted.overlay.*` and `security.selinux`.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Regular files with nlink > 1: the smallest path of the hardlink group.
    pub hardlink_group: Option<RawPath>,
}

pub type Tree = BTreeMap<RawPath, Meta>;

/// Whether an xattr is compared at all: overlayfs' private ones and SELinux
/// labels belong to the host, not to the image.
pub fn xattr_is_compared(name: &[u8]) -> bool {
    !(name.starts_with(b"trusted.overlay.") || name == b"security.selinux")
}

fn read_xattrs(path: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(len) => len,
        Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    if len == 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; len];
    let len = rustix::fs::llistxattr(path, &mut names[..])?;
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !xattr_is_compared(name) {
            continue;
        }
        let name_os = OsStr::from_bytes(name);
        let size = rustix::fs::lgetxattr_query(path, name_os)?;
        let mut value = vec![0u8; size];
        let size = rustix::fs::lgetxattr(path, name_os, &mut value[..])?;
        value.truncate(size);
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn join_raw(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Records every path under `root` (the root itself is `/`), without
/// following symlinks. Panics on I/O errors, naming the path.
pub fn walk(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut inodes: HashMap<(u64, u64), Vec<RawPath>> = HashMap::new();
    let mut stack: Vec<(Vec<u8>, PathBuf)> = vec![(b"/".to_vec(), root.to_owned())];
    while let Some((rel, abs)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&abs)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", abs.display()));
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::CharDev
        } else if ft.is_block_device() {
            Kind::BlockDev
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            panic!("{}: unknown file type {:o}", abs.display(), meta.mode());
        };
        let is_file = kind == Kind::File;
        let entry = Meta {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: is_file.then(|| meta.size()),
            sha256: is_file.then(|| {
                sha256_file(&abs).unwrap_or_else(|e| panic!("read {}: {e}", abs.display()))
            }),
            symlink: (kind == Kind::Symlink).then(|| {
                std::fs::read_link(&abs)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", abs.display()))
                    .into_os_string()
                    .into_vec()
            }),
            rdev: matches!(kind, Kind::CharDev | Kind::BlockDev).then(|| {
                (
                    rustix::fs::major(meta.rdev()),
                    rustix::fs::minor(meta.rdev()),
                )
            }),
            xattrs: read_xattrs(&abs)
                .unwrap_or_else(|e| panic!("xattrs of {}: {e}", abs.display())),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            hardlink_group: None,
        };
        if is_file && meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(RawPath(rel.clone()));
        }
        if kind == Kind::Dir {
            let entries = std::fs::read_dir(&abs)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
            for child in entries {
                let child = child.unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
                let name = child.file_name().into_vec();
                stack.push((join_raw(&rel, &name), child.path()));
            }
        }
        tree.insert(RawPath(rel), entry);
    }
    for paths in inodes.into_values() {
        let leader = paths.iter().min().cloned();
        for p in paths {
            tree.get_mut(&p).unwrap().hardlink_group = leader.clone();
        }
    }
    tree
}

// ---------------------------------------------------------------------------
// Comparing walks
// ---------------------------------------------------------------------------

fn hex_or_text(v: &[u8]) -> String {
    if !v.is_empty() && v.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        format!("0x{}", hex::encode(v))
    }
}

/// One line per path, every compared field spelled out (for diffs).
pub fn render(path: &RawPath, m: &Meta) -> String {
    use fmt::Write;
    let mut s = format!("{path}  {:?} {:04o} {}:{}", m.kind, m.mode, m.uid, m.gid);
    if let Some(size) = m.size {
        write!(s, " size={size}").unwrap();
    }
    if let Some(sha) = &m.sha256 {
        write!(s, " sha256={}", &sha[..16]).unwrap();
    }
    if let Some(target) = &m.symlink {
        write!(s, " -> {}", target.escape_ascii()).unwrap();
    }
    if let Some((maj, min)) = m.rdev {
        write!(s, " rdev={maj}:{min}").unwrap();
    }
    write!(s, " mtime={}.{:09}", m.mtime.0, m.mtime.1).unwrap();
    if let Some(group) = &m.hardlink_group {
        write!(s, " hardlink-group={group}").unwrap();
    }
    for (k, v) in &m.xattrs {
        write!(s, " xattr:{}={}", k.escape_ascii(), hex_or_text(v)).unwrap();
    }
    s
}

/// Names of the fields in which two entries differ.
pub fn differing_fields(a: &Meta, b: &Meta) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.kind != b.kind {
        out.push("kind");
    }
    if a.mode != b.mode {
        out.push("mode");
    }
    if a.uid != b.uid || a.gid != b.gid {
        out.push("owner");
    }
    if a.size != b.size {
        out.push("size");
    }
    if a.sha256 != b.sha256 {
        out.push("content");
    }
    if a.symlink != b.symlink {
        out.push("symlink");
    }
    if a.rdev != b.rdev {
        out.push("rdev");
    }
    if a.xattrs != b.xattrs {
        out.push("xattrs");
    }
    if a.mtime != b.mtime {
        out.push("mtime");
    }
    if a.hardlink_group != b.hardlink_group {
        out.push("hardlinks");
    }
    out
}

/// How many differing paths a failed comparison shows.
const MAX_SHOWN: usize = 60;

/// Asserts that two walks are equal. On failure, prints a summary (counts per
/// field) and a line diff of at most [`MAX_SHOWN`] differing paths.
pub fn assert_trees_eq(
    context: &str,
    expected_name: &str,
    expected: &Tree,
    actual_name: &str,
    actual: &Tree,
) {
    let mut only_expected = 0usize;
    let mut only_actual = 0usize;
    let mut per_field: BTreeMap<&str, usize> = BTreeMap::new();
    let mut shown_paths: Vec<&RawPath> = Vec::new();
    let mut differing = 0usize;
    let all: std::collections::BTreeSet<&RawPath> = expected.keys().chain(actual.keys()).collect();
    for path in all {
        let differs = match (expected.get(path), actual.get(path)) {
            (Some(a), Some(b)) => {
                let fields = differing_fields(a, b);
                for f in &fields {
                    *per_field.entry(f).or_default() += 1;
                }
                !fields.is_empty()
            }
            (Some(_), None) => {
                only_expected += 1;
                true
            }
            (None, Some(_)) => {
                only_actual += 1;
                true
            }
            (None, None) => unreachable!(),
        };
        if differs {
            differing += 1;
            if shown_paths.len() < MAX_SHOWN {
                shown_paths.push(path);
            }
        }
    }
    if differing == 0 {
        return;
    }
    let side = |tree: &Tree| -> String {
        shown_paths
            .iter()
            .map(|p| {
                tree.get(*p)
                    .map_or_else(|| format!("{p}  <absent>"), |m| render(p, m))
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    let summary = format!(
        "{context}: {differing} of {} paths differ ({only_expected} only in {expected_name}, \
         {only_actual} only in {actual_name}; differing fields: {per_field:?}); showing the first {}",
        expected.len().max(actual.len()),
        shown_paths.len()
    );
    eprintln!("{summary}");
    let (left, right) = (side(expected), side(actual));
    similar_asserts::assert_eq!(expected: left, actual: right, "{summary} (left: {expected_name}, right: {actual_name})");
    // Both renderings can coincide only if render() misses a field.
    panic!("{summary}, but the rendered lines are equal: render() misses a field");
}

// ---------------------------------------------------------------------------
// Reference unpacks with umoci
// ---------------------------------------------------------------------------

/// The walk of `umoci unpack --image LAYOUT:TAG` (rootfs), computed once per
/// tag per test process. Needs root.
pub fn umoci_reference(fixtures: &Fixtures, tag: &str) -> Arc<Tree> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Tree>>>> = OnceLock::new();
    require_root();
    require_tool("umoci", "umoci");
    let cache = CACHE.get_or_init(Default::default);
    // Held while unpacking: one umoci at a time, and each tag only once.
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tree) = cache.get(tag) {
        return tree.clone();
    }
    let image = format!("{}:{tag}", fixtures.layout().display());
    let _ = fixtures.oci(tag); // checks that the tag exists
    let scratch = scratch_dir("fukastor-test-umoci-");
    let bundle = scratch.path().join("bundle");
    let mut cmd = Command::new("umoci");
    cmd.args(["unpack", "--image"]).arg(&image).arg(&bundle);
    run_command(cmd).assert_success();
    let tree = Arc::new(walk(&bundle.join("rootfs")));
    cache.insert(tag.to_owned(), tree.clone());
    tree
}

// ---------------------------------------------------------------------------
// composefs dumpfiles
// ---------------------------------------------------------------------------

/// One line of a composefs dumpfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpEntry {
    pub path: RawPath,
    pub size: u64,
    /// Full st_mode (type and permission bits); for a hardlink line, None.
    pub mode: Option<u32>,
    /// For a hardlink line: the path it links to.
    pub hardlink_to: Option<RawPath>,
    pub nlink: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub rdev: Option<u64>,
    pub mtime: Option<(i64, u32)>,
    /// Symlink target or object path (None for `-`).
    pub payload: Option<Vec<u8>>,
    pub content: Option<Vec<u8>>,
    pub digest: Option<String>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Undoes dumpfile escaping (`\\`, `\n`, `\r`, `\t`, `\xHH`).
pub fn dump_unescape(field: &str) -> Result<Vec<u8>, String> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'x') => {
                let hex = field
                    .get(i + 2..i + 4)
                    .ok_or_else(|| format!("truncated \\x escape in {field:?}"))?;
                out.push(
                    u8::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad \\x escape in {field:?}"))?,
                );
                i += 4;
                continue;
            }
            other => {
                return Err(format!(
                    "unknown escape \\{:?} in {field:?}",
                    other.map(|c| *c as char)
                ));
            }
        }
        i += 2;
    }
    Ok(out)
}

fn dump_optional(field: &str) -> Result<Option<Vec<u8>>, String> {
    if field == "-" {
        Ok(None)
    } else {
        dump_unescape(field).map(Some)
    }
}

fn parse_num<T: std::str::FromStr>(field: &str, what: &str) -> Result<T, String> {
    field
        .parse()
        .map_err(|_| format!("{what} is not a number: {field:?}"))
}

/// Parses one dumpfile line:
/// `PATH SIZE MODE NLINK UID GID RDEV SEC.NSEC PAYLOAD CONTENT DIGEST [XATTR=VALUE...]`,
/// where a hardlink has MODE `@...` and PAYLOAD the path it links to.
pub fn parse_dump_line(line: &str) -> Result<DumpEntry, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 11 {
        return Err(format!("{} fields, expected at least 11", fields.len()));
    }
    let path = dump_unescape(fields[0])?;
    if !path.starts_with(b"/") {
        return Err(format!("path {:?} is not absolute", fields[0]));
    }
    let size = parse_num(fields[1], "size")?;
    let mut xattrs = BTreeMap::new();
    for x in &fields[11..] {
        let (k, v) = x
            .split_once('=')
            .ok_or_else(|| format!("xattr without '=': {x:?}"))?;
        xattrs.insert(dump_unescape(k)?, dump_unescape(v)?);
    }
    if let Some(_mode) = fields[2].strip_prefix('@') {
        let target = dump_unescape(fields[8])?;
        return Ok(DumpEntry {
            path: RawPath(path),
            size,
            mode: None,
            hardlink_to: Some(RawPath(target)),
            nlink: None,
            uid: None,
            gid: None,
            rdev: None,
            mtime: None,
            payload: None,
            content: None,
            digest: None,
            xattrs,
        });
    }
    let mode = u32::from_str_radix(fields[2], 8)
        .map_err(|_| format!("mode is not octal: {:?}", fields[2]))?;
    let (sec, nsec) = fields[7]
        .split_once('.')
        .ok_or_else(|| format!("mtime without '.': {:?}", fields[7]))?;
    let nsec: u32 = parse_num(nsec, "mtime nanoseconds")?;
    if nsec >= 1_000_000_000 {
        return Err(format!("mtime nanoseconds out of range: {nsec}"));
    }
    Ok(DumpEntry {
        path: RawPath(path),
        size,
        mode: Some(mode),
        hardlink_to: None,
        nlink: Some(parse_num(fields[3], "nlink")?),
        uid: Some(parse_num(fields[4], "uid")?),
        gid: Some(parse_num(fields[5], "gid")?),
        rdev: Some(parse_num(fields[6], "rdev")?),
        mtime: Some((parse_num(sec, "mtime seconds")?, nsec)),
        payload: dump_optional(fields[8])?,
        content: dump_optional(fields[9])?,
        digest: (fields[10] != "-").then(|| fields[10].to_owned()),
        xattrs,
    })
}

/// Parses a whole dumpfile; panics naming the first bad line.
pub fn parse_dump(text: &[u8]) -> Vec<DumpEntry> {
    let text =
        std::str::from_utf8(text).expect("a dumpfile is ASCII (every other byte is escaped)");
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            parse_dump_line(line).unwrap_or_else(|e| panic!("dump line {}: {e}\n  {line}", n + 1))
        })
        .collect()
}
