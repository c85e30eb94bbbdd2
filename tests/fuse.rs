//! Mounting images: FUSE (plain and passthrough) against the kernel mount and
//! the image's own composefs dumpfile, under load, across the server's life
//! cycle, and for an unprivileged user.
//!
//! Everything goes through the `fukastor` command line. Missing root,
//! `/dev/fuse`, fixtures or tools make a test FAIL with a message naming what
//! is missing. Every mount is owned by a guard that unmounts it (and, if need
//! be, kills its server by pid and detaches the mount) when dropped, so a
//! failing test leaves neither a mount nor a server behind.
//!
//! Run as root: `cargo test --release --test fuse`.

mod common;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use composefs::fsverity::{FsVerityHasher, Sha256HashValue};
use composefs::generic_tree::{Leaf, LeafId, Stat};
use composefs::tree::{Directory, FileSystem, Inode, LeafContent, RegularFile};
use sha2::Digest;

use common::{
    DumpEntry, Run, Store, fixtures, fukastor_bin, parse_dump, require_root, require_tool,
    run_command, scratch_dir,
};

// ---------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------

/// Root and a FUSE device: every test here mounts.
fn require_fuse() {
    require_root();
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        Ok(_) => panic!("/dev/fuse exists but is not a character device: FUSE tests cannot run"),
        Err(e) => panic!(
            "/dev/fuse is missing ({e}): FUSE tests need the fuse module (`modprobe fuse`) \
             and the device node (`mknod -m 666 /dev/fuse c 10 229`)"
        ),
    }
}

/// A store holding fixture `tag` under the name `tag`.
fn store_with(tag: &str) -> Store {
    let fx = fixtures();
    let store = Store::new();
    store.ok(["-q", "pull", &fx.oci(tag), tag]);
    store
}

// ---------------------------------------------------------------------------
// Processes, mount table, tracking files, server logs
// ---------------------------------------------------------------------------

/// True while `pid` is a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != "Z" && state != "X")
}

/// The state letter of `pid` (R, S, Z, …), None once it is reaped.
fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// Waits up to `limit` for `pid` to be gone.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Whether `pid` is a fukastor FUSE server for `mountpoint` (so that cleanup
/// never signals a process it did not start, even after pid reuse).
fn is_our_server(pid: u32, mountpoint: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.contains(&&b"fuse-serve"[..]) && args.contains(&mountpoint.as_os_str().as_bytes())
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Undoes the octal escapes (`\040`) of /proc/self/mountinfo.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
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

/// The (fstype, source) of the mount at `canonical`, from the mount table.
/// Never touches the path itself (a dead FUSE server makes stat fail).
fn mount_at(canonical: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mp = unescape_mountinfo(left.split(' ').nth(4)?);
        if mp != canonical.as_os_str().as_bytes() {
            return None;
        }
        let mut r = right.split(' ');
        let fstype = r.next()?.to_owned();
        let source = String::from_utf8_lossy(&unescape_mountinfo(r.next()?)).into_owned();
        Some((fstype, source))
    })
}

fn is_mounted(canonical: &Path) -> bool {
    mount_at(canonical).is_some()
}

/// `STORE/fukastor/mounts/<key>.json|log`, `key` = first 16 hex digits of
/// the sha256 of the canonical mountpoint (see src/mount/track.rs).
fn tracking_file(store: &Path, canonical: &Path, ext: &str) -> PathBuf {
    let h = hex::encode(sha2::Sha256::digest(canonical.as_os_str().as_bytes()));
    store
        .join("fukastor/mounts")
        .join(format!("{}.{ext}", &h[..16]))
}

/// Removes terminal colour sequences (the server logs with ANSI colours).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn server_log(store: &Path, canonical: &Path) -> String {
    let path = tracking_file(store, canonical, "log");
    let text = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading the server log {}: {e}", path.display()));
    strip_ansi(&String::from_utf8_lossy(&text))
}

/// The server's closing statistics line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    reads: u64,
    bytes: u64,
    opens: u64,
    passthrough_opens: u64,
    lookups: u64,
    flushes: u64,
}

