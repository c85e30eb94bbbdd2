//! The runtime glue: running containers under crun, and podman's hooks.
//!
//! - [`spec`]: the OCI runtime `config.json` built from the image config;
//! - [`hook`]: `fukastor hook precreate|poststop` for podman;
//! - this module: `run` and `start` — create (or reuse) a container, mount
//!   its root filesystem, write its bundle
//!   (`STORE/fukastor/containers/NAME/bundle/config.json`), run
//!   `crun run`, pass its exit status on, unmount (and with `--rm`, remove);
//! - `cgroup`: starts early a kernel wait that crun would otherwise pay.
//!
//! While crun runs, SIGINT, SIGTERM and SIGHUP sent to fukastor are passed to
//! crun (which passes them to the container) instead of ending fukastor, so
//! the container is always unmounted afterwards.

mod cgroup;
pub mod hook;
pub mod spec;

use std::path::{Path, PathBuf};
use std::process::Command;

use composefs::fsverity::FsVerityHashValue;

use crate::container::{Container, ContainerError, Containers};
use crate::error::Coded;
use crate::store::{LockMode, ObjectId, Store, StoreError};

pub use spec::ProcessOptions;

/// What can go wrong running containers.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// crun is not installed.
    #[error("crun is not installed (looked for it in PATH)")]
    NoCrun,
    /// crun failed before the container ran.
    #[error("crun failed: {0}")]
    Crun(String),
    /// Neither the image nor the command line gives a command.
    #[error("no command: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// A user or group that does not resolve.
    #[error("user {user:?}: {why}")]
    User {
        /// As given.
        user: String,
        /// Why it does not resolve.
        why: String,
    },
    /// A bad setting, or a config that cannot be built.
    #[error("container config: {0}")]
    Config(String),
    /// The container was never run (no bundle).
    #[error("container {0:?} has no bundle: it was created with `create`, not `run`")]
    NoBundle(String),
    /// Malformed hook input.
    #[error("hook input: {0}")]
    HookInput(String),
    /// The container runs (under another `run` or `start`).
    #[error("container {0:?} is running")]
    Running(String),
    /// The command names no file of the image.
    #[error("{}", missing_message(.cmd, .path))]
    NoSuchCommand {
        /// As given (or from the image config).
        cmd: String,
        /// The `PATH` a bare name was looked up in.
        path: String,
    },
    /// The command names files of the image, none of them a program.
    #[error("{}", not_runnable_message(.cmd, .file, .why))]
    NotRunnable {
        /// As given (or from the image config).
        cmd: String,
        /// The first file found, a path in the container.
        file: String,
        /// Why no one can run it.
        why: String,
    },
    /// The command is a script whose interpreter the image does not have.
    #[error("{}", no_interpreter_message(.cmd, .file, .interpreter))]
    NoInterpreter {
        /// As given (or from the image config).
        cmd: String,
        /// The script, a path in the container.
        file: String,
        /// What its `#!` line names.
        interpreter: String,
    },
    /// The container.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coded for RuntimeError {
    fn code(&self) -> &'static str {
        match self {
            RuntimeError::NoCrun => "FK0800",
            RuntimeError::Crun(_) => "FK0801",
            RuntimeError::NoCommand => "FK0802",
            RuntimeError::User { .. } => "FK0803",
            RuntimeError::Config(_) => "FK0804",
            RuntimeError::NoBundle(_) => "FK0805",
            RuntimeError::HookInput(_) => "FK0806",
            RuntimeError::Running(_) => "FK0807",
            RuntimeError::NoSuchCommand { .. } => "FK0808",
            RuntimeError::NotRunnable { .. } => "FK0809",
            RuntimeError::NoInterpreter { .. } => "FK0810",
            RuntimeError::Container(e) => e.code(),
            RuntimeError::Store(e) => e.code(),
        }
    }

    fn hint(&self) -> String {
        match self {
            RuntimeError::NoCrun => "install it: `apt-get install crun`".into(),
            RuntimeError::Crun(_) => {
                "see crun's message above; integration/lib/host-fixes.sh lists what this kind of host needs".into()
            }
            RuntimeError::NoCommand => "give one after `--`: `fukastor run IMAGE -- CMD...`".into(),
            RuntimeError::User { .. } => {
                "give a user the image knows, or numbers: `--user UID[:GID]`".into()
            }
            RuntimeError::Config(_) => "check -e KEY=VALUE and --workdir /ABSOLUTE/PATH".into(),
            RuntimeError::NoBundle(_) => {
                "mount it (`fukastor container mount`) and run what you need, or create it with `fukastor run`".into()
            }
            RuntimeError::HookInput(_) => {
                "hooks read the runtime config (precreate) or state (poststop) JSON on stdin, as podman passes them".into()
            }
            RuntimeError::Running(name) => format!(
                "wait for it to exit, or stop it: `crun --root {} kill fukastor-{name}`",
                crun_root().display()
            ),
            RuntimeError::NoSuchCommand { .. } => {
                "give a command the image has, after `--`: an absolute path, or a name in its PATH (set with `-e PATH=…`)".into()
            }
            RuntimeError::NotRunnable { .. } => {
                "give a program of the image after `--` (a regular file with an execute bit set)".into()
            }
            RuntimeError::NoInterpreter { interpreter, .. } => {
                if interpreter.ends_with('\r') {
                    "the script has DOS (CRLF) line ends, and the kernel keeps the CR in the interpreter's name: convert it to LF line ends".into()
                } else {
                    format!("fix the script's `#!` line, or add {interpreter} to the image")
                }
            }
            RuntimeError::Container(e) => e.hint(),
            RuntimeError::Store(e) => e.hint(),
        }
    }
}

