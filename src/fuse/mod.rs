//! Serving trees through FUSE: the path for unprivileged users, for images a
//! kernel mount cannot serve, and the one measured against the kernel.
//!
//! - [`inodes`]: the immutable inode table built from the image's tree;
//! - [`fs`]: the `fuser` filesystem (multithreaded, `clone_fd`, readdirplus,
//!   long TTLs, `FOPEN_KEEP_CACHE`, 1 MiB I/O, passthrough, zero-message
//!   opens);
//! - [`fds`]: the object descriptors reads use when opens cost no message;
//! - this module: running a server in the foreground ([`serve`]) and
//!   starting one that outlives the command ([`spawn`]).
//!
//! A server loads the tree, opens the objects directory, mounts, records the
//! mount in the store (with its pid), releases the store lock (so `gc` is
//! never blocked by a mount; `gc` keeps mounted images alive through the
//! tracking file instead), and serves until it is unmounted. SIGTERM, SIGINT
//! and SIGHUP make it unmount and exit. A server killed with SIGKILL leaves a
//! mount whose requests fail with ENOTCONN; `umount` detaches it.

pub mod disk;
pub mod fds;
pub mod fs;
pub mod inodes;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use composefs::fsverity::FsVerityHashValue;
use fuser::{Config, MountOption, SessionACL};
use rustix::fs::{Mode, OFlags};

use crate::mount::{MountError, now, track};
use crate::store::{ObjectId, Store, StoreError};

/// How to serve.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Ask the kernel for passthrough reads.
    pub passthrough: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

impl ServeOptions {
    /// Options with passthrough on or off and `threads` workers.
    pub fn new(passthrough: bool, threads: usize) -> Self {
        ServeOptions {
            passthrough,
            threads,
        }
    }
}

fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        n
    }
}

/// Serves image `id` at `mountpoint` until it is unmounted or a signal
/// arrives. Consumes the store handle to release its lock while serving.
pub fn serve(
    store: Store,
    id: &ObjectId,
    label: &str,
    mountpoint: &Path,
    opts: &ServeOptions,
) -> Result<(), MountError> {
    let shown = mountpoint.display().to_string();
    let canonical = std::fs::canonicalize(mountpoint)
        .map_err(|e| MountError::Mountpoint(shown.clone(), e.to_string()))?;
    if !canonical.is_dir() {
        return Err(MountError::Mountpoint(shown, "not a directory".into()));
    }
    // Held from the check until the mount is in place, as `mount_kernel`
    // does: of two mounts at once here, one is refused (FK0308).
    let mountpoint_lock = crate::mount::lock_mountpoint(&canonical)?;
    crate::mount::refuse_taken(store.root(), &canonical)?;
    crate::delaypoint("fuse-serve:checked");
    crate::raise_nofile();
    let tree = store.image_tree(id)?;
    let inodes = inodes::Inodes::new(&tree);
    drop(tree);
    let source = store.objects_of(id)?;
    let objects: OwnedFd = rustix::fs::open(
        source.dir(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StoreError::Damaged(format!("objects directory: {e}")))?;
    let root = rustix::process::geteuid().is_root();
    let chain = source.chain().cloned();
    let passthrough = opts.passthrough && root && chain.is_none();
    let counters = Arc::new(fs::Counters::default());
    let filesystem =
        fs::ImageFs::new(inodes, objects, passthrough, counters.clone()).with_filter(source);
    if opts.passthrough && !root {
        tracing::warn!("passthrough needs root; serving reads from the server");
    }
    if opts.passthrough && chain.is_some() {
        tracing::warn!("the image is filtered: the server decodes every object, no passthrough");
    }
    let store_root = store.root().to_path_buf();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("fukastor:{label}@{}", store_root.display())),
        MountOption::Subtype("fukastor".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if root {
        config
            .mount_options
            .extend([MountOption::Dev, MountOption::Suid]);
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(threads(opts.threads));
    config.clone_fd = true;

    let mut session = fuser::Session::new(filesystem, &canonical, &config).map_err(|e| {
        let dev = rustix::fs::access("/dev/fuse", rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK);
        if !root && dev.is_err() {
            MountError::Server(format!(
                "mounting at {}: {e}; /dev/fuse is not readable and writable by this user (Debian's udev makes it mode 0666)",
                canonical.display()
            ))
        } else {
            MountError::Server(format!("mounting at {}: {e}", canonical.display()))
        }
    })?;
    if root {
        raise_readahead(&canonical);
    }
    let mode = if passthrough {
        "fuse-passthrough"
    } else {
        "fuse"
    };
    // Started by `mount --fuse` ([`spawn`]): this server has the mount, so
    // its log (the spawning command's own) becomes the mountpoint's, here
    // rather than in that command, which may be killed before it sees the
    // mount. Before the tracking file: whoever finds the mount finds its log.
    if let Some(own) = std::env::var_os(OWN_LOG_ENV) {
        let log = log_path(&store_root, &canonical);
        if let Err(e) = std::fs::rename(&own, &log) {
            tracing::warn!("naming the server log {}: {e}", log.display());
        }
    }
    track::record(
        &store_root,
        &track::Tracked {
            mountpoint: canonical.clone(),
            image: label.to_string(),
            id: id.to_hex(),
            mode: mode.into(),
            pid: Some(std::process::id()),
            started: now(),
        },
    )?;
    drop(store);
    drop(mountpoint_lock);

    // Signals: unmount, which ends `run`.
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| MountError::Server(format!("installing signal handlers: {e}")))?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!("signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!("unmount: {e}");
            }
        }
    });
    // `run` consumes the session: the filesystem, and with it every kept
    // object descriptor, is gone by the time the tracking file is read.
    let result = session.run();
    handle.close();
    crate::delaypoint("fuse:exiting");
    track::forget_own(&store_root, &canonical, std::process::id());
    tracing::info!(
        "served {} reads ({} bytes), {} opens ({} passthrough), {} lookups, {} flushes",
        counters.reads.load(std::sync::atomic::Ordering::Relaxed),
        counters
            .read_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        counters.opens.load(std::sync::atomic::Ordering::Relaxed),
        counters
            .passthrough_opens
            .load(std::sync::atomic::Ordering::Relaxed),
        counters.lookups.load(std::sync::atomic::Ordering::Relaxed),
        counters.flushes.load(std::sync::atomic::Ordering::Relaxed),
    );
    result.map_err(|e| MountError::Server(e.to_string()))
}