/// Parses "served N reads (B bytes), O opens (P passthrough), L lookups,
/// F flushes".
fn parse_served(log: &str) -> Option<Served> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("served ") && l.contains(" reads ("))?;
    let rest = &line[line.find("served ")?..];
    let nums: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    match nums[..] {
        [reads, bytes, opens, passthrough_opens, lookups, flushes] => Some(Served {
            reads,
            bytes,
            opens,
            passthrough_opens,
            lookups,
            flushes,
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Running fukastor, as root or as an unprivileged user
// ---------------------------------------------------------------------------

/// An unprivileged account and a copy of the binary it can execute.
#[derive(Debug, Clone)]
struct User {
    uid: u32,
    gid: u32,
    bin: PathBuf,
}

/// `fukastor --store STORE` (as `user` if given), logging at INFO (inherited
/// by a spawned server, so its log ends with the statistics line).
fn fk(store: &Path, user: Option<&User>) -> Command {
    let mut cmd = match user {
        None => Command::new(fukastor_bin()),
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups")
                .arg("--")
                .arg(&u.bin);
            c
        }
    };
    cmd.env("FUKASTOR_LOG", "info").arg("--store").arg(store);
    cmd
}

fn fk_run<I, S>(store: &Path, user: Option<&User>, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = fk(store, user);
    cmd.args(args);
    run_command(cmd)
}

/// `fukastor --json mounts`, parsed.
fn mounts_json(store: &Path, user: Option<&User>) -> Vec<serde_json::Value> {
    let run = fk_run(store, user, ["--json", "mounts"]);
    run.assert_success();
    serde_json::from_slice::<Vec<serde_json::Value>>(&run.stdout)
        .unwrap_or_else(|e| panic!("`mounts --json` is not a JSON array ({e}): {run}"))
}

fn mounts_row(store: &Path, user: Option<&User>, canonical: &Path) -> Option<serde_json::Value> {
    mounts_json(store, user)
        .into_iter()
        .find(|r| r["mountpoint"].as_str().map(Path::new) == Some(canonical))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `--kernel`
    Kernel,
    /// `--fuse`
    Fuse,
    /// `--fuse=passthrough`
    Passthrough,
    /// no flag
    Default,
}

impl Mode {
    fn flag(self) -> Option<&'static str> {
        match self {
            Mode::Kernel => Some("--kernel"),
            Mode::Fuse => Some("--fuse"),
            Mode::Passthrough => Some("--fuse=passthrough"),
            Mode::Default => None,
        }
    }
}

/// A mount made by a test. Dropping it unmounts with `fukastor umount`; if
/// the mount or its server survive that, the server is killed by pid and
/// the mount detached.
#[derive(Debug)]
struct Mounted {
    store: PathBuf,
    /// Canonical mountpoint (computed before mounting: a broken FUSE mount
    /// cannot be canonicalized any more).
    mp: PathBuf,
    pid: Option<u32>,
    active: bool,
}

impl Mounted {
    fn path(&self) -> &Path {
        &self.mp
    }

    /// Cleans up now (what `Drop` does).
    fn cleanup(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if is_mounted(&self.mp) {
            // As root, whoever mounted it.
            let run = fk_run(
                &self.store,
                None,
                [OsStr::new("umount"), self.mp.as_os_str()],
            );
            if !run.success() {
                eprintln!("cleanup: fukastor umount failed: {run}");
            }
        }
        if let Some(pid) = self.pid
            && !wait_gone(pid, Duration::from_secs(10))
            && is_our_server(pid, &self.mp)
        {
            eprintln!("cleanup: server {pid} still running, killing it");
            signal(pid, rustix::process::Signal::KILL);
            wait_gone(pid, Duration::from_secs(10));
        }
        if is_mounted(&self.mp) {
            eprintln!("cleanup: {} still mounted, detaching it", self.mp.display());
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mp)
                .stdin(Stdio::null())
                .status();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// "… server pid N)" in the output of `mount`.
fn pid_in(stdout: &str) -> Option<u32> {
    let at = stdout.find("server pid ")? + "server pid ".len();
    stdout[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `fukastor mount IMAGE MP [flag]`; returns the guard and the command's
/// result (the guard exists even when the command failed, to clean up).
fn try_mount(
    store: &Path,
    user: Option<&User>,
    image: &str,
    mp: &Path,
    mode: Mode,
) -> (Mounted, Run) {
    let canonical =
        std::fs::canonicalize(mp).unwrap_or_else(|e| panic!("mountpoint {}: {e}", mp.display()));
    let mut args: Vec<OsString> = vec!["mount".into(), image.into(), canonical.clone().into()];
    if let Some(f) = mode.flag() {
        args.push(f.into());
    }
    let run = fk_run(store, user, &args);
    let mut pid = pid_in(&run.stdout_str());
    if run.success() && pid.is_none() && mode != Mode::Kernel {
        pid = mounts_row(store, user, &canonical).and_then(|r| r["pid"].as_u64().map(|p| p as u32));
    }
    let guard = Mounted {
        store: store.to_owned(),
        mp: canonical,
        pid,
        active: true,
    };
    (guard, run)
}

fn mount(store: &Path, image: &str, mp: &Path, mode: Mode) -> Mounted {
    let (guard, run) = try_mount(store, None, image, mp, mode);
    if !run.success() {
        drop(guard);
        panic!("mount {image} ({mode:?}) failed: {run}");
    }
    guard
}

/// Unmounts with `fukastor umount`, asserts that it worked, waits for the
/// server to exit, and returns the server's statistics (FUSE).
fn umount_and_stats(mut m: Mounted, user: Option<&User>) -> Option<Served> {
    let run = fk_run(&m.store, user, [OsStr::new("umount"), m.mp.as_os_str()]);
    assert!(run.success(), "umount failed: {run}");
    assert!(
        !is_mounted(&m.mp),
        "`umount` succeeded but {} is still mounted",
        m.mp.display()
    );
    let pid = m.pid;
    if let Some(pid) = pid {
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "the FUSE server {pid} still runs 10 s after `umount`"
        );
    }
    m.active = false;
    pid.map(|_| {
        let log = server_log(&m.store, &m.mp);
        parse_served(&log)
            .unwrap_or_else(|| panic!("no \"served … reads\" line in the server log:\n{log}"))
    })
}

// ---------------------------------------------------------------------------
// Reading a mounted tree back into a composefs dumpfile
// ---------------------------------------------------------------------------

type Fs = FileSystem<Sha256HashValue>;

/// Builds a composefs tree from what the kernel reports about a mounted tree.
struct TreeReader {
    leaves: Vec<Leaf<RegularFile<Sha256HashValue>>>,
    /// (st_dev, st_ino) of each non-directory seen: its leaf, its reported
    /// st_nlink and its first path.
    inodes: HashMap<(u64, u64), (LeafId, u64, String)>,
    /// Directories whose st_nlink is not 2 + subdirectories.
    problems: Vec<String>,
}

fn xattrs_of(path: &Path) -> std::collections::BTreeMap<Box<OsStr>, Box<[u8]>> {
    let mut out = std::collections::BTreeMap::new();
    let len = rustix::fs::llistxattr_query(path)
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    if len == 0 {
        return out;
    }
    let mut names = vec![0u8; len];
    let len = rustix::fs::llistxattr(path, &mut names[..])
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let size = rustix::fs::lgetxattr_query(path, name)
            .unwrap_or_else(|e| panic!("getxattr {} {name:?}: {e}", path.display()));
        let mut value = vec![0u8; size];
        let size = rustix::fs::lgetxattr(path, name, &mut value[..])
            .unwrap_or_else(|e| panic!("getxattr {} {name:?}: {e}", path.display()));
        value.truncate(size);
        out.insert(Box::from(name), value.into_boxed_slice());
    }
    out
}

fn stat_of(path: &Path, m: &Metadata) -> Stat {
    Stat {
        st_mode: m.mode() & 0o7777,
        st_uid: m.uid(),
        st_gid: m.gid(),
        st_mtim_sec: m.mtime(),
        st_mtim_nsec: m.mtime_nsec() as u32,
        xattrs: xattrs_of(path),
    }
}

fn shown(rel: &[u8]) -> String {
    rel.escape_ascii().to_string()
}

impl TreeReader {
    fn read(root: &Path) -> (Fs, Vec<String>) {
        let mut r = TreeReader {
            leaves: Vec::new(),
            inodes: HashMap::new(),
            problems: Vec::new(),
        };
        let meta = std::fs::symlink_metadata(root)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", root.display()));
        let dir = r.dir(root, b"/", &meta);
        let fs = FileSystem {
            root: dir,
            leaves: std::mem::take(&mut r.leaves),
        };
        // Hardlinks: the kernel's st_nlink must be the number of names the
        // walk found for the inode (the dumpfile writer derives nlink from
        // the tree, so it is checked here).
        let nlinks = fs.nlinks();
        let mut problems = r.problems;
        let mut leaf_checks: Vec<_> = r.inodes.values().collect();
        leaf_checks.sort_by(|a, b| a.2.cmp(&b.2));
        for (id, reported, path) in leaf_checks {
            if u64::from(nlinks[id.0]) != *reported {
                problems.push(format!(
                    "{path}: st_nlink {reported}, but the tree has {} names for it",
                    nlinks[id.0]
                ));
            }
        }
        (fs, problems)
    }

    fn dir(&mut self, abs: &Path, rel: &[u8], meta: &Metadata) -> Directory<Sha256HashValue> {
        let mut dir = Directory::new(stat_of(abs, meta));
        let mut subdirs = 0u64;
        let entries =
            std::fs::read_dir(abs).unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
            let name = entry.file_name();
            let child_abs = entry.path();
            let mut child_rel = rel.to_vec();
            if child_rel != b"/" {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            let m = std::fs::symlink_metadata(&child_abs)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", child_abs.display()));
            let inode = if m.is_dir() {
                subdirs += 1;
                Inode::Directory(Box::new(self.dir(&child_abs, &child_rel, &m)))
            } else {
                Inode::leaf(self.leaf(&child_abs, &child_rel, &m))
            };
            assert!(
                dir.insert(&name, inode),
                "{}: name listed twice",
                shown(&child_rel)
            );
        }
        if meta.nlink() != 2 + subdirs {
            self.problems.push(format!(
                "{}: directory st_nlink {}, expected 2 + {subdirs} subdirectories",
                shown(rel),
                meta.nlink()
            ));
        }
        dir
    }

    fn leaf(&mut self, abs: &Path, rel: &[u8], m: &Metadata) -> LeafId {
        let key = (m.dev(), m.ino());
        if let Some((id, _, _)) = self.inodes.get(&key) {
            return *id;
        }
        let ft = m.file_type();
        let content = if ft.is_file() {
            LeafContent::Regular(self.file(abs, rel, m.size()))
        } else if ft.is_symlink() {
            let target = std::fs::read_link(abs)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", abs.display()));
            if target.as_os_str().len() as u64 != m.size() {
                self.problems.push(format!(
                    "{}: symlink st_size {} but its target has {} bytes",
                    shown(rel),
                    m.size(),
                    target.as_os_str().len()
                ));
            }
            LeafContent::Symlink(target.into_os_string().into_boxed_os_str())
        } else if ft.is_char_device() {
            LeafContent::CharacterDevice(m.rdev())
        } else if ft.is_block_device() {
            LeafContent::BlockDevice(m.rdev())
        } else if ft.is_fifo() {
            LeafContent::Fifo
        } else if ft.is_socket() {
            LeafContent::Socket
        } else {
            panic!("{}: unknown file type {:o}", abs.display(), m.mode());
        };
        let id = LeafId(self.leaves.len());
        self.leaves.push(Leaf {
            stat: stat_of(abs, m),
            content,
        });
        self.inodes.insert(key, (id, m.nlink(), shown(rel)));
        id
    }

    /// Regular file content as composefs stores it: inline up to 64 bytes,
    /// otherwise the fs-verity digest of the bytes read through the mount.
    fn file(&mut self, abs: &Path, rel: &[u8], size: u64) -> RegularFile<Sha256HashValue> {
        let mut f = File::open(abs).unwrap_or_else(|e| panic!("open {}: {e}", abs.display()));
        if size <= composefs::INLINE_CONTENT_MAX_V0 as u64 {
            let mut data = Vec::new();
            f.read_to_end(&mut data)
                .unwrap_or_else(|e| panic!("read {}: {e}", abs.display()));
            if data.len() as u64 != size {
                self.problems.push(format!(
                    "{}: st_size {size} but {} bytes read",
                    shown(rel),
                    data.len()
                ));
            }
            RegularFile::Inline(data.into_boxed_slice())
        } else {
            let mut hasher = FsVerityHasher::<Sha256HashValue>::new();
            let n = std::io::copy(&mut f, &mut hasher)
                .unwrap_or_else(|e| panic!("read {}: {e}", abs.display()));
            if n != size {
                self.problems
                    .push(format!("{}: st_size {size} but {n} bytes read", shown(rel)));
            }
            RegularFile::External(hasher.digest(), size)
        }
    }
}

/// The dumpfile of a mounted tree, and what its stat data got wrong beyond
/// what a dumpfile shows.
fn dump_mounted(root: &Path) -> (String, Vec<String>) {
    let (fs, problems) = TreeReader::read(root);
    let mut out = Vec::new();
    composefs::dumpfile::write_dumpfile(&mut out, &fs).expect("write the dumpfile");
    (
        String::from_utf8(out).expect("dumpfiles are ASCII"),
        problems,
    )
}

/// Mounts `tag` in `mode`, reads the mounted tree back into a dumpfile and
/// compares it with `fukastor dump`: every path, type, mode, owner, mtime,
/// size, xattr, symlink target, device number, hardlink and content digest.
fn dumpfile_round_trip(tag: &str, mode: Mode) {
    require_fuse();
    let store = store_with(tag);
    let expected = store.ok(["dump", tag]).stdout_str();
    let mnt = scratch_dir("fukastor-test-mnt-");
    let m = mount(store.path(), tag, mnt.path(), mode);
    let start = Instant::now();
    let (actual, problems) = dump_mounted(m.path());
    eprintln!(
        "{tag} {mode:?}: read the mounted tree in {:.1?}",
        start.elapsed()
    );
    if mode != Mode::Kernel {
        let row = mounts_row(store.path(), None, m.path()).expect("the mount is listed");
        let want = if mode == Mode::Passthrough {
            "fuse-passthrough"
        } else {
            "fuse"
        };
        assert_eq!(row["mode"], want, "mode in `mounts --json`: {row}");
    }
    let stats = umount_and_stats(m, None);
    if let Some(s) = stats {
        eprintln!("{tag} {mode:?}: {s:?}");
    }
    // No normalization is needed: the mounted trees show neither the 256
    // whiteout stubs of the EROFS image (overlayfs hides whiteouts, and the
    // FUSE server serves the tree itself) nor any overlayfs-private xattr, and
    // directory sizes are not part of a dumpfile.
    similar_asserts::assert_eq!(
        image_dump: expected,
        mounted_tree: actual,
        "the dumpfile of the {mode:?} mount of {tag} differs from `fukastor dump {tag}`"
    );
    assert!(
        problems.is_empty(),
        "the {mode:?} mount of {tag} reports wrong link counts or sizes:\n{}",
        problems.join("\n")
    );
}

#[test]
fn dumpfile_round_trip_busybox_kernel() {
    dumpfile_round_trip("busybox", Mode::Kernel);
}

#[test]
fn dumpfile_round_trip_busybox_fuse() {
    dumpfile_round_trip("busybox", Mode::Fuse);
}

#[test]
fn dumpfile_round_trip_busybox_passthrough() {
    dumpfile_round_trip("busybox", Mode::Passthrough);
}

#[test]
fn dumpfile_round_trip_bookworm_mod_kernel() {
    dumpfile_round_trip("bookworm-mod", Mode::Kernel);
}

#[test]
fn dumpfile_round_trip_bookworm_mod_fuse() {
    dumpfile_round_trip("bookworm-mod", Mode::Fuse);
}

#[test]
fn dumpfile_round_trip_bookworm_mod_passthrough() {
    dumpfile_round_trip("bookworm-mod", Mode::Passthrough);
}

// ---------------------------------------------------------------------------
// Concurrent random reads
// ---------------------------------------------------------------------------

/// SplitMix64: small, seeded, good enough to pick files and ranges.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A regular file of the image and the store object holding its bytes.
#[derive(Debug)]
struct Target {
    rel: Vec<u8>,
    object: PathBuf,
    size: u64,
}

/// Regular files with an object (not inline), from the image's dumpfile.
fn external_files(store: &Store, tag: &str, min_size: u64) -> Vec<Target> {
    let dump = store.ok(["dump", tag]);
    parse_dump(&dump.stdout)
        .into_iter()
        .filter(|e: &DumpEntry| {
            e.mode.is_some_and(|m| m & 0o170000 == 0o100000) && e.size > min_size
        })
        .map(|e| {
            let payload = e.payload.clone().unwrap_or_else(|| {
                panic!("{}: {} bytes but no object in the dumpfile", e.path, e.size)
            });
            Target {
                rel: e.path.0[1..].to_vec(),
                object: store
                    .path()
                    .join("objects")
                    .join(OsStr::from_bytes(&payload)),
                size: e.size,
            }
        })
        .collect()
}

/// Reads until `buf` is full or end of file.
fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

const THREADS: u64 = 8;
const READS_PER_THREAD: u64 = 2000;
const MAX_READ: u64 = 1 << 20;

/// One reader thread: random files, offsets and lengths; a quarter of the
/// reads on a freshly opened file, one in eight after dropping the file's
/// page cache (so the server, not the cache, answers). Returns the bytes read.
fn random_reader(
    mnt: &Path,
    targets: &[Target],
    objects: &[File],
    seed: u64,
) -> Result<u64, String> {
    let mut rng = Rng(seed);
    let mut open: HashMap<usize, File> = HashMap::new();
    let mut got = vec![0u8; MAX_READ as usize];
    let mut want = vec![0u8; MAX_READ as usize];
    let mut total = 0u64;
    for i in 0..READS_PER_THREAD {
        let idx = rng.below(targets.len() as u64) as usize;
        let t = &targets[idx];
        let path = mnt.join(OsStr::from_bytes(&t.rel));
        let offset = rng.below(t.size);
        let len = 1 + rng.below(MAX_READ) as usize;
        let fresh;
        let file = if rng.below(4) == 0 {
            fresh = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
            &fresh
        } else {
            match open.entry(idx) {
                std::collections::hash_map::Entry::Occupied(o) => &*o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => &*v.insert(
                    File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?,
                ),
            }
        };
        if rng.below(8) == 0 {
            rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed)
                .map_err(|e| format!("fadvise {}: {e}", path.display()))?;
        }
        let n = read_full_at(file, &mut got[..len], offset)
            .map_err(|e| format!("read {} at {offset}+{len}: {e}", path.display()))?;
        let expected_len = len.min((t.size - offset) as usize);
        let m = read_full_at(&objects[idx], &mut want[..expected_len], offset)
            .map_err(|e| format!("read object {}: {e}", t.object.display()))?;
        if n != expected_len || m != expected_len {
            return Err(format!(
                "read {i} of seed {seed:#x}: {} at {offset}+{len} (size {}) returned {n} bytes, \
                 expected {expected_len} (object gave {m})",
                path.display(),
                t.size
            ));
        }
        if got[..n] != want[..n] {
            let first = got[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap();
            return Err(format!(
                "read {i} of seed {seed:#x}: {} at {offset}+{len}: byte {} differs from the \
                 object {} (got {:#04x}, want {:#04x})",
                path.display(),
                offset + first as u64,
                t.object.display(),
                got[first],
                want[first]
            ));
        }
        total += n as u64;
    }
    Ok(total)
}

fn concurrent_random_reads(mode: Mode, seed: u64) {
    require_fuse();
    let store = store_with("bookworm-mod");
    // Files on both sides of the passthrough bound (64 KiB): under
    // passthrough the smaller ones are still read through the server.
    let targets = external_files(&store, "bookworm-mod", 4096);
    let small = targets.iter().filter(|t| t.size < 64 * 1024).count();
    assert!(
        small > 50 && targets.len() - small > 50,
        "{small} files of 4–64 KiB and {} over 64 KiB in bookworm-mod",
        targets.len() - small
    );
    let objects: Vec<File> = targets
        .iter()
        .map(|t| {
            File::open(&t.object).unwrap_or_else(|e| panic!("object {}: {e}", t.object.display()))
        })
        .collect();
    let mnt = scratch_dir("fukastor-test-mnt-");
    let m = mount(store.path(), "bookworm-mod", mnt.path(), mode);
    let start = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (mp, targets, objects) = (m.path(), &targets, &objects);
                s.spawn(move || random_reader(mp, targets, objects, seed ^ (t << 32 | t)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("reader thread panicked".into()))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let stats = umount_and_stats(m, None).expect("FUSE statistics");
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of {THREADS} reader threads failed on the {mode:?} mount:\n{}",
        errors.len(),
        errors
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let bytes: u64 = results.iter().map(|r| *r.as_ref().unwrap()).sum();
    eprintln!(
        "{mode:?}: {} reads of {} files, {bytes} bytes checked in {elapsed:.1?}; server: {stats:?}",
        THREADS * READS_PER_THREAD,
        targets.len()
    );
    assert!(
        stats.reads > 0,
        "the {mode:?} server served no reads (not even of small files): {stats:?}"
    );
    if mode == Mode::Passthrough {
        assert!(
            stats.passthrough_opens > 0,
            "no passthrough open: {stats:?}"
        );
    }
}

#[test]
fn concurrent_random_reads_fuse() {
    concurrent_random_reads(Mode::Fuse, 0x5eed_f05e_0001);
}

#[test]
fn concurrent_random_reads_passthrough() {
    concurrent_random_reads(Mode::Passthrough, 0x5eed_f05e_0002);
}

// ---------------------------------------------------------------------------
// Passthrough really bypasses the server
// ---------------------------------------------------------------------------

/// Reads `files` fully through mount `mnt`, checking each against its object.
fn read_fully(mnt: &Path, files: &[&Target]) -> u64 {
    let mut total = 0;
    for t in files {
        let path = mnt.join(OsStr::from_bytes(&t.rel));
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let object = std::fs::read(&t.object).expect("read the object");
        assert!(data == object, "{} differs from its object", path.display());
        total += data.len() as u64;
    }
    total
}

#[test]
fn passthrough_bypasses_the_server() {
    require_fuse();
    let store = store_with("bookworm-mod");
    let mut targets = external_files(&store, "bookworm-mod", 64 * 1024);
    targets.sort_by(|a, b| b.size.cmp(&a.size).then(a.rel.cmp(&b.rel)));
    let files: Vec<&Target> = targets.iter().take(6).collect();
    let mnt = scratch_dir("fukastor-test-mnt-");

    let m = mount(store.path(), "bookworm-mod", mnt.path(), Mode::Passthrough);
    let bytes = read_fully(m.path(), &files);
    let canonical = m.path().to_owned();
    let pt = umount_and_stats(m, None).expect("statistics");
    let pt_log = server_log(store.path(), &canonical);

    let m = mount(store.path(), "bookworm-mod", mnt.path(), Mode::Fuse);
    assert_eq!(read_fully(m.path(), &files), bytes);
    let plain = umount_and_stats(m, None).expect("statistics");

    eprintln!(
        "read {bytes} bytes of {} files; passthrough: {pt:?}; plain: {plain:?}",
        files.len()
    );
    assert!(
        pt_log.contains("passthrough enabled"),
        "the passthrough server did not enable passthrough:\n{pt_log}"
    );
    assert!(
        plain.reads > 0 && plain.bytes >= bytes,
        "plain FUSE must serve the reads itself: {plain:?} for {bytes} bytes"
    );
    // close() waits for a FLUSH round trip unless the server once answers
    // ENOSYS: then the kernel sends no more. Exactly one (the first close)
    // also proves the counter counts.
    for (mode, s) in [("passthrough", &pt), ("plain", &plain)] {
        assert_eq!(s.flushes, 1, "{mode}: {s:?}");
    }
    // Passthrough is set up per OPEN; plain FUSE answers the first OPEN
    // ENOSYS and the kernel opens every later file without asking.
    assert!(pt.opens >= files.len() as u64, "passthrough: {pt:?}");
    assert_eq!(plain.opens, 1, "plain FUSE: zero-message opens: {plain:?}");
    assert!(
        pt.passthrough_opens >= files.len() as u64,
        "{} files opened through the passthrough mount but only {} passthrough opens: {pt:?}\n{pt_log}",
        files.len(),
        pt.passthrough_opens
    );
    assert!(
        pt.reads == 0 || pt.reads * 100 < plain.reads,
        "passthrough still served {} reads ({} bytes); plain FUSE needed {} for the same files",
        pt.reads,
        pt.bytes,
        plain.reads
    );
}

/// Descriptors of `pid` open on files below `objects`.
fn object_fds(pid: u32, objects: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the server's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(objects))
        .count()
}

/// Plain FUSE opens cost no message, so the server keeps one descriptor per
/// object it read from, and must close it when the kernel forgets the inode
/// (no leak), then serve the file again after a new lookup.
#[test]
fn plain_fuse_closes_object_descriptors_when_the_kernel_forgets() {
    require_fuse();
    let store = store_with("bookworm-mod");
    let targets = external_files(&store, "bookworm-mod", 64 * 1024);
    // Files with distinct objects, so each is its own inode.
    let mut objects = std::collections::BTreeSet::new();
    let files: Vec<&Target> = targets
        .iter()
        .filter(|t| objects.insert(t.object.as_path()))
        .take(8)
        .collect();
    objects.retain(|o| files.iter().any(|t| t.object == *o));
    let objects_dir = std::fs::canonicalize(store.path().join("objects")).expect("objects");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let m = mount(store.path(), "bookworm-mod", mnt.path(), Mode::Fuse);
    let pid = m.pid.expect("a server pid");
    // The server may hold some (the image's own metadata is an object).
    let before = object_fds(pid, &objects_dir);

    let bytes = read_fully(m.path(), &files);
    let kept = object_fds(pid, &objects_dir) - before;
    assert_eq!(
        kept,
        objects.len(),
        "one descriptor per object read ({} files, {bytes} bytes)",
        files.len()
    );

    // Dropping dentries and inodes makes the kernel evict them: FORGET.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop dentries and inodes");
        let left = object_fds(pid, &objects_dir);
        if left == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} object descriptors open 10 s after the kernel dropped its inodes \
             ({before} before reading)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    assert_eq!(
        read_fully(m.path(), &files),
        bytes,
        "read again after FORGET"
    );
    assert_eq!(object_fds(pid, &objects_dir), before + objects.len());
    let stats = umount_and_stats(m, None).expect("statistics");
    assert_eq!(stats.opens, 1, "zero-message opens: {stats:?}");
}

/// A server whose descriptor limit is far below the number of objects read
/// (prlimit: 48, hard) still serves every file right, with and without
/// passthrough: it keeps at most half its limit and drops them all when it
/// reaches that, or when an open fails with EMFILE.
#[test]
fn a_server_with_few_descriptors_serves_every_file() {
    require_fuse();
    require_tool("prlimit", "util-linux");
    let store = store_with("bookworm-mod");
    let targets = external_files(&store, "bookworm-mod", 16 * 1024);
    let files: Vec<&Target> = targets.iter().take(150).collect();
    assert!(files.len() >= 100, "only {} files over 16 KiB", files.len());
    let mnt = scratch_dir("fukastor-test-mnt-");
    let canonical = std::fs::canonicalize(mnt.path()).expect("mountpoint");
    for mode in [Mode::Fuse, Mode::Passthrough] {
        let mut cmd = Command::new("prlimit");
        cmd.env("FUKASTOR_LOG", "info,fukastor::fuse::fds=debug")
            .arg("--nofile=48:48")
            .arg("--")
            .arg(fukastor_bin())
            .arg("--store")
            .arg(store.path())
            .args(["mount", "bookworm-mod"])
            .arg(mnt.path())
            .arg(match mode {
                Mode::Passthrough => "--fuse=passthrough",
                _ => "--fuse",
            });
        let run = run_command(cmd);
        assert!(run.success(), "{mode:?}: mount with 48 descriptors: {run}");
        let m = Mounted {
            store: store.path().to_owned(),
            mp: canonical.clone(),
            pid: mounts_row(store.path(), None, &canonical)
                .and_then(|r| r["pid"].as_u64().map(|p| p as u32)),
            active: true,
        };
        // Twice: the second pass finds some descriptors kept, some dropped.
        let bytes = read_fully(m.path(), &files);
        assert_eq!(read_fully(m.path(), &files), bytes, "{mode:?}");
        let log = server_log(&m.store, &m.mp);
        let stats = umount_and_stats(m, None).expect("statistics");
        // 150 objects against a cap of 24 kept descriptors: the cap, not
        // running out, is what emptied the slots.
        assert!(
            log.contains("closing the kept object descriptors: at the cap"),
            "{mode:?}: the server never reached its descriptor cap:\n{log}"
        );
        eprintln!("{mode:?}: {} files, {bytes} bytes: {stats:?}", files.len());
    }
}

// ---------------------------------------------------------------------------
// Server life cycle
// ---------------------------------------------------------------------------

/// A regular file of busybox to stat and read through a mount.
const BUSYBOX_FILE: &str = "bin/busybox";

fn errno_of(path: &Path) -> Option<i32> {
    std::fs::metadata(path).err().and_then(|e| e.raw_os_error())
}

#[test]
fn lifecycle_mount_is_usable_and_umount_stops_the_server() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let m = mount(store.path(), "busybox", mnt.path(), Mode::Fuse);
    // (a) usable as soon as `mount` returns
    let meta = std::fs::metadata(m.path().join(BUSYBOX_FILE))
        .unwrap_or_else(|e| panic!("stat right after `mount` returned: {e}"));
    assert!(meta.is_file() && meta.len() > 0, "{BUSYBOX_FILE}: {meta:?}");
    assert_eq!(mount_at(m.path()).map(|(t, _)| t), Some("fuse".to_owned()));
    let row = mounts_row(store.path(), None, m.path())
        .unwrap_or_else(|| panic!("`mounts --json` does not list {}", m.path().display()));
    assert_eq!(row["state"], "serving", "{row}");
    assert_eq!(row["mode"], "fuse", "{row}");
    let pid = row["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {row}")) as u32;
    assert_eq!(
        Some(pid),
        m.pid,
        "`mount` printed another pid than `mounts --json`"
    );
    assert!(alive(pid), "server {pid} listed as serving is not running");
    assert!(
        is_our_server(pid, m.path()),
        "pid {pid} is not a fuse-serve process"
    );
    // (b) umount stops it
    let canonical = m.path().to_owned();
    let stats = umount_and_stats(m, None).expect("statistics");
    assert!(stats.lookups > 0, "{stats:?}");
    assert!(
        !tracking_file(store.path(), &canonical, "json").exists(),
        "the tracking file survives `umount`"
    );
    assert!(mounts_row(store.path(), None, &canonical).is_none());
}

#[test]
fn lifecycle_sigterm_unmounts() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let m = mount(store.path(), "busybox", mnt.path(), Mode::Fuse);
    let pid = m.pid.expect("server pid");
    std::fs::read(m.path().join(BUSYBOX_FILE)).expect("read through the mount");
    signal(pid, rustix::process::Signal::TERM);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "server {pid} ignores SIGTERM"
    );
    assert!(
        !is_mounted(m.path()),
        "the server exited on SIGTERM but left its mount"
    );
    assert!(
        !tracking_file(store.path(), m.path(), "json").exists(),
        "the server exited on SIGTERM but left its tracking file"
    );
    // It is not our child, so its exit status is not ours to see: the log
    // shows an orderly exit (the statistics are written after `run` returns).
    let log = server_log(store.path(), m.path());
    assert!(log.contains("signal 15: unmounting"), "server log:\n{log}");
    assert!(
        parse_served(&log).is_some(),
        "no statistics line, so no orderly exit:\n{log}"
    );
    assert!(!log.contains("ERROR"), "server log has errors:\n{log}");
    assert!(mounts_row(store.path(), None, m.path()).is_none());
}