/// [`RuntimeError::NoSuchCommand`]'s message.
fn missing_message(cmd: &str, path: &str) -> String {
    if cmd.contains('/') {
        format!("the container has no file {cmd:?} to run")
    } else {
        format!("no command {cmd:?} in the container's PATH ({path})")
    }
}

/// [`RuntimeError::NotRunnable`]'s message.
fn not_runnable_message(cmd: &str, file: &str, why: &str) -> String {
    if cmd.contains('/') {
        format!("the container's file {cmd:?} cannot be run: {why}")
    } else {
        format!("{cmd:?} is the container's {file}, which cannot be run: {why}")
    }
}

/// [`RuntimeError::NoInterpreter`]'s message.
fn no_interpreter_message(cmd: &str, file: &str, interpreter: &str) -> String {
    if cmd.contains('/') {
        format!(
            "the container's script {cmd:?} names an interpreter it does not have: {interpreter:?}"
        )
    } else {
        format!(
            "{cmd:?} is the container's script {file}, whose interpreter it does not have: {interpreter:?}"
        )
    }
}

/// Shorthand.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// `run` settings.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// The container's name (default: generated).
    pub name: Option<String>,
    /// Remove the container when it exits.
    pub rm: bool,
    /// Its writable layer's size.
    pub size: u64,
    /// The process.
    pub process: ProcessOptions,
}

impl RunOptions {
    /// Options for a container of `size` bytes.
    pub fn new(size: u64) -> RunOptions {
        RunOptions {
            size,
            ..Default::default()
        }
    }
}

fn bundle_dir(store_root: &Path, name: &str) -> PathBuf {
    Containers::new(store_root)
        .paths()
        .store
        .join("fukastor/containers")
        .join(name)
        .join("bundle")
}

/// `fukastor run`: returns the container's exit status.
pub fn run(store_root: &Path, image: &str, opts: &RunOptions) -> Result<i32> {
    let _span = tracing::debug_span!("run").entered();
    // Before the volume server is started: where no store was ever made,
    // none is made for an image that cannot be there.
    Store::require_for_image(store_root, image)?;
    let crun = which_crun()?;
    // crun's cgroup join would wait for an RCU grace period: start it now
    // (cgroup.rs).
    let warmer = cgroup::Warmer::start();
    let containers = Containers::new(store_root);
    // The container's mount will need the volume server: start it now, so
    // that it gets ready while the container is created.
    if let Err(e) = crate::volume::server::start(containers.paths()) {
        tracing::debug!("starting the volume server early: {e}");
    }
    let c = {
        let _s = tracing::debug_span!("create").entered();
        if opts.rm {
            containers.create_disposable(image, opts.name.as_deref(), opts.size)?
        } else {
            containers.create(image, opts.name.as_deref(), opts.size)?
        }
    };
    let result = run_created(store_root, &containers, &c, opts, &crun, &warmer);
    if opts.rm {
        let _s = tracing::debug_span!("remove").entered();
        match containers.discard(&c.name) {
            Ok(None) => {}
            // The processes saw their writes succeed (until a flush): say it.
            Ok(Some(why)) => warn_lost_writes(&c.name, &why),
            Err(e) => tracing::warn!("removing container {}: {e}", c.name),
        }
    }
    drop(warmer);
    result
}

