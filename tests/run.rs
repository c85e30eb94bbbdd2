//! Running containers, end to end: the real binary, real crun and real
//! podman (root), on fukastor's own containers (image mount + thin volume +
//! overlay).
//!
//! - `fukastor run` prints the image's `/etc/os-release`; the container's exit
//!   status is fukastor's; stdout and stderr pass through; `--rm` leaves no
//!   container, no volume, no mount and no crun state.
//! - The image config is honoured (Entrypoint + Cmd, Env, WorkingDir, User,
//!   hostname = the container's name), and `-e`, `--workdir`, `--user` and a
//!   command after `--` override it. The test image is the `busybox` fixture
//!   with a config set by `umoci config`.
//! - Inside the container, `/proc/self/mountinfo` shows that its root is a
//!   writable composefs mount of the store: an overlay with source
//!   `fukastor-container:NAME@STORE`, the store's `objects` as its data-only layer
//!   (`datadir+=`, `metacopy=on`) and `STORE/fukastor/containers/NAME/fs/upper`
//!   (the volume's ext4) as its upper layer; on the host the same mount is at
//!   the container's `rootfs`.
//! - Without `--rm` the container stays (`ps`: stopped) and `start` runs it
//!   again with its writes kept; `start` of a container without a bundle fails
//!   with a coded error.
//! - `snapshot create --atomic` of a running container, rollback after it
//!   stopped, `start`: what was written after the snapshot is gone, what was
//!   written before is there.
//! - 20 containers of one image share its objects: the store's objects do not
//!   change, and the volume pool grows by the containers' own writes (plus a
//!   bounded per-container overhead), not by 20 copies of the image.
//! - podman 4.3 with the hooks installed by `plugin/install.sh` (into scratch
//!   directories): `podman run --rm --hooks-dir DIR --annotation
//!   io.fukastor.image=bookworm --rootfs EMPTYDIR ...` runs on a fukastor
//!   rootfs, podman stores no image, and the poststop hook removes the
//!   container; the installed `containers.conf` drop-in alone (via
//!   `CONTAINERS_CONF`) also makes podman run the hooks.
//! - `fukastor hook precreate` fed malformed JSON, an unknown image, or a
//!   busy store (its exclusive lock held) exits non-zero with `error[FK` on
//!   stderr and leaves nothing created or mounted.
//!
//! Missing root, crun, podman, umoci, skopeo, `/dev/fuse`, loop devices or
//! the fixtures make a test FAIL with a message saying what is missing. Every
//! test owns its store through a guard that, when dropped (also after a
//! failure), deletes crun state, unmounts containers and whatever else of the
//! store is mounted, detaches volumes, removes loop devices and stops the
//! volume server.
//!
//! Run as root, one at a time:
//! `cargo test --release --test run -- --test-threads=1`.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{
    Run, Store, fixtures, fukastor_bin, is_fukastor_process, require_root, require_tool,
    run_command, run_command_with_input, scratch_dir, unescape_mountinfo, volume_server_processes,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------

/// Root, FUSE, loop devices, ext4 tools and crun: what `fukastor run` needs.
fn require_containers() {
    require_root();
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        _ => panic!(
            "/dev/fuse is missing: containers' writable layers are served through FUSE; \
             load the fuse module (`modprobe fuse`) and create the node \
             (`mknod -m 666 /dev/fuse c 10 229`)"
        ),
    }
    match std::fs::metadata("/dev/loop-control") {
        Ok(m) if m.file_type().is_char_device() => {}
        _ => panic!(
            "/dev/loop-control is missing: containers' writable layers are loop devices; \
             load the loop module (`modprobe loop`)"
        ),
    }
    require_tool("losetup", "util-linux");
    require_tool("mkfs.ext4", "e2fsprogs");
    require_tool("mount", "mount");
    require_tool("crun", "crun");
}

fn require_podman() {
    require_tool("podman", "podman");
    require_tool("conmon", "conmon");
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Runs an external tool with a timeout, capturing its output.
fn tool<I, S>(program: &str, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    if program == "crun" {
        // As root fukastor keeps crun's state in /run/crun whatever
        // XDG_RUNTIME_DIR says; crun alone would look under that variable.
        cmd.env_remove("XDG_RUNTIME_DIR");
    }
    run_command(cmd)
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

/// The container's own exit status passed through: exactly `code`, and no
/// fukastor error on stderr.
fn assert_exit(run: &Run, code: i32, context: &str) {
    assert_eq!(
        run.status.code(),
        Some(code),
        "{context}: expected the container's exit status {code}: {run}"
    );
    assert!(
        !run.stderr.contains("error[FK") && !run.stderr.contains("panicked"),
        "{context}: fukastor reported an error although the container ran: {run}"
    );
}

/// A failure of fukastor itself: non-zero, `error[FK…]` on stderr, no panic.
fn assert_coded_error(run: &Run, prefix: &str, context: &str) {
    assert!(
        !run.success(),
        "{context}: expected a failure with error[{prefix}…]: {run}"
    );
    assert!(
        run.stderr.contains(&format!("error[{prefix}")),
        "{context}: stderr must carry `error[{prefix}…]`: {run}"
    );
    assert!(!run.stderr.contains("panicked"), "{context}: {run}");
}

/// Bytes allocated on disk (st_blocks × 512) and the number of files under
/// `dir` (not following symlinks; 0 when it does not exist).
fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.blocks() * 512;
                files += 1;
            }
        }
    }
    (bytes, files)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// SplitMix64, for content that does not compress or dedup.
fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------
// Mount table, loop devices
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
    source: String,
    super_opts: String,
}

/// Parses mountinfo text (the host's, or what a container printed).
fn parse_mountinfo(info: &str) -> Vec<MountEntry> {
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

fn mount_table() -> Vec<MountEntry> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The mount at exactly `mp` (the top one if stacked).
fn mount_at(mp: &Path) -> Option<MountEntry> {
    mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mp)
}

/// Option `key` (`upperdir=`, `datadir+=`, ...) of an overlay mount's
/// super options.
fn overlay_option<'a>(m: &'a MountEntry, key: &str) -> Option<&'a str> {
    m.super_opts.split(',').find_map(|o| o.strip_prefix(key))
}

/// Checks that mount `m` is a container's root filesystem as fukastor makes
/// it: a writable composefs mount of store `st` (overlay, source
/// `fukastor-container:NAME@STORE`, the store's objects as data-only layer,
/// with metacopy) whose upper layer is
/// `STORE/fukastor/containers/NAME/fs/upper`; returns that NAME.
fn assert_writable_composefs(st: &CStore, m: &MountEntry) -> String {
    assert_eq!(m.fstype, "overlay", "not an overlay: {m:?}");
    let store = st.path().display().to_string();
    let named = m
        .source
        .strip_prefix("fukastor-container:")
        .and_then(|s| s.strip_suffix(&format!("@{store}")))
        .unwrap_or_else(|| {
            panic!("the overlay's source is not fukastor-container:NAME@{store}: {m:?}")
        });
    assert_eq!(
        overlay_option(m, "datadir+="),
        Some(format!("{store}/objects").as_str()),
        "the overlay's data-only layer is not the store's objects: {m:?}"
    );
    assert_eq!(overlay_option(m, "metacopy="), Some("on"), "{m:?}");
    let containers = format!("{store}/fukastor/containers/");
    let upper = overlay_option(m, "upperdir=")
        .unwrap_or_else(|| panic!("the overlay has no upper layer: {m:?}"));
    let ctr = upper
        .strip_prefix(&containers)
        .and_then(|rest| rest.strip_suffix("/fs/upper"))
        .unwrap_or_else(|| {
            panic!("the overlay's upper layer is {upper}, not {containers}NAME/fs/upper: {m:?}")
        });
    assert_eq!(ctr, named, "the source names another container: {m:?}");
    ctr.to_owned()
}

/// Loop devices whose backing file is in the store.
fn store_loops(store: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}/", store.display());
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file"))
            && backing.starts_with(&prefix)
        {
            out.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    out.sort();
    out
}