/// How many mounts the mount table shows at `canonical`.
fn mounts_at(canonical: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| unescape_mountinfo(mp) == canonical.as_os_str().as_bytes())
        .count()
}

/// A mountpoint that holds a live mount of the store is refused (FK0308)
/// whatever the mode asked, and the mount there stays as it was: still
/// tracked with its server, its log not truncated, nothing stacked on it
/// (before, a kernel mount over a FUSE one replaced its tracking file and
/// left the server running untracked). A tracking file whose mount is gone
/// (removed by other means, or naming a pid reused since) does not block
/// the next mount.
#[test]
fn a_mountpoint_holding_our_mount_is_refused_and_its_mount_stays_tracked() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let m = mount(store.path(), "busybox", mnt.path(), Mode::Fuse);
    let pid = m.pid.expect("server pid");
    let log = server_log(store.path(), m.path());
    assert!(!log.is_empty(), "the server has no log");
    let tracked = std::fs::read_to_string(tracking_file(store.path(), m.path(), "json")).unwrap();
    for mode in [Mode::Kernel, Mode::Default, Mode::Fuse, Mode::Passthrough] {
        let (mut again, run) = try_mount(store.path(), None, "busybox", m.path(), mode);
        assert_eq!(
            run.status.code(),
            Some(1),
            "mount ({mode:?}) over our FUSE mount: {run}"
        );
        again.active = false;
        assert!(
            run.stderr.contains("error[FK0308]") && run.stderr.contains("hint: unmount it first"),
            "mount ({mode:?}) over our FUSE mount: {run}"
        );
        assert_eq!(mounts_at(m.path()), 1, "mount ({mode:?}) stacked a mount");
        let row = mounts_row(store.path(), None, m.path()).expect("still listed");
        assert_eq!(row["mode"], "fuse", "{mode:?}: {row}");
        assert_eq!(row["pid"].as_u64(), Some(u64::from(pid)), "{mode:?}: {row}");
        assert_eq!(row["state"], "serving", "{mode:?}: {row}");
        assert_eq!(
            server_log(store.path(), m.path()),
            log,
            "{mode:?}: the log changed"
        );
    }
    let canonical = m.path().to_owned();
    umount_and_stats(m, None);

    // A tracking file left behind whose pid is now another live process
    // (this test's): nothing is mounted, so it does not block.
    let leftover = serde_json::from_str::<serde_json::Value>(&tracked)
        .map(|mut t| {
            t["pid"] = std::process::id().into();
            t.to_string()
        })
        .unwrap();
    std::fs::write(tracking_file(store.path(), &canonical, "json"), leftover).unwrap();
    let k = mount(store.path(), "busybox", &canonical, Mode::Kernel);
    let (mut again, run) = try_mount(store.path(), None, "busybox", k.path(), Mode::Fuse);
    assert!(
        run.stderr.contains("error[FK0308]"),
        "--fuse over our kernel mount: {run}"
    );
    again.active = false;
    assert_eq!(
        mounts_at(k.path()),
        1,
        "--fuse stacked a mount on the kernel one"
    );
    // Unmounted behind fukastor's back: the tracking file stays, stale.
    rustix::mount::unmount(k.path(), rustix::mount::UnmountFlags::empty()).unwrap();
    assert!(tracking_file(store.path(), k.path(), "json").exists());
    drop(k);
    let k = mount(store.path(), "busybox", &canonical, Mode::Kernel);
    assert_eq!(mounts_at(k.path()), 1);
}