/// Starts `fukastor fuse-serve` in its own process group and returns once
/// the mount is usable (its tracking file names the new server) or the
/// server failed (its log is in the error).
pub fn spawn(
    store_root: &Path,
    image: &str,
    mountpoint: &Path,
    opts: &ServeOptions,
) -> Result<u32, MountError> {
    let shown = mountpoint.display().to_string();
    let canonical = std::fs::canonicalize(mountpoint)
        .map_err(|e| MountError::Mountpoint(shown.clone(), e.to_string()))?;
    if !canonical.is_dir() {
        return Err(MountError::Mountpoint(shown, "not a directory".into()));
    }
    crate::mount::refuse_taken(store_root, &canonical)?;
    let exe = std::env::current_exe()
        .map_err(|e| MountError::Server(format!("finding this program: {e}")))?;
    // The server writes to a log of this command's own, which it names
    // the mountpoint's log once it has the mount ([`serve`]; so also when
    // this command is killed before it sees the mount): two mounts at once
    // on one mountpoint (both pass the check above; one server wins the
    // mountpoint's lock) never truncate each other's log, and the loser's
    // error is read from its own.
    let log_path = log_path(store_root, &canonical);
    let own_log = log_path.with_extension(format!("log.{}", std::process::id()));
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
            context: "creating fukastor/mounts".into(),
            source: e,
        })?;
    }
    // A first line written here gives the log its first block, so that the
    // server's error still fits in it when the store's filesystem is full
    // (and a full store is reported here, before any server starts).
    let log = std::fs::File::create(&own_log)
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "{LOG_HEADER}{image} at {}", canonical.display())?;
            Ok(f)
        })
        .map_err(|e| StoreError::Io {
            context: "creating the server log".into(),
            source: e,
        })?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(store_root)
        .arg("fuse-serve")
        .arg(image)
        .arg(&canonical);
    cmd.arg("--threads").arg(opts.threads.to_string());
    if opts.passthrough {
        cmd.arg("--passthrough");
    }
    cmd.env(OWN_LOG_ENV, &own_log);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| MountError::Server(format!("starting the server: {e}")))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if track::read(store_root, &canonical).is_some_and(|t| t.pid == Some(pid)) {
            // Its log is the mountpoint's already (the server renamed it).
            // Reap the server when it exits, without blocking this command.
            std::thread::spawn(move || child.wait());
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Its own log, or the mountpoint's if it had the mount and
            // renamed it before it failed.
            let text = std::fs::read_to_string(&own_log)
                .or_else(|_| std::fs::read_to_string(&log_path))
                .unwrap_or_default();
            let _ = std::fs::remove_file(&own_log);
            let last = crate::error::last_words(&text).unwrap_or("no output");
            return Err(MountError::Server(format!("it exited ({status}): {last}")));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = std::fs::remove_file(&own_log);
            return Err(MountError::Server(
                "it did not mount within 60 seconds".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The variable through which [`spawn`] tells its server the path of the
/// log it writes to, which the server names the mountpoint's log once it
/// has the mount.
const OWN_LOG_ENV: &str = "FUKASTOR_FUSE_SPAWN_LOG";

/// How [`spawn`] starts a server's log, before the server writes to it
/// (a `# ` line, which [`crate::error::last_words`] passes over).
const LOG_HEADER: &str = "# fukastor fuse-serve: ";

/// Where `fukastor mounts` finds a server's log.
pub fn log_path(store_root: &Path, mountpoint: &Path) -> PathBuf {
    track::path_for(store_root, mountpoint).with_extension("log")
}

/// A FUSE mount's readahead starts at 128 KiB whatever `max_readahead` was
/// negotiated; raise it to the 1 MiB requests the server takes, so a cold
/// sequential read is not cut into 128 KiB requests. Found through the mount
/// table (`maj:min` of the mount), not `stat`, which would wait on this very
/// server before it serves. Best effort: root only, failures are logged.
fn raise_readahead(mountpoint: &Path) {
    // The last mount at that path is the one just made.
    let Some(m) = crate::mount::table()
        .into_iter()
        .rfind(|m| m.mountpoint == mountpoint)
    else {
        tracing::info!(
            "could not raise readahead: {} is not in the mount table",
            mountpoint.display()
        );
        return;
    };
    let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.device);
    if let Err(e) = std::fs::write(&path, format!("{}", fs::MAX_IO / 1024)) {
        tracing::info!("could not raise readahead ({path}: {e})");
    }
}