/// Mounts that belong to the store: under it, from it, or on its loop devices.
fn store_mounts(store: &Path) -> Vec<MountEntry> {
    let prefix = format!("{}/", store.display());
    let loops: Vec<String> = store_loops(store)
        .into_iter()
        .map(|d| d.display().to_string())
        .collect();
    mount_table()
        .into_iter()
        .filter(|m| {
            m.mount_point.starts_with(store)
                || m.source.contains(&prefix)
                || m.source.ends_with(&format!("@{}", store.display()))
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

/// crun containers whose bundle is in the store (`crun list`; retried, as
/// containers of other users of the machine come and go while it reads).
fn crun_containers_of(store: &Path) -> Vec<String> {
    let mut run = tool("crun", ["list"]);
    for _ in 0..5 {
        if run.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        run = tool("crun", ["list"]);
    }
    if !run.success() {
        eprintln!("crun list fails: {run}");
    }
    let prefix = store.display().to_string();
    run.stdout_str()
        .lines()
        .skip(1)
        .filter(|l| l.contains(&prefix))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

// ---------------------------------------------------------------------------
// The store and its clean-up
// ---------------------------------------------------------------------------

/// A throw-away store for containers. Dropping it (also after a failure)
/// deletes the crun containers of its bundles, unmounts its containers and
/// whatever else of it is mounted, detaches its volumes, removes leftover
/// loop devices and stops its volume server, then deletes the directory.
#[derive(Debug)]
struct CStore {
    store: Store,
    /// Canonical path (the mount table spells paths canonically).
    root: PathBuf,
}

impl std::ops::Deref for CStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl CStore {
    fn new() -> Self {
        let store = Store::new();
        let root = store.path().canonicalize().expect("canonical store path");
        CStore { store, root }
    }

    /// A new store holding fixture image `tag` under that name.
    fn with_image(tag: &str) -> Self {
        let st = CStore::new();
        st.pull_named(&fixtures().oci(tag), tag);
        st
    }

    fn path(&self) -> &Path {
        &self.root
    }

    /// `-q pull SOURCE NAME`.
    fn pull_named(&self, source: &str, name: &str) -> String {
        let run = self.ok(["-q", "pull", source, name]);
        run.stdout_str().trim().to_owned()
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        json_array(&self.ok(["--json", "ps"]))
    }

    /// Waits up to 15 s for `ps` to be empty; returns how long it took.
    /// For podman's poststop hooks only: `podman run --rm` can return while
    /// conmon's cleanup process (`podman container cleanup --rm`) still runs
    /// them, so their effect may come after the command.
    fn wait_for_no_containers(&self) -> std::time::Duration {
        let start = std::time::Instant::now();
        while !self.ps().is_empty() && start.elapsed() < std::time::Duration::from_secs(15) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        start.elapsed()
    }

    fn ps_row(&self, name: &str) -> Option<serde_json::Value> {
        self.ps().into_iter().find(|r| r["name"] == name)
    }

    fn volumes(&self) -> Vec<serde_json::Value> {
        json_array(&self.ok(["--json", "volume", "ls"]))
    }

    fn container_dir(&self, name: &str) -> PathBuf {
        self.root.join("fukastor/containers").join(name)
    }

    fn rootfs(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("rootfs")
    }

    fn server_pid(&self) -> Option<u32> {
        let text = std::fs::read(self.root.join("fukastor/vserve/server.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }

    /// No container, no container volume, no crun state; within 15 s (the
    /// volume server stops 2 s after the last detach) no mount and no loop
    /// device of the store.
    fn assert_nothing_left(&self, context: &str) {
        self.assert_nothing_left_but(&[], context);
    }

    /// [`CStore::assert_nothing_left`] but for the unmounted containers
    /// `keep` (and their volumes).
    fn assert_nothing_left_but(&self, keep: &[&str], context: &str) {
        let ps: Vec<_> = self
            .ps()
            .into_iter()
            .filter(|c| {
                !keep
                    .iter()
                    .any(|k| c["name"] == *k && c["state"] == "stopped")
            })
            .collect();
        assert!(ps.is_empty(), "{context}: containers left: {ps:?}");
        let vols: Vec<_> = self
            .volumes()
            .into_iter()
            .filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("ctr.")))
            .filter(|v| !keep.iter().any(|k| v["name"] == format!("ctr.{k}")))
            .collect();
        assert!(
            vols.is_empty(),
            "{context}: container volumes left: {vols:?}"
        );
        let crun = crun_containers_of(&self.root);
        assert!(crun.is_empty(), "{context}: crun containers left: {crun:?}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mounts = store_mounts(&self.root);
            let loops = store_loops(&self.root);
            if mounts.is_empty() && loops.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{context}: 15 s later the store still has mounts {mounts:#?} and loop devices \
                 {loops:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cleanup(&self) {
        let root = &self.root;
        let names: Vec<String> = match self.store.run(["--json", "ps"]) {
            run if run.success() => serde_json::from_slice::<Vec<serde_json::Value>>(&run.stdout)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| {
                    let name = r["name"].as_str()?.to_owned();
                    Some((name, r["state"] != "stopped"))
                })
                .map(|(name, mounted)| {
                    if mounted {
                        eprintln!("cleanup: container {name} is mounted");
                    }
                    name
                })
                .collect(),
            _ => Vec::new(),
        };
        // crun state first: a container still running pins its rootfs.
        let mut crun_ids: Vec<String> = names
            .iter()
            .map(|n| format!("fukastor-{n}"))
            .filter(|id| tool("crun", ["state", id]).success())
            .collect();
        crun_ids.extend(crun_containers_of(root));
        crun_ids.sort();
        crun_ids.dedup();
        for id in crun_ids {
            eprintln!("cleanup: crun delete --force {id}");
            let run = tool("crun", ["delete", "--force", &id]);
            if !run.success() {
                eprintln!("cleanup: {run}");
            }
        }
        for name in &names {
            let run = self.store.run(["container", "umount", name]);
            if !run.success() && !run.stderr.contains("not mounted") {
                eprintln!("cleanup: {run}");
            }
        }
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
        let ls = self.store.run(["--json", "volume", "ls"]);
        if ls.success()
            && let Ok(serde_json::Value::Array(rows)) = serde_json::from_slice(&ls.stdout)
        {
            for row in rows {
                if let (Some(name), false) = (row["name"].as_str(), row["device"].is_null()) {
                    eprintln!("cleanup: volume detach {name}");
                    let _ = self.store.run(["volume", "detach", name]);
                }
            }
        }
        for dev in store_loops(root) {
            eprintln!("cleanup: losetup -d {}", dev.display());
            let _ = tool("losetup", [OsStr::new("-d"), dev.as_os_str()]);
        }
        // The process, not `server.json`: the server removes that first and
        // then still reclaims and unmounts its FUSE export.
        let servers = self.server_processes();
        for pid in servers.into_iter().chain(self.server_pid()) {
            if !is_fukastor_process(pid) {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if process_alive(pid) {
                eprintln!("cleanup: volume server {pid} still running, killing it");
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for m in store_mounts(root) {
            lazy_umount(&m.mount_point);
        }
        for dev in store_loops(root) {
            let _ = tool("losetup", [OsStr::new("-d"), dev.as_os_str()]);
        }
    }
}

impl Drop for CStore {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A fukastor command in the background (its own process group, output to
/// files), killed with its group when dropped unfinished.
#[derive(Debug)]
struct Background {
    child: Child,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    fn spawn(mut cmd: Command, what: &str, dir: &Path) -> Self {
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Background {
            child,
            what: what.to_owned(),
            stdout,
            stderr,
        }
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

    /// Waits up to 60 s for the container to write `path` (seen from the
    /// host); panics if it exits first or never does.
    fn wait_for_file(&mut self, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            if let Some(status) = self.try_wait() {
                panic!(
                    "the container exited ({status}) before writing {}:\n{}",
                    path.display(),
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the container did not write {} within 60 s:\n{}",
                path.display(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            eprintln!("cleanup: killing {} (pid {})", self.what, self.child.id());
            if let Some(p) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            let _ = self.wait_for(Duration::from_secs(10));
        }
    }
}

/// The bytes of one file of an image, with `fukastor restore`.
fn image_file(st: &CStore, image: &str, path: &str) -> Vec<u8> {
    let dir = scratch_dir("fukastor-test-restore-");
    let dest = dir.path().join("file");
    st.ok([
        OsStr::new("restore"),
        OsStr::new(image),
        OsStr::new(path),
        dest.as_os_str(),
    ]);
    std::fs::read(&dest).unwrap_or_else(|e| panic!("read {}: {e}", dest.display()))
}

/// Checks the root line of a container's mountinfo: container NAME's
/// writable composefs mount ([`assert_writable_composefs`]; any NAME when
/// `name` is None); returns that NAME.
fn assert_root_is_fukastor_overlay(st: &CStore, mountinfo: &str, name: Option<&str>) -> String {
    let root = parse_mountinfo(mountinfo)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == Path::new("/"))
        .unwrap_or_else(|| panic!("no `/` in the container's mountinfo:\n{mountinfo}"));
    let ctr = assert_writable_composefs(st, &root);
    if let Some(name) = name {
        assert_eq!(
            ctr, name,
            "the root overlay is another container's: {root:?}"
        );
    }
    ctr
}

// ---------------------------------------------------------------------------
// 1. run: output, exit status, --rm
// ---------------------------------------------------------------------------

#[test]
fn run_prints_the_image_os_release_and_passes_exit_statuses_on() {
    let _serial = serial();
    require_containers();
    let st = CStore::with_image("bookworm");
    let expected = image_file(&st, "bookworm", "/usr/lib/os-release");
    assert!(
        String::from_utf8_lossy(&expected).contains("VERSION_CODENAME=bookworm"),
        "the fixture's os-release: {}",
        String::from_utf8_lossy(&expected)
    );

    // The first run also builds the ext4 template; time the second.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "osr",
        "bookworm",
        "--",
        "cat",
        "/etc/os-release",
    ]);
    assert_exit(&run, 0, "cat /etc/os-release");
    similar_asserts::assert_eq!(
        String::from_utf8_lossy(&expected),
        run.stdout_str(),
        "the container's /etc/os-release is not the image's"
    );
    eprintln!("first run (template build included): {:.2?}", run.elapsed);
    st.assert_nothing_left("after the first run --rm");

    let run = st.run(["run", "--rm", "--name", "osr", "bookworm", "--", "true"]);
    assert_exit(&run, 0, "true");
    eprintln!("run --rm bookworm -- true: {:.2?}", run.elapsed);

    // The cgroup write that takes crun's grace-period wait out of its way
    // (src/runtime/cgroup.rs) works on this host.
    let mut cmd = st.command();
    cmd.env("FUKASTOR_LOG", "fukastor::runtime=debug")
        .args(["run", "--rm", "--name", "osr", "bookworm", "--", "true"]);
    let run = run_command(cmd);
    assert_exit(&run, 0, "true, with debug output");
    assert!(
        run.stderr.contains("cgroup lock warmed through"),
        "run did not warm the cgroup lock (src/runtime/cgroup.rs; is /sys/fs/cgroup writable?): {run}"
    );

    for code in [7, 0, 1, 42, 255] {
        let run = st.run([
            "run",
            "--rm",
            "--name",
            "ec",
            "bookworm",
            "--",
            "sh",
            "-c",
            &format!("exit {code}"),
        ]);
        assert_exit(&run, code, &format!("sh -c 'exit {code}'"));
    }
    st.assert_nothing_left("after run --rm with exit statuses");

    // A command the image does not have (FK0808, exit status 127), or
    // files of the image that are no program (FK0809, 126): a coded error
    // before crun, the container removed (crun alone says "executable file
    // not found" or "open executable: Permission denied" with status 1,
    // which a container's own status cannot be told from, after creating
    // the container). A relative path is looked up from the working
    // directory, a bare name in PATH, where crun passes over what it
    // cannot run.
    for (env, cmd, code, status, says) in [
        (
            "",
            "/nonexistent",
            "FK0808",
            127,
            "no file \"/nonexistent\"",
        ),
        (
            "",
            "nosuchcommand",
            "FK0808",
            127,
            "no command \"nosuchcommand\" in the container's PATH (/usr/local/sbin:",
        ),
        (
            "",
            "usr/bin/nosuch",
            "FK0808",
            127,
            "no file \"usr/bin/nosuch\"",
        ),
        (
            "",
            "/etc/passwd",
            "FK0809",
            126,
            "file \"/etc/passwd\" cannot be run: no execute bit is set",
        ),
        (
            "",
            "/etc",
            "FK0809",
            126,
            "file \"/etc\" cannot be run: it is a directory",
        ),
        (
            "PATH=/etc:/nowhere",
            "passwd",
            "FK0809",
            126,
            "\"passwd\" is the container's /etc/passwd, which cannot be run",
        ),
    ] {
        let mut args = vec!["run", "--rm", "--name", "nocmd"];
        if !env.is_empty() {
            args.extend(["-e", env]);
        }
        args.extend(["bookworm", "--", cmd]);
        let run = st.run(&args);
        assert_coded_error(&run, code, cmd);
        assert_eq!(run.status.code(), Some(status), "{cmd}: {run}");
        assert!(run.stderr.contains(says), "{cmd}: {run}");
        st.assert_nothing_left(&format!("after run --rm -- {cmd}"));
    }
    // A script whose `#!` interpreter the image does not have (FK0810,
    // 127; crun alone says "No such file or directory" with status 1).
    let scripts = scratch_dir("fukastor-test-script-");
    let script = scripts.path().join("s");
    std::fs::write(&script, "#!/nope/sh\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    st.ok([
        "pull",
        &format!("dir:{}", scripts.path().display()),
        "scripts:1",
    ]);
    let run = st.run(["run", "--rm", "--name", "nointerp", "scripts:1", "--", "/s"]);
    assert_coded_error(&run, "FK0810", "a script without its interpreter");
    assert_eq!(run.status.code(), Some(127), "{run}");
    assert!(
        run.stderr
            .contains("script \"/s\" names an interpreter it does not have: \"/nope/sh\""),
        "{run}"
    );
    st.assert_nothing_left("after run --rm of a script without its interpreter");
    st.ok(["rmi", "scripts:1"]);
    // A program later in PATH is run (as crun does): /etc/passwd is passed
    // over for /usr/bin/passwd.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "pathcmd",
        "-e",
        "PATH=/etc:/usr/bin",
        "bookworm",
        "--",
        "passwd",
        "--help",
    ]);
    assert_exit(&run, 0, "passwd --help with /etc before /usr/bin in PATH");
    assert!(run.stdout_str().contains("Usage: passwd"), "{run}");
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "relcmd",
        "bookworm",
        "--",
        "usr/bin/true",
    ]);
    assert_exit(&run, 0, "usr/bin/true, relative to the working directory /");
    // Relative to the working directory, not to the root.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "relcmd",
        "--workdir",
        "/usr",
        "bookworm",
        "--",
        "bin/true",
    ]);
    assert_exit(&run, 0, "bin/true from the working directory /usr");
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "relcmd",
        "--workdir",
        "/tmp",
        "bookworm",
        "--",
        "usr/bin/true",
    ]);
    assert_coded_error(
        &run,
        "FK0808",
        "usr/bin/true from the working directory /tmp",
    );
    assert_eq!(run.status.code(), Some(127), "{run}");

    // Signals reach the container: SIGTERM to `fukastor run` is forwarded
    // to the container's process, whose trap decides the exit status.
    // (Without forwarding, fukastor itself dies of the signal.)
    let mut cmd = st.command();
    cmd.args([
        "run",
        "--rm",
        "--name",
        "sig",
        "bookworm",
        "--",
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo ready; while :; do sleep 0.1; done",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn fukastor run");
    let mut ready = String::new();
    {
        use std::io::BufRead;
        let out = child.stdout.as_mut().expect("piped stdout");
        std::io::BufReader::new(out)
            .read_line(&mut ready)
            .expect("read the container's stdout");
    }
    assert_eq!(ready, "ready\n", "the container did not start");
    // While it runs, its volume is listed as ephemeral (a disposable
    // container's), in JSON and in the table.
    let row = st
        .volumes()
        .into_iter()
        .find(|v| v["name"] == "ctr.sig")
        .expect("the running --rm container's volume is listed");
    assert_eq!(row["ephemeral"], true, "{row}");
    let table = st.ok(["volume", "ls"]).stdout_str();
    let line = table
        .lines()
        .find(|l| l.starts_with("ctr.sig "))
        .unwrap_or_else(|| panic!("no ctr.sig row in:\n{table}"));
    assert!(line.contains(" ephemeral "), "{table}");
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {}", child.id());
    // A hang guard, not a timing: forwarding takes milliseconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fukastor run") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fukastor run did not exit within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(
        status.code(),
        Some(7),
        "SIGTERM was not forwarded to the container's trap ({status}); stderr: {stderr}"
    );
    st.assert_nothing_left("after a signal forwarded to run --rm");

    // stdout and stderr pass through, separately.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "io",
        "bookworm",
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2",
    ]);
    assert_exit(&run, 0, "echo to both");
    assert_eq!(run.stdout_str(), "to-stdout\n", "{run}");
    assert!(
        run.stderr.contains("to-stderr") && !run.stdout_str().contains("to-stderr"),
        "{run}"
    );

    // Inside: an overlay root on the image mount of this container.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "mi",
        "bookworm",
        "--",
        "cat",
        "/proc/self/mountinfo",
    ]);
    assert_exit(&run, 0, "cat /proc/self/mountinfo");
    assert_root_is_fukastor_overlay(&st, &run.stdout_str(), Some("mi"));

    // An unknown image and a missing command are fukastor's errors.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "bad",
        "no-such-image",
        "--",
        "true",
    ]);
    assert_coded_error(&run, "FK", "run of an unknown image");
    // fukastor's own failures exit 125 (podman's convention), not a status
    // a container could have exited with.
    assert_eq!(
        run.status.code(),
        Some(125),
        "run of an unknown image: {run}"
    );
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "nocmd",
        "bookworm",
        "--",
        "/no/such/command",
    ]);
    assert!(
        !run.success(),
        "running a command that does not exist succeeded: {run}"
    );
    st.assert_nothing_left("after run --rm of all kinds");
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// 2. The image config and its overrides
// ---------------------------------------------------------------------------

