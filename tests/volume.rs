//! Thin copy-on-write volumes and containers, end to end: the real binary,
//! the real volume server (FUSE), real loop devices, real ext4 (mkfs.ext4 and
//! e2fsck from e2fsprogs) and real overlay mounts.
//!
//! - Lifecycle: `volume create/ls/attach/detach/rm`, the loop device (block
//!   device, size, 4096-byte sectors, direct I/O, backed by the server's
//!   file), data surviving detach/attach, refusals (rm while attached, bad
//!   sizes and names, duplicates) with FK07 codes, `--base FILE`.
//! - The export (the server's FUSE mount) outlives a detach: a volume
//!   attached again under the name just detached has its own size; a server
//!   SIGKILLed while nothing is attached leaves a dead export that the next
//!   server clears.
//! - Crash: ext4 on a volume, a writer that fsyncs file after file and logs
//!   each completed fsync on another filesystem, the volume server SIGKILLed
//!   at seeded random moments (`FUKASTOR_TEST_SEED` repeats a run); after
//!   each kill: `umount -l`, `volume detach`, `volume attach`, journal replay
//!   (mount, umount), `e2fsck -fn` clean, and every logged file reads back
//!   with exactly its content.
//! - `snapshot create --atomic` and `snapshot rm` during heavy writeback
//!   (1 GiB written without fsync) finish within [`SNAPSHOT_BOUND`]; the
//!   atomic snapshot is a clean filesystem.
//! - Rollback restores every byte and every file's metadata, and is refused
//!   while the volume is attached.
//! - Containers: two clones of one image do not see each other's writes and
//!   both see the image; snapshot/rollback of a container (refused while
//!   mounted); `ps --json`; `rm` (refused while mounted, `--force`); after
//!   `rm` the store is clean and nothing of it is mounted.
//!
//! Missing root, `/dev/fuse`, loop devices, tools or fixtures make a test
//! FAIL with a message naming what is missing. Every test owns its store
//! through a guard that, when dropped (also on failure), unmounts what is
//! left, umounts containers, detaches volumes, removes leftover loop devices
//! and stops the volume server.
//!
//! The tests of this file run one at a time (they share 2 cores with
//! writeback-heavy work). Run as root:
//! `cargo test --release --test volume -- --test-threads=1`.

mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::{
    Run, Store, Tree, assert_trees_eq, fixtures, is_fukastor_process, require_root, require_tool,
    run_command, scratch_dir, unescape_mountinfo, volume_server_processes, walk,
};

/// How long `snapshot create --atomic` and `snapshot rm` may take while about
/// 1 GiB of dirty data is being written back (the freeze has to write it all
/// through the volume server first). Generous: the machine is shared.
/// Measured: about 1 s with 250–300 MiB dirty when the snapshot starts.
const SNAPSHOT_BOUND: Duration = Duration::from_secs(10);

/// Rounds of the crash test (one server kill each).
const CRASH_ROUNDS: u32 = 5;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------

/// Root, FUSE and loop devices: attaching a volume needs all three.
fn require_volumes() {
    require_root();
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        Ok(_) => panic!("/dev/fuse exists but is not a character device: volumes cannot be served"),
        Err(e) => panic!(
            "/dev/fuse is missing ({e}): the volume server needs the fuse module \
             (`modprobe fuse`) and the device node (`mknod -m 666 /dev/fuse c 10 229`)"
        ),
    }
    match std::fs::metadata("/dev/loop-control") {
        Ok(m) if m.file_type().is_char_device() => {}
        _ => panic!(
            "/dev/loop-control is missing: volumes are attached as loop devices; load the loop \
             module (`modprobe loop`) or give the container access to loop devices"
        ),
    }
    require_tool("losetup", "util-linux");
    require_tool("blockdev", "util-linux");
    require_tool("mount", "mount");
    require_tool("umount", "mount");
}

/// mkfs.ext4 and e2fsck, and ext4 in the kernel.
fn require_ext4() {
    require_tool("mkfs.ext4", "e2fsprogs");
    require_tool("e2fsck", "e2fsprogs");
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("ext4"))
    {
        panic!("the kernel does not offer ext4 (/proc/filesystems): `modprobe ext4`");
    }
}

// ---------------------------------------------------------------------------
// Small helpers: randomness, processes, external commands
// ---------------------------------------------------------------------------

/// SplitMix64: small, seeded.
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

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// `FUKASTOR_TEST_SEED`, or one from the clock; printed so a run can be repeated.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("FUKASTOR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_000
        });
    eprintln!("{test}: seed {seed} (FUKASTOR_TEST_SEED={seed} repeats this run)");
    seed
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The state letter of `pid` (R, S, D, Z, …), None once it is reaped.
fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// True while `pid` is a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != "Z" && state != "X")
}

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

fn kill9(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Runs an external tool with a timeout, capturing its output.
fn tool<I, S>(program: &str, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd)
}

/// A user error of the volume/container commands: exit status 1, stderr
/// `error[FK07nn]: …` with a `  hint:` line, no panic. Returns the code.
fn assert_fk07(run: &Run, context: &str) -> String {
    assert_eq!(
        run.status.code(),
        Some(1),
        "{context}: expected exit status 1 with an FK07 error: {run}"
    );
    assert!(
        run.stderr.starts_with("error[FK07"),
        "{context}: stderr must start with `error[FK07`: {run}"
    );
    let code = run.stderr.get(6..12).unwrap_or_default().to_owned();
    assert!(
        code.len() == 6
            && code[2..].bytes().all(|b| b.is_ascii_digit())
            && run.stderr[12..].starts_with("]: "),
        "{context}: malformed error line (expected `error[FK07nn]: …`): {run}"
    );
    assert!(
        run.stderr.contains("\n  hint: "),
        "{context}: the error has no `  hint: …` line: {run}"
    );
    assert!(!run.stderr.contains("panicked"), "{context}: {run}");
    code
}

fn json_of(run: &Run) -> serde_json::Value {
    serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("the output is not JSON ({e}): {run}"))
}

fn json_array(run: &Run) -> Vec<serde_json::Value> {
    match json_of(run) {
        serde_json::Value::Array(a) => a,
        other => panic!("expected a JSON array, got {other}: {run}"),
    }
}

// ---------------------------------------------------------------------------
// Mount table and loop devices
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
    source: String,
    super_opts: String,
}

fn mount_table() -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mp = unescape_mountinfo(left.split(' ').nth(4)?);
            let mut r = right.split(' ');
            let fstype = r.next()?.to_owned();
            let source = String::from_utf8_lossy(&unescape_mountinfo(r.next()?)).into_owned();
            let super_opts =
                String::from_utf8_lossy(&unescape_mountinfo(r.next().unwrap_or(""))).into_owned();
            Some(MountEntry {
                mount_point: PathBuf::from(OsStr::from_bytes(&mp)),
                fstype,
                source,
                super_opts,
            })
        })
        .collect()
}

/// The mount at exactly `mp` (the last one if stacked).
fn mount_at(mp: &Path) -> Option<MountEntry> {
    mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mp)
}

/// Every bound loop device with its backing file, from sysfs.
fn loop_devices() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            out.push((
                PathBuf::from(format!("/dev/{name}")),
                backing.trim_end_matches('\n').to_owned(),
            ));
        }
    }
    out.sort();
    out
}

/// Loop devices whose backing file is in the store.
fn store_loops(store: &Path) -> Vec<(PathBuf, String)> {
    let prefix = format!("{}/", store.display());
    loop_devices()
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(&prefix))
        .collect()
}

/// Mounts that belong to the store: under it, from it (a file-backed EROFS
/// image, an overlay over its directories), or on one of its loop devices.
fn store_mounts(store: &Path) -> Vec<MountEntry> {
    let prefix = format!("{}/", store.display());
    let loops: Vec<String> = store_loops(store)
        .into_iter()
        .map(|(dev, _)| dev.display().to_string())
        .collect();
    mount_table()
        .into_iter()
        .filter(|m| {
            m.mount_point.starts_with(store)
                || m.source.starts_with(&prefix)
                || m.super_opts.contains(&prefix)
                || loops.contains(&m.source)
        })
        .collect()
}