/// `mount busybox MP` in each of `modes`, all at once.
fn mounts_at_once(store: &Path, mp: &Path, modes: &[Mode]) -> Vec<(Mounted, Run)> {
    std::thread::scope(|s| {
        let spawned: Vec<_> = modes
            .iter()
            .map(|&mode| s.spawn(move || try_mount(store, None, "busybox", mp, mode)))
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Asserts that every failed mount of `results` was refused with FK0308,
/// then unmounts the ones that succeeded.
fn refused_or_unmounted(results: Vec<(Mounted, Run)>, context: &str, report: &[String]) {
    assert!(
        results
            .iter()
            .filter(|(_, r)| !r.success())
            .all(|(_, r)| r.stderr.contains("error[FK0308]")),
        "{context}: {report:#?}"
    );
    for (mut m, r) in results {
        if r.success() {
            umount_and_stats(m, None);
        } else {
            m.active = false;
        }
    }
}

/// Mounts of one image at one mountpoint at once, kernel and FUSE mixed:
/// exactly one succeeds, the others are refused with FK0308, and one mount
/// is there, which `umount` removes. Before, two could both succeed,
/// stacked on each other, and `umount` took only the top one.
#[test]
fn mounts_at_once_on_one_mountpoint_make_one_mount() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let canonical = mnt.path().canonicalize().unwrap();
    for round in 0..4 {
        let modes = [Mode::Kernel, Mode::Fuse, Mode::Kernel, Mode::Passthrough];
        let results = mounts_at_once(store.path(), &canonical, &modes);
        let report: Vec<String> = results.iter().map(|(_, r)| r.to_string()).collect();
        let won = results.iter().filter(|(_, r)| r.success()).count();
        assert_eq!(won, 1, "round {round}: {report:#?}");
        assert_eq!(mounts_at(&canonical), 1, "round {round}: {report:#?}");
        // The FUSE winner's log is whole (no other mount truncated it),
        // and no loser left a log of its own.
        let logs: Vec<PathBuf> = std::fs::read_dir(store.path().join("fukastor/mounts"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".log"))
            .collect();
        assert!(
            logs.iter()
                .all(|p| p.extension().is_some_and(|e| e == "log")),
            "round {round}: a mount's own log left behind: {logs:?}"
        );
        if results.iter().any(|(m, r)| r.success() && m.pid.is_some()) {
            // One spawner's header, first, and no loser's words in it (a
            // loser writing to the same file would add its own header and
            // its FK0308).
            let text = std::fs::read_to_string(&logs[0]).unwrap();
            assert!(
                text.starts_with("# fukastor fuse-serve: ")
                    && text.matches("# fukastor fuse-serve: ").count() == 1
                    && !text.contains("FK0308"),
                "round {round}: the winner's log is not its own alone: {text:?}"
            );
        }
        refused_or_unmounted(results, &format!("round {round}"), &report);
        assert_eq!(mounts_at(&canonical), 0, "round {round}: left mounted");
    }
}

#[test]
fn lifecycle_sigkill_leaves_a_dead_mount_that_umount_cleans() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let m = mount(store.path(), "busybox", mnt.path(), Mode::Fuse);
    let pid = m.pid.expect("server pid");
    signal(pid, rustix::process::Signal::KILL);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "server {pid} survives SIGKILL"
    );
    assert!(
        is_mounted(m.path()),
        "the mount vanished with its killed server"
    );
    // ENOTCONN once the kernel saw the device close; ECONNABORTED for a
    // request that raced with the abort (seen once in CI on a loaded host).
    let errno = errno_of(&m.path().join(BUSYBOX_FILE));
    assert!(
        matches!(errno, Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "access to a mount whose server was killed gave {errno:?}, not ENOTCONN or ECONNABORTED"
    );
    // The killed server may linger as a zombie until its parent (init, since
    // `mount` exited) reaps it; it serves nothing either way.
    let proc_state = process_state(pid);
    let row = mounts_row(store.path(), None, m.path()).expect("the dead mount is listed");
    let state = row["state"].as_str().unwrap_or_default();
    // Checked at the end, so that the clean-up below is exercised too.
    let state_problem = (!state.starts_with("server gone")).then(|| {
        format!(
            "`mounts --json` for a mount whose server was SIGKILLed says {state:?} \
             (the server process is {}): {row}",
            proc_state
                .as_deref()
                .map_or("reaped".to_owned(), |s| format!("in state {s}"))
        )
    });

    let start = Instant::now();
    let run = fk_run(
        store.path(),
        None,
        [OsStr::new("umount"), m.path().as_os_str()],
    );
    let umount_took = start.elapsed();
    assert!(run.success(), "umount of a dead FUSE mount: {run}");
    assert!(!is_mounted(m.path()), "umount left the dead mount");
    assert!(!tracking_file(store.path(), m.path(), "json").exists());
    eprintln!("umount of the dead mount took {umount_took:.1?}");
    drop(m);

    // The place is usable again.
    let m = mount(store.path(), "busybox", mnt.path(), Mode::Fuse);
    std::fs::metadata(m.path().join(BUSYBOX_FILE)).expect("stat after mounting again");
    let row = mounts_row(store.path(), None, m.path()).expect("the new mount is listed");
    assert_eq!(row["state"], "serving", "{row}");
    umount_and_stats(m, None);
    if let Some(problem) = state_problem {
        panic!("{problem}\n(`umount` of the dead mount then took {umount_took:.1?})");
    }
}

/// A foreground `fuse-serve` child; killed and its mount detached if a test
/// fails before it exits.
struct Foreground {
    child: Child,
    mp: PathBuf,
}

impl Foreground {
    /// Starts `fuse-serve busybox MP` with its stderr in `log_path`.
    fn start(store: &Path, mp: &Path, log_path: &Path) -> Self {
        Self::start_with_env(store, mp, log_path, &[])
    }

    /// [`Foreground::start`] with `env` added to its environment.
    fn start_with_env(store: &Path, mp: &Path, log_path: &Path, env: &[(&str, &str)]) -> Self {
        let log = File::create(log_path).expect("create the stderr file");
        let mut cmd = fk(store, None);
        cmd.envs(env.iter().copied());
        cmd.arg("fuse-serve")
            .arg("busybox")
            .arg(mp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Foreground {
            child: cmd.spawn().expect("start fuse-serve"),
            mp: mp.to_owned(),
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
        }
    }
}

#[test]
fn lifecycle_foreground_server_answers_ctrl_c() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let mp = std::fs::canonicalize(mnt.path()).unwrap();
    let logs = scratch_dir("fukastor-test-log-");
    let log_path = logs.path().join("fuse-serve.stderr");
    let mut fg = Foreground::start(store.path(), &mp, &log_path);
    let pid = fg.child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while mounts_row(store.path(), None, &mp).is_none_or(|r| r["pid"].as_u64() != Some(pid.into()))
    {
        if let Some(status) = fg.child.try_wait().unwrap() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("fuse-serve exited ({status}) before mounting:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "fuse-serve did not mount within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::metadata(mp.join(BUSYBOX_FILE)).expect("stat through the foreground server");
    signal(pid, rustix::process::Signal::INT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = fg.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "fuse-serve ignores SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    assert!(
        status.success(),
        "fuse-serve exited with {status} on SIGINT:\n{text}"
    );
    assert!(
        !is_mounted(&mp),
        "fuse-serve exited on SIGINT but left its mount"
    );
    assert!(
        text.contains("signal 2: unmounting"),
        "fuse-serve stderr:\n{text}"
    );
    assert!(!tracking_file(store.path(), &mp, "json").exists());
}

/// `mount --fuse` killed (SIGKILL) while its server is still on its way to
/// the mount (held 2 s at delay point `fuse-serve:checked`): the server,
/// in its own process group, mounts anyway, and its log is the
/// mountpoint's (`mounts` finds it, whole); no log named after the killed
/// command is left. Before, the command renamed the log once it saw the
/// mount, and a killed one left it under `<log>.<pid>`.
#[test]
fn a_killed_fuse_mount_leaves_its_server_with_the_mountpoints_log() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let mp = std::fs::canonicalize(mnt.path()).unwrap();
    let mut cmd = fk(store.path(), None);
    cmd.env("FUKASTOR_DELAYPOINT", "fuse-serve:checked:2000")
        .args([
            OsStr::new("mount"),
            OsStr::new("--fuse"),
            OsStr::new("busybox"),
            mp.as_os_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut mount = cmd.spawn().unwrap();
    // Well inside the delay: the server is started within milliseconds.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        mount.try_wait().unwrap().is_none(),
        "`mount --fuse` returned before its server mounted"
    );
    signal(mount.id(), rustix::process::Signal::KILL);
    let _ = mount.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        if let Some(r) = mounts_row(store.path(), None, &mp) {
            break r;
        }
        assert!(Instant::now() < deadline, "the server never mounted");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = tracking_file(store.path(), &mp, "log");
    let text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("the mountpoint's log {}: {e}", log.display()));
    assert!(
        text.starts_with("# fukastor fuse-serve: ")
            && text
                .lines()
                .next()
                .unwrap()
                .ends_with(&format!(" at {}", mp.display())),
        "{text:?}"
    );
    let logs: Vec<PathBuf> = std::fs::read_dir(store.path().join("fukastor/mounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".log"))
        .collect();
    assert_eq!(logs, [log], "only the mountpoint's log");
    let run = fk_run(store.path(), None, [OsStr::new("umount"), mp.as_os_str()]);
    assert!(run.success(), "umount: {run}");
    let pid = row["pid"].as_u64().unwrap() as u32;
    assert!(
        wait_gone(pid, Duration::from_secs(20)),
        "server {pid} outlived umount"
    );
    assert!(!is_mounted(&mp));
}

/// A foreground `fuse-serve` held up for 3 s between its check of the
/// mountpoint and its mount (delay point `fuse-serve:checked`): a kernel
/// and a FUSE `mount` started meanwhile are both refused with FK0308 once
/// it has mounted, since it holds the mountpoint's lock all along; without
/// the lock they would mount under it during the delay.
#[test]
fn a_fuse_serve_between_its_check_and_its_mount_keeps_the_mountpoint() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let mp = std::fs::canonicalize(mnt.path()).unwrap();
    let logs = scratch_dir("fukastor-test-log-");
    let log_path = logs.path().join("fuse-serve.stderr");
    let started = Instant::now();
    let mut fg = Foreground::start_with_env(
        store.path(),
        &mp,
        &log_path,
        &[("FUKASTOR_DELAYPOINT", "fuse-serve:checked:3000")],
    );
    // Well inside the delay (the server reaches it within milliseconds).
    std::thread::sleep(Duration::from_millis(1000));
    let results = mounts_at_once(store.path(), &mp, &[Mode::Kernel, Mode::Fuse]);
    let report: Vec<String> = results.iter().map(|(_, r)| r.to_string()).collect();
    let pid = fg.child.id();
    assert!(
        mounts_row(store.path(), None, &mp).is_some_and(|r| r["pid"].as_u64() == Some(pid.into())),
        "fuse-serve has the mountpoint: {report:#?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the mounts waited for the server's lock: {report:#?}"
    );
    assert!(
        results.iter().all(|(_, r)| !r.success()),
        "both mounts refused: {report:#?}"
    );
    refused_or_unmounted(results, "during the delay", &report);
    assert_eq!(mounts_at(&mp), 1, "one mount: {report:#?}");
    signal(pid, rustix::process::Signal::INT);
    assert!(fg.child.wait().unwrap().success(), "Ctrl-C ends fuse-serve");
    assert_eq!(mounts_at(&mp), 0, "fuse-serve unmounted");
}

/// A foreground `fuse-serve` and two `mount`s at once on one mountpoint:
/// exactly one of the three gets it (the server is refused with FK0308 and
/// exits, or it mounts and both `mount`s are refused), never two stacked.
#[test]
fn fuse_serve_in_the_foreground_and_mounts_at_once_make_one_mount() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let mp = std::fs::canonicalize(mnt.path()).unwrap();
    let logs = scratch_dir("fukastor-test-log-");
    for round in 0..6 {
        let log_path = logs.path().join(format!("fuse-serve-{round}.stderr"));
        let mut fg = Foreground::start(store.path(), &mp, &log_path);
        let pid = fg.child.id();
        // Alternate which mode races it.
        let modes = if round % 2 == 0 {
            [Mode::Kernel, Mode::Fuse]
        } else {
            [Mode::Fuse, Mode::Kernel]
        };
        let results = mounts_at_once(store.path(), &mp, &modes);
        let mut report: Vec<String> = results.iter().map(|(_, r)| r.to_string()).collect();
        // The server: exited (refused), or serving at `mp`.
        let deadline = Instant::now() + Duration::from_secs(60);
        let exited = loop {
            if let Some(status) = fg.child.try_wait().unwrap() {
                break Some(status);
            }
            if mounts_row(store.path(), None, &mp)
                .is_some_and(|r| r["pid"].as_u64() == Some(pid.into()))
            {
                break None;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: fuse-serve neither exited nor mounted within 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
        report.push(format!("fuse-serve: {exited:?}\n{text}"));
        let won =
            results.iter().filter(|(_, r)| r.success()).count() + usize::from(exited.is_none());
        assert_eq!(won, 1, "round {round}: {report:#?}");
        eprintln!(
            "round {round}: {} got the mountpoint",
            results
                .iter()
                .zip(modes)
                .find(|((_, r), _)| r.success())
                .map_or("fuse-serve".to_owned(), |(_, mode)| format!(
                    "mount {mode:?}"
                ))
        );
        if exited.is_some() {
            assert!(text.contains("error[FK0308]"), "round {round}: {report:#?}");
        }
        assert_eq!(mounts_at(&mp), 1, "round {round}: {report:#?}");
        refused_or_unmounted(results, &format!("round {round}"), &report);
        if exited.is_none() {
            let run = fk_run(store.path(), None, [OsStr::new("umount"), mp.as_os_str()]);
            assert!(
                run.success(),
                "round {round}: umount of the foreground server's mount: {run}"
            );
            assert!(
                wait_gone(pid, Duration::from_secs(10)),
                "round {round}: fuse-serve still runs 10 s after `umount`"
            );
        }
        drop(fg);
        assert_eq!(mounts_at(&mp), 0, "round {round}: left mounted");
    }
}

// ---------------------------------------------------------------------------
// Without a flag, root gets the kernel
// ---------------------------------------------------------------------------

/// A tmpfs mounted for a test, unmounted (lazily if need be) when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new() -> Self {
        let dir = scratch_dir("fukastor-test-tmpfs-");
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(dir.path());
        let run = run_command(cmd);
        assert!(run.success(), "mounting a tmpfs: {run}");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let mut cmd = Command::new("umount");
        cmd.arg("-l").arg(self.0.path());
        let _ = run_command(cmd);
    }
}

/// The kernel cannot mount an image from a file on tmpfs (ENOTBLK):
/// `--kernel` says so with FK0307 and what to do, and `mount` without a
/// flag falls back to FUSE.
#[test]
fn a_store_on_tmpfs_gets_fk0307_for_kernel_mounts_and_fuse_by_default() {
    require_fuse();
    let fs = Tmpfs::new();
    let store = Store::new_in(fs.0.path());
    store.ok(["-q", "pull", &fixtures().oci("busybox"), "busybox"]);
    let mnt = scratch_dir("fukastor-test-mnt-");
    let (m, run) = try_mount(store.path(), None, "busybox", mnt.path(), Mode::Kernel);
    assert!(!run.success(), "a kernel mount from tmpfs worked: {run}");
    assert!(
        run.stderr.contains("error[FK0307]") && run.stderr.contains("(tmpfs)"),
        "{run}"
    );
    assert!(run.stderr.contains("hint: keep the store on ext4"), "{run}");
    assert!(mount_at(m.path()).is_none(), "a failed mount left a mount");
    drop(m);
    let (m, run) = try_mount(store.path(), None, "busybox", mnt.path(), Mode::Default);
    assert!(run.success(), "mount without a flag: {run}");
    assert!(run.stdout_str().contains("(FUSE"), "{run}");
    std::fs::metadata(m.path().join(BUSYBOX_FILE)).expect("stat through the FUSE mount");
    umount_and_stats(m, None);
}

#[test]
fn default_mount_as_root_is_kernel() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    let (m, run) = try_mount(store.path(), None, "busybox", mnt.path(), Mode::Default);
    assert!(run.success(), "mount without a flag: {run}");
    let out = run.stdout_str();
    assert!(
        out.contains("(kernel: EROFS + overlayfs)"),
        "mount output: {out}"
    );
    let (fstype, source) = mount_at(m.path()).expect("mounted");
    assert_eq!(fstype, "overlay", "source {source}");
    let row = mounts_row(store.path(), None, m.path()).expect("listed");
    assert_eq!(row["mode"], "kernel", "{row}");
    assert_eq!(row["state"], "mounted", "{row}");
    assert!(row["pid"].is_null(), "{row}");
    std::fs::metadata(m.path().join(BUSYBOX_FILE)).expect("stat through the kernel mount");
    umount_and_stats(m, None);
}

/// As root, `mount --fuse` raises the mount's readahead to the 1 MiB
/// requests the server takes (the kernel starts every FUSE mount at 128
/// KiB), also at a mountpoint whose name the mount table escapes (a space
/// is `\040` there; until 2026-12-02 such a mount kept 128 KiB).
#[test]
fn fuse_mount_readahead_is_raised_whatever_the_mountpoint_is_called() {
    require_fuse();
    let store = store_with("busybox");
    let mnt = scratch_dir("fukastor-test-mnt-");
    for name in ["plain", "with space"] {
        let mp = mnt.path().join(name);
        std::fs::create_dir(&mp).expect("mkdir");
        let m = mount(store.path(), "busybox", &mp, Mode::Fuse);
        let dev = std::fs::metadata(m.path())
            .unwrap_or_else(|e| panic!("stat {}: {e}", m.path().display()))
            .dev();
        let knob = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            rustix::fs::major(dev),
            rustix::fs::minor(dev)
        );
        let kb = std::fs::read_to_string(&knob).unwrap_or_else(|e| panic!("{knob}: {e}"));
        assert_eq!(
            kb.trim(),
            "1024",
            "readahead of the FUSE mount at {:?} ({knob})",
            m.path()
        );
        umount_and_stats(m, None);
    }
}
// ---------------------------------------------------------------------------
// Unprivileged use (fusermount3)
// ---------------------------------------------------------------------------