/// An OCI layout (in `dir`) with tag `cfg`: the busybox fixture with
/// Entrypoint `/bin/sh -c`, Cmd `echo default-cmd; id -u`, Env FOO and
/// SPACED, WorkingDir /home/user and User `user` (1000:1000 in its passwd).
fn config_test_image(dir: &Path) -> String {
    require_tool("skopeo", "skopeo");
    require_tool("umoci", "umoci");
    let fx = fixtures();
    let layout = dir.join("layout");
    tool(
        "skopeo",
        [
            OsString::from("copy"),
            OsString::from("-q"),
            OsString::from(fx.oci("busybox")),
            OsString::from(format!("oci:{}:base", layout.display())),
        ],
    )
    .assert_success();
    tool(
        "umoci",
        [
            "config",
            "--image",
            &format!("{}:base", layout.display()),
            "--tag",
            "cfg",
            "--config.env",
            "FOO=from-image",
            "--config.env",
            "SPACED=a b",
            "--config.workingdir",
            "/home/user",
            "--config.user",
            "user",
            "--config.entrypoint",
            "/bin/sh",
            "--config.entrypoint",
            "-c",
            "--config.cmd",
            "echo default-cmd; id -u",
        ],
    )
    .assert_success();
    format!("oci:{}:cfg", layout.display())
}

const SHOW: &str = "echo \"FOO=$FOO\"; echo \"SPACED=$SPACED\"; echo \"NEW=$NEW\"; \
                    echo \"PATH=$PATH\"; pwd; id -u; id -g; hostname";

#[test]
fn run_honours_the_image_config_and_its_overrides() {
    let _serial = serial();
    require_containers();
    let scratch = scratch_dir("fukastor-test-cfg-");
    let source = config_test_image(scratch.path());
    let st = CStore::new();
    st.pull_named(&source, "cfg");
    // The same files with busybox's own config, pulled after it: one image
    // ID, and each name keeps its config.
    let plain = source.replace(":cfg", ":base");
    st.pull_named(&plain, "plain");
    let config = json_of(&st.ok(["inspect", "cfg"]));
    let plain_config = json_of(&st.ok(["inspect", "plain"]));
    assert_eq!(
        config["id"], plain_config["id"],
        "umoci config changed the files"
    );
    assert_ne!(config["config"], plain_config["config"]);
    eprintln!("image config: {}", config["config"]["config"]);
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "plain",
        "plain",
        "--",
        "sh",
        "-c",
        "echo \"FOO=$FOO\"; pwd",
    ]);
    assert_exit(&run, 0, "the plain image");
    assert_eq!(run.stdout_str(), "FOO=\n/\n", "{run}");

    // No command: Entrypoint + Cmd, as the image's user.
    let run = st.run(["run", "--rm", "--name", "dflt", "cfg"]);
    assert_exit(&run, 0, "the image's own command");
    assert_eq!(run.stdout_str(), "default-cmd\n1000\n", "{run}");

    // A command replaces Cmd, not Entrypoint (`sh -c SCRIPT`).
    let run = st.run(["run", "--rm", "--name", "img", "cfg", "--", SHOW]);
    assert_exit(&run, 0, "the image's settings");
    similar_asserts::assert_eq!(
        run.stdout_str(),
        "FOO=from-image\nSPACED=a b\nNEW=\nPATH=/bin\n/home/user\n1000\n1000\nimg\n",
        "Env, WorkingDir, User and hostname from the image config"
    );

    // Overrides.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "ovr",
        "-e",
        "FOO=from-cli",
        "-e",
        "NEW=new value",
        "--workdir",
        "/tmp",
        "--user",
        "nobody",
        "cfg",
        "--",
        SHOW,
    ]);
    assert_exit(&run, 0, "-e, --workdir, --user nobody");
    similar_asserts::assert_eq!(
        run.stdout_str(),
        "FOO=from-cli\nSPACED=a b\nNEW=new value\nPATH=/bin\n/tmp\n65534\n65534\novr\n",
        "-e overrides and adds, --workdir and --user (a name in the image's passwd) replace"
    );

    for (user, uid, gid) in [
        ("root", "0", "0"),
        ("1234:5678", "1234", "5678"),
        ("0", "0", "0"),
    ] {
        let run = st.run([
            "run",
            "--rm",
            "--name",
            "usr",
            "--user",
            user,
            "cfg",
            "--",
            "id -u; id -g",
        ]);
        assert_exit(&run, 0, &format!("--user {user}"));
        assert_eq!(
            run.stdout_str(),
            format!("{uid}\n{gid}\n"),
            "--user {user}: {run}"
        );
    }

    // A user the image does not know is fukastor's error, before anything runs.
    let run = st.run([
        "run",
        "--rm",
        "--name",
        "nouser",
        "--user",
        "no-such-user",
        "cfg",
        "--",
        "true",
    ]);
    assert_coded_error(&run, "FK08", "--user no-such-user");
    assert!(
        run.stdout.is_empty(),
        "the container ran with an unknown user: {run}"
    );
    st.assert_nothing_left("after the config runs");
}

// ---------------------------------------------------------------------------
// 3. Without --rm: ps, start
// ---------------------------------------------------------------------------

/// Containers are clones of an ext4 template made with `inline_data` (so
/// the `work/work` directory overlayfs deletes and makes again at every
/// mount needs no block), and a store that still has the template an older
/// fukastor built (`template.ext4-SIZE`) gets the current one
/// (`template.ext4-inline-SIZE`) and loses the old one.
#[test]
fn containers_are_clones_of_an_inline_data_template() {
    let _serial = serial();
    require_containers();
    require_tool("dumpe2fs", "e2fsprogs");
    let st = CStore::with_image("busybox");
    let size = 256u64 << 20;
    // What an older fukastor left: a template volume with its snapshot
    // `formatted`; and a volume a user named like a template, without it.
    let legacy = format!("template.ext4-{size}");
    st.ok(["volume", "create", &legacy, "--size", "64M"]);
    st.ok(["snapshot", "create", &legacy, "--name", "formatted"]);
    let not_a_template = format!("template.ext4-{}", 128u64 << 20);
    st.ok(["volume", "create", &not_a_template, "--size", "64M"]);
    st.ok(["create", "busybox", "--name", "c", "--size", "256M"]);
    st.ok(["create", "busybox", "--name", "d", "--size", "128M"]);
    let names: Vec<String> = st
        .volumes()
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    assert!(
        names.contains(&format!("template.ext4-inline-{size}")),
        "no current template: {names:?}"
    );
    assert!(
        !names.contains(&legacy),
        "the old template is still there: {names:?}"
    );
    assert!(
        names.contains(&not_a_template),
        "a volume without the template's snapshot was removed: {names:?}"
    );
    st.ok(["rm", "d"]);
    st.ok(["volume", "rm", &not_a_template]);

    st.ok(["container", "mount", "c"]);
    let fs = st.container_dir("c").join("fs");
    let ext4 = mount_at(&fs).unwrap_or_else(|| panic!("nothing mounted at {}", fs.display()));
    assert_eq!(ext4.fstype, "ext4", "{ext4:?}");
    let dump = tool("dumpe2fs", ["-h", ext4.source.as_str()]);
    assert!(dump.status.success(), "{dump}");
    let features = dump
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:").map(str::to_owned))
        .unwrap_or_else(|| panic!("dumpe2fs printed no features: {dump}"));
    assert!(
        features.split_whitespace().any(|f| f == "inline_data"),
        "the container's ext4 lacks inline_data: {features}"
    );
    // overlayfs took it as its upper: the container's writes land there.
    let rootfs = st.rootfs("c");
    std::fs::create_dir(rootfs.join("newdir")).expect("mkdir in the container");
    std::fs::write(rootfs.join("newdir/f"), b"x").expect("write in the container");
    assert_eq!(
        std::fs::read(fs.join("upper/newdir/f")).ok().as_deref(),
        Some(&b"x"[..]),
        "the write is not in the ext4 upper"
    );
    st.ok(["container", "umount", "c"]);
    st.ok(["rm", "c"]);
    st.assert_nothing_left("after rm");
    st.assert_fsck_clean();
}