fn lazy_umount(path: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `/sys/block/loopN/loop/FILE` of a device, trimmed.
fn loop_sysfs(dev: &Path, file: &str) -> Option<String> {
    let name = dev.file_name()?.to_str()?;
    std::fs::read_to_string(format!("/sys/block/{name}/loop/{file}"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// `blockdev FLAG DEV`, as a number.
fn blockdev(flag: &str, dev: &Path) -> u64 {
    let run = tool("blockdev", [OsStr::new(flag), dev.as_os_str()]);
    run.assert_success();
    run.stdout_str()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("blockdev {flag}: not a number ({e}): {run}"))
}

// ---------------------------------------------------------------------------
// The store, its volume server, its clean-up
// ---------------------------------------------------------------------------

/// A throw-away store for volumes. Dropping it (also after a failure)
/// umounts containers, unmounts what is left of the store, detaches its
/// volumes, removes leftover loop devices, stops its volume server, and only
/// then deletes the directory.
#[derive(Debug)]
struct VStore {
    store: Store,
    /// Canonical path (the mount table and sysfs spell paths canonically).
    root: PathBuf,
}

impl VStore {
    fn new() -> Self {
        let store = Store::new();
        let root = store.path().canonicalize().expect("canonical store path");
        VStore { store, root }
    }

    fn path(&self) -> &Path {
        &self.root
    }

    fn server_json(&self) -> PathBuf {
        self.root.join("fukastor/vserve/server.json")
    }

    /// The volume server's pid from `STORE/fukastor/vserve/server.json`.
    fn server_pid(&self) -> Option<u32> {
        let text = std::fs::read(self.server_json()).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }

    /// The live volume server's pid; panics if there is none.
    fn live_server(&self) -> u32 {
        let text = std::fs::read_to_string(self.server_json()).unwrap_or_else(|e| {
            panic!(
                "no volume server record {} while a volume is attached: {e}",
                self.server_json().display()
            )
        });
        let pid = self
            .server_pid()
            .unwrap_or_else(|| panic!("server.json has no numeric \"pid\": {text}"));
        assert!(
            alive(pid) && is_fukastor_process(pid),
            "server.json names pid {pid}, which is not a running fukastor process: {text}"
        );
        pid
    }

    /// Waits (generously) for the volume server to exit once nothing is
    /// attached, and for its mount and loop devices to be gone.
    fn assert_server_exits(&self, context: &str) {
        // The processes, not only `server.json` (which a stopping server
        // removes before its last work).
        let pids = volume_server_processes(&self.root);
        for pid in pids.into_iter().chain(self.server_pid()) {
            if !is_fukastor_process(pid) {
                continue;
            }
            assert!(
                wait_gone(pid, Duration::from_secs(15)),
                "{context}: the volume server (pid {pid}) still runs 15 s after the last \
                 volume was detached"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = store_mounts(&self.root);
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{context}: mounts of the store remain 15 s after the last volume was detached \
                 (or the last container removed): {left:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let loops = store_loops(&self.root);
        assert!(
            loops.is_empty(),
            "{context}: loop devices backed by the store remain: {loops:?}"
        );
    }

    fn cleanup(&self) {
        let root = &self.root;
        // Containers first: their overlays sit on their volumes.
        let ps = self.store.run(["--json", "ps"]);
        if ps.success()
            && let Ok(serde_json::Value::Array(rows)) = serde_json::from_slice(&ps.stdout)
        {
            for row in rows {
                if row["state"] == "mounted"
                    && let Some(name) = row["name"].as_str()
                {
                    eprintln!("cleanup: container umount {name}");
                    let run = self.store.run(["container", "umount", name]);
                    if !run.success() {
                        eprintln!("cleanup: {run}");
                    }
                }
            }
        }
        // Whatever is still mounted, except the volume server's own mount,
        // deepest first.
        let vserve_mnt = root.join("fukastor/vserve/mnt");
        let mut left: Vec<MountEntry> = store_mounts(root)
            .into_iter()
            .filter(|m| m.mount_point != vserve_mnt)
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
        for m in left {
            eprintln!(
                "cleanup: umount -l {} ({} from {})",
                m.mount_point.display(),
                m.fstype,
                m.source
            );
            lazy_umount(&m.mount_point);
        }
        // Attached volumes.
        let ls = self.store.run(["--json", "volume", "ls"]);
        if ls.success()
            && let Ok(serde_json::Value::Array(rows)) = serde_json::from_slice(&ls.stdout)
        {
            for row in rows {
                if let (Some(name), false) = (row["name"].as_str(), row["device"].is_null()) {
                    eprintln!("cleanup: volume detach {name}");
                    let run = self.store.run(["volume", "detach", name]);
                    if !run.success() {
                        eprintln!("cleanup: {run}");
                    }
                }
            }
        }
        for (dev, backing) in store_loops(root) {
            eprintln!(
                "cleanup: losetup -d {} (backed by {backing})",
                dev.display()
            );
            let _ = tool("losetup", [OsStr::new("-d"), dev.as_os_str()]);
        }
        if let Some(pid) = self.server_pid()
            && alive(pid)
            && is_fukastor_process(pid)
            && !wait_gone(pid, Duration::from_secs(10))
        {
            eprintln!("cleanup: volume server {pid} still running, killing it");
            kill9(pid);
            wait_gone(pid, Duration::from_secs(10));
        }
        for m in store_mounts(root) {
            eprintln!(
                "cleanup: umount -l {} ({})",
                m.mount_point.display(),
                m.fstype
            );
            lazy_umount(&m.mount_point);
        }
        for (dev, _) in store_loops(root) {
            let _ = tool("losetup", [OsStr::new("-d"), dev.as_os_str()]);
        }
    }
}

impl std::ops::Deref for VStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Drop for VStore {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `--json volume ls`, parsed.
fn volumes(st: &VStore) -> Vec<serde_json::Value> {
    json_array(&st.ok(["--json", "volume", "ls"]))
}

fn volume_row(st: &VStore, name: &str) -> Option<serde_json::Value> {
    volumes(st).into_iter().find(|v| v["name"] == name)
}

/// `volume attach NAME`: the device it prints (its only stdout line), checked
/// to be a block device.
fn attach(st: &VStore, name: &str) -> PathBuf {
    let run = st.ok(["volume", "attach", name]);
    let out = run.stdout_str();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("/dev/loop"),
        "`volume attach` must print the loop device as its only stdout line: {run}"
    );
    let dev = PathBuf::from(lines[0]);
    let meta = std::fs::metadata(&dev)
        .unwrap_or_else(|e| panic!("{} (printed by attach): {e}\n{run}", dev.display()));
    assert!(
        meta.file_type().is_block_device(),
        "{} is not a block device",
        dev.display()
    );
    dev
}

fn detach(st: &VStore, name: &str) {
    st.ok(["volume", "detach", name]);
}

/// `snapshot list TARGET --json`: the snapshots' names, oldest first.
fn snapshot_names(st: &VStore, target: &str) -> Vec<String> {
    let run = st.ok(["--json", "snapshot", "list", target]);
    json_array(&run)
        .iter()
        .map(|s| {
            s["name"]
                .as_str()
                .unwrap_or_else(|| panic!("snapshot without a name: {run}"))
                .to_owned()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// ext4
// ---------------------------------------------------------------------------

fn mkfs_ext4(dev: &Path) {
    let run = tool(
        "mkfs.ext4",
        [OsStr::new("-F"), OsStr::new("-q"), dev.as_os_str()],
    );
    run.assert_success();
}

/// `e2fsck -fn DEV` must exit 0.
fn assert_e2fsck_clean(dev: &Path, context: &str) {
    let run = tool("e2fsck", [OsStr::new("-fn"), dev.as_os_str()]);
    assert!(
        run.status.code() == Some(0),
        "{context}: `e2fsck -fn {}` does not call the filesystem clean: {run}",
        dev.display()
    );
}

/// An ext4 mount made by a test on a scratch directory; unmounted (with
/// `umount -l` as a last resort) when dropped.
#[derive(Debug)]
struct Ext4Mount {
    _dir: tempfile::TempDir,
    mp: PathBuf,
    mounted: bool,
}

impl Ext4Mount {
    fn mount(dev: &Path) -> Self {
        let dir = scratch_dir("fukastor-test-ext4-");
        let mp = dir.path().canonicalize().unwrap();
        let run = tool(
            "mount",
            [
                OsStr::new("-t"),
                OsStr::new("ext4"),
                dev.as_os_str(),
                mp.as_os_str(),
            ],
        );
        let guard = Ext4Mount {
            _dir: dir,
            mp,
            mounted: true,
        };
        if !run.success() {
            drop(guard);
            panic!("mounting the ext4 on {} failed: {run}", dev.display());
        }
        guard
    }

    fn path(&self) -> &Path {
        &self.mp
    }

    fn umount(&mut self) {
        self.mounted = false;
        let run = tool("umount", [self.mp.as_os_str()]);
        if !run.success() {
            lazy_umount(&self.mp);
            panic!("umount of the ext4 failed: {run}");
        }
    }

    fn umount_lazy(&mut self) {
        self.mounted = false;
        let run = tool("umount", [OsStr::new("-l"), self.mp.as_os_str()]);
        run.assert_success();
    }
}

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        if mount_at(&self.mp).is_some() {
            let run = tool("umount", [self.mp.as_os_str()]);
            if !run.success() || mount_at(&self.mp).is_some() {
                eprintln!("cleanup: umount -l {}", self.mp.display());
                lazy_umount(&self.mp);
            }
        }
    }
}

/// Mounts and unmounts the ext4 so that the kernel replays its journal.
fn replay_journal(dev: &Path) {
    let mut m = Ext4Mount::mount(dev);
    m.umount();
}

/// A background process (in its own process group), killed with its group
/// when dropped unfinished.
#[derive(Debug)]
struct Background {
    child: Child,
    what: String,
    stderr: PathBuf,
}

impl Background {
    fn spawn(mut cmd: Command, what: &str, stderr: PathBuf) -> Self {
        let err = File::create(&stderr).expect("create the stderr file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Background {
            child,
            what: what.to_owned(),
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for a child")
    }

    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn kill_group(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            eprintln!("cleanup: killing {} (pid {})", self.what, self.pid());
            self.kill_group();
            if self.wait_for(Duration::from_secs(10)).is_none() {
                eprintln!(
                    "cleanup: {} (pid {}) survives SIGKILL, in state {:?}",
                    self.what,
                    self.pid(),
                    process_state(self.pid())
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Volume lifecycle
// ---------------------------------------------------------------------------

const MIB: u64 = 1 << 20;

#[test]
fn volume_lifecycle_attach_detach_rm_and_refusals() {
    let _serial = serial();
    require_volumes();
    let st = VStore::new();
    let size = 256 * MIB;

    // Sizes in bytes and with binary suffixes.
    for (spec, bytes) in [
        ("4096", 4096u64),
        ("8K", 8192),
        ("3M", 3 * MIB),
        ("1G", 1 << 30),
    ] {
        let name = format!("size-{spec}");
        st.ok(["volume", "create", &name, "--size", spec]);
        let row = volume_row(&st, &name).unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(row["size"].as_u64(), Some(bytes), "--size {spec}: {row}");
        st.ok(["volume", "rm", &name]);
    }
    // The largest size is metadata only.
    st.ok(["volume", "create", "huge", "--size", "16T"]);
    assert_eq!(
        volume_row(&st, "huge").unwrap()["size"].as_u64(),
        Some(16u64 << 40)
    );
    st.ok(["volume", "rm", "huge"]);

    st.ok(["volume", "create", "v1", "--size", "256M"]);
    let row = volume_row(&st, "v1").expect("v1 listed by `volume ls --json`");
    for field in ["name", "size", "used", "snapshots", "device", "base"] {
        assert!(
            row.get(field).is_some(),
            "`volume ls --json` row has no {field:?}: {row}"
        );
    }
    assert_eq!(row["size"].as_u64(), Some(size), "{row}");
    assert!(row["used"].is_u64(), "used must be a number: {row}");
    assert_eq!(row["snapshots"], serde_json::json!([]), "{row}");
    assert!(
        row["device"].is_null(),
        "a detached volume has no device: {row}"
    );
    assert!(row["base"].is_null(), "a volume without --base: {row}");
    let used_empty = row["used"].as_u64().unwrap();

    // --json is a global flag: after the subcommand too.
    assert_eq!(
        json_of(&st.ok(["volume", "ls", "--json"])),
        serde_json::Value::Array(volumes(&st)),
        "`volume ls --json` and `--json volume ls`"
    );
    let table = st.ok(["volume", "ls"]).stdout_str();
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "SIZE", "USED", "SNAPSHOTS", "DEVICE"] {
        assert!(
            header.contains(col),
            "`volume ls` header lacks {col}:\n{table}"
        );
    }
    assert!(
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some("v1")),
        "`volume ls` has no row for v1:\n{table}"
    );

    // Refusals at creation.
    let code = assert_fk07(
        &st.run(["volume", "create", "v1", "--size", "256M"]),
        "creating a volume that exists",
    );
    assert_eq!(code, "FK0702", "a volume of that name exists");
    for bad in [
        "0",
        "1000",
        "4097",
        "17T",
        "17592186048512",
        "12Q",
        "-4096",
        "1.5G",
        "",
    ] {
        let run = st.run(["volume", "create", "badsize", &format!("--size={bad}")]);
        if bad.parse::<u64>().is_ok() || bad == "17T" {
            let code = assert_fk07(&run, &format!("volume create --size {bad:?}"));
            assert_eq!(code, "FK0708", "size {bad:?}: {run}");
        } else if run.status.code() == Some(2) {
            // Not a size at all: a usage error (exit 2, FK0501) naming the
            // value is as good as an FK07 error.
            assert!(
                run.stderr.starts_with("error[FK0501]: ")
                    && run.stderr.contains(&format!("'{bad}'"))
                    && run.stderr.contains("\n  hint: "),
                "volume create --size {bad:?}: a usage error must name the value: {run}"
            );
        } else {
            assert_fk07(&run, &format!("volume create --size {bad:?}"));
        }
    }
    let long = "x".repeat(129);
    for bad in ["", ".hidden", "a/b", "..", "with space", "ü", long.as_str()] {
        let run = st.run(["volume", "create", bad, "--size", "1M"]);
        let code = assert_fk07(&run, &format!("volume create {bad:?}"));
        assert_eq!(code, "FK0703", "name {bad:?}: {run}");
    }
    assert_eq!(
        volumes(&st).len(),
        1,
        "refused creations must leave no volume behind: {:?}",
        volumes(&st)
    );
    assert_fk07(
        &st.run(["volume", "attach", "nosuch"]),
        "attaching a missing volume",
    );
    assert_fk07(
        &st.run(["volume", "rm", "nosuch"]),
        "removing a missing volume",
    );

    // Attach: a loop device of the right size, 4096-byte sectors, direct
    // I/O, backed by the server's file for this volume.
    let dev = attach(&st, "v1");
    assert_eq!(
        blockdev("--getsize64", &dev),
        size,
        "size of {}",
        dev.display()
    );
    assert_eq!(
        blockdev("--getss", &dev),
        4096,
        "logical sector size of {}",
        dev.display()
    );
    let backing = loop_sysfs(&dev, "backing_file").expect("backing file of the loop device");
    let expected_backing = st.path().join("fukastor/vserve/mnt/v1");
    assert_eq!(
        Path::new(&backing),
        expected_backing,
        "{} must be backed by the volume server's file",
        dev.display()
    );
    assert_eq!(
        loop_sysfs(&dev, "dio").as_deref(),
        Some("1"),
        "{} must use direct I/O",
        dev.display()
    );
    let pid = st.live_server();
    eprintln!("volume server: pid {pid}");
    let row = volume_row(&st, "v1").unwrap();
    assert_eq!(row["device"].as_str(), Some(dev.to_str().unwrap()), "{row}");
    assert!(
        st.ok(["volume", "ls"])
            .stdout_str()
            .contains(dev.to_str().unwrap()),
        "`volume ls` shows no device"
    );
    // Attaching an attached volume is refused, or gives the same device.
    let again = st.run(["volume", "attach", "v1"]);
    if again.success() {
        assert_eq!(
            again.stdout_str().trim(),
            dev.to_str().unwrap(),
            "attaching an attached volume again must give its device: {again}"
        );
    } else {
        assert_fk07(&again, "attaching an attached volume");
    }

    // Data through the device: a new volume reads zeros; flushed writes
    // survive detach and attach.
    let mut rng = Rng(0x5eed);
    let a = rng.bytes(MIB as usize);
    let b = rng.bytes(MIB as usize);
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        let mut buf = vec![0xffu8; MIB as usize];
        f.read_exact_at(&mut buf, 10 * MIB).unwrap();
        assert!(buf.iter().all(|&x| x == 0), "a new volume must read zeros");
        f.write_all_at(&a, 64 * MIB).unwrap();
        f.write_all_at(&b, size - MIB).unwrap();
        f.sync_all().unwrap();
    }
    let used = volume_row(&st, "v1").unwrap()["used"].as_u64().unwrap();
    eprintln!("used: {used_empty} bytes when empty, {used} after 2 MiB written and flushed");
    assert!(used >= 2 * MIB, "`used` after 2 MiB written: {used}");

    // rm while attached is refused and changes nothing.
    let run = st.run(["volume", "rm", "v1"]);
    let code = assert_fk07(&run, "volume rm while attached");
    eprintln!("volume rm while attached: {code}");
    assert!(
        volume_row(&st, "v1").is_some(),
        "refused rm removed the volume"
    );
    assert_eq!(blockdev("--getsize64", &dev), size);

    // Detach while something else has the device open without claiming
    // it (as udev or blkid probing it would): the device is unbound when
    // detach returns, not later when that opener closes it.
    let prober = {
        let f = std::fs::File::open(&dev).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(f);
        })
    };
    detach(&st, "v1");
    // (Once unexported, a still bound device names "<file> (deleted)".)
    let now = loop_sysfs(&dev, "backing_file");
    assert!(
        !now.as_deref()
            .is_some_and(|b| b.starts_with(backing.as_str())),
        "{} is still bound to the volume after detach: {now:?}",
        dev.display()
    );
    prober.join().unwrap();
    assert!(volume_row(&st, "v1").unwrap()["device"].is_null());
    st.assert_server_exits("after detaching the only volume");
    assert_fk07(
        &st.run(["volume", "detach", "v1"]),
        "detaching a detached volume",
    );

    let dev = attach(&st, "v1");
    {
        let f = File::open(&dev).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        f.read_exact_at(&mut buf, 64 * MIB).unwrap();
        assert!(buf == a, "data at 64 MiB changed across detach/attach");
        f.read_exact_at(&mut buf, size - MIB).unwrap();
        assert!(
            buf == b,
            "data in the last MiB changed across detach/attach"
        );
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&x| x == 0), "unwritten data is not zeros");
    }
    // The `discard` request (how `run --rm` ends): refused while the device
    // is held exclusively (as a mounted filesystem holds it), changing
    // nothing; then detaches without a flush and deletes in one request.
    let paths = fukastor::volume::server::Paths::new(st.path());
    let discard = || {
        fukastor::volume::server::call(
            &paths,
            &fukastor::volume::server::Request::Discard { name: "v1".into() },
        )
    };
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev)
            .unwrap();
        let err = discard().expect_err("discard of a volume whose device is in use");
        use fukastor::error::Coded;
        assert_eq!(err.code(), "FK0717", "discard while in use: {err}");
        assert_eq!(
            volume_row(&st, "v1").unwrap()["device"].as_str(),
            dev.to_str(),
            "a refused discard detached the volume"
        );
    }
    discard().expect("discard of an attached volume nothing uses");
    assert!(volume_row(&st, "v1").is_none(), "v1 listed after discard");
    assert!(
        loop_sysfs(&dev, "backing_file").as_deref() != Some(backing.as_str()),
        "{} is still bound to the volume after discard",
        dev.display()
    );
    assert!(
        !st.path().join("fukastor/pool/volumes/v1.meta").exists(),
        "the metadata of v1 remains after discard"
    );
    st.assert_server_exits("after discard");
    st.assert_fsck_clean();
}

/// The layer files (`N.data`) in the store's pool, sorted.
fn layer_files(st: &VStore) -> Vec<String> {
    let dir = st.path().join("fukastor/pool/layers");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("a layers entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".data"))
        .collect();
    names.sort();
    names
}

/// A volume server deletes its spare head layers when it stops: a store
/// without a running server holds no layer that no volume names, so a
/// full disk gets back at once what it can (no later server's start frees
/// a block and lets a command that should fail succeed).
#[test]
fn a_stopped_volume_server_leaves_no_spare_head_behind() {
    let _serial = serial();
    require_volumes();
    let st = VStore::new();
    st.ok(["volume", "create", "v", "--size", "16M"]);
    assert_eq!(layer_files(&st).len(), 1, "a new volume: its head");
    attach(&st, "v");
    // Takes the server's spare as the new head; the server makes another.
    st.ok(["snapshot", "create", "v", "--name", "s"]);
    detach(&st, "v");
    st.assert_server_exits("after detach");
    let layers = layer_files(&st);
    assert_eq!(
        layers.len(),
        2,
        "v names two layers (snapshot s and its head); a stopped server left more: {layers:?}"
    );
    st.ok(["volume", "rm", "v"]);
    st.assert_fsck_clean();
}

/// The layers of volume `name`'s stack, bottom to top, from its metadata
/// file (`what` says when, for the failure message).
fn stack_of(st: &VStore, name: &str, what: &str) -> Vec<u64> {
    let m = volume_meta(&st.path().join(format!("fukastor/pool/volumes/{name}.meta")));
    serde_json::from_value(m["layers"].clone())
        .unwrap_or_else(|e| panic!("{what}: the layers of {m}: {e}"))
}

/// `volume attach NAME` with `key=value` in its environment, which the
/// volume server it starts inherits (a failpoint or delay point): the
/// device it prints.
fn attach_with_env(st: &VStore, name: &str, key: &str, value: &str) -> PathBuf {
    let mut cmd = st.store.command();
    cmd.env(key, value).args(["volume", "attach", name]);
    let run = run_command(cmd);
    run.assert_success();
    let dev = PathBuf::from(run.stdout_str().trim());
    assert!(
        dev.to_string_lossy().starts_with("/dev/loop"),
        "attach printed {dev:?}\n{run}"
    );
    dev
}

/// Writes `mib` MiB made from `seed` at byte `at` of `dev` and fsyncs
/// them; returns them.
fn write_synced(dev: &Path, seed: u64, at: u64, mib: u64) -> Vec<u8> {
    let data = Rng(seed).bytes((mib * MIB) as usize);
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(&data, at).unwrap();
    f.sync_all().unwrap();
    data
}

/// `len` bytes of `dev` at byte `at`.
fn read_back(dev: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut back = vec![0u8; len];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact_at(&mut back, at)
        .unwrap();
    back
}

/// Layer `id`'s index file.
fn index_file(st: &VStore, id: u64) -> PathBuf {
    st.path().join(format!("fukastor/pool/layers/{id}.index"))
}

/// A volume's head is replayed record by record whenever the volume is
/// opened; once it holds 16 MiB or more (and a sixteenth of what the
/// sealed layers of its stack hold), the server seals it when the volume is detached, with an
/// index file, so the next attach reads the index instead. What was written
/// reads back the same through the sealed layer, and fsck finds the store
/// clean.
#[test]
fn a_large_head_is_sealed_when_its_volume_is_detached() {
    let _serial = serial();
    require_volumes();
    let st = VStore::new();
    st.ok(["volume", "create", "v", "--size", "64M"]);
    let layers = |what: &str| stack_of(&st, "v", what);
    let head = layers("created");
    assert_eq!(head.len(), 1, "a new volume is its head");
    // 8 MiB: under the threshold, the head stays as it is.
    let small = write_synced(&attach(&st, "v"), 0x5ea0, 0, 8);
    detach(&st, "v");
    // A server ends its background work on volumes before it exits.
    st.assert_server_exits("after 8 MiB");
    assert_eq!(layers("after 8 MiB"), head, "8 MiB in the head: not sealed");
    // 20 MiB more: sealed.
    let data = write_synced(&attach(&st, "v"), 0x5ea1, 8 * MIB, 20);
    detach(&st, "v");
    st.assert_server_exits("after detach");
    let sealed = layers("after detach");
    assert_eq!(
        sealed.len(),
        2,
        "28 MiB in the head: sealed under a new head when detached ({sealed:?})"
    );
    assert_eq!(sealed[0], head[0], "the old head is the sealed layer");
    assert!(
        index_file(&st, head[0]).is_file(),
        "the sealed head's index file is written"
    );

    let dev = attach(&st, "v");
    assert!(
        read_back(&dev, 0, small.len()) == small && read_back(&dev, 8 * MIB, data.len()) == data,
        "what was written reads back through the sealed layer"
    );
    detach(&st, "v");
    st.assert_server_exits("after the second detach");
    assert_eq!(
        layers("after the second detach"),
        sealed,
        "a detach after only reads seals nothing (the empty head's own check is \
         unit-tested: a_sealed_head_is_opened_through_its_index)"
    );
    st.assert_fsck_clean();
}

/// `kill -9` of the volume server at each step of sealing a head
/// (docs/volume-format.md, the crash-table row "seal a large head"):
/// - `volume:seal:head-made`: the new head layer exists, no metadata names
///   it: the volume is as it was (one layer), the orphan layer is reclaimed
///   by the next server, and the next detach seals the head after all;
/// - `volume:seal:sealed`: the metadata names the sealed head and a new
///   one, the index file is not written: the volume has two layers, the
///   sealed one is replayed once when next opened and its index written then.
///
/// In both, what was written and fsynced reads back the same, nothing of the
/// dead server stays mounted, and fsck finds the store clean.
#[test]
fn kill_9_while_sealing_a_head_loses_nothing() {
    let _serial = serial();
    require_volumes();
    for fp in ["volume:seal:head-made", "volume:seal:sealed"] {
        let st = VStore::new();
        st.ok(["volume", "create", "v", "--size", "64M"]);
        let layers = |what: &str| stack_of(&st, "v", &format!("{fp}, {what}"));
        let head = layers("created");
        // The server this attach starts inherits the failpoint.
        let dev = attach_with_env(&st, "v", "FUKASTOR_FAILPOINT", fp);
        let server = st.live_server();
        let data = write_synced(&dev, 0xdead, 4 * MIB, 20);
        detach(&st, "v");
        assert!(
            wait_gone(server, Duration::from_secs(15)),
            "{fp}: the server sealing the head must die at the failpoint"
        );
        let after_crash = layers("after the crash");
        if fp == "volume:seal:head-made" {
            assert_eq!(
                after_crash, head,
                "{fp}: no metadata names the new head yet"
            );
            assert_eq!(
                layer_files(&st).len(),
                head.len() + 1,
                "{fp}: the new head's file is there, unnamed (an orphan for reclaim)"
            );
        } else {
            assert_eq!(
                after_crash.len(),
                2,
                "{fp}: the head is sealed under a new one"
            );
            assert_eq!(after_crash[0], head[0]);
            assert!(
                !index_file(&st, head[0]).exists(),
                "{fp}: the crash came before the index file"
            );
        }

        // A new server (without the failpoint) clears the dead one's mount.
        let dev = attach(&st, "v");
        assert!(
            read_back(&dev, 4 * MIB, data.len()) == data,
            "{fp}: what was fsynced reads back the same"
        );
        detach(&st, "v");
        st.assert_server_exits(&format!("{fp}: after the second detach"));
        let end = layers("at the end");
        assert_eq!(end.len(), 2, "{fp}: the head sealed (again, or already)");
        assert_eq!(end[0], head[0]);
        assert!(
            index_file(&st, head[0]).is_file(),
            "{fp}: the sealed layer's index file is written in the end"
        );
        let mut named: Vec<String> = end.iter().map(|id| format!("{id}.data")).collect();
        named.sort();
        assert_eq!(
            layer_files(&st),
            named,
            "{fp}: nothing but the volume's layers is left (the orphan head reclaimed)"
        );
        st.assert_fsck_clean();
    }
}

/// A volume detached again while the server is still sealing its head
/// from the detach before (held up here for 5 s after the seal by a
/// delay point) has its new writes sealed too once that sealing ends: the
/// second request is judged again, not dropped.
#[test]
fn a_detach_during_a_head_sealing_gets_its_own_sealing() {
    let _serial = serial();
    require_volumes();
    let st = VStore::new();
    st.ok(["volume", "create", "v", "--size", "64M"]);
    let layers = |what: &str| stack_of(&st, "v", what);
    // The server this attach starts inherits the delay point.
    let dev = attach_with_env(&st, "v", "FUKASTOR_DELAYPOINT", "volume:seal:sealed:5000");
    let first = write_synced(&dev, 1, 0, 20);
    let started = Instant::now();
    detach(&st, "v"); // starts sealing the 20 MiB, then waits 5 s
    let dev = attach(&st, "v");
    let second = write_synced(&dev, 2, 32 * MIB, 20);
    detach(&st, "v"); // asks for a sealing while the first one runs
    let during = started.elapsed();
    st.assert_server_exits("after the second detach");
    assert!(
        during < Duration::from_secs(5),
        "the second detach came {during:?} after the first: not during its sealing, so this \
         run proves nothing (a very slow machine?)"
    );
    let end = layers("at the end");
    assert_eq!(
        end.len(),
        3,
        "both heads of 20 MiB sealed (two sealed layers and a new head): {end:?}"
    );
    let dev = attach(&st, "v");
    assert!(
        read_back(&dev, 0, first.len()) == first,
        "the first 20 MiB read back"
    );
    assert!(
        read_back(&dev, 32 * MIB, second.len()) == second,
        "the second 20 MiB read back"
    );
    detach(&st, "v");
    st.assert_server_exits("at the end");
    st.assert_fsck_clean();
}

#[test]
fn volume_create_with_base_reads_the_base() {
    let _serial = serial();
    require_volumes();
    let st = VStore::new();
    let scratch = scratch_dir("fukastor-test-base-");
    let base = scratch.path().join("base.img");
    let mut rng = Rng(0xba5e);
    let content = rng.bytes(8 * MIB as usize);
    std::fs::write(&base, &content).unwrap();

    let run = st.run([
        OsStr::new("volume"),
        OsStr::new("create"),
        OsStr::new("vb"),
        OsStr::new("--size"),
        OsStr::new("16M"),
        OsStr::new("--base"),
        base.as_os_str(),
    ]);
    run.assert_success();
    let row = volume_row(&st, "vb").unwrap();
    assert!(
        !row["base"].is_null(),
        "`volume ls --json` shows no base: {row}"
    );
    eprintln!("base as listed: {}", row["base"]);

    let dev = attach(&st, "vb");
    let mut all = Vec::new();
    File::open(&dev).unwrap().read_to_end(&mut all).unwrap();
    assert_eq!(all.len() as u64, 16 * MIB);
    assert!(
        all[..content.len()] == content[..],
        "the first 8 MiB of the volume are not the base's bytes"
    );
    assert!(
        all[content.len()..].iter().all(|&b| b == 0),
        "past the base's end the volume must read zeros"
    );
    // Writes go to the volume, never to the base.
    {
        let f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
        f.write_all_at(&[0xabu8; 8192], 4096).unwrap();
        f.sync_all().unwrap();
    }
    let mut buf = vec![0u8; 3 * 4096];
    File::open(&dev)
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    assert!(buf[..4096] == content[..4096], "block 0 changed");
    assert!(
        buf[4096..].iter().all(|&b| b == 0xab),
        "the write did not land"
    );
    detach(&st, "vb");
    assert_eq!(
        sha256_hex(&std::fs::read(&base).unwrap()),
        sha256_hex(&content),
        "the base file was modified"
    );
    // Reattached: base bytes plus the write.
    let dev = attach(&st, "vb");
    let mut buf = vec![0u8; 4 * 4096];
    File::open(&dev)
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    assert!(buf[..4096] == content[..4096]);
    assert!(buf[4096..12288].iter().all(|&b| b == 0xab));
    assert!(buf[12288..] == content[12288..16384]);
    detach(&st, "vb");
    st.ok(["volume", "rm", "vb"]);
    assert!(base.is_file(), "rm of the volume removed its base");

    let run = st.run([
        OsStr::new("volume"),
        OsStr::new("create"),
        OsStr::new("vmissing"),
        OsStr::new("--size"),
        OsStr::new("16M"),
        OsStr::new("--base"),
        scratch.path().join("nosuch.img").as_os_str(),
    ]);
    assert_fk07(&run, "--base of a missing file");
    assert!(volume_row(&st, "vmissing").is_none());
    st.assert_server_exits("after the base test");
}

// ---------------------------------------------------------------------------
// 2. Crash: SIGKILL of the volume server under an fsyncing writer
// ---------------------------------------------------------------------------

/// Writes `DIR/TAG-i` (content: the line "TAG-i" repeated, cut to n bytes),
/// fsyncs it (`sync FILE`), and only then appends "i n" to LOG, which is on
/// another filesystem; forever, until something fails.
const WRITER_SCRIPT: &str = r#"
dir=$1 log=$2 tag=$3
i=0
while :; do
    n=$(( 1 + (i * 7919) % 131072 ))
    f="$dir/$tag-$i"
    yes "$tag-$i" | head -c "$n" > "$f" || exit 10
    sync "$f" || exit 11
    echo "$i $n" >> "$log" || exit 12
    i=$((i + 1))
done
"#;

/// The server keeps its FUSE export mounted from the first attach until it
/// stops. A volume attached again under a name just detached (same inode
/// in the export) gets a loop device of its own size, not the cached one;
/// and a server killed while nothing is attached leaves a dead export that
/// the next server clears before it serves.
#[test]
fn the_export_outlives_detach_and_a_dead_one_is_cleared() {
    let _serial = serial();
    require_volumes();
    let st = VStore::new();
    st.ok(["volume", "create", "v", "--size", "64M"]);
    let dev = attach(&st, "v");
    assert_eq!(blockdev("--getsize64", &dev), 64 * MIB);
    let pid = st.live_server();
    detach(&st, "v");
    st.ok(["volume", "rm", "v"]);
    st.ok(["volume", "create", "v", "--size", "128M"]);
    // Within the attributes' 1 s TTL, with the same server.
    let dev = attach(&st, "v");
    assert_eq!(
        st.live_server(),
        pid,
        "the server changed between the attaches"
    );
    assert_eq!(
        blockdev("--getsize64", &dev),
        128 * MIB,
        "{} has the size of the volume detached before it",
        dev.display()
    );
    detach(&st, "v");
    let mnt = st.path().join("fukastor/vserve/mnt");
    assert!(
        mount_at(&mnt).is_some(),
        "the export is no longer mounted at {} after the detach (the server still runs)",
        mnt.display()
    );
    kill9(pid);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "the server survived SIGKILL"
    );
    let dev = attach(&st, "v");
    assert_eq!(blockdev("--getsize64", &dev), 128 * MIB);
    detach(&st, "v");
    st.ok(["volume", "rm", "v"]);
    st.assert_server_exits("after the last detach");
    st.assert_fsck_clean();
}

fn writer_content(tag: &str, i: u64, n: usize) -> Vec<u8> {
    let line = format!("{tag}-{i}\n");
    line.bytes().cycle().take(n).collect()
}

/// The "i n" lines of a writer's log.
fn writer_log(log: &Path) -> Vec<(u64, usize)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (i, n) = l.split_once(' ')?;
            Some((i.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

#[test]
fn crash_sigkill_of_the_volume_server_keeps_every_fsynced_file() {
    let _serial = serial();
    require_volumes();
    require_ext4();
    require_tool("sync", "coreutils");
    require_tool("yes", "coreutils");
    let seed = seed("crash");
    let mut rng = Rng(seed);
    let st = VStore::new();
    st.ok(["volume", "create", "crash", "--size", "512M"]);
    let mut dev = attach(&st, "crash");
    mkfs_ext4(&dev);
    let mut ext = Ext4Mount::mount(&dev);
    // The logs live on the test's temporary directory, not on the volume.
    let logs = scratch_dir("fukastor-test-crashlog-");

    let mut durable: Vec<(String, u64, usize)> = Vec::new();
    for round in 0..CRASH_ROUNDS {
        let tag = format!("r{round}");
        let log = logs.path().join(format!("{tag}.log"));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WRITER_SCRIPT)
            .arg("writer")
            .arg(ext.path())
            .arg(&log)
            .arg(&tag);
        let mut writer =
            Background::spawn(cmd, "the writer", logs.path().join(format!("{tag}.err")));
        let delay = Duration::from_millis(200 + rng.below(1801));
        std::thread::sleep(delay);
        if let Some(status) = writer.try_wait() {
            panic!(
                "round {round}: the writer stopped before the kill ({status}): {}",
                writer.stderr_text()
            );
        }
        let pid = st.live_server();
        kill9(pid);
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "the volume server {pid} survives SIGKILL"
        );
        let killed = Instant::now();
        let Some(status) = writer.wait_for(Duration::from_secs(60)) else {
            panic!(
                "round {round}: the writer still runs 60 s after the volume server was killed \
                 (state {:?}): I/O on the dead volume's loop device does not fail",
                process_state(writer.pid())
            );
        };
        let logged = writer_log(&log);
        eprintln!(
            "round {round}: server {pid} killed after {delay:.1?}; {} files fsync'd this round; \
             the writer then stopped ({status}) within {:.1?}",
            logged.len(),
            killed.elapsed()
        );
        durable.extend(logged.into_iter().map(|(i, n)| (tag.clone(), i, n)));
        drop(writer);

        ext.umount_lazy();
        let run = st.run(["volume", "detach", "crash"]);
        assert!(
            run.success(),
            "round {round}: `volume detach` after the server was killed must clean up: {run}"
        );
        assert!(
            store_loops(st.path()).is_empty(),
            "round {round}: loop devices of the store remain after detach: {:?}",
            store_loops(st.path())
        );
        dev = attach(&st, "crash");
        let new_pid = st.live_server();
        assert_ne!(
            new_pid, pid,
            "attach after the kill must start a new server"
        );
        // e2fsck -n does not replay the journal, and before the replay the
        // filesystem may legitimately look inconsistent: the kernel replays
        // it (mount, umount), then e2fsck must find nothing. What e2fsck says
        // before the replay is only shown.
        let before = tool("e2fsck", [OsStr::new("-fn"), dev.as_os_str()]);
        eprintln!(
            "round {round}: e2fsck -fn before the journal replay: {}",
            before.status
        );
        replay_journal(&dev);
        assert_e2fsck_clean(&dev, &format!("round {round} (seed {seed})"));
        ext = Ext4Mount::mount(&dev);

        let mut bad = Vec::new();
        for (tag, i, n) in &durable {
            let path = ext.path().join(format!("{tag}-{i}"));
            match std::fs::read(&path) {
                Ok(data) if data == writer_content(tag, *i, *n) => {}
                Ok(data) => bad.push(format!(
                    "{tag}-{i}: {} bytes, expected {n} bytes of {:?}…; starts with {:?}",
                    data.len(),
                    format!("{tag}-{i}"),
                    String::from_utf8_lossy(&data[..data.len().min(40)])
                )),
                Err(e) => bad.push(format!("{tag}-{i}: {e}")),
            }
        }
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}): {} of {} fsync'd files are missing or wrong after \
             the crash; the first ones:\n{}",
            bad.len(),
            durable.len(),
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(
        !durable.is_empty(),
        "no file was fsync'd in {CRASH_ROUNDS} rounds: the test proved nothing (seed {seed})"
    );
    eprintln!(
        "{} fsync'd files checked after {CRASH_ROUNDS} kills",
        durable.len()
    );

    ext.umount();
    assert_e2fsck_clean(&dev, "after the last round");
    detach(&st, "crash");
    st.ok(["volume", "rm", "crash"]);
    st.assert_server_exits("after the crash test");
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// 3. Snapshots during heavy writeback
// ---------------------------------------------------------------------------

fn meminfo_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn writeback_state() -> String {
    format!(
        "Dirty {} MiB, Writeback {} MiB",
        meminfo_kib("Dirty") / 1024,
        meminfo_kib("Writeback") / 1024
    )
}

#[test]
fn snapshot_create_and_rm_during_heavy_writeback_are_bounded() {
    let _serial = serial();
    require_volumes();
    require_ext4();
    require_tool("dd", "coreutils");
    let st = VStore::new();
    st.ok(["volume", "create", "wb", "--size", "1536M"]);
    let dev = attach(&st, "wb");
    mkfs_ext4(&dev);
    let mut ext = Ext4Mount::mount(&dev);
    let big = ext.path().join("big");
    let scratch = scratch_dir("fukastor-test-wb-");

    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", big.display()))
        .args(["bs=1M", "count=1024", "status=none"]);
    let started = Instant::now();
    let mut dd = Background::spawn(cmd, "dd", scratch.path().join("dd.err"));
    // Let it dirty a few hundred MiB.
    while std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0) < 256 * MIB {
        if dd.try_wait().is_some() || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut timed = |what: &str, args: &[&str]| -> Duration {
        let running_before = dd.try_wait().is_none();
        let before = writeback_state();
        let run = st.run(args);
        let took = run.elapsed;
        let running_after = dd.try_wait().is_none();
        eprintln!(
            "{what}: {took:.2?} (dd {} before, {} after; {before} before, {} after)",
            if running_before { "running" } else { "done" },
            if running_after { "running" } else { "done" },
            writeback_state()
        );
        run.assert_success();
        assert!(
            took <= SNAPSHOT_BOUND,
            "{what} took {took:.1?} during heavy writeback, more than {SNAPSHOT_BOUND:?}"
        );
        took
    };
    timed(
        "snapshot create --atomic s1",
        &["snapshot", "create", "wb", "--name", "s1", "--atomic"],
    );
    timed(
        "snapshot create --atomic s2",
        &["snapshot", "create", "wb", "--name", "s2", "--atomic"],
    );
    timed("snapshot rm s1", &["snapshot", "rm", "wb", "s1"]);

    let Some(status) = dd.wait_for(Duration::from_secs(300)) else {
        panic!("dd of 1 GiB still runs after 300 s ({})", writeback_state());
    };
    assert!(
        status.success(),
        "dd failed ({status}): {}",
        dd.stderr_text()
    );
    let sync = tool("sync", [OsStr::new("-f"), big.as_os_str()]);
    sync.assert_success();
    eprintln!(
        "dd of 1 GiB and its writeback took {:.1?} in all",
        started.elapsed()
    );
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 1 << 30);
    assert_eq!(snapshot_names(&st, "wb"), ["s2"], "after `snapshot rm s1`");

    ext.umount();
    assert_e2fsck_clean(&dev, "the live filesystem after the writeback");
    detach(&st, "wb");

    // The atomic snapshot is a clean filesystem whose file holds zeros.
    st.ok(["snapshot", "rollback", "wb", "s2"]);
    let dev = attach(&st, "wb");
    assert_e2fsck_clean(&dev, "the --atomic snapshot taken during writeback");
    let mut ext = Ext4Mount::mount(&dev);
    let big = ext.path().join("big");
    let len = std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0);
    eprintln!("the file in the snapshot: {} MiB", len / MIB);
    let mut f = File::open(&big).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if let Some(p) = buf[..n].iter().position(|&b| b != 0) {
            panic!(
                "the snapshot's file has a non-zero byte at {}",
                off + p as u64
            );
        }
        off += n as u64;
    }
    assert_eq!(off, len);
    drop(f);
    ext.umount();
    detach(&st, "wb");
    st.ok(["volume", "rm", "wb"]);
    st.assert_server_exits("after the writeback test");
}