const TEST_USER: &str = "fktest";

/// The unprivileged test account, created if missing.
fn test_user() -> (u32, u32) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(TEST_USER).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())?
    };
    if id("-u").is_none() {
        require_tool("useradd", "passwd");
        let mut cmd = Command::new("useradd");
        cmd.args(["-m", TEST_USER]);
        run_command(cmd).assert_success();
    }
    (
        id("-u").expect("uid of the test user"),
        id("-g").expect("gid of the test user"),
    )
}

/// A scratch directory owned by the test user holding a copy of the binary,
/// a source tree for `pull dir:`, a store and a mountpoint.
struct UserEnv {
    _dir: tempfile::TempDir,
    user: User,
    src: PathBuf,
    store: PathBuf,
    mnt: PathBuf,
    big: Vec<u8>,
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn user_env() -> UserEnv {
    require_root();
    require_tool("setpriv", "util-linux");
    let fusermount = require_tool("fusermount3", "fuse3");
    let fm = std::fs::metadata(&fusermount).unwrap();
    assert!(
        fm.uid() == 0 && fm.mode() & 0o4000 != 0,
        "{} is not setuid root (mode {:o}): unprivileged FUSE mounts cannot work",
        fusermount.display(),
        fm.mode()
    );
    let (uid, gid) = test_user();
    let dir = scratch_dir("fukastor-test-user-");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from an unprivileged user\n").unwrap();
    let mut rng = Rng(0xfe11_0001);
    let big: Vec<u8> = (0..3 << 20).map(|_| rng.next() as u8).collect();
    std::fs::write(src.join("sub/big.bin"), &big).unwrap();
    let bin = dir.path().join("fukastor");
    std::fs::copy(fukastor_bin(), &bin).expect("copy the fukastor binary for the test user");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    chown_tree(dir.path(), uid, gid);
    let store = dir.path().join("store");
    UserEnv {
        user: User { uid, gid, bin },
        src,
        store,
        mnt,
        big,
        _dir: dir,
    }
}

/// What stands between the test user and a FUSE mount, for failure messages.
fn fuse_access_diagnosis(env: &UserEnv) -> String {
    let dev = std::fs::metadata("/dev/fuse")
        .map(|m| format!("{:o} uid {} gid {}", m.mode(), m.uid(), m.gid()));
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", env.user.uid))
        .arg(format!("--regid={}", env.user.gid))
        .arg("--init-groups")
        .args(["--", "sh", "-c", "exec 3<>/dev/fuse"]);
    let open = run_command(cmd);
    format!(
        "/dev/fuse: {dev:?}; the test user opening /dev/fuse read-write: {}",
        if open.success() {
            "works".to_owned()
        } else {
            format!(
                "{} (fusermount3, setuid root, could open it; a server that opens /dev/fuse \
                 itself and does not fall back to fusermount3 on EACCES cannot mount)",
                open.stderr.trim()
            )
        }
    )
}

/// Pulls `dir:SRC` as the test user and mounts it with `mode`, as that user.
fn user_mount(env: &UserEnv, mode: Mode) -> Mounted {
    let u = Some(&env.user);
    let run = fk_run(
        &env.store,
        u,
        [
            OsString::from("-q"),
            "pull".into(),
            {
                let mut s = OsString::from("dir:");
                s.push(&env.src);
                s
            },
            "img".into(),
        ],
    );
    assert!(run.success(), "pull dir: as the test user: {run}");
    let (m, run) = try_mount(&env.store, u, "img", &env.mnt, mode);
    if !run.success() {
        let log = std::fs::read(tracking_file(&env.store, &env.mnt, "log"))
            .map(|t| strip_ansi(&String::from_utf8_lossy(&t)))
            .unwrap_or_default();
        let diagnosis = fuse_access_diagnosis(env);
        drop(m);
        panic!(
            "an unprivileged `mount --fuse` failed.\n{run}\n--- server log:\n{log}\n--- {diagnosis}"
        );
    }
    m
}

#[test]
fn unprivileged_fuse_mount_read_umount() {
    require_fuse();
    let env = user_env();
    let m = user_mount(&env, Mode::Fuse);
    let u = Some(&env.user);
    let (fstype, source) = mount_at(m.path()).expect("mounted");
    assert!(
        fstype.starts_with("fuse"),
        "fstype {fstype}, source {source}"
    );
    let row = mounts_row(&env.store, u, m.path()).expect("listed by `mounts` of the user");
    assert_eq!(row["state"], "serving", "{row}");
    // Read as the user (the mount is not allow_other).
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", env.user.uid))
        .arg(format!("--regid={}", env.user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg("cat")
        .arg(m.path().join("sub/big.bin"));
    let run = run_command(cmd);
    assert!(run.success(), "reading through the user's mount: {run}");
    assert!(
        run.stdout == env.big,
        "sub/big.bin read through the mount differs"
    );
    let stats = umount_and_stats(m, u).expect("statistics");
    assert!(stats.reads > 0, "{stats:?}");
}

#[test]
fn unprivileged_passthrough_falls_back_to_plain_reads() {
    require_fuse();
    let env = user_env();
    let m = user_mount(&env, Mode::Passthrough);
    let u = Some(&env.user);
    let row = mounts_row(&env.store, u, m.path()).expect("listed");
    assert_eq!(
        row["mode"], "fuse",
        "an unprivileged server cannot use passthrough: {row}"
    );
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", env.user.uid))
        .arg(format!("--regid={}", env.user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg("cat")
        .arg(m.path().join("sub/big.bin"));
    let run = run_command(cmd);
    assert!(
        run.success() && run.stdout == env.big,
        "reading through the mount: {run}"
    );
    let canonical = m.path().to_owned();
    let stats = umount_and_stats(m, u).expect("statistics");
    let log = server_log(&env.store, &canonical);
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("passthrough") && !l.contains("served "))
        .collect();
    assert_eq!(
        said.len(),
        1,
        "the fallback must be logged exactly once:\n{log}"
    );
    assert!(
        said[0].contains("WARN"),
        "the fallback is a warning: {}",
        said[0]
    );
    assert_eq!(stats.passthrough_opens, 0, "{stats:?}");
    assert!(
        stats.reads > 0 && stats.bytes >= env.big.len() as u64,
        "{stats:?}"
    );
}

/// A mount right after `umount` of the same mountpoint must work: the old
/// server, exiting, must not remove the new server's tracking file (it did,
/// and `mount` then waited 60 s for a server that was serving all along).
#[test]
fn remount_right_after_umount_is_tracked() {
    require_root();
    require_fuse();
    let store = store_with("busybox");
    let mp = common::scratch_dir("fk-remount-");
    for i in 0..5 {
        // Each server takes 300 ms between its unmount and its exit (where
        // it forgets its tracking file): the window the bug needed.
        let mut cmd = store.command();
        cmd.args([
            OsStr::new("mount"),
            "busybox".as_ref(),
            mp.path().as_os_str(),
            "--fuse".as_ref(),
        ])
        .env("FUKASTOR_DELAYPOINT", "fuse:exiting:300");
        let run = common::run_command(cmd);
        assert!(run.success(), "mount #{i}: {run}");
        // Later than the old server's exit: the new mount is still tracked.
        std::thread::sleep(Duration::from_millis(600));
        let canonical = std::fs::canonicalize(mp.path()).unwrap();
        let row = mounts_row(store.path(), None, &canonical);
        assert!(
            row.as_ref()
                .is_some_and(|r| r["pid"].as_u64().is_some_and(|p| alive(p as u32))),
            "mount #{i} is no longer tracked with a live server: {row:?}"
        );
        let n = std::fs::read(mp.path().join("bin/busybox")).map(|d| d.len());
        assert!(
            n.as_ref().is_ok_and(|n| *n > 0),
            "mount #{i} does not serve: {n:?}"
        );
        let run = store.run([std::ffi::OsStr::new("umount"), mp.path().as_os_str()]);
        assert!(run.success(), "umount #{i}: {run}");
    }
}