#[test]
fn run_without_rm_keeps_the_container_and_start_runs_it_again() {
    let _serial = serial();
    require_containers();
    let st = CStore::with_image("busybox");
    let script = "echo x >> /runs; n=$(wc -l < /runs); echo \"runs=$n\"; exit $((10 + n))";

    let run = st.run(["run", "--name", "keep", "busybox", "--", "sh", "-c", script]);
    assert_exit(&run, 11, "first run");
    assert_eq!(run.stdout_str(), "runs=1\n", "{run}");
    let row = st
        .ps_row("keep")
        .unwrap_or_else(|| panic!("`ps` does not list the container after run without --rm"));
    assert_eq!(row["state"], "stopped", "{row}");
    assert!(
        mount_at(&st.rootfs("keep")).is_none(),
        "the rootfs stays mounted after the container exited"
    );
    let vol = st
        .volumes()
        .into_iter()
        .find(|v| v["name"] == "ctr.keep")
        .unwrap_or_else(|| panic!("no volume ctr.keep"));
    assert!(vol["device"].is_null(), "the volume stays attached: {vol}");
    assert_eq!(vol["ephemeral"], false, "a kept container's volume: {vol}");
    let bundle = st.container_dir("keep").join("bundle/config.json");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&bundle)
            .unwrap_or_else(|e| panic!("the bundle {} is missing: {e}", bundle.display())),
    )
    .expect("config.json is JSON");
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["sh", "-c", script]),
        "{spec}"
    );
    assert_eq!(spec["hostname"], "keep", "{spec}");

    let run = st.run(["start", "keep"]);
    assert_exit(&run, 12, "start");
    assert_eq!(
        run.stdout_str(),
        "runs=2\n",
        "start must see the first run's write: {run}"
    );
    assert_eq!(st.ps_row("keep").unwrap()["state"], "stopped");
    let run = st.run(["start", "keep"]);
    assert_exit(&run, 13, "second start");
    // Mounted before `start`: still mounted after it (start unmounts only
    // what it mounted itself).
    st.ok(["container", "mount", "keep"]);
    let run = st.run(["start", "keep"]);
    assert_exit(&run, 14, "start of a mounted container");
    assert_eq!(st.ps_row("keep").unwrap()["state"], "mounted");
    st.ok(["container", "umount", "keep"]);
    assert_eq!(st.ps_row("keep").unwrap()["state"], "stopped");

    // A container that deleted its own command: `start` says so as `run`
    // does (FK0808, 127), before crun, and leaves it unmounted.
    let run = st.run([
        "run",
        "--name",
        "selfrm",
        "busybox",
        "--",
        "/bin/sh",
        "-c",
        "rm /bin/sh",
    ]);
    assert_exit(&run, 0, "run of a container that deletes its command");
    let run = st.run(["start", "selfrm"]);
    assert_coded_error(&run, "FK0808", "start of a container without its command");
    assert_eq!(run.status.code(), Some(127), "{run}");
    assert_eq!(st.ps_row("selfrm").unwrap()["state"], "stopped");

    // A container made by `create` has no bundle; unknown containers fail.
    st.ok(["create", "busybox", "--name", "plain"]);
    assert_coded_error(
        &st.run(["start", "plain"]),
        "FK08",
        "start without a bundle",
    );
    assert_coded_error(
        &st.run(["start", "no-such"]),
        "FK",
        "start of an unknown container",
    );
    assert_eq!(st.ps_row("plain").unwrap()["state"], "stopped");

    // A volume without a container record is what a crash during `create`
    // leaves; the next create of that name replaces it with a fresh clone.
    st.ok(["volume", "create", "ctr.leftover", "--size", "64M"]);
    st.ok(["create", "busybox", "--name", "leftover"]);
    let size = st
        .volumes()
        .into_iter()
        .find(|v| v["name"] == "ctr.leftover")
        .map(|v| v["size"].as_u64().unwrap_or(0));
    let template = st
        .volumes()
        .into_iter()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("template."))
        })
        .map(|v| v["size"].as_u64().unwrap_or(0));
    assert!(
        size.is_some() && size == template && size != Some(64 << 20),
        "the leftover volume must be replaced by a clone of the template: {size:?} vs {template:?}"
    );

    st.ok(["rm", "keep", "plain", "leftover", "selfrm"]);
    st.assert_nothing_left("after rm");
    st.assert_fsck_clean();
}