// ---------------------------------------------------------------------------
// 4. Rollback restores exact bytes
// ---------------------------------------------------------------------------

/// Files of awkward sizes, a directory, a symlink, a hardlink, modes, an xattr.
fn populate(root: &Path, rng: &mut Rng) {
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        65536,
        200_000,
        1 << 20,
        (3 << 20) + 17,
    ];
    for (k, &n) in sizes.iter().enumerate() {
        std::fs::write(root.join(format!("f{k}")), rng.bytes(n)).unwrap();
    }
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for k in 0..20 {
        let n = rng.below(300_000) as usize;
        std::fs::write(root.join(format!("sub/deeper/g{k}")), rng.bytes(n)).unwrap();
    }
    std::os::unix::fs::symlink("f3", root.join("link")).unwrap();
    std::fs::hard_link(root.join("f4"), root.join("hard")).unwrap();
    std::fs::set_permissions(root.join("f5"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    rustix::fs::setxattr(
        root.join("f6").as_path(),
        "user.fukastor",
        b"xattr value",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn without_root(mut t: Tree) -> Tree {
    t.retain(|p, _| p.as_bytes() != b"/");
    t
}

#[test]
fn snapshot_rollback_restores_exact_bytes() {
    let _serial = serial();
    require_volumes();
    require_ext4();
    let st = VStore::new();
    st.ok(["volume", "create", "rb", "--size", "256M"]);
    let dev = attach(&st, "rb");
    mkfs_ext4(&dev);
    let mut ext = Ext4Mount::mount(&dev);
    let mut rng = Rng(0x0b5e55ed);
    populate(ext.path(), &mut rng);
    tool("sync", [OsStr::new("-f"), ext.path().as_os_str()]).assert_success();
    let before = walk(ext.path());

    st.ok(["snapshot", "create", "rb", "--name", "s1", "--atomic"]);
    let list = json_array(&st.ok(["--json", "snapshot", "list", "rb"]));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "s1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let created = list[0]["created"]
        .as_u64()
        .unwrap_or_else(|| panic!("\"created\" is not a number: {list:?}"));
    assert!(
        created + 3600 > now && created <= now + 60,
        "\"created\" {created} is not about now ({now})"
    );
    let table = st.ok(["snapshot", "list", "rb"]).stdout_str();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("NAME") && h.contains("CREATED"))
            && table
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some("s1")),
        "`snapshot list` table:\n{table}"
    );
    assert_eq!(
        volume_row(&st, "rb").unwrap()["snapshots"],
        serde_json::json!(["s1"]),
        "`volume ls --json` snapshots"
    );
    assert_fk07(
        &st.run(["snapshot", "create", "rb", "--name", "s1"]),
        "a second snapshot named s1",
    );
    assert_fk07(
        &st.run(["snapshot", "create", "rb", "--name", ".bad"]),
        "a snapshot named .bad",
    );

    // Modify, delete, add.
    let root = ext.path();
    std::fs::write(root.join("f9"), rng.bytes((3 << 20) + 17)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("f8"))
        .unwrap()
        .write_all_at(b"changed in the middle", 500_000)
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(root.join("f7"))
        .unwrap()
        .set_len(10)
        .unwrap();
    std::fs::remove_file(root.join("f2")).unwrap();
    std::fs::remove_dir_all(root.join("sub")).unwrap();
    std::fs::set_permissions(root.join("f1"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(root.join("added"), b"added after the snapshot").unwrap();
    std::fs::create_dir(root.join("newdir")).unwrap();
    std::fs::write(root.join("newdir/added2"), rng.bytes(100_000)).unwrap();
    tool("sync", [OsStr::new("-f"), root.as_os_str()]).assert_success();
    assert!(
        walk(ext.path()) != before,
        "the modifications changed nothing"
    );

    ext.umount();
    let code = assert_fk07(
        &st.run(["snapshot", "rollback", "rb", "s1"]),
        "snapshot rollback while the volume is attached",
    );
    eprintln!("rollback while attached: {code}");
    detach(&st, "rb");
    assert_fk07(
        &st.run(["snapshot", "rollback", "rb", "nosuch"]),
        "rollback to a missing snapshot",
    );
    st.ok(["snapshot", "rollback", "rb", "s1"]);
    let dev = attach(&st, "rb");
    assert_e2fsck_clean(&dev, "after rollback");
    let mut ext = Ext4Mount::mount(&dev);
    assert!(
        !ext.path().join("added").exists(),
        "a file added after the snapshot survived"
    );
    assert!(
        !ext.path().join("newdir").exists(),
        "a directory added after the snapshot survived"
    );
    assert_trees_eq(
        "after rollback",
        "at the snapshot",
        &before,
        "rolled back",
        &walk(ext.path()),
    );

    // Again: writes after a rollback are undone by a second rollback, and
    // the snapshot survives rollbacks.
    std::fs::write(ext.path().join("later"), b"later").unwrap();
    std::fs::remove_file(ext.path().join("f0")).unwrap();
    ext.umount();
    detach(&st, "rb");
    assert_eq!(snapshot_names(&st, "rb"), ["s1"]);
    st.ok(["snapshot", "rollback", "rb", "s1"]);
    let dev = attach(&st, "rb");
    let mut ext = Ext4Mount::mount(&dev);
    assert!(!ext.path().join("later").exists());
    assert_trees_eq(
        "after a second rollback",
        "at the snapshot",
        &without_root(before.clone()),
        "rolled back",
        &without_root(walk(ext.path())),
    );
    ext.umount();
    detach(&st, "rb");
    st.ok(["snapshot", "rm", "rb", "s1"]);
    assert!(snapshot_names(&st, "rb").is_empty());
    assert_fk07(
        &st.run(["snapshot", "rm", "rb", "s1"]),
        "removing a removed snapshot",
    );
    st.ok(["volume", "rm", "rb"]);
    st.assert_server_exits("after the rollback test");
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// 5. Containers
// ---------------------------------------------------------------------------

fn ps(st: &VStore) -> Vec<serde_json::Value> {
    json_array(&st.ok(["--json", "ps"]))
}

fn ps_row(st: &VStore, name: &str) -> Option<serde_json::Value> {
    ps(st).into_iter().find(|r| r["name"] == name)
}

fn read_string(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `container mount NAME [MP]`: checks the printed rootfs is an overlay
/// mount and returns it (canonical).
fn container_mount(st: &VStore, name: &str, mp: Option<&Path>) -> PathBuf {
    let mut args = vec![
        OsStr::new("container").to_owned(),
        OsStr::new("mount").to_owned(),
        OsStr::new(name).to_owned(),
    ];
    if let Some(mp) = mp {
        args.push(mp.as_os_str().to_owned());
    }
    let run = st.ok(&args);
    let out = run.stdout_str();
    let printed = out.trim();
    let expected = match mp {
        Some(mp) => mp.canonicalize().unwrap(),
        None => st.path().join(format!("fukastor/containers/{name}/rootfs")),
    };
    assert!(
        !printed.is_empty() && Path::new(printed).canonicalize().ok() == Some(expected.clone()),
        "`container mount {name}` must print the rootfs {}: {run}",
        expected.display()
    );
    let m = mount_at(&expected).unwrap_or_else(|| {
        panic!(
            "{} is not a mount point after `container mount`: {run}",
            expected.display()
        )
    });
    assert_eq!(m.fstype, "overlay", "the rootfs of {name}: {m:?}");
    expected
}

/// Unmounts (lazily) what it names when dropped, even after a panic.
struct LazyUmount(PathBuf);

impl Drop for LazyUmount {
    fn drop(&mut self) {
        lazy_umount(&self.0);
    }
}

/// `rm` never deletes through a mount it did not make: with a tmpfs mounted
/// on a container's `bundle` directory, the container is removed, its work
/// directory is left in place (with a warning) and the tmpfs keeps its file.
#[test]
fn rm_never_deletes_through_a_mount_in_the_work_directory() {
    let _serial = serial();
    require_volumes();
    let fx = fixtures();
    let st = VStore::new();
    st.ok(["-q", "pull", &fx.oci("busybox"), "busybox"]);
    st.ok(["create", "busybox", "--name", "m"]);
    st.ok(["container", "mount", "m"]);
    st.ok(["container", "umount", "m"]);
    let work = st.path().join("fukastor/containers/m");
    let bundle = work.join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle directory");
    let run = tool(
        "mount",
        [
            OsStr::new("-t"),
            OsStr::new("tmpfs"),
            OsStr::new("none"),
            bundle.as_os_str(),
        ],
    );
    assert!(run.success(), "mounting a tmpfs: {run}");
    let _guard = LazyUmount(bundle.clone());
    std::fs::write(bundle.join("keep"), b"not yours").expect("write into the tmpfs");

    let run = st.ok(["rm", "m"]);
    assert!(
        run.stderr.contains("is mounted"),
        "`rm` says why it left the directory: {run}"
    );
    assert_eq!(
        std::fs::read(bundle.join("keep")).expect("the tmpfs's file"),
        b"not yours"
    );
    assert!(work.join("fs").is_dir(), "the work directory is left whole");
    assert!(
        !st.run(["container", "mount", "m"]).success(),
        "the container is gone"
    );
}

#[test]
fn containers_are_isolated_clones_with_snapshots_and_rm() {
    let _serial = serial();
    require_volumes();
    let fx = fixtures();
    // Made before the store, so that it outlives the store's clean-up (a
    // mount point must not be deleted while it is mounted).
    let mnt_b = scratch_dir("fukastor-test-ctr-b-");
    let refmnt = scratch_dir("fukastor-test-ref-");
    let st = VStore::new();
    let run = st.ok(["-q", "pull", &fx.oci("busybox"), "busybox"]);
    let image_id = run.stdout_str().trim().to_owned();
    assert_eq!(image_id.len(), 64, "{run}");

    // The image itself, as the reference.
    let reference = st.mount_kernel("busybox", refmnt.path());
    let ref_tree = without_root(walk(reference.path()));
    let hostname = read_string(&reference.path().join("etc/hostname"));
    assert_eq!(hostname, "fukastor-busybox\n");

    for name in ["a", "b"] {
        let run = st.ok(["create", "busybox", "--name", name]);
        assert_eq!(
            run.stdout_str().trim(),
            name,
            "`create` prints the name: {run}"
        );
    }
    assert_fk07(
        &st.run(["create", "busybox", "--name", "a"]),
        "creating a container that exists",
    );
    for name in ["a", "b"] {
        let row = ps_row(&st, name).unwrap_or_else(|| panic!("{name} not in `ps --json`"));
        assert_eq!(row["state"], "stopped", "{row}");
        assert!(
            row["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("busybox")),
            "image: {row}"
        );
        assert_eq!(row["image_id"].as_str(), Some(image_id.as_str()), "{row}");
        assert_eq!(
            row["volume"].as_str(),
            Some(format!("ctr.{name}").as_str()),
            "{row}"
        );
    }

    let root_a = container_mount(&st, "a", None);
    let root_b = container_mount(&st, "b", Some(mnt_b.path()));
    let table = st.ok(["ps"]).stdout_str();
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "IMAGE", "STATE", "ROOTFS"] {
        assert!(header.contains(col), "`ps` header lacks {col}:\n{table}");
    }
    for (name, root) in [("a", &root_a), ("b", &root_b)] {
        let row = ps_row(&st, name).unwrap();
        assert_eq!(row["state"], "mounted", "{row}");
        assert_eq!(
            row["rootfs"].as_str().map(Path::new),
            Some(root.as_path()),
            "{row}"
        );
        // The image's files, exactly.
        assert_trees_eq(
            &format!("container {name} before writes"),
            "image",
            &ref_tree,
            name,
            &without_root(walk(root)),
        );
    }

    // Each writes its own changes.
    std::fs::write(root_a.join("a.txt"), "from a").unwrap();
    std::fs::write(root_a.join("etc/hostname"), "host-a\n").unwrap();
    std::fs::remove_file(root_a.join("bin/ls")).unwrap();
    std::fs::write(root_b.join("b.txt"), "from b").unwrap();
    std::fs::create_dir_all(root_b.join("b-dir/x")).unwrap();
    tool("sync", [OsStr::new("-f"), root_a.as_os_str()]).assert_success();
    tool("sync", [OsStr::new("-f"), root_b.as_os_str()]).assert_success();

    assert_eq!(read_string(&root_a.join("a.txt")), "from a");
    assert!(!root_a.join("b.txt").exists(), "a sees b's file");
    assert!(!root_a.join("b-dir").exists(), "a sees b's directory");
    assert_eq!(read_string(&root_a.join("etc/hostname")), "host-a\n");
    assert!(
        root_a.join("bin/ls").symlink_metadata().is_err(),
        "a's deletion did not take"
    );
    assert_eq!(read_string(&root_b.join("b.txt")), "from b");
    assert!(!root_b.join("a.txt").exists(), "b sees a's file");
    assert_eq!(
        read_string(&root_b.join("etc/hostname")),
        hostname,
        "b sees a's edit"
    );
    assert!(
        root_b.join("bin/ls").symlink_metadata().is_ok(),
        "b sees a's deletion"
    );
    // The image itself is untouched.
    assert_eq!(
        read_string(&reference.path().join("etc/hostname")),
        hostname
    );
    assert!(!reference.path().join("a.txt").exists());
    assert!(reference.path().join("bin/ls").symlink_metadata().is_ok());

    // Container snapshot and rollback.
    st.ok(["snapshot", "create", "a", "--name", "s1", "--atomic"]);
    assert_eq!(snapshot_names(&st, "a"), ["s1"]);
    std::fs::write(root_a.join("a-after.txt"), "after the snapshot").unwrap();
    std::fs::remove_file(root_a.join("a.txt")).unwrap();
    tool("sync", [OsStr::new("-f"), root_a.as_os_str()]).assert_success();
    let code = assert_fk07(
        &st.run(["snapshot", "rollback", "a", "s1"]),
        "rollback of a mounted container",
    );
    eprintln!("rollback of a mounted container: {code}");
    assert!(
        root_a.join("a-after.txt").exists(),
        "a refused rollback changed files"
    );
    st.ok(["container", "umount", "a"]);
    assert!(
        mount_at(&root_a).is_none(),
        "the rootfs of a is still mounted after umount"
    );
    assert_eq!(ps_row(&st, "a").unwrap()["state"], "stopped");
    assert!(
        volume_row(&st, "ctr.a").is_some_and(|v| v["device"].is_null()),
        "the volume of a stopped container is still attached: {:?}",
        volume_row(&st, "ctr.a")
    );
    st.ok(["snapshot", "rollback", "a", "s1"]);
    let root_a = container_mount(&st, "a", None);
    assert_eq!(
        read_string(&root_a.join("a.txt")),
        "from a",
        "after rollback"
    );
    assert!(
        !root_a.join("a-after.txt").exists(),
        "a file written after the snapshot survived rollback"
    );
    assert_eq!(read_string(&root_a.join("etc/hostname")), "host-a\n");
    assert!(root_a.join("bin/ls").symlink_metadata().is_err());
    assert_eq!(
        read_string(&root_b.join("b.txt")),
        "from b",
        "b after a's rollback"
    );
    assert!(!root_b.join("a.txt").exists());

    // rm: refused while mounted, --force works.
    let code = assert_fk07(&st.run(["rm", "b"]), "rm of a mounted container");
    eprintln!("rm of a mounted container: {code}");
    assert!(mount_at(&root_b).is_some(), "a refused rm unmounted b");
    assert_eq!(read_string(&root_b.join("b.txt")), "from b");
    st.ok(["rm", "--force", "b"]);
    assert!(
        mount_at(&root_b).is_none(),
        "b is still mounted after rm --force"
    );
    assert!(ps_row(&st, "b").is_none(), "b listed after rm --force");
    assert!(
        volume_row(&st, "ctr.b").is_none(),
        "b's volume remains after rm --force"
    );

    st.ok(["container", "umount", "a"]);
    st.ok(["rm", "a"]);
    assert!(ps(&st).is_empty(), "containers left: {:?}", ps(&st));
    let ctr_volumes: Vec<_> = volumes(&st)
        .into_iter()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("ctr.")))
        .collect();
    assert!(
        ctr_volumes.is_empty(),
        "container volumes left: {ctr_volumes:?}"
    );
    assert!(!st.path().join("fukastor/containers/a.json").exists());

    reference.unmount();
    st.assert_fsck_clean();
    st.assert_server_exits("after removing every container");
    let left: Vec<_> = store_mounts(st.path());
    assert!(left.is_empty(), "mounts of the store remain: {left:#?}");
}

// ---------------------------------------------------------------------------
// Filtered volumes
// ---------------------------------------------------------------------------

/// An example filter script, as a `--filter` argument.
fn example_filter(name: &str, params: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/filters/{name}.lua"));
    format!("{}{params}", path.display())
}

/// `dd` of block `block` of `dev` with O_DIRECT (no page cache, no
/// readahead: exactly that block is asked of the volume server).
fn dd_block(dev: &Path, block: u64, out: &Path) -> Run {
    tool(
        "dd",
        [
            format!("if={}", dev.display()),
            format!("of={}", out.display()),
            "bs=4096".into(),
            format!("skip={block}"),
            "count=1".into(),
            "iflag=direct".into(),
            "status=none".into(),
        ],
    )
}

/// `volume create --filter`: bad filter arguments are FK09 errors that
/// leave the pool unchanged; `volume ls` shows the chain; a flipped byte
/// in a stored payload makes the read of that block (only) fail with EIO
/// through the loop device, with one error line in the server's log,
/// while a chain with a replica serves the right bytes.
#[test]
fn filtered_volume_damage_is_eio_and_a_replica_serves() {
    let _serial = serial();
    require_volumes();
    require_tool("dd", "coreutils");
    let st = VStore::new();
    let scratch = scratch_dir("fukastor-test-filter-");
    let replicas = scratch.path().join("replicas");

    // Refusals: a missing script, a malformed parameter, a key that is not there.
    for (args, code) in [
        (
            vec!["--filter".to_string(), "/nonexistent/x.lua".into()],
            "FK0900",
        ),
        (
            vec!["--filter".into(), example_filter("compress", ",level")],
            "FK0900",
        ),
        (
            vec![
                "--filter".into(),
                example_filter("encrypt", ",key_file=/nonexistent/key"),
            ],
            "FK0907",
        ),
    ] {
        let mut cmd = vec![
            "volume".to_string(),
            "create".into(),
            "bad".into(),
            "--size".into(),
            "16M".into(),
        ];
        cmd.extend(args);
        let run = st.run(&cmd);
        assert_eq!(run.status.code(), Some(1), "{run}");
        assert!(
            run.stderr.starts_with(&format!("error[{code}]")),
            "expected {code}: {run}"
        );
        assert!(run.stderr.contains("\n  hint: "), "{run}");
        assert!(
            volume_row(&st, "bad").is_none(),
            "a refused create left a volume: {run}"
        );
    }

    let checksum = example_filter("checksum", "");
    let replicate = example_filter("replicate", &format!(",dir={}", replicas.display()));
    st.ok([
        "volume", "create", "vc", "--size", "16M", "--filter", &checksum,
    ]);
    st.ok([
        "volume", "create", "vr", "--size", "16M", "--filter", &checksum, "--filter", &replicate,
    ]);
    let row = volume_row(&st, "vc").unwrap();
    assert_eq!(row["filters"], serde_json::json!(["checksum"]), "{row}");
    let row = volume_row(&st, "vr").unwrap();
    assert_eq!(
        row["filters"],
        serde_json::json!(["checksum", "replicate"]),
        "{row}"
    );
    let table = st.ok(["volume", "ls"]).stdout_str();
    assert!(
        table.lines().next().unwrap_or_default().contains("FILTERS"),
        "{table}"
    );

    let mut rng = Rng(0xf11e);
    let pattern = rng.bytes(MIB as usize);
    let pool = st.path().join("fukastor/pool");
    for (name, replicated) in [("vc", false), ("vr", true)] {
        let dev = attach(&st, name);
        {
            let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
            std::io::Write::write_all(&mut f, &pattern).unwrap();
            f.sync_all().unwrap();
        }
        // Seal what was written (a snapshot), so that the flipped record
        // is in a sealed layer: in the head's last batch it would be taken
        // for a torn write and cut off when the volume is opened again.
        st.ok(["snapshot", "create", name, "--name", "s1"]);
        detach(&st, name);
        let meta = volume_meta(&pool.join(format!("volumes/{name}.meta")));
        assert_eq!(meta["format"], 2, "{meta}");
        let layer = meta["layers"][0].as_u64().unwrap();
        let data = pool.join(format!("layers/{layer}.data"));
        let mut bytes = std::fs::read(&data).unwrap();
        // The first record: header at 32 (kind 4, a filtered write), its
        // block at 32 + 16, its payload at 72.
        assert_eq!(bytes[32 + 4], 4, "a filtered write record");
        let block = u64::from_le_bytes(bytes[48..56].try_into().unwrap());
        bytes[72 + 100] ^= 0x20;
        std::fs::write(&data, &bytes).unwrap();

        let dev = attach(&st, name);
        let out = scratch.path().join(format!("{name}.block"));
        let run = dd_block(&dev, block, &out);
        let want = &pattern[(block * 4096) as usize..((block + 1) * 4096) as usize];
        if replicated {
            run.assert_success();
            assert_eq!(
                std::fs::read(&out).unwrap(),
                want,
                "{name}: the replica's bytes"
            );
        } else {
            assert!(
                !run.success(),
                "{name}: reading the damaged block must fail: {run}"
            );
            assert!(
                run.stderr.contains("Input/output error"),
                "{name}: EIO expected: {run}"
            );
            let log =
                std::fs::read_to_string(st.path().join("fukastor/vserve/server.log")).unwrap();
            let line = log
                .lines()
                .find(|l| l.contains("FK0905") && l.contains(&format!("block {block}")))
                .unwrap_or_else(|| {
                    panic!("no FK0905 line naming block {block} in the log:\n{log}")
                });
            assert!(line.contains("\"vc\""), "the line names the volume: {line}");
        }
        // Other blocks read, and the server keeps serving.
        let other = (block + 128) % 256;
        dd_block(&dev, other, &out).assert_success();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            &pattern[(other * 4096) as usize..((other + 1) * 4096) as usize],
            "{name}: block {other}"
        );
        detach(&st, name);
    }
    st.assert_server_exits("after the filtered volumes");
}

/// The metadata in force in a two-slot `volumes/<name>.meta` file, read as
/// docs/volume-format.md describes it (the CRC is left to fukastor).
fn volume_meta(path: &Path) -> serde_json::Value {
    let file = std::fs::read(path).unwrap();
    let half = file.len() / 2;
    let slot = |i: usize| {
        let s = &file[i * half..(i + 1) * half];
        (&s[..8] == b"FKVMETA1").then(|| {
            let generation = u64::from_le_bytes(s[8..16].try_into().unwrap());
            let len = u32::from_le_bytes(s[16..20].try_into().unwrap()) as usize;
            (generation, &s[32..32 + len])
        })
    };
    let (_, json) = [slot(0), slot(1)].into_iter().flatten().max().unwrap();
    serde_json::from_slice(json).unwrap()
}