fn run_created(
    store_root: &Path,
    containers: &Containers,
    c: &Container,
    opts: &RunOptions,
    crun: &Path,
    warmer: &cgroup::Warmer,
) -> Result<i32> {
    let name = c.name.as_str();
    // The config of the name the container was created from (two names
    // can be one image ID with different configs).
    let config = {
        let store = Store::open(store_root, LockMode::Shared)?;
        let id = ObjectId::from_hex(&c.image_id)
            .map_err(|_| StoreError::Damaged(format!("container {name}: bad image ID")))?;
        store.record(&id)?.config_for(Some(&c.image)).clone()
    };
    let rootfs = {
        let _s = tracing::debug_span!("mount").entered();
        if opts.rm {
            containers.mount_disposable(name)?
        } else {
            containers.mount(name, None)?
        }
    };
    let result = (|| {
        let bundle_span = tracing::debug_span!("bundle").entered();
        let image = spec::ImageProcess::from_config(&config);
        let spec = spec::build(name, &rootfs, &image, &opts.process)?;
        spec::check_command(&rootfs, &spec)?;
        let bundle = bundle_dir(store_root, name);
        std::fs::create_dir_all(&bundle).map_err(|e| StoreError::Io {
            context: format!("creating {}", bundle.display()),
            source: e,
        })?;
        let data =
            serde_json::to_vec_pretty(&spec).map_err(|e| RuntimeError::Config(e.to_string()))?;
        // A kept container's bundle must survive a crash (`start` runs it
        // again); a disposable one is gone with the container.
        let write = if opts.rm {
            crate::store::write_atomic_volatile
        } else {
            crate::store::write_atomic
        };
        write(&bundle.join("config.json"), &data).map_err(|e| StoreError::Io {
            context: "writing config.json".into(),
            source: e,
        })?;
        drop(bundle_span);
        let _s = tracing::debug_span!("crun").entered();
        crun_run(&bundle, name, crun, warmer)
    })();
    // A disposable container is unmounted by its removal (`discard`).
    if !opts.rm {
        let _s = tracing::debug_span!("umount").entered();
        if let Err(e) = containers.umount(name) {
            tracing::warn!("unmounting container {name}: {e}");
        }
    }
    result
}

/// `fukastor start`: runs an existing container again with the bundle its
/// `run` wrote; returns the container's exit status.
pub fn start(store_root: &Path, name: &str) -> Result<i32> {
    let crun = which_crun()?;
    let warmer = cgroup::Warmer::start();
    let containers = Containers::new(store_root);
    containers.get(name)?;
    refuse_running(name)?;
    let bundle = bundle_dir(store_root, name);
    if !bundle.join("config.json").is_file() {
        return Err(RuntimeError::NoBundle(name.to_string()));
    }
    let (rootfs, mounted_here) = containers.mount_noting(name)?;
    let default_rootfs = containers
        .paths()
        .store
        .join("fukastor/containers")
        .join(name)
        .join("rootfs");
    let result = if rootfs != default_rootfs {
        Err(RuntimeError::Config(format!(
            "container {name} is mounted at {}; `start` needs it at its own rootfs (unmount it first)",
            rootfs.display()
        )))
    } else {
        // The command may have gone since `run` (the container deleted
        // it): said as `run` says it, before crun.
        oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|e| RuntimeError::Config(format!("reading {name}'s bundle: {e}")))
            .and_then(|spec| spec::check_command(&rootfs, &spec))
            .and_then(|()| crun_run(&bundle, name, &crun, &warmer))
    };
    if mounted_here && let Err(e) = containers.umount(name) {
        tracing::warn!("unmounting container {name}: {e}");
    }
    drop(warmer);
    result
}