/// `rmi` of the last name of an image that a container or a live mount
/// uses is refused with FK0113 and changes nothing; untagging another of its
/// names works. Before, the image went, and the next `gc` deleted the
/// objects under the mounted container, whose files then vanished. Once the
/// container is removed and the mount gone, `rmi` and `gc` free it.
#[test]
fn rmi_refuses_an_image_a_container_or_a_mount_uses() {
    let _serial = serial();
    require_containers();
    let st = CStore::with_image("busybox");
    st.ok(["tag", "busybox", "other"]);
    st.ok(["create", "busybox", "--name", "user"]);
    st.ok(["container", "mount", "user"]);
    // Both names in one command, or the ID: the last name would go.
    let images = st.ok(["--json", "images"]).stdout_str();
    let id = json_array(&st.ok(["--json", "images"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for args in [&["rmi", "other", "busybox"][..], &["rmi", &id[..12]]] {
        let run = st.run(args);
        assert_coded_error(
            &run,
            "FK0113",
            &format!("{args:?} of the image of a mounted container"),
        );
        assert_eq!(
            st.ok(["--json", "images"]).stdout_str(),
            images,
            "{args:?} changed the images"
        );
    }
    st.ok(["rmi", "other"]);
    let images = st.ok(["--json", "images"]).stdout_str();
    let run = st.run(["rmi", "busybox"]);
    assert_coded_error(&run, "FK0113", "rmi of the image of a mounted container");
    assert!(run.stderr.contains("container user"), "{run}");
    assert_eq!(
        st.ok(["--json", "images"]).stdout_str(),
        images,
        "rmi changed the images"
    );
    st.ok(["gc"]);
    // Read for the first time now: nothing of it is cached.
    let through_rootfs = std::fs::read(st.rootfs("user").join("bin/busybox"))
        .unwrap_or_else(|e| panic!("the container's /bin/busybox after rmi and gc: {e}"));
    assert!(through_rootfs == image_file(&st, "busybox", "bin/busybox"));
    st.ok(["container", "umount", "user"]);
    assert_coded_error(
        &st.run(["rmi", "busybox"]),
        "FK0113",
        "rmi of the image of a stopped container",
    );
    // Its name moved to another image (`tag`): the container's image has
    // none, and `fsck` and `gc` agree that it is kept (before, `fsck`
    // counted it as garbage `gc` would remove).
    let tiny = scratch_dir("fukastor-test-tiny-");
    std::fs::write(tiny.path().join("f"), b"tiny").unwrap();
    st.ok(["pull", &format!("dir:{}", tiny.path().display()), "tiny:1"]);
    st.ok(["tag", "tiny:1", "busybox"]);
    let fsck = json_of(&st.ok(["--json", "fsck"]));
    assert_eq!(fsck["garbage"]["unnamed_images"], 0, "{fsck}");
    let gc = json_of(&st.ok(["--json", "gc"]));
    assert_eq!(gc["images"], 0, "gc removed the container's image: {gc}");
    // The name free again, `fsck --repair` gives it back from the image's
    // record, in use or not.
    st.ok(["rmi", "busybox"]);
    st.ok(["fsck", "--repair"]);
    let named = json_array(&st.ok(["--json", "images"]))
        .iter()
        .any(|i| i["id"] == id.as_str() && i["name"] == "busybox:latest");
    assert!(
        named,
        "fsck --repair did not restore busybox: {}",
        st.ok(["images"])
    );
    st.ok(["rm", "user"]);
    st.ok(["rmi", "tiny:1"]);

    let mnt = scratch_dir("fukastor-test-mnt-");
    st.ok([
        OsStr::new("mount"),
        OsStr::new("--kernel"),
        OsStr::new("busybox"),
        mnt.path().as_os_str(),
    ]);
    let run = st.run(["rmi", "busybox"]);
    let refused = run.stderr.contains("error[FK0113]") && run.stderr.contains("the mount at");
    st.ok([OsStr::new("umount"), mnt.path().as_os_str()]);
    assert!(refused, "rmi of a mounted image: {run}");
    st.ok(["rmi", "busybox"]);
    let gc = json_of(&st.ok(["--json", "gc"]));
    assert!(gc["objects"].as_u64() > Some(0), "gc freed nothing: {gc}");
    st.assert_nothing_left("after rm, umount and rmi");
    st.assert_fsck_clean();
}

/// While a container runs (here under `run`), `start`, `rm`, `rm --force`
/// and `container umount` are refused with FK0807 and leave it running,
/// from a session with another `XDG_RUNTIME_DIR` too (crun keeps its state
/// under that variable; fukastor pins it to /run/crun as root):
/// before, `start` force-deleted crun's state of the running container,
/// killing it, and `rm --force` unmounted what it could and stopped at the
/// busy volume. Once it exits, `rm` works. A container whose mounts are gone
/// but whose volume was left attached (an unmount cut short) is removed by
/// `rm`, which detaches the volume (before: FK0715).
#[test]
fn a_running_container_is_not_started_unmounted_or_removed_under_itself() {
    let _serial = serial();
    require_containers();
    let out = scratch_dir("fukastor-test-busy-out-");
    let st = CStore::with_image("busybox");
    let script = "echo up > /up; i=0; \
        while [ ! -e /go ]; do i=$((i + 1)); [ $i -gt 1200 ] && exit 9; sleep 0.1; done; \
        echo still-ran";
    // Started from a session with its own XDG_RUNTIME_DIR (a root login's
    // /run/user/0), checked from one without it, and with it.
    let session = scratch_dir("fukastor-test-xdg-");
    let mut cmd = st.command();
    cmd.env("XDG_RUNTIME_DIR", session.path());
    cmd.args(["run", "--name", "busy", "busybox", "--", "sh", "-c", script]);
    let mut bg = Background::spawn(cmd, "fukastor run --name busy", out.path());
    let rootfs = st.rootfs("busy");
    bg.wait_for_file(&rootfs.join("up"));
    let mut start = st.command();
    start.env("XDG_RUNTIME_DIR", session.path());
    start.args(["start", "busy"]);
    assert_coded_error(
        &run_command(start),
        "FK0807",
        "start of a running container, same session",
    );
    for args in [
        &["start", "busy"][..],
        &["rm", "busy"],
        &["rm", "--force", "busy"],
        &["container", "umount", "busy"],
    ] {
        let run = st.run(args);
        assert_coded_error(&run, "FK0807", &format!("{args:?} of a running container"));
        // `start` fails as `run` does (125); the other commands with 1.
        let status = if args[0] == "start" { 125 } else { 1 };
        assert_eq!(run.status.code(), Some(status), "{args:?}: {run}");
        assert!(
            bg.try_wait().is_none(),
            "{args:?} stopped the container:\n{}",
            bg.output()
        );
        assert!(
            mount_at(&rootfs).is_some(),
            "{args:?} unmounted the running container's root"
        );
    }
    std::fs::write(rootfs.join("go"), b"").unwrap();
    let status = bg
        .wait_for(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the container did not finish:\n{}", bg.output()));
    assert!(
        status.success(),
        "run ended with {status}:\n{}",
        bg.output()
    );
    assert!(bg.output().contains("still-ran"), "{}", bg.output());
    st.ok(["rm", "busy"]);

    // Mounts gone, volume still attached.
    st.ok(["create", "busybox", "--name", "left"]);
    st.ok(["container", "mount", "left"]);
    let dir = st.container_dir("left");
    for m in [dir.join("rootfs"), dir.join("fs")] {
        rustix::mount::unmount(&m, rustix::mount::UnmountFlags::empty())
            .unwrap_or_else(|e| panic!("unmounting {}: {e}", m.display()));
    }
    let attached = st
        .volumes()
        .into_iter()
        .any(|v| v["name"] == "ctr.left" && !v["device"].is_null());
    assert!(
        attached,
        "the volume should still be attached: {:?}",
        st.volumes()
    );
    st.ok(["rm", "left"]);
    st.assert_nothing_left("after rm of a container whose volume was left attached");
    st.assert_fsck_clean();
}

/// Runs `fukastor --store STORE ARGS` `n` times at once.
fn at_once(st: &CStore, n: usize, args: &[&str]) -> Vec<std::process::Output> {
    std::thread::scope(|s| {
        let spawned: Vec<_> = (0..n)
            .map(|_| {
                let mut cmd = st.command();
                cmd.args(args);
                s.spawn(move || cmd.output().expect("run fukastor"))
            })
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Each output's status and stderr, for an assertion's message.
fn report(outputs: &[std::process::Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr)))
        .collect()
}

/// `container mount`s of one container at once all succeed and print the
/// same mountpoint, and `container umount`s at once all succeed and leave
/// it unmounted: each takes the container's lock. Before, one mount won,
/// another failed with FK0754 (EBUSY) and its undo took the ext4 from under
/// the winner's overlay, after which `container umount` failed with FK0717
/// and `rm` with FK0753; a second umount at once failed with FK0717.
#[test]
fn concurrent_mounts_and_umounts_of_one_container_agree() {
    let _serial = serial();
    require_containers();
    let st = CStore::with_image("busybox");
    st.ok(["create", "busybox", "--name", "c"]);
    let rootfs = st.rootfs("c").display().to_string();
    let fs = st.container_dir("c").join("fs");
    for round in 0..4 {
        let mounts = at_once(&st, 3, &["container", "mount", "c"]);
        assert!(
            mounts
                .iter()
                .all(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == rootfs),
            "round {round}: every mount must print {rootfs}: {:#?}",
            report(&mounts)
        );
        assert_eq!(st.ps_row("c").unwrap()["state"], "mounted", "round {round}");
        assert!(
            mount_at(&fs).is_some_and(|m| m.fstype == "ext4"),
            "round {round}: the container's ext4 is not mounted at {}",
            fs.display()
        );
        let umounts = at_once(&st, 2, &["container", "umount", "c"]);
        assert!(
            umounts.iter().all(|o| o.status.success()),
            "round {round}: {:#?}",
            report(&umounts)
        );
        assert_eq!(st.ps_row("c").unwrap()["state"], "stopped", "round {round}");
    }
    st.ok(["rm", "c"]);
    // A mount and an rm of a never-mounted container at once: either the
    // mount wins and the rm is refused (FK0753), or the rm wins and the
    // mount finds no container (FK0750); never both, never a mounted
    // container without a record.
    for round in 0..4 {
        let name = format!("r{round}");
        st.ok(["create", "busybox", "--name", &name]);
        let outputs: Vec<std::process::Output> = std::thread::scope(|s| {
            let spawn = |args: &[&str]| {
                let mut cmd = st.command();
                cmd.args(args);
                s.spawn(move || cmd.output().expect("run fukastor"))
            };
            let m = spawn(&["container", "mount", &name]);
            let r = spawn(&["rm", &name]);
            vec![m.join().unwrap(), r.join().unwrap()]
        });
        let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
        match (outputs[0].status.success(), outputs[1].status.success()) {
            (true, false) => {
                assert!(
                    err(&outputs[1]).contains("error[FK0753]"),
                    "{:#?}",
                    report(&outputs)
                );
                assert_eq!(st.ps_row(&name).unwrap()["state"], "mounted");
                st.ok(["rm", "--force", &name]);
            }
            (false, true) => {
                assert!(
                    err(&outputs[0]).contains("error[FK0750]"),
                    "{:#?}",
                    report(&outputs)
                );
                assert!(st.ps_row(&name).is_none(), "round {round}");
            }
            _ => panic!("round {round}: {:#?}", report(&outputs)),
        }
        assert!(
            !st.container_dir(&name).exists(),
            "round {round}: {} is left",
            st.container_dir(&name).display()
        );
    }
    st.assert_nothing_left("after the concurrent mounts");
    st.assert_fsck_clean();
}

/// Creates of one name at once: exactly one succeeds, the others get
/// FK0751, and one volume is left for the one record. Before, a create that
/// found the name's volume but not yet its record took it for a crash's
/// leftover and deleted it: two creates could both succeed over one name.
#[test]
fn concurrent_creates_of_one_name_make_one_container() {
    let _serial = serial();
    require_containers();
    let st = CStore::with_image("busybox");
    st.ok(["create", "busybox", "--name", "warm"]);
    for round in 0..5 {
        let name = format!("same{round}");
        let outputs = at_once(&st, 4, &["create", "busybox", "--name", &name]);
        let won = outputs.iter().filter(|o| o.status.success()).count();
        let report = report(&outputs);
        assert_eq!(
            won, 1,
            "round {round}: {won} creates of {name} succeeded: {report:#?}"
        );
        assert!(
            outputs
                .iter()
                .filter(|o| !o.status.success())
                .all(|o| String::from_utf8_lossy(&o.stderr).contains("error[FK0751]")),
            "round {round}: {report:#?}"
        );
        let volumes = st
            .volumes()
            .into_iter()
            .filter(|v| v["name"] == format!("ctr.{name}"))
            .count();
        assert_eq!(volumes, 1, "round {round}");
        st.ok(["rm", &name]);
    }
    st.ok(["rm", "warm"]);
    st.assert_nothing_left("after the concurrent creates");
    st.assert_fsck_clean();
}

/// A container record that does not parse: `ps` fails with FK0104, whose
/// hint is fsck; `fsck` reports it; `fsck --repair` leaves a mounted one
/// alone, moves an unmounted one aside and keeps its volume, and `create`
/// refuses the name while the set-aside record is there.
#[test]
fn fsck_reports_and_repairs_a_damaged_container_record() {
    let _serial = serial();
    require_containers();
    let st = CStore::with_image("busybox");
    for name in ["dmg", "fine", "mnt"] {
        st.ok(["create", "busybox", "--name", name]);
    }
    let rootfs = st.ok(["container", "mount", "mnt"]).stdout_str();
    let records = st.path().join("fukastor/containers");
    for name in ["dmg", "mnt"] {
        std::fs::write(
            records.join(format!("{name}.json")),
            b"{\"name\": \"x\", \"ima",
        )
        .unwrap();
    }

    let ps = st.run(["ps"]);
    assert_coded_error(&ps, "FK0104", "ps with a damaged record");
    assert!(ps.stderr.contains("fukastor fsck"), "{ps}");

    // The containers' image loses its name (to another image): fsck still
    // counts it as in use, through the record that can be read.
    let id = json_array(&st.ok(["--json", "images"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tiny = scratch_dir("fukastor-test-tiny-");
    std::fs::write(tiny.path().join("f"), b"tiny").unwrap();
    st.ok(["pull", &format!("dir:{}", tiny.path().display()), "tiny:1"]);
    st.ok(["tag", "tiny:1", "busybox"]);
    let fsck = st.run(["--json", "fsck"]);
    assert_eq!(
        json_of(&fsck)["garbage"]["unnamed_images"],
        0,
        "an image a readable record uses: {fsck}"
    );
    st.ok(["tag", &id[..12], "busybox"]);

    let fsck = st.run(["--json", "fsck"]);
    assert_coded_error(&fsck, "FK0500", "fsck with damaged records");
    let report = json_of(&fsck);
    let kinds: Vec<_> = report["problems"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| (p["kind"].clone(), p["repaired"].clone()))
        .collect();
    let unrepaired = (
        serde_json::json!("damaged-container-record"),
        serde_json::json!(false),
    );
    assert_eq!(kinds, [unrepaired.clone(), unrepaired], "{report}");
    assert_eq!(report["containers"], 3, "{report}");

    // The mounted one stays, with what to unmount; the other is set aside.
    let repair = st.run(["--json", "fsck", "--repair"]);
    assert_coded_error(&repair, "FK0500", "repair with a mounted damaged container");
    let report = json_of(&repair);
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    let of = |name: &str| {
        problems
            .iter()
            .find(|p| {
                p["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("record {name}:"))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no problem for {name}: {report}"))
    };
    assert_eq!(of("dmg")["repaired"], true, "{report}");
    assert_eq!(of("mnt")["repaired"], false, "{report}");
    assert!(
        of("mnt")["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not moved aside while mounted"),
        "{report}"
    );
    assert!(
        !records.join("dmg.json").exists(),
        "dmg's record is still read"
    );
    assert!(records.join("dmg.json.damaged").is_file(), "not kept aside");
    assert!(
        records.join("mnt.json").is_file(),
        "a mounted container's record moved"
    );

    // By hand, as the detail says; then the repair finishes.
    for d in ["rootfs", "fs"] {
        let path = st.container_dir("mnt").join(d);
        let out = tool("umount", [path.as_os_str()]);
        assert!(out.success(), "umount {}: {out}", path.display());
    }
    assert_eq!(rootfs.trim(), st.rootfs("mnt").display().to_string());
    st.ok(["volume", "detach", "ctr.mnt"]);
    let repair = st.ok(["--json", "fsck", "--repair"]);
    assert_eq!(json_of(&repair)["clean"], true, "{repair}");
    let fsck = st.ok(["--json", "fsck"]);
    assert_eq!(json_of(&fsck)["clean"], true, "{fsck}");

    let names: Vec<_> = st.ps().iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, [serde_json::json!("fine")], "ps after the repair");
    for v in ["ctr.dmg", "ctr.mnt"] {
        assert!(
            st.volumes().iter().any(|x| x["name"] == v),
            "the repair removed {v}"
        );
    }
    let again = st.run(["create", "busybox", "--name", "dmg"]);
    assert_coded_error(&again, "FK0756", "create over a set-aside record");
    assert!(
        st.volumes().iter().any(|x| x["name"] == "ctr.dmg"),
        "create removed the kept volume"
    );

    for v in ["ctr.dmg", "ctr.mnt"] {
        st.ok(["volume", "rm", v]);
    }
    std::fs::remove_file(records.join("dmg.json.damaged")).unwrap();
    st.ok(["create", "busybox", "--name", "dmg"]);
    for name in ["dmg", "fine"] {
        st.ok(["rm", name]);
    }
    st.assert_nothing_left("after the repair and the removals");
}

// ---------------------------------------------------------------------------
// 4. Snapshot of a running container, rollback, start
// ---------------------------------------------------------------------------

#[test]
fn atomic_snapshot_of_a_running_container_then_rollback_and_start() {
    let _serial = serial();
    require_containers();
    let out = scratch_dir("fukastor-test-snap-out-");
    let st = CStore::with_image("busybox");
    // First run: writes /before, waits for /go (made by the test after the
    // snapshot), writes /after. Any later run reports what it finds.
    let script = "if [ -e /before ]; then \
          a=absent; [ -e /after ] && a=present; g=absent; [ -e /go ] && g=present; \
          echo \"second: before=$(cat /before) after=$a go=$g\"; exit 0; \
        fi; \
        echo before > /before; sync; \
        i=0; while [ ! -e /go ]; do i=$((i + 1)); [ $i -gt 1200 ] && exit 9; sleep 0.1; done; \
        echo after > /after; echo first-run-done";
    let mut cmd = st.command();
    cmd.args(["run", "--name", "snap", "busybox", "--", "sh", "-c", script]);
    let mut bg = Background::spawn(cmd, "fukastor run --name snap", out.path());

    let rootfs = st.rootfs("snap");
    bg.wait_for_file(&rootfs.join("before"));

    // While it runs: mounted, its rootfs a writable composefs mount.
    assert_eq!(st.ps_row("snap").unwrap()["state"], "running");
    let m = mount_at(&rootfs).expect("the rootfs is mounted while the container runs");
    assert_eq!(assert_writable_composefs(&st, &m), "snap");
    // `mounts` lists image mounts, not containers' (`ps` does).
    let mounts = st.ok(["--json", "mounts"]);
    assert!(
        !mounts.stdout_str().contains(&rootfs.display().to_string()),
        "`mounts` lists the container's rootfs: {mounts}"
    );
    let run = st.run([OsStr::new("umount"), rootfs.as_os_str()]);
    assert_coded_error(&run, "FK0303", "umount of a container's rootfs");
    assert!(
        run.stderr.contains("fukastor container umount snap"),
        "the hint should name `container umount`: {run}"
    );
    assert!(mount_at(&rootfs).is_some(), "umount took the rootfs: {run}");
    let state = tool("crun", ["state", "fukastor-snap"]);
    state.assert_success();
    let state = json_of(&state);
    assert_eq!(
        state["status"], "running",
        "crun state while it runs: {state}"
    );
    assert_eq!(
        state["bundle"].as_str().map(PathBuf::from),
        Some(st.container_dir("snap").join("bundle")),
        "{state}"
    );

    let t = Instant::now();
    st.ok(["snapshot", "create", "snap", "--name", "s", "--atomic"]);
    eprintln!(
        "snapshot create --atomic of a running container: {:.2?}",
        t.elapsed()
    );
    let refused = st.run(["snapshot", "rollback", "snap", "s"]);
    assert_coded_error(&refused, "FK07", "rollback of a running container");
    assert!(
        rootfs.join("before").exists(),
        "a refused rollback changed the rootfs"
    );

    std::fs::write(rootfs.join("go"), "go\n").unwrap();
    let status = bg.wait_for(Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "the container did not finish 60 s after /go:\n{}",
            bg.output()
        )
    });
    assert!(status.success(), "fukastor run: {status}\n{}", bg.output());
    assert!(bg.output().contains("first-run-done"), "{}", bg.output());
    assert_eq!(st.ps_row("snap").unwrap()["state"], "stopped");
    assert!(
        mount_at(&rootfs).is_none(),
        "still mounted after the container exited"
    );

    st.ok(["snapshot", "rollback", "snap", "s"]);
    let run = st.run(["start", "snap"]);
    assert_exit(&run, 0, "start after rollback");
    assert_eq!(
        run.stdout_str(),
        "second: before=before after=absent go=absent\n",
        "after rollback to a snapshot taken between /before and /go, /after: {run}"
    );

    st.ok(["rm", "snap"]);
    st.assert_nothing_left("after rm");
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// 5. Twenty containers share one image
// ---------------------------------------------------------------------------

/// What each container's writes may cost beyond their bytes: ext4 metadata,
/// journal, the overlay's upper and work directories, the volume's records.
/// Measured: about 120 KiB for one mount, one 256 KiB write and the umount.
const PER_CONTAINER_OVERHEAD: u64 = MIB;

#[test]
fn twenty_containers_share_the_image_objects() {
    const N: usize = 20;
    const WRITE: usize = 256 * KIB as usize;
    let _serial = serial();
    require_containers();
    let st = CStore::with_image("bookworm");
    let os_release = image_file(&st, "bookworm", "/usr/lib/os-release");
    let objects = st.path().join("objects");
    let images = st.path().join("images");
    let layers = st.path().join("fukastor/pool/layers");
    let (objects_before, object_files_before) = disk_usage(&objects);
    let (images_before, _) = disk_usage(&images);
    let (layers_before, _) = disk_usage(&layers);

    let t = Instant::now();
    let mut roots = Vec::new();
    for i in 0..N {
        let name = format!("c{i:02}");
        st.ok(["create", "bookworm", "--name", &name]);
        let run = st.ok(["container", "mount", &name]);
        let root = PathBuf::from(run.stdout_str().trim());
        assert_eq!(root, st.rootfs(&name), "{run}");
        assert_eq!(
            std::fs::read(root.join("usr/lib/os-release")).unwrap(),
            os_release,
            "{name} does not show the image"
        );
        std::fs::write(root.join("own.bin"), pseudo_random(i as u64, WRITE)).unwrap();
        std::fs::write(root.join("etc/hostname"), format!("{name}\n")).unwrap();
        roots.push((name, root));
    }
    eprintln!("{N} containers created and mounted in {:.2?}", t.elapsed());
    for (name, root) in &roots {
        tool("sync", [OsStr::new("-f"), root.as_os_str()]).assert_success();
        assert_eq!(
            std::fs::read(root.join("own.bin")).unwrap(),
            pseudo_random(name[1..].parse().unwrap(), WRITE)
        );
    }
    for (name, _) in &roots {
        st.ok(["container", "umount", name]);
    }

    let (objects_after, object_files_after) = disk_usage(&objects);
    let (images_after, _) = disk_usage(&images);
    let (layers_after, _) = disk_usage(&layers);
    let template_used = st
        .volumes()
        .into_iter()
        .filter(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("template."))
        })
        .map(|v| v["used"].as_u64().unwrap_or(0))
        .sum::<u64>();
    let growth = layers_after.saturating_sub(layers_before);
    let written = (N * WRITE) as u64;
    eprintln!(
        "image objects {} ({object_files_before} files; {N} copies would be {}); \
         volume pool grew by {} ({} per container, ext4 template {}), containers wrote {}",
        mib(objects_before),
        mib(objects_before * N as u64),
        mib(growth),
        mib(growth.saturating_sub(template_used) / N as u64),
        mib(template_used),
        mib(written)
    );
    assert_eq!(
        (objects_after, object_files_after),
        (objects_before, object_files_before),
        "the image objects changed with {N} containers"
    );
    assert_eq!(images_after, images_before, "the images directory changed");
    assert!(
        growth >= written,
        "the pool grew by {growth} bytes, less than the {written} the containers wrote: \
         are the writes stored?"
    );
    let bound = template_used + N as u64 * (WRITE as u64 + PER_CONTAINER_OVERHEAD);
    assert!(
        growth <= bound,
        "the pool grew by {} for {N} containers that wrote {} each: more than the template \
         ({}) plus {} per container",
        mib(growth),
        mib(WRITE as u64),
        mib(template_used),
        mib(WRITE as u64 + PER_CONTAINER_OVERHEAD)
    );
    assert!(
        growth < objects_before,
        "{N} containers cost {} of pool, more than one copy of the image ({})",
        mib(growth),
        mib(objects_before)
    );

    let names: Vec<&str> = roots.iter().map(|(n, _)| n.as_str()).collect();
    let mut args = vec!["rm"];
    args.extend(&names);
    st.ok(&args);
    st.assert_nothing_left("after removing the 20 containers");
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// 6. podman with the hooks
// ---------------------------------------------------------------------------

/// A private podman storage (`--root`, `--runroot`) in a scratch directory,
/// so the host's podman is untouched; dropping it removes its containers
/// and unmounts what podman left there.
#[derive(Debug)]
struct PodmanRoot {
    dir: tempfile::TempDir,
}

impl PodmanRoot {
    fn new() -> Self {
        PodmanRoot {
            dir: scratch_dir("fukastor-test-podman-"),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .env_remove("CONTAINERS_CONF");
        cmd
    }

    fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        run_command(cmd)
    }

    /// `podman images -q` and `podman ps -aq` are both empty.
    fn assert_empty(&self, context: &str) {
        let images = self.run(["images", "-q"]);
        images.assert_success();
        assert!(
            images.stdout_str().trim().is_empty(),
            "{context}: podman stored images: {images}"
        );
        let ps = self.run(["ps", "-aq"]);
        ps.assert_success();
        assert!(
            ps.stdout_str().trim().is_empty(),
            "{context}: podman containers left: {ps}"
        );
    }
}

impl Drop for PodmanRoot {
    fn drop(&mut self) {
        let run = self.run(["rm", "-a", "-f"]);
        if !run.stdout_str().trim().is_empty() {
            eprintln!("cleanup: podman rm -a -f: {}", run.stdout_str().trim());
        }
        let dir = self.dir.path().canonicalize().unwrap_or_default();
        let mut left: Vec<MountEntry> = mount_table()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&dir))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
        for m in left {
            eprintln!("cleanup: umount -l {}", m.mount_point.display());
            lazy_umount(&m.mount_point);
        }
    }
}

/// Hard limits podman can hand to containers here: podman 4.3's defaults
/// (1048576 files, 4194304 processes) exceed them on this kind of host, and
/// podman lowers its own RLIMIT_NPROC to kernel.pid_max.
fn podman_ulimits() -> (u64, u64) {
    use rustix::process::{Resource, getrlimit};
    let nofile = getrlimit(Resource::Nofile)
        .maximum
        .unwrap_or(1_048_576)
        .min(1_048_576);
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let nproc = getrlimit(Resource::Nproc)
        .maximum
        .unwrap_or(4_194_304)
        .min(pid_max)
        .min(4_194_304);
    (nofile, nproc)
}

/// `plugin/install.sh` with scratch directories; returns (hooks dir, drop-in).
fn install_plugin(st: &CStore, dir: &Path, expect: &str) -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin/install.sh");
    let hooks = dir.join("hooks.d");
    let conf = dir.join("containers.conf.d");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("--prefix")
        .arg(dir.join("prefix"))
        .arg("--bin")
        .arg(fukastor_bin())
        .arg("--store")
        .arg(st.path())
        .arg("--hooks-dir")
        .arg(&hooks)
        .arg("--conf-dir")
        .arg(&conf);
    let run = run_command(cmd);
    run.assert_success();
    let out = run.stdout_str();
    let actions: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("install.sh: "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| ["installed", "updated", "unchanged"].contains(w))
        .collect();
    assert_eq!(actions.len(), 4, "install.sh reports 4 files: {run}");
    assert!(
        actions.iter().all(|a| *a == expect),
        "install.sh: expected every file {expect}: {run}"
    );
    (hooks, conf.join("60-fukastor.conf"))
}

#[test]
fn podman_runs_on_fukastor_through_the_hooks() {
    let _serial = serial();
    require_containers();
    require_podman();
    let fx = fixtures();
    let scratch = scratch_dir("fukastor-test-plugin-");
    let empty = scratch.path().join("empty-rootfs");
    std::fs::create_dir(&empty).unwrap();
    let st = CStore::new();
    let podman = PodmanRoot::new();
    st.pull_named(&fx.oci("bookworm"), "bookworm");
    let os_release = String::from_utf8(image_file(&st, "bookworm", "/usr/lib/os-release")).unwrap();

    // Install, twice: the second run changes nothing.
    let (hooks, dropin) = install_plugin(&st, scratch.path(), "installed");
    install_plugin(&st, scratch.path(), "unchanged");
    let installed_bin = scratch.path().join("prefix/bin/fukastor");
    for (file, stage) in [
        ("fukastor-precreate.json", "precreate"),
        ("fukastor-poststop.json", "poststop"),
    ] {
        let path = hooks.join(file);
        let hook: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("hooks.d JSON");
        assert_eq!(hook["version"], "1.0.0", "{hook}");
        assert_eq!(hook["stages"], serde_json::json!([stage]), "{hook}");
        assert_eq!(
            hook["hook"]["path"].as_str().map(PathBuf::from),
            Some(installed_bin.clone()),
            "{hook}"
        );
        assert_eq!(
            hook["hook"]["args"],
            serde_json::json!(["fukastor", "hook", stage]),
            "{hook}"
        );
        let env: Vec<&str> = hook["hook"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            env.contains(&format!("FUKASTOR_STORE={}", st.path().display()).as_str()),
            "{hook}"
        );
        assert!(env.iter().any(|e| e.starts_with("PATH=")), "{hook}");
    }
    assert!(
        std::fs::read(&installed_bin).unwrap() == std::fs::read(fukastor_bin()).unwrap(),
        "install.sh did not copy the binary"
    );

    // 1. As in the README: --hooks-dir, and the rlimits on the command line.
    let (nofile, nproc) = podman_ulimits();
    let script = "cat /etc/os-release; echo @@@; cat /proc/self/mountinfo";
    let mut cmd = podman.command();
    cmd.arg("run")
        .arg("--rm")
        .arg("--hooks-dir")
        .arg(&hooks)
        .arg("--ulimit")
        .arg(format!("nofile={nofile}:{nofile}"))
        .arg("--ulimit")
        .arg(format!("nproc={nproc}:{nproc}"))
        .args(["--annotation", "io.fukastor.image=bookworm"])
        .arg("--rootfs")
        .arg(&empty)
        .args(["sh", "-c", script]);
    let run = run_command(cmd);
    eprintln!("podman run --rm with the hooks: {:.2?}", run.elapsed);
    assert!(run.success(), "podman run with the hooks: {run}");
    let out = run.stdout_str();
    let (release, mountinfo) = out
        .split_once("@@@\n")
        .unwrap_or_else(|| panic!("unexpected output: {run}"));
    similar_asserts::assert_eq!(
        release,
        os_release,
        "podman's container does not show bookworm's /etc/os-release"
    );
    let name = assert_root_is_fukastor_overlay(&st, mountinfo, None);
    eprintln!("the precreate hook made container {name}");
    podman.assert_empty("after podman run --rm");

    // 2. The drop-in alone: no --hooks-dir, no --ulimit; a given name.
    let mut cmd = podman.command();
    cmd.env("CONTAINERS_CONF", &dropin)
        .arg("run")
        .arg("--rm")
        .args(["--annotation", "io.fukastor.image=bookworm"])
        .args(["--annotation", "io.fukastor.name=pm2"])
        .arg("--rootfs")
        .arg(&empty)
        .args(["cat", "/proc/self/mountinfo"]);
    let run = run_command(cmd);
    assert!(
        run.success(),
        "podman run with CONTAINERS_CONF={} (hooks_dir and default_ulimits): {run}",
        dropin.display()
    );
    assert_root_is_fukastor_overlay(&st, &run.stdout_str(), Some("pm2"));
    podman.assert_empty("after the second podman run --rm");
    // The poststop hook removed both containers (generated name and given),
    // maybe after podman returned (see `wait_for_no_containers`).
    let waited = st.wait_for_no_containers();
    eprintln!("the poststop hooks were done {waited:.2?} after the second podman run");
    st.assert_nothing_left(&format!(
        "after two podman run --rm (containers {name} and pm2): the poststop hook removes them"
    ));

    // Without the annotation the hooks stay out of the way.
    let mut cmd = podman.command();
    cmd.env("CONTAINERS_CONF", &dropin)
        .arg("run")
        .arg("--rm")
        .arg("--rootfs")
        .arg(&empty)
        .arg("/no-such-command");
    let run = run_command(cmd);
    assert!(
        !run.success(),
        "a container without the annotation ran on something else than its empty rootfs: {run}"
    );
    assert!(
        st.ps().is_empty(),
        "the hooks made a container for an unannotated podman container"
    );

    // Uninstall removes what install wrote.
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin/install.sh"))
        .arg("--prefix")
        .arg(scratch.path().join("prefix"))
        .arg("--hooks-dir")
        .arg(&hooks)
        .arg("--conf-dir")
        .arg(dropin.parent().unwrap())
        .arg("--uninstall");
    run_command(cmd).assert_success();
    for f in [
        hooks.join("fukastor-precreate.json"),
        hooks.join("fukastor-poststop.json"),
        dropin.clone(),
        installed_bin,
    ] {
        assert!(!f.exists(), "{} is left after --uninstall", f.display());
    }
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// 7. Hook failures
// ---------------------------------------------------------------------------

/// The podman container ID of the hand-made configs and states.
const PODMAN_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A runtime config as podman 4.3 proposes it (trimmed), annotated with `image`.
fn proposed_config(image: Option<&str>, rootfs: &Path) -> serde_json::Value {
    let mut annotations = serde_json::json!({
        "io.container.manager": "libpod",
        "org.opencontainers.image.stopSignal": "15"
    });
    if let Some(image) = image {
        annotations["io.fukastor.image"] = image.into();
    }
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["cat", "/etc/os-release"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/"
        },
        "root": {"path": rootfs.display().to_string()},
        "hostname": &PODMAN_ID[..12],
        "annotations": annotations,
        "linux": {"cgroupsPath": format!("/libpod_parent/libpod-{PODMAN_ID}")}
    })
}

/// A successful precreate of `config`: its output config and the name of
/// the container it made.
fn precreate(st: &CStore, config: &serde_json::Value) -> (serde_json::Value, String) {
    let run = hook(st, "precreate", config.to_string().as_bytes(), &[]);
    run.assert_success();
    let out = json_of(&run);
    let name = out["annotations"]["io.fukastor.container"]
        .as_str()
        .unwrap_or_else(|| panic!("precreate did not add io.fukastor.container: {out}"))
        .to_owned();
    (out, name)
}

fn hook(st: &CStore, stage: &str, input: &[u8], env: &[(&str, Option<&str>)]) -> Run {
    let mut cmd = st.command();
    cmd.args(["hook", stage]);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    run_command_with_input(cmd, input)
}

/// Nothing created, nothing mounted, no container record, no volume.
fn assert_hook_left_nothing(st: &CStore, context: &str) {
    st.assert_nothing_left(context);
    let containers = st.path().join("fukastor/containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "{context}: {} holds {left:?}",
        containers.display()
    );
}

#[test]
fn hooks_fail_with_coded_errors_and_leave_nothing_behind() {
    let _serial = serial();
    require_containers();
    let fx = fixtures();
    let scratch = scratch_dir("fukastor-test-hook-");
    let st = CStore::new();
    st.pull_named(&fx.oci("busybox"), "busybox");

    // Without the annotation the config passes through unchanged.
    let config = proposed_config(None, scratch.path());
    let run = hook(&st, "precreate", config.to_string().as_bytes(), &[]);
    run.assert_success();
    assert_eq!(
        json_of(&run),
        config,
        "a config without io.fukastor.image changed"
    );
    assert_hook_left_nothing(&st, "precreate without the annotation");

    // Malformed input.
    for (what, input) in [
        (
            "truncated JSON",
            &b"{\"ociVersion\": \"1.0.2\", \"annotations\": {"[..],
        ),
        ("not JSON", b"this is not json"),
        ("a JSON array", b"[]"),
        ("no input", b""),
    ] {
        let run = hook(&st, "precreate", input, &[]);
        assert_coded_error(&run, "FK", &format!("precreate with {what}"));
        assert!(
            run.stdout.is_empty(),
            "precreate printed a config for {what}: {run}"
        );
        assert_hook_left_nothing(&st, &format!("precreate with {what}"));
        let run = hook(&st, "poststop", input, &[]);
        assert_coded_error(&run, "FK", &format!("poststop with {what}"));
    }

    // An unknown image.
    let config = proposed_config(Some("no-such-image"), scratch.path());
    let run = hook(&st, "precreate", config.to_string().as_bytes(), &[]);
    assert_coded_error(&run, "FK", "precreate of an unknown image");
    assert!(run.stdout.is_empty(), "{run}");
    assert_hook_left_nothing(&st, "precreate of an unknown image");

    // A busy store: its exclusive lock held (as by gc).
    let config = proposed_config(Some("busybox"), scratch.path());
    let lock_path = st.path().join("fukastor/lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .expect("take the store lock");
    let run = hook(
        &st,
        "precreate",
        config.to_string().as_bytes(),
        &[("FUKASTOR_LOCK_TIMEOUT", Some("2"))],
    );
    assert_coded_error(
        &run,
        "FK",
        "precreate on a busy store (FUKASTOR_LOCK_TIMEOUT=2)",
    );
    assert!(run.stdout.is_empty(), "{run}");
    eprintln!(
        "precreate on a busy store, FUKASTOR_LOCK_TIMEOUT=2: failed after {:.2?}",
        run.elapsed
    );
    // Without FUKASTOR_LOCK_TIMEOUT a hook must not hold podman up for long.
    let run = hook(
        &st,
        "precreate",
        config.to_string().as_bytes(),
        &[("FUKASTOR_LOCK_TIMEOUT", None)],
    );
    assert_coded_error(&run, "FK", "precreate on a busy store (default wait)");
    assert!(
        run.elapsed < Duration::from_secs(30),
        "precreate waited {:.1?} for a busy store: hooks hold podman up",
        run.elapsed
    );
    eprintln!(
        "precreate on a busy store, default wait: failed after {:.2?}",
        run.elapsed
    );
    drop(lock);
    assert_hook_left_nothing(&st, "precreate on a busy store");

    // And the same config works once the store is free: a container is
    // created and mounted, root.path points at it, everything else is kept.
    let (out, name) = precreate(&st, &config);
    assert_eq!(
        out["root"]["path"].as_str().map(PathBuf::from),
        Some(st.rootfs(&name)),
        "{out}"
    );
    assert_eq!(
        out["process"], config["process"],
        "precreate changed the process"
    );
    assert_eq!(out["hostname"], config["hostname"]);
    assert!(
        mount_at(&st.rootfs(&name)).is_some(),
        "precreate did not mount the rootfs"
    );
    assert_eq!(st.ps_row(&name).unwrap()["state"], "mounted");
    // poststop with that state removes it.
    let state = serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "id": PODMAN_ID,
        "status": "stopped",
        "bundle": scratch.path().display().to_string(),
        "annotations": out["annotations"]
    });
    hook(&st, "poststop", state.to_string().as_bytes(), &[]).assert_success();
    assert_hook_left_nothing(&st, "after poststop");
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------
// A full store
// ---------------------------------------------------------------------------

/// A small ext4 filesystem on a loop device (`mount -o loop`, which frees
/// the device at unmount), to put a store on and fill up. Unmounted when
/// dropped: declare it before the store, which is dropped first.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(mib: u64) -> Self {
        let dir = scratch_dir("fukastor-test-smallfs-");
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib * MIB))
            .expect("make the image file");
        // 4 KiB blocks (mke2fs would pick 1 KiB for so small a
        // filesystem) and no root reserve: filled means filled.
        tool(
            "mkfs.ext4",
            [
                OsStr::new("-q"),
                OsStr::new("-b"),
                OsStr::new("4096"),
                OsStr::new("-m"),
                OsStr::new("0"),
                img.as_os_str(),
            ],
        )
        .assert_success();
        tool(
            "mount",
            [
                OsStr::new("-o"),
                OsStr::new("loop"),
                img.as_os_str(),
                mnt.as_os_str(),
            ],
        )
        .assert_success();
        SmallFs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Free bytes as root sees them (the reserved blocks included).
    fn avail(&self) -> u64 {
        let s = rustix::fs::statvfs(self.path()).expect("statvfs");
        s.f_bfree * s.f_frsize
    }

    /// Fills the filesystem (as root: the reserved blocks too) but for
    /// `leave` bytes.
    fn fill_but(&self, leave: u64) {
        use std::io::Write;
        let path = self.path().join("filler");
        let chunk = vec![0x5a_u8; MIB as usize];
        // Until a pass adds nothing: closing the file gives back what ext4
        // had set aside for it.
        loop {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open the filler");
            let mut added = 0;
            // Down to one block once a larger write fails: ext4 refuses a
            // write that would dip into its reserve, not a smaller one.
            let mut most = MIB;
            loop {
                let avail = self.avail();
                if avail <= leave {
                    break;
                }
                let n = (avail - leave).min(most) as usize;
                match f.write_all(&chunk[..n]).and_then(|()| f.sync_data()) {
                    Ok(()) => added += n,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n > 4096 => most = 4096,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
            if added == 0 {
                break;
            }
        }
        if leave == 0 {
            // Filled means a new one-byte file cannot be written either.
            let probe = self.path().join("probe");
            let r: std::io::Result<()> = std::fs::write(&probe, b"x").and_then(|()| {
                std::fs::File::open(&probe)?.sync_all()?;
                // Written after all: fill the rest.
                Err(std::io::Error::other("a one-byte file still fits"))
            });
            let _ = std::fs::remove_file(&probe);
            match r {
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {}
                other => panic!("{} is not full: {other:?}", self.path().display()),
            }
        }
    }

    fn unfill(&self) {
        std::fs::remove_file(self.path().join("filler")).expect("remove the filler");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let mnt = self.path();
        if !tool("umount", [mnt.as_os_str()]).success() {
            eprintln!("SmallFs: umount {} failed, detaching it", mnt.display());
            lazy_umount(&mnt);
        }
    }
}

impl CStore {
    /// Waits (up to 15 s) for the volume server's process to exit: it
    /// frees the layers of deleted volumes on a thread, stops 2 s after the
    /// last detach, and removes `server.json` first, before its last
    /// reclaim and the deletion of its spare head layers (which free
    /// space: a test that fills the store after that must wait for the
    /// process itself).
    fn wait_server_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Some(pid) = self
            .server_processes()
            .into_iter()
            .find(|p| process_alive(*p))
        {
            assert!(
                Instant::now() < deadline,
                "volume server {pid} still running 15 s after the last detach"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// This store's volume server processes (/proc, not `server.json`).
    fn server_processes(&self) -> Vec<u32> {
        volume_server_processes(&self.root)
    }

    /// A store on `fs`.
    fn new_on(fs: &SmallFs) -> Self {
        let store = Store::new_in(&fs.path());
        let root = store.path().canonicalize().expect("canonical store path");
        CStore { store, root }
    }
}

/// `error[CODE]: …` naming the full disk, and a hint.
fn assert_full_store_error(run: &Run, context: &str) {
    assert_coded_error(run, "FK", context);
    assert!(
        run.stderr.contains("No space left on device"),
        "{context}: the error should say the disk is full: {run}"
    );
    assert!(run.stderr.contains("hint: "), "{context}: no hint: {run}");
}

/// On a store whose filesystem is full, `run --rm`, the precreate hook,
/// `mount` (kernel and FUSE) and `container mount` fail with a coded error
/// and leave nothing mounted, created or recorded; once space is freed the
/// store works again.
#[test]
fn a_full_store_fails_cleanly_and_works_again_once_freed() {
    let _serial = serial();
    require_containers();
    let fx = fixtures();
    let fs = SmallFs::new(96);
    // Before the store: dropped after it, once its mounts are gone.
    let scratch = scratch_dir("fukastor-test-full-");
    let st = CStore::new_on(&fs);
    st.pull_named(&fx.oci("busybox"), "busybox");
    // The first run builds the ext4 template: not what is tested here.
    st.ok(["run", "--rm", "busybox", "--", "true"]);
    st.ok(["create", "busybox", "--name", "made-before"]);
    st.assert_nothing_left_but(&["made-before"], "before filling");
    st.wait_server_gone();
    fs.fill_but(0);

    let run = st.run(["run", "--rm", "busybox", "--", "true"]);
    assert_full_store_error(&run, "run --rm on a full store");
    st.assert_nothing_left_but(&["made-before"], "run --rm on a full store");

    let config = proposed_config(Some("busybox"), scratch.path());
    let run = hook(&st, "precreate", config.to_string().as_bytes(), &[]);
    assert_full_store_error(&run, "precreate on a full store");
    st.assert_nothing_left_but(&["made-before"], "precreate on a full store");

    let mp = scratch.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    for flag in ["--kernel", "--fuse"] {
        let run = st.run([
            OsStr::new("mount"),
            OsStr::new("busybox"),
            mp.as_os_str(),
            OsStr::new(flag),
        ]);
        assert_full_store_error(&run, &format!("mount {flag} on a full store"));
        // A FUSE server that failed goes with its mount: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while mount_at(&mp).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            mount_at(&mp).is_none(),
            "mount {flag} failed on a full store but left {:?} mounted",
            mount_at(&mp)
        );
    }

    let run = st.run([
        OsStr::new("container"),
        OsStr::new("mount"),
        OsStr::new("made-before"),
        mp.as_os_str(),
    ]);
    assert_full_store_error(&run, "container mount on a full store");
    assert!(
        mount_at(&mp).is_none(),
        "container mount left {mp:?} mounted"
    );
    st.assert_nothing_left_but(&["made-before"], "container mount on a full store");

    // The volume server cannot start on a full store (it writes
    // server.json): the command that started it says so at once, instead
    // of waiting a minute for an answer.
    let run = st.run(["volume", "attach", "ctr.made-before"]);
    assert_coded_error(&run, "FK", "volume attach on a full store");
    assert!(
        run.stderr.contains("the volume server exited"),
        "volume attach on a full store should report the server's exit: {run}"
    );
    st.assert_nothing_left_but(&["made-before"], "volume attach on a full store");

    fs.unfill();
    let run = st.ok(["run", "--rm", "busybox", "--", "echo", "works again"]);
    assert!(run.stdout_str().contains("works again"), "{run}");
    st.ok(["rm", "made-before"]);
    st.assert_nothing_left("after freeing space");
    st.assert_fsck_clean();
}

/// A container that fills the store: its processes see their buffered
/// writes succeed, the volume stops taking writes, and fukastor says so.
/// With `--rm` nothing is left and the space comes back; a kept container
/// reopens as of its last flush.
#[test]
fn a_container_that_fills_the_store_is_told_of_and_cleaned_up() {
    let _serial = serial();
    require_containers();
    let fx = fixtures();
    let fs = SmallFs::new(128);
    let st = CStore::new_on(&fs);
    st.pull_named(&fx.oci("busybox"), "busybox");
    st.ok(["run", "--rm", "busybox", "--", "true"]);
    st.wait_server_gone();
    fs.fill_but(24 * MIB);
    let before = fs.avail();

    let script = "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null; sync; echo wrote";
    let run = st.run(["run", "--rm", "busybox", "--", "sh", "-c", script]);
    // The container's own status: its writes returned success.
    assert!(run.success(), "{run}");
    assert!(run.stdout_str().contains("wrote"), "{run}");
    assert!(
        run.stderr.contains("stopped taking writes") && run.stderr.contains("No space left"),
        "run --rm must say that the container's writes were lost: {run}"
    );
    st.assert_nothing_left("a --rm container that filled the store");
    // The volume's layer files go with it (the server frees them on a thread).
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs.avail() + 4 * MIB < before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fs.avail() + 4 * MIB >= before,
        "space not given back: {} bytes free, {before} before the run",
        fs.avail()
    );

    let script = "echo kept > /before; sync; \
                  dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null; sync; echo wrote";
    let run = st.run(["run", "--name", "k", "busybox", "--", "sh", "-c", script]);
    assert!(run.success(), "{run}");
    assert!(
        run.stderr.contains("stopped after a failed write") && run.stderr.contains("No space left"),
        "run must say that the container's writes were lost: {run}"
    );
    assert_eq!(st.ps_row("k").expect("k is kept")["state"], "stopped");
    fs.unfill();
    let run = st.ok(["run", "--rm", "busybox", "--", "true"]);
    assert!(!run.stderr.contains("stopped"), "{run}");
    let mp = st.rootfs("k");
    st.ok(["container", "mount", "k"]);
    let kept = std::fs::read_to_string(mp.join("before"));
    st.ok(["container", "umount", "k"]);
    assert_eq!(
        kept.ok().as_deref(),
        Some("kept\n"),
        "a file flushed before the store filled up"
    );
    st.ok(["rm", "k"]);
    st.assert_nothing_left("after removing the kept container");

    // Through podman's hooks: precreate mounts, the "container" (this test)
    // fills the store, poststop (policy remove) removes it all the same,
    // and says that writes were lost.
    st.wait_server_gone();
    fs.fill_but(24 * MIB);
    let scratch = scratch_dir("fukastor-test-full-hook-");
    let config = proposed_config(Some("busybox"), scratch.path());
    let (out, name) = precreate(&st, &config);
    let big = st.rootfs(&name).join("big");
    let written = std::fs::File::create(&big).and_then(|mut f| {
        use std::io::Write;
        let chunk = vec![0xa5_u8; MIB as usize];
        for _ in 0..64 {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    });
    assert!(
        written.is_err(),
        "writing and syncing 64 MiB into a container on a store with 24 MiB free worked"
    );
    let state = serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "id": PODMAN_ID,
        "status": "stopped",
        "bundle": scratch.path().display().to_string(),
        "annotations": out["annotations"]
    });
    let run = hook(&st, "poststop", state.to_string().as_bytes(), &[]);
    run.assert_success();
    assert!(
        run.stderr.contains("stopped taking writes") && run.stderr.contains("No space left"),
        "poststop must say that the container's writes were lost: {run}"
    );
    st.assert_nothing_left("poststop of a container that filled the store");
    assert!(
        !st.container_dir(&name).exists(),
        "poststop left {}",
        st.container_dir(&name).display()
    );
    fs.unfill();
    st.assert_fsck_clean();
}

/// `chattr +i` on a directory for a test, undone when dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: &Path) -> Self {
        tool("chattr", [OsStr::new("+i"), dir.as_os_str()]).assert_success();
        Immutable(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = tool("chattr", [OsStr::new("-i"), self.0.as_os_str()]);
    }
}

/// `container mount NAME DIR` records DIR in the container's record after
/// mounting; when that write fails (here: the containers directory made
/// immutable, so nothing else fails), every mount it made is undone.
#[test]
fn a_container_mount_whose_record_cannot_be_written_leaves_nothing_mounted() {
    let _serial = serial();
    require_containers();
    require_tool("chattr", "e2fsprogs");
    let fx = fixtures();
    let scratch = scratch_dir("fukastor-test-record-");
    let st = CStore::new();
    st.pull_named(&fx.oci("busybox"), "busybox");
    st.ok(["create", "busybox", "--name", "c"]);
    let mp = scratch.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    // Its work directory made first (a mount makes it, and it stays), so
    // that only the record's write meets the immutable directory.
    st.ok(["container", "mount", "c"]);
    st.ok(["container", "umount", "c"]);
    assert!(st.container_dir("c").join("fs").is_dir());
    let frozen = Immutable::new(&st.path().join("fukastor/containers"));
    let run = st.run([
        OsStr::new("container"),
        OsStr::new("mount"),
        OsStr::new("c"),
        mp.as_os_str(),
    ]);
    assert_coded_error(&run, "FK", "container mount with an unwritable record");
    assert!(
        run.stderr.contains("Operation not permitted"),
        "the record's write should be what failed: {run}"
    );
    assert!(mount_at(&mp).is_none(), "{mp:?} left mounted: {run}");
    drop(frozen);
    st.assert_nothing_left_but(&["c"], "container mount with an unwritable record");
    // A mountpoint the overlay cannot go on (a file): FK0754, naming it,
    // and nothing left mounted either.
    let file = scratch.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let run = st.run([
        OsStr::new("container"),
        OsStr::new("mount"),
        OsStr::new("c"),
        file.as_os_str(),
    ]);
    assert_coded_error(&run, "FK0754", "container mount on a file");
    assert!(
        run.stderr
            .contains(&format!("mounting at {}", file.display())),
        "{run}"
    );
    st.assert_nothing_left_but(&["c"], "container mount on a file");
    st.ok([
        OsStr::new("container"),
        OsStr::new("mount"),
        OsStr::new("c"),
        mp.as_os_str(),
    ]);
    assert!(
        mp.join("bin").exists(),
        "mounted once the record can be written"
    );
    st.ok(["container", "umount", "c"]);
    st.ok(["rm", "c"]);
    st.assert_nothing_left("after rm");
}