/// Says that container `name`'s volume stopped taking writes while it ran
/// (`why`): its processes saw their buffered writes succeed.
fn warn_lost_writes(name: &str, why: &str) {
    tracing::warn!(
        "container {name}: its volume stopped taking writes while it ran, so what it wrote \
         after that was lost ({why}); free space in the store's filesystem"
    );
}

/// Where crun is, from `PATH`.
pub fn which_crun() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("crun"))
        .find(|p| p.is_file())
        .ok_or(RuntimeError::NoCrun)
}

/// crun's ID for container `name`.
fn crun_id(name: &str) -> String {
    format!("fukastor-{name}")
}

/// The state directory fukastor gives crun (`crun --root`): `/run/crun` as
/// root, whatever `XDG_RUNTIME_DIR` says (crun itself would use
/// `$XDG_RUNTIME_DIR/crun` when it is set, root included, so a root login's
/// `/run/user/0` would hide a container from a shell without it); for other
/// users `$XDG_RUNTIME_DIR/crun`, as crun chooses.
pub fn crun_root() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty() && !rustix::process::geteuid().is_root())
        .map_or_else(
            || PathBuf::from("/run/crun"),
            |d| PathBuf::from(d).join("crun"),
        )
}

/// True when container `name` runs under crun (a `run` or `start`, maybe
/// from another session): crun's state in [`crun_root`] names a process that is alive and
/// started when the state says, as crun itself checks (a pid reused since
/// is another process; a state without a start time, which older crun
/// versions write, counts when its pid is alive). Reads one small file; no
/// crun process.
pub fn is_running(name: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Status {
        pid: i32,
        #[serde(rename = "process-start-time", default)]
        start: Option<u64>,
    }
    let status = crun_root().join(crun_id(name)).join("status");
    let Some(s) = std::fs::read(status)
        .ok()
        .and_then(|d| serde_json::from_slice::<Status>(&d).ok())
    else {
        return false;
    };
    match (process_start_time(s.pid), s.start) {
        (Some(now), Some(then)) => now == then,
        (alive, _) => alive.is_some(),
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// after boot.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    after_name.split(' ').nth(22 - 3)?.parse().ok()
}

/// Refuses container `name` while it runs.
pub fn refuse_running(name: &str) -> Result<()> {
    if is_running(name) {
        return Err(RuntimeError::Running(name.to_string()));
    }
    Ok(())
}

/// Runs `crun run` on `bundle` with this process's stdio (`crun`: the
/// program [`which_crun`] found); returns the container's exit status
/// (128 + N for a signal).
fn crun_run(bundle: &Path, name: &str, crun: &Path, warmer: &cgroup::Warmer) -> Result<i32> {
    let id = crun_id(name);
    // A container state left by a crash would make `run` refuse the ID
    // (asking crun costs ~100 ms). A running container's is not a leftover:
    // `delete --force` would kill it.
    refuse_running(name)?;
    let root = crun_root();
    let _ = root.join(&id).exists()
        && Command::new(crun)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
    warmer.crun_starts();
    let mut child = Command::new(crun)
        .arg("--root")
        .arg(&root)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(&id)
        .spawn()
        .map_err(|e| RuntimeError::Crun(format!("starting crun: {e}")))?;
    // Signals go to crun through a pidfd: once crun is reaped, its pid may
    // be reused, but the pidfd still names crun (and sending fails).
    // (Without pidfds, before Linux 5.3, by pid.)
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let pidfd =
        pid.and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| RuntimeError::Crun(format!("installing signal handlers: {e}")))?;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            let Some(s) = rustix::process::Signal::from_named_raw(sig) else {
                continue;
            };
            match (&pidfd, pid) {
                (Some(fd), _) => drop(rustix::process::pidfd_send_signal(fd, s)),
                (None, Some(p)) => drop(rustix::process::kill_process(p, s)),
                (None, None) => {}
            }
        }
    });
    let status = child.wait();
    // The forwarder stops at its next wakeup; waiting for that (a thread
    // switch on a busy machine, ~1 ms after crun's exit here) would only
    // delay the unmounts.
    handle.close();
    drop(forwarder);
    let status = status.map_err(|e| RuntimeError::Crun(format!("waiting for crun: {e}")))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}
