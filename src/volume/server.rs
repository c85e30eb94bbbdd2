//! The volume server: the one process that owns a store's volume pool while
//! volumes are attached, exports them as files over FUSE and binds loop
//! devices to them.
//!
//! # Who owns the pool
//!
//! A pool must be used by one process at a time (see the module docs of
//! [`crate::volume`]). The owner holds `fukastor/vserve/lock` (an exclusive
//! `flock`):
//! - while volumes are attached, the server holds it for its whole life and
//!   every command is a request on its control socket
//!   (`fukastor/vserve/control.sock`, one JSON line each way);
//! - otherwise a command takes the lock itself and runs the same request
//!   in-process ([`call`] decides).
//!
//! `volume attach` starts a server when none runs (`fukastor volume-serve`,
//! in its own process group, log in `fukastor/vserve/server.log`). The server
//! exits once nothing has been attached for [`IDLE`].
//!
//! # What a crash leaves
//!
//! A server killed with SIGKILL leaves its FUSE mount dead (requests fail
//! with ENOTCONN), loop devices bound to files in it (their I/O fails), its
//! socket file and `server.json`. Volumes are as of their last flush (the
//! volume format's replay rule). The next server, or `volume detach`, unbinds
//! those loop devices and detaches the dead mount; `volume attach` then
//! serves the volume again. Filesystems mounted on the dead devices must be
//! unmounted by their user (they saw I/O errors).
//!
//! # Deadlocks
//!
//! The server serves the writeback of filesystems on its own loop devices,
//! so it marks itself `PR_SET_IO_FLUSHER` (its allocations do not recurse
//! into filesystem reclaim), serves requests with preallocated per-thread
//! buffers, and frees snapshot and volume space ([`crate::volume::Pool::reclaim`])
//! on a separate thread after answering, outside every lock writeback needs.
//!
//! # Compaction
//!
//! Compaction ([`crate::volume::Volume::compact`]) runs on a background
//! thread, never on the control thread or a FUSE thread: for a volume just
//! detached, for attached volumes checked every [`COMPACT_CHECK`], when
//! [`worth_compacting`] says so, and on request ([`Request::Compact`], whose
//! answer comes when it is done). A volume being compacted stays open; an
//! attach or a snapshot uses it as it is, and a removal or rollback cancels
//! the compaction and waits for it to let go. A server stops only once its
//! compactions have ended (a job whose thread panics ends too: a guard
//! removes it and answers its waiters with an error).
//!
//! The same job runs a head sealing ([`crate::volume::Volume::seal_head`])
//! instead, when compaction is not worth it but [`worth_sealing`] says the
//! head is (opening a volume replays its head, not a sealed layer): at
//! detach, and every [`COMPACT_CHECK`] for attached volumes. A compaction
//! asked for meanwhile follows it in the same job, and a sealing asked for
//! again (a detach during a check's sealing) is judged again when it ends;
//! a removal or rollback waits for a sealing under way to end (it is
//! short: one metadata write, an index file, and the spare head made
//! again, which both jobs do before they end).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    CompactReport, Pool, Result, Volume, VolumeError, VolumeOptions, VolumeStats, loopdev,
};
use crate::error::Coded;
use crate::fuse::disk::DiskFs;

/// How long a server with nothing attached waits before it exits.
pub const IDLE: Duration = Duration::from_secs(2);

/// How long a command waits for the pool's owner (a server starting or
/// stopping, another command).
const WAIT: Duration = Duration::from_secs(60);

/// The snapshot of a template volume that containers are cloned from.
pub const TEMPLATE_SNAPSHOT: &str = "formatted";

/// How often attached volumes are checked for compaction.
pub const COMPACT_CHECK: Duration = Duration::from_secs(30);

/// The least garbage worth a compaction.
const COMPACT_MIN_GARBAGE: u64 = 64 << 20;

/// Whether a volume's garbage is worth compacting: more than 64 MiB, and
/// more than half of what the layers compaction may rewrite take (so that
/// compaction copies no more live data than it frees).
pub fn worth_compacting(s: &VolumeStats) -> bool {
    s.garbage_bytes > COMPACT_MIN_GARBAGE && s.garbage_bytes > s.own_bytes / 2
}

/// The least head worth sealing by itself.
const SEAL_MIN_HEAD: u64 = 16 << 20;

/// Whether a volume's head is worth sealing by itself
/// ([`crate::volume::Volume::seal_head`]): it holds at least 16 MiB, and at
/// least a sixteenth of what the sealed layers of the volume's stack hold
/// (its own and those it shares with snapshots, other volumes or a
/// template). Opening a volume replays its head (1 GiB of writes: 0.3 s
/// with the layer in the page cache, 0.7 s from disk; docs/benchmarks.md,
/// *Sealing a large head*) but reads only the index of a sealed layer. The
/// sixteenth bounds the layers that sealing adds: each one grows the
/// sealed bytes by at least 1/16, so at most 12 per doubling of what the
/// stack holds, not one per 16 MiB written.
pub fn worth_sealing(s: &VolumeStats) -> bool {
    let sealed = s.layer_bytes.saturating_sub(s.head_bytes);
    s.head_bytes >= SEAL_MIN_HEAD && s.head_bytes >= sealed / 16
}

/// Where a store keeps its pool and server files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The store.
    pub store: PathBuf,
    /// `fukastor/pool`.
    pub pool: PathBuf,
    /// `fukastor/vserve`.
    pub dir: PathBuf,
    /// `fukastor/vserve/mnt`: the FUSE mount holding attached volumes.
    pub mnt: PathBuf,
}

impl Paths {
    /// The paths of the store at `store`.
    pub fn new(store: &Path) -> Paths {
        let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
        let dir = store.join("fukastor/vserve");
        Paths {
            store: store.clone(),
            pool: store.join("fukastor/pool"),
            mnt: dir.join("mnt"),
            dir,
        }
    }

    fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The server's record (`{"pid": …, "mountpoint": …}`).
    pub fn record(&self) -> PathBuf {
        self.dir.join("server.json")
    }

    /// The server's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

/// A request to the pool's owner. A field this build does not know is
/// refused, not ignored: a request of a later build that needs it gets "a
/// malformed request" (which that build's command reports as FK0723)
/// instead of being carried out without it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// `volume create`.
    Create {
        /// Name.
        name: String,
        /// Size in bytes (default: the base's).
        size: Option<u64>,
        /// Base file.
        base: Option<PathBuf>,
        /// The filter chain ([`crate::filter::ChainSpec`] JSON), its scripts
        /// already in the pool's filter directory (the client saves them
        /// there: [`crate::filter::save_scripts`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filters: Option<String>,
    },
    /// `volume ls`. (A struct variant, though empty: serde denies unknown
    /// fields only to those.)
    List {},
    /// `volume rm`.
    Remove {
        /// Name.
        name: String,
    },
    /// `volume attach`.
    Attach {
        /// Name.
        name: String,
    },
    /// `volume detach`.
    Detach {
        /// Name.
        name: String,
    },
    /// Detach volume `name` if it is attached, without flushing it, and
    /// delete it: `run --rm`'s end, where a detach's flush would write
    /// what is deleted right after.
    Discard {
        /// Name.
        name: String,
    },
    /// `snapshot create`.
    Snapshot {
        /// Volume.
        volume: String,
        /// Snapshot name.
        name: String,
        /// Freeze the filesystem mounted on the volume around it.
        atomic: bool,
    },
    /// `snapshot list`.
    Snapshots {
        /// Volume.
        volume: String,
    },
    /// `snapshot rollback`.
    Rollback {
        /// Volume.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// `snapshot rm`.
    DeleteSnapshot {
        /// Volume.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// A new volume from a snapshot.
    Clone {
        /// Source volume.
        volume: String,
        /// Its snapshot.
        snapshot: String,
        /// The new volume.
        new: String,
        /// Ephemeral ([`Pool::clone_ephemeral`]): a disposable container's.
        #[serde(default)]
        ephemeral: bool,
    },
    /// Make sure template volume `name` (an empty ext4 filesystem of `size`
    /// bytes with directories `upper` and `work`, snapshot
    /// [`TEMPLATE_SNAPSHOT`]) exists.
    Template {
        /// Name.
        name: String,
        /// Size in bytes.
        size: u64,
    },
    /// `volume compact`: compact the volume's own layers, attached or not
    /// (answered with [`Response::Compacted`] once done; a server runs it
    /// on a background thread).
    Compact {
        /// Name.
        name: String,
    },
}

impl Request {
    fn needs_server(&self) -> bool {
        matches!(self, Request::Attach { .. })
    }
}

/// One volume, as `volume ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeEntry {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of layer files its stack and snapshots use (shared layers
    /// counted in every volume using them).
    pub used: u64,
    /// Snapshot names, oldest first.
    pub snapshots: Vec<String>,
    /// The loop device, when attached.
    pub device: Option<String>,
    /// The base file, if any.
    pub base: Option<PathBuf>,
    /// Its filters' names, in encode order (empty: not filtered).
    #[serde(default)]
    pub filters: Vec<String>,
    /// A disposable container's (`run --rm`): its metadata is never synced
    /// and is not read after a reboot (docs/volume-format.md).
    #[serde(default)]
    pub ephemeral: bool,
}

/// One snapshot, as `snapshot list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Name.
    pub name: String,
    /// Unix seconds.
    pub created: u64,
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Response {
    /// Done.
    Ok,
    /// Done; the loop device.
    Device {
        /// `/dev/loopN`.
        device: String,
    },
    /// `volume ls`.
    Volumes {
        /// Every volume.
        volumes: Vec<VolumeEntry>,
    },
    /// `snapshot list`.
    Snapshots {
        /// Oldest first.
        snapshots: Vec<SnapshotEntry>,
    },
    /// Failed.
    Error {
        /// The code.
        code: String,
        /// What went wrong.
        message: String,
        /// What to do.
        hint: String,
    },
    /// The server is stopping: ask again.
    Retry,
    /// `Discard` done; `lost` says why the volume had stopped taking
    /// writes (its writes since then were lost), if it had.
    Discarded {
        /// The failure, as `Volume::failure` gives it.
        lost: Option<String>,
    },
    /// `volume compact`: what compaction did.
    Compacted {
        /// The volume.
        volume: String,
        /// The layers replaced, bottom to top; empty when there was no
        /// garbage to free.
        replaced: Vec<u64>,
        /// The layer that replaced them.
        layer: Option<u64>,
        /// Bytes of the replaced layers (freed by the reclaim that follows).
        bytes_before: u64,
        /// Bytes of the new layer.
        bytes_after: u64,
        /// The volume's garbage bytes before.
        garbage_before: u64,
        /// And after.
        garbage_after: u64,
    },
}

fn compacted(volume: &str, r: &CompactReport) -> Response {
    Response::Compacted {
        volume: volume.to_string(),
        replaced: r.replaced.clone(),
        layer: r.layer,
        bytes_before: r.bytes_before,
        bytes_after: r.bytes_after,
        garbage_before: r.garbage_before,
        garbage_after: r.garbage_after,
    }
}

/// Sends `req` to the pool's owner: the running server, or this process
/// (under the pool lock) when none runs. Starts a server for requests that
/// need one.
pub fn call(paths: &Paths, req: &Request) -> Result<Response> {
    let deadline = Instant::now() + WAIT;
    // The server this call started, while it has not answered.
    let mut spawned: Option<Spawned> = None;
    let mut spawns = 0;
    loop {
        match connect(paths) {
            Ok(stream) => {
                // Only when an answer looks like another build's: the
                // server's pid, and whether it runs another binary than
                // this one (if not, it is a bug here, said as the server
                // said it).
                let other_server = |what, detail| {
                    let pid = peer_pid(&stream);
                    (!pid.is_some_and(same_executable)).then(|| VolumeError::OtherServer {
                        pid,
                        what,
                        detail,
                        replaced: pid.is_some_and(executable_replaced),
                    })
                };
                match exchange(&stream, req) {
                    Ok(Response::Retry) => {}
                    Ok(Response::Error {
                        code,
                        message,
                        hint,
                    }) => {
                        // What a server of another build says of a request
                        // it does not know (`handle`).
                        let other = (code == "FK0714" && is_malformed_request(&message))
                            .then(|| {
                                other_server(
                                    "did not understand this command's request",
                                    message.clone(),
                                )
                            })
                            .flatten();
                        return Err(other.unwrap_or(VolumeError::Remote {
                            code,
                            message,
                            hint,
                        }));
                    }
                    Ok(r) => return Ok(r),
                    // An answer that is not one: asking again would get
                    // the same (for a minute, `WAIT`).
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return Err(other_server(
                            "gave an answer this command cannot read",
                            e.to_string(),
                        )
                        .unwrap_or_else(|| VolumeError::Server(e.to_string())));
                    }
                    Err(e) => tracing::debug!("server connection: {e}"),
                }
            }
            Err(e) => {
                tracing::debug!("no server: {e}");
                if req.needs_server() {
                    match spawned.as_mut().and_then(Spawned::exited) {
                        _ if spawned.is_none() && spawns < 3 => {
                            spawned = Some(Spawned::start(paths)?);
                            spawns += 1;
                        }
                        // Still starting, or (after three starts) waiting
                        // for the process that holds the pool.
                        None => {}
                        Some(status) => {
                            let s = spawned.take();
                            // It found another server (stopped since), or
                            // another process holds the pool: wait for
                            // that one, starting ours again (three times
                            // in all). Otherwise it failed on its own.
                            let pool_held = try_lock(paths)?.is_none();
                            if !status.success() && !pool_held {
                                let log = s.map(|s| s.log_tail()).unwrap_or_default();
                                return Err(VolumeError::Server(format!(
                                    "the volume server exited ({status}) before answering: {log}"
                                )));
                            }
                        }
                    }
                } else if let Some(lock) = try_lock(paths)? {
                    let ctx = Ctx::local(paths)?;
                    let r = ctx.execute_request(req);
                    drop(lock);
                    return r;
                }
            }
        }
        if Instant::now() > deadline {
            return Err(VolumeError::Server(format!(
                "no answer from the volume server within {} s",
                WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Connects to the control socket. Long store paths go through
/// `/proc/self/fd` (a socket path has at most 107 bytes).
fn connect(paths: &Paths) -> std::io::Result<UnixStream> {
    let sock = paths.socket();
    if sock.as_os_str().len() < 100 {
        return UnixStream::connect(&sock);
    }
    let dir = std::fs::File::open(&paths.dir)?;
    UnixStream::connect(format!("/proc/self/fd/{}/control.sock", dir.as_raw_fd()))
}

fn bind(paths: &Paths) -> std::io::Result<UnixListener> {
    let sock = paths.socket();
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if sock.as_os_str().len() < 100 {
        return UnixListener::bind(&sock);
    }
    let dir = std::fs::File::open(&paths.dir)?;
    UnixListener::bind(format!("/proc/self/fd/{}/control.sock", dir.as_raw_fd()))
}

fn exchange(stream: &UnixStream, req: &Request) -> std::io::Result<Response> {
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    (&*stream).write_all(&line)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    BufReader::new(stream).read_until(b'\n', &mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection without answering",
        ));
    }
    // A line cut off (the server died while writing it) is asked again; a
    // whole line that is not an answer is not (`InvalidData`, below).
    if !answer.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server's answer was cut off",
        ));
    }
    serde_json::from_slice(&answer).map_err(|e| {
        let shown: String = String::from_utf8_lossy(&answer)
            .trim_end()
            .chars()
            .take(200)
            .collect();
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}: {shown:?}"))
    })
}

/// The pid of the process at the other end of `stream` (`SO_PEERCRED`);
/// `None` when it is not visible from this process's pid namespace (0).
fn peer_pid(stream: &UnixStream) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is the size
    // of `cred`, as SO_PEERCRED requires; the kernel writes at most `len`
    // bytes. (rustix's `socket_peercred` would make a zero pid, which the
    // kernel gives for a peer in another pid namespace, into a `Pid`.)
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// Whether process `pid` runs the same executable file as this one (the
/// same inode, deleted or not).
fn same_executable(pid: i32) -> bool {
    #[cfg(test)]
    if tests::PRETEND_OTHER_BUILD.with(std::cell::Cell::get) {
        return false;
    }
    use std::os::unix::fs::MetadataExt;
    let id = |p: String| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let theirs = id(format!("/proc/{pid}/exe"));
    theirs.is_some() && theirs == id("/proc/self/exe".to_string())
}

/// What the volume server says of a request it cannot parse (after
/// `volume server: `, [`VolumeError::Server`]'s prefix): wire text, which
/// servers of earlier builds send too, so a command can tell that it talks
/// to another build.
const MALFORMED_REQUEST: &str = "a malformed request";

/// Whether `message`, a server's error, is [`MALFORMED_REQUEST`]'s.
fn is_malformed_request(message: &str) -> bool {
    message
        .strip_prefix("volume server: ")
        .is_some_and(|m| m.starts_with(MALFORMED_REQUEST))
}

/// Whether process `pid`'s executable has been deleted since it started
/// (an upgrade replaced it): `/proc/PID/exe` then ends in ` (deleted)`.
fn executable_replaced(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|p| p.to_string_lossy().ends_with(" (deleted)"))
}

/// Takes the pool lock without waiting: `None` when another process holds it.
fn try_lock(paths: &Paths) -> Result<Option<OwnedFd>> {
    std::fs::create_dir_all(&paths.dir)
        .map_err(super::io_err(format!("creating {}", paths.dir.display())))?;
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock())
        .map_err(super::io_err("opening the pool lock"))?
        .into();
    match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(VolumeError::Io {
            context: "locking the pool".into(),
            source: e.into(),
        }),
    }
}

/// Starts the server in the background unless one answers, for a command
/// that is about to attach a volume (`run`): the server then starts while
/// the command does its other work, and that work's requests (a clone)
/// are served by it instead of opening the pool in the command.
pub fn start(paths: &Paths) -> Result<()> {
    if connect(paths).is_ok() {
        return Ok(());
    }
    spawn(paths, true)
}

/// A volume server [`call`] started: reaped on a thread when dropped.
struct Spawned {
    child: Option<std::process::Child>,
    log: PathBuf,
    /// Where its output starts in the log (shared by every server).
    log_from: u64,
}

impl Spawned {
    fn start(paths: &Paths) -> Result<Spawned> {
        let log = paths.log();
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len());
        Ok(Spawned {
            child: Some(spawn_child(paths)?),
            log,
            log_from,
        })
    }

    /// Its exit status, once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Its last error line (or last line) in the log.
    fn log_tail(&self) -> String {
        use std::io::{Read, Seek};
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.seek(std::io::SeekFrom::Start(self.log_from));
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
        crate::error::last_words(&text).map_or_else(
            || format!("nothing in its log ({})", self.log.display()),
            str::to_string,
        )
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Starts `fukastor volume-serve` for the store in its own process group.
/// With `reap`, a thread waits for it; without, it is left to this
/// process's exit (it is re-parented then): for a command that ends right
/// away, whose exit would otherwise wait for that thread too (up to 1.5 ms
/// was traced after a rollback).
fn spawn(paths: &Paths, reap: bool) -> Result<()> {
    let mut child = spawn_child(paths)?;
    if reap {
        // Reap it when it exits, without blocking this command.
        std::thread::spawn(move || child.wait());
    }
    Ok(())
}

fn spawn_child(paths: &Paths) -> Result<std::process::Child> {
    std::fs::create_dir_all(&paths.dir)
        .map_err(super::io_err(format!("creating {}", paths.dir.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| VolumeError::Server(format!("finding this program: {e}")))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log())
        .map_err(super::io_err("opening the server log"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store").arg(&paths.store).arg("volume-serve");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
        .map_err(|e| VolumeError::Server(format!("starting the volume server: {e}")))
}

/// What the pool's owner works with.
struct Ctx {
    paths: Paths,
    pool: Pool,
    /// The export, in a server.
    served: Option<Served>,
}

struct Served {
    disks: DiskFs,
    devices: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// The FUSE session: mounted by the first attach, unmounted when the
    /// server stops (mounting it for each container cost a mount, two
    /// threads and an unmount per `run`).
    session: std::sync::Mutex<Option<fuser::BackgroundSession>>,
    /// Compactions running on background threads, by volume.
    compactions: Arc<std::sync::Mutex<BTreeMap<String, CompactJob>>>,
    /// The pool's reclaims, coalesced.
    reclaims: Arc<Coalesced>,
}

/// The longest a coalesced reclaim waits after the one before.
const MAX_RECLAIM_PAUSE: Duration = Duration::from_secs(2);

/// A job run on a background thread, with requests coalesced: after each
/// run the thread stays for ten times as long as the run took (at most
/// [`MAX_RECLAIM_PAUSE`]), and any number of requests made meanwhile (or
/// during the run) make it run exactly once more after that pause. For the
/// pool's reclaim, which reads every volume's metadata: each removal and
/// each `run --rm` asks for one, and with 300 stopped containers in the
/// store one reclaim per `run --rm` cost the server ~5 ms of CPU per run
/// (docs/benchmarks.md, *Reclaims coalesced*). Coalesced, reclaims of
/// up to 0.2 s take at most a tenth of a CPU, however often volumes go,
/// and what they free is freed a little later. [`Coalesced::close`] ends
/// it before the server lets the pool go.
#[derive(Debug, Default)]
struct Coalesced {
    state: std::sync::Mutex<CoalescedState>,
    /// Wakes a pause (on close) and [`Coalesced::close`] (on the end).
    wake: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct CoalescedState {
    /// A thread runs the job or pauses after it.
    running: bool,
    /// Asked for again meanwhile.
    again: bool,
    /// No more runs.
    closed: bool,
}

impl Coalesced {
    /// Runs `job` on a thread now, or once more after the run in progress
    /// and its pause; nothing once closed.
    fn request(self: &Arc<Self>, job: impl Fn() + Send + 'static) {
        {
            let mut st = super::lock(&self.state);
            if st.closed {
                return;
            }
            if st.running {
                st.again = true;
                return;
            }
            st.running = true;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            loop {
                let start = Instant::now();
                // A panic must not leave `running` set: no job would run again.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(&job)).is_err() {
                    tracing::warn!("a background reclaim panicked");
                }
                let pause = (start.elapsed() * 10).min(MAX_RECLAIM_PAUSE);
                let mut st = me
                    .wake
                    .wait_timeout_while(super::lock(&me.state), pause, |st| !st.closed)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if st.closed || !st.again {
                    st.running = false;
                    me.wake.notify_all();
                    return;
                }
                st.again = false;
            }
        });
        if let Err(e) = spawned {
            // No thread (the system's limit): the next request tries again,
            // and `close` must not wait for a run that never starts.
            tracing::warn!("starting a reclaim thread: {e}");
            let mut st = super::lock(&self.state);
            st.running = false;
            self.wake.notify_all();
        }
    }

    /// Ends it: no run starts after this, a pause ends at once, and a run
    /// in progress is waited for. Returns whether a request was left
    /// without its run (the caller runs the job itself if it must).
    fn close(&self) -> bool {
        let mut st = super::lock(&self.state);
        st.closed = true;
        self.wake.notify_all();
        let mut st = self
            .wake
            .wait_while(st, |st| st.running)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut st.again)
    }
}

/// Makes the spare head layer that sealing a head (by itself or in a
/// compaction) may have taken: on the job's thread, before the job ends,
/// so that a stopping server, which waits for its jobs, deletes it.
fn remake_spare(pool: &Pool) {
    if let Err(e) = pool.make_spares() {
        tracing::warn!("making a spare head layer: {e}");
    }
}

/// Ends a background job whose thread panicked (a bug), or never started,
/// before it ended the job itself: removes its entry, so that nothing
/// waits for it forever (`stop_compaction`, and with it a removal, a
/// rollback or the server's stop), and answers its waiters with an error.
/// Disarmed by the thread when it removes the entry itself.
struct JobEnd {
    jobs: Arc<std::sync::Mutex<BTreeMap<String, CompactJob>>>,
    name: String,
    armed: bool,
}

impl Drop for JobEnd {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The entry's volume is let go under the lock, as the thread does.
        let waiters = {
            let mut jobs = super::lock(&self.jobs);
            jobs.remove(&self.name)
                .map(|j| j.waiters)
                .unwrap_or_default()
        };
        tracing::error!("the background job on volume {:?} failed", self.name);
        let e = VolumeError::Server(format!(
            "the background job on volume {:?} failed (see the server log)",
            self.name
        ));
        for w in waiters {
            send(&w, &error_response(&e));
        }
    }
}

/// A background compaction or head sealing: the volume (kept open by it),
/// what is being done, and the connections waiting for a compaction's
/// result.
struct CompactJob {
    volume: Arc<Volume>,
    work: Work,
    /// A head sealing asked for again while this one runs.
    again: bool,
    waiters: Vec<UnixStream>,
}

/// What a [`CompactJob`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// [`crate::volume::Volume::compact`].
    Compact,
    /// [`crate::volume::Volume::seal_head`]; a compaction asked for while it
    /// runs follows it in the same job.
    SealHead,
}

impl Served {
    /// Mounts the export at `paths.mnt` unless it is mounted.
    fn mount(&self, paths: &Paths) -> Result<()> {
        let mut session = super::lock(&self.session);
        if session.is_some() {
            return Ok(());
        }
        let _s = tracing::debug_span!("fuse-mount").entered();
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(format!("fukastor-volumes@{}", paths.store.display())),
            fuser::MountOption::Subtype("fukastor".into()),
            fuser::MountOption::NoAtime,
        ];
        // Two threads per core: the loop device keeps several requests in
        // flight, and while one thread holds a volume's head lock to append,
        // others read the next requests from /dev/fuse and checksum their
        // blocks (see `Volume::write_at`).
        config.n_threads = Some(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2)
                * 2,
        );
        config.clone_fd = true;
        let s = fuser::Session::new(self.disks.clone(), &paths.mnt, &config)
            .map_err(|e| VolumeError::Server(format!("mounting {}: {e}", paths.mnt.display())))?;
        *session = Some(
            s.spawn()
                .map_err(|e| VolumeError::Server(format!("starting the FUSE session: {e}")))?,
        );
        Ok(())
    }

    /// Stops exporting `name` and makes the kernel forget its directory
    /// entry, so that a volume attached later under the same name (same
    /// inode number, maybe another size) is looked up again, with its own
    /// attributes, instead of served from the cache.
    fn unexport(&self, name: &str) -> Option<Arc<Volume>> {
        let volume = self.disks.remove(name);
        if let Some(s) = super::lock(&self.session).as_ref() {
            // ENOENT: the kernel had no entry cached.
            let _ = s
                .notifier()
                .inval_entry(fuser::INodeNo::ROOT, name.as_ref());
        }
        volume
    }
}

impl Ctx {
    fn local(paths: &Paths) -> Result<Ctx> {
        Ok(Ctx {
            paths: paths.clone(),
            pool: Pool::open(&paths.pool)?,
            served: None,
        })
    }

    fn device(&self, name: &str) -> Option<String> {
        let s = self.served.as_ref()?;
        super::lock(&s.devices).get(name).cloned()
    }

    fn attached(&self) -> usize {
        self.served
            .as_ref()
            .map_or(0, |s| super::lock(&s.devices).len())
    }

    /// Lets go of attached volume `name`: refuses while its loop device is
    /// open (a mounted filesystem), else unbinds the device and stops
    /// exporting the volume; returns it, unflushed.
    fn unbind(&self, served: &Served, name: &str, device: String) -> Result<Option<Arc<Volume>>> {
        let unbound = {
            let _s = tracing::debug_span!("loop").entered();
            loopdev::detach_unless_in_use(&device)?
        };
        if !unbound {
            let at = crate::mount::mountpoints_of(&device);
            return Err(VolumeError::InUse {
                volume: name.to_string(),
                device,
                mountpoints: at
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        super::lock(&served.devices).remove(name);
        Ok(served.unexport(name))
    }

    /// Refuses an attached volume; stops a background compaction of a
    /// detached one (the caller needs it closed).
    fn refuse_attached(&self, name: &str) -> Result<()> {
        if self.device(name).is_some() {
            return Err(VolumeError::Attached(name.to_string()));
        }
        self.stop_compaction(Some(name));
        Ok(())
    }

    /// Runs `f`, which needs detached volume `name` closed; runs it again,
    /// for up to 2 s, while it finds the volume open. A FUSE request is
    /// answered before its thread lets go of the volume: the request that
    /// let the loop device's last I/O complete, and so its detach, can
    /// still hold the volume after the detach was answered (seen in CI as
    /// a rollback refused with FK0706 right after `container umount`).
    /// Only this server opens the pool's volumes, and its callers have
    /// made sure the volume is neither attached nor being compacted, so
    /// what still holds it lets go soon; if not, the error says so (not
    /// FK0706's "detach the volume first": it is detached).
    fn once_closed<T>(&self, name: &str, f: impl Fn() -> Result<T>) -> Result<T> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match f() {
                Err(VolumeError::Busy(_)) if self.served.is_some() => {
                    if Instant::now() >= deadline {
                        return Err(VolumeError::Server(format!(
                            "volume {name:?} is detached but still open 2 s later"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                r => return r,
            }
        }
    }

    /// Opens volume `name`, which is neither attached nor being compacted.
    fn open_detached(&self, name: &str) -> Result<Volume> {
        self.once_closed(name, || self.pool.open_volume(name))
    }

    /// The volume a background compaction holds open.
    fn compacting_volume(&self, name: &str) -> Option<Arc<Volume>> {
        let s = self.served.as_ref()?;
        super::lock(&s.compactions)
            .get(name)
            .map(|j| j.volume.clone())
    }

    /// The volume open in this server (attached, or being compacted), or
    /// opened now.
    fn open_shared(&self, name: &str) -> Result<Arc<Volume>> {
        let open = self.served.as_ref().and_then(|s| s.disks.get(name));
        match open.or_else(|| self.compacting_volume(name)) {
            Some(v) => Ok(v),
            None => Ok(Arc::new(self.open_detached(name)?)),
        }
    }

    fn compactions(&self) -> usize {
        self.served
            .as_ref()
            .map_or(0, |s| super::lock(&s.compactions).len())
    }

    /// Compacts `volume` on a background thread, unless that is under way;
    /// `waiter` gets the result. Then frees the old layers.
    fn compact_in_background(&self, name: &str, volume: Arc<Volume>, waiter: Option<UnixStream>) {
        self.in_background(name, volume, Work::Compact, waiter);
    }

    /// Does `work` to `volume` on a background thread, unless a job for
    /// it is under way (a compaction asked for during a head sealing is
    /// done by that job next); `waiter` gets a compaction's result.
    fn in_background(
        &self,
        name: &str,
        volume: Arc<Volume>,
        work: Work,
        waiter: Option<UnixStream>,
    ) {
        let Some(served) = &self.served else {
            return;
        };
        {
            let mut jobs = super::lock(&served.compactions);
            if let Some(job) = jobs.get_mut(name) {
                job.waiters.extend(waiter);
                match work {
                    Work::Compact => job.work = Work::Compact,
                    // Asked again (a detach while a 30 s check's sealing
                    // runs): judged again once this one ends.
                    Work::SealHead => job.again = true,
                }
                return;
            }
            let job = CompactJob {
                volume: volume.clone(),
                work,
                again: false,
                waiters: waiter.into_iter().collect(),
            };
            jobs.insert(name.to_string(), job);
        }
        let (jobs, pool, reclaims, name) = (
            served.compactions.clone(),
            self.pool.clone(),
            served.reclaims.clone(),
            name.to_string(),
        );
        // Moved into the thread; dropped with it unrun if it cannot start.
        let end = JobEnd {
            jobs: jobs.clone(),
            name: name.clone(),
            armed: true,
        };
        let spawned = std::thread::Builder::new().spawn(move || {
            // Locals, dropped before `end` if the thread panics: the volume
            // is closed before its job's entry goes.
            let mut end = end;
            let (volume, pool, mut work) = (volume, pool, work);
            loop {
                while work == Work::SealHead {
                    // Judged when asked for, and again if asked for again.
                    let stats = volume.stats();
                    if worth_sealing(&stats) {
                        let started = Instant::now();
                        match volume.seal_head() {
                            Ok(true) => tracing::info!(
                                "sealed the head of {name} ({} bytes), in {:.1?}",
                                stats.head_bytes,
                                started.elapsed()
                            ),
                            Ok(false) => {}
                            Err(e) => tracing::warn!("sealing the head of {name}: {e}"),
                        }
                        remake_spare(&pool);
                    }
                    // Ends the job unless it was asked for again, or a
                    // compaction was, meanwhile: under the lock under which
                    // they are asked for.
                    let mut jobs = super::lock(&jobs);
                    // Only this thread removes it.
                    let job = jobs.get_mut(&name).expect("a running job's entry");
                    match (job.work, job.again) {
                        (Work::Compact, _) => work = Work::Compact,
                        (Work::SealHead, true) => job.again = false,
                        (Work::SealHead, false) => {
                            drop(volume);
                            end.armed = false;
                            jobs.remove(&name);
                            return;
                        }
                    }
                }
                let started = Instant::now();
                let r = volume.compact();
                remake_spare(&pool);
                let reply = match &r {
                    Ok(rep) => {
                        if rep.layer.is_some() {
                            tracing::info!(
                                "compacted {name}: layers {:?} ({} bytes) replaced by layer {} ({} bytes, {} blocks); garbage {} -> {} bytes, in {:.1?}",
                                rep.replaced,
                                rep.bytes_before,
                                rep.layer.unwrap_or_default(),
                                rep.bytes_after,
                                rep.blocks,
                                rep.garbage_before,
                                rep.garbage_after,
                                started.elapsed()
                            );
                        }
                        compacted(&name, rep)
                    }
                    Err(e) => {
                        tracing::warn!("compacting {name}: {e}");
                        error_response(e)
                    }
                };
                // Through the coalesced reclaims, which the server closes
                // before it lets the pool go (this thread may outlive the
                // compaction's entry in `jobs`, which is all the server waits
                // for).
                if matches!(&r, Ok(rep) if rep.layer.is_some()) {
                    let pool = pool.clone();
                    reclaims.request(move || match pool.reclaim() {
                        Ok(r) => tracing::info!("reclaimed {} layers, {} bytes", r.layers, r.bytes),
                        Err(e) => tracing::warn!("reclaiming space: {e}"),
                    });
                }
                let mut jobs_now = super::lock(&jobs);
                let job = jobs_now.get_mut(&name).expect("a running job's entry");
                let waiters = std::mem::take(&mut job.waiters);
                // A compaction that gave up (FK0721) ends the job: it was
                // cancelled (a removal, a rollback or the server's stop
                // waits for this job), or a snapshot changed the stack, and
                // a snapshot seals the head itself.
                let cancelled = matches!(&r, Err(VolumeError::Abandoned { .. }));
                if job.again && !cancelled {
                    // A sealing asked for during the compaction: judged again
                    // (a compaction that failed before its own sealing step
                    // sealed nothing), the compaction answered first.
                    job.again = false;
                    job.work = Work::SealHead;
                    work = Work::SealHead;
                    drop(jobs_now);
                    for w in waiters {
                        send(&w, &reply);
                    }
                    continue;
                }
                // Forget the job under its lock, closing the volume unless it
                // is attached: whoever waits for the job to end then finds it
                // closed.
                drop(volume);
                end.armed = false;
                jobs_now.remove(&name);
                drop(jobs_now);
                for w in waiters {
                    send(&w, &reply);
                }
                return;
            }
        });
        if let Err(e) = spawned {
            // Its `JobEnd`, dropped with the closure, ended the job unrun.
            tracing::warn!("starting a background job: {e}");
        }
    }

    /// Starts compacting volume `name` if its garbage is worth it, else
    /// sealing its head if that is worth it (not an ephemeral volume's:
    /// it is deleted at the end of its run).
    fn compact_if_worth(&self, name: &str, volume: Arc<Volume>) {
        let stats = volume.stats();
        tracing::debug!("volume {name}: {stats:?}");
        if worth_compacting(&stats) {
            tracing::info!(
                "compacting {name}: {} bytes of garbage in {} bytes of its own layers",
                stats.garbage_bytes,
                stats.own_bytes
            );
            self.compact_in_background(name, volume, None);
        } else if !volume.is_ephemeral() && worth_sealing(&stats) {
            self.in_background(name, volume, Work::SealHead, None);
        }
    }

    /// Checks every attached volume for compaction.
    fn compact_attached(&self) {
        if let Some(s) = &self.served {
            for name in s.disks.names() {
                if let Some(v) = s.disks.get(&name) {
                    self.compact_if_worth(&name, v);
                }
            }
        }
    }

    /// Cancels a background compaction of `name` (every one, without a
    /// name) and waits until it has ended.
    fn stop_compaction(&self, name: Option<&str>) {
        let Some(s) = &self.served else {
            return;
        };
        loop {
            {
                let jobs = super::lock(&s.compactions);
                let mut running = jobs
                    .iter()
                    .filter(|(n, _)| name.is_none_or(|name| name == n.as_str()))
                    .peekable();
                if running.peek().is_none() {
                    return;
                }
                running.for_each(|(_, j)| j.volume.cancel_compaction());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Frees unreferenced layers: on a thread in a server (snapshot and
    /// volume deletion answer at once); in a command, by a server started
    /// for it (a server reclaims when it starts), inline if none starts.
    fn reclaim_later(&self) {
        let pool = self.pool.clone();
        let work = move || match pool.reclaim() {
            Ok(r) if r.layers > 0 => {
                tracing::info!("reclaimed {} layers, {} bytes", r.layers, r.bytes)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reclaiming space: {e}"),
        };
        if let Some(served) = &self.served {
            served.reclaims.request(work);
        } else if let Err(e) = spawn(&self.paths, false) {
            // A server reclaims when it starts; without one, do it now.
            tracing::info!("{e}; reclaiming in this process");
            work();
        }
    }

    /// Makes the pool's spare head layers again, on a thread, in a server
    /// (a command without one ends before it could use them).
    fn spares_later(&self) {
        if self.served.is_some() {
            let pool = self.pool.clone();
            std::thread::spawn(move || remake_spare(&pool));
        }
    }

    /// What a request leaves to do once it is answered: requests that take
    /// a spare head layer start making the next one.
    fn after(&self, req: &Request) {
        if matches!(
            req,
            Request::Create { .. }
                | Request::Snapshot { .. }
                | Request::Rollback { .. }
                | Request::Clone { .. }
        ) {
            self.spares_later();
        }
    }

    fn execute_request(&self, req: &Request) -> Result<Response> {
        match req {
            Request::Create {
                name,
                size,
                base,
                filters,
            } => {
                let mut opts = match base {
                    Some(b) => VolumeOptions::with_base(b.clone()),
                    None => VolumeOptions::new(size.unwrap_or(0)),
                };
                if let (Some(_), Some(s)) = (base, size) {
                    opts = opts.size(*s);
                }
                if let Some(json) = filters {
                    opts = opts.filters(crate::filter::ChainSpec::from_json(json)?);
                }
                self.pool.create_volume(name, &opts)?;
                Ok(Response::Ok)
            }
            Request::List {} => {
                let mut volumes = Vec::new();
                for name in self.pool.volumes()? {
                    let (info, ephemeral) = self.pool.info_and_kind(&name)?;
                    let mut ids: std::collections::BTreeSet<u64> =
                        info.layers.iter().copied().collect();
                    for s in &info.snapshots {
                        ids.extend(s.layers.iter().copied());
                    }
                    let used = ids
                        .iter()
                        .filter_map(|id| {
                            std::fs::metadata(self.paths.pool.join(format!("layers/{id}.data")))
                                .ok()
                        })
                        .map(|m| m.len())
                        .sum();
                    volumes.push(VolumeEntry {
                        ephemeral,
                        device: self.device(&name),
                        size: info.size,
                        used,
                        snapshots: info.snapshots.iter().map(|s| s.name.clone()).collect(),
                        base: info.base.map(|(p, _)| p),
                        filters: info.filters,
                        name,
                    });
                }
                Ok(Response::Volumes { volumes })
            }
            Request::Remove { name } => {
                self.refuse_attached(name)?;
                self.once_closed(name, || self.pool.delete_volume(name))?;
                self.reclaim_later();
                Ok(Response::Ok)
            }
            Request::Attach { name } => {
                let Some(served) = &self.served else {
                    return Err(VolumeError::Server(
                        "attaching needs the volume server".into(),
                    ));
                };
                if let Some(device) = self.device(name) {
                    return Ok(Response::Device { device });
                }
                let (volume, deferred) = match self.compacting_volume(name) {
                    Some(v) => (v, false),
                    None => {
                        let _s = tracing::debug_span!("open").entered();
                        let v = self.once_closed(name, || self.pool.open_volume_deferred(name))?;
                        (Arc::new(v), true)
                    }
                };
                if let Err(e) = served.mount(&self.paths) {
                    let _ = volume.flush();
                    return Err(e);
                }
                served.disks.insert(name, volume.clone());
                let file = self.paths.mnt.join(name);
                let attached = {
                    let _s = tracing::debug_span!("loop").entered();
                    loopdev::attach(&file)
                };
                match attached {
                    Ok(device) => {
                        super::lock(&served.devices).insert(name.clone(), device.clone());
                        tracing::info!("attached {name} as {device}");
                        // Opened without reading every volume's metadata:
                        // a durable volume's garbage figures (which start
                        // the server's compaction) are made exact after the
                        // answer. An ephemeral one's are left as they are
                        // (deleted at the end of its run).
                        // (Weak: a detach meanwhile is not held up; no
                        // thread, the figures just stay as they are.)
                        if deferred && !volume.is_ephemeral() {
                            let weak = Arc::downgrade(&volume);
                            let _ = std::thread::Builder::new().spawn(move || {
                                if let Some(v) = weak.upgrade()
                                    && let Err(e) = v.refresh_sharing()
                                {
                                    tracing::debug!("volume {:?}: {e}", v.name());
                                }
                            });
                        }
                        Ok(Response::Device { device })
                    }
                    Err(e) => {
                        if let Some(v) = served.unexport(name) {
                            let _ = v.flush();
                        }
                        Err(e)
                    }
                }
            }
            Request::Detach { name } => {
                let Some(served) = &self.served else {
                    // No server: clean up what a dead one left for this volume.
                    self.pool.info(name)?;
                    let n = cleanup_stale(&self.paths, Some(name));
                    return if n > 0 {
                        Ok(Response::Ok)
                    } else {
                        Err(VolumeError::NotAttached(name.clone()))
                    };
                };
                let device = self
                    .device(name)
                    .ok_or_else(|| VolumeError::NotAttached(name.clone()))?;
                let volume = self.unbind(served, name, device.clone())?;
                {
                    let _s = tracing::debug_span!("flush").entered();
                    volume.as_ref().map_or(Ok(()), |v| v.flush())?;
                }
                tracing::info!("detached {name} ({device})");
                if let Some(v) = volume {
                    self.compact_if_worth(name, v);
                }
                Ok(Response::Ok)
            }
            Request::Discard { name } => {
                let mut lost = None;
                if let Some(served) = &self.served
                    && let Some(device) = self.device(name)
                {
                    // Not flushed: what the head holds since its last
                    // commit goes with the volume.
                    let volume = self.unbind(served, name, device.clone())?;
                    lost = volume.and_then(|v| v.failure());
                    tracing::info!("detached {name} ({device}) to delete it");
                } else if self.served.is_none() {
                    // No server: unbind what a dead one left for it.
                    cleanup_stale(&self.paths, Some(name));
                }
                self.stop_compaction(Some(name));
                self.once_closed(name, || self.pool.delete_volume(name))?;
                self.reclaim_later();
                Ok(Response::Discarded { lost })
            }
            Request::Snapshot {
                volume,
                name,
                atomic,
            } => {
                let attached = self.served.as_ref().and_then(|s| s.disks.get(volume));
                match attached {
                    Some(v) => {
                        let frozen = if *atomic {
                            let device = self.device(volume).unwrap_or_default();
                            let mp = crate::mount::mountpoints_of(&device).into_iter().next();
                            let Some(mp) = mp else {
                                return Err(VolumeError::Freeze(format!(
                                    "no filesystem is mounted on {device} (volume {volume:?})"
                                )));
                            };
                            loopdev::freeze(&mp, true)?;
                            Some(mp)
                        } else {
                            None
                        };
                        let r = v.snapshot_index_in_background(name);
                        if let Some(mp) = frozen {
                            loopdev::freeze(&mp, false)?;
                        }
                        r?;
                    }
                    None => {
                        if *atomic {
                            return Err(VolumeError::Freeze(format!(
                                "volume {volume:?} is not attached, so nothing is mounted on it"
                            )));
                        }
                        match self.compacting_volume(volume) {
                            // (The compaction gives up.)
                            Some(v) => v.snapshot(name)?,
                            None => {
                                let v = self.open_detached(volume)?;
                                v.snapshot(name)?;
                                v.close()?;
                            }
                        }
                    }
                }
                Ok(Response::Ok)
            }
            Request::Snapshots { volume } => Ok(Response::Snapshots {
                snapshots: self
                    .pool
                    .info(volume)?
                    .snapshots
                    .into_iter()
                    .map(|s| SnapshotEntry {
                        name: s.name,
                        created: s.created,
                    })
                    .collect(),
            }),
            Request::Rollback { volume, name } => {
                self.refuse_attached(volume)?;
                self.once_closed(volume, || self.pool.rollback(volume, name))?;
                self.reclaim_later();
                Ok(Response::Ok)
            }
            Request::DeleteSnapshot { volume, name } => {
                let open = self.served.as_ref().and_then(|s| s.disks.get(volume));
                match open.or_else(|| self.compacting_volume(volume)) {
                    // An open volume learns that the layers are its own.
                    Some(v) => v.delete_snapshot(name)?,
                    None => self.pool.delete_snapshot(volume, name)?,
                }
                self.reclaim_later();
                Ok(Response::Ok)
            }
            Request::Clone {
                volume,
                snapshot,
                new,
                ephemeral,
            } => {
                if *ephemeral {
                    self.pool.clone_ephemeral(volume, snapshot, new)?;
                } else {
                    self.pool.clone_snapshot(volume, snapshot, new)?;
                }
                Ok(Response::Ok)
            }
            Request::Template { name, size } => {
                self.ensure_template(name, *size)?;
                Ok(Response::Ok)
            }
            Request::Compact { name } => {
                if self.served.is_some() {
                    // Answered at once; `handle` passes the connection on
                    // instead, to answer when it is done.
                    let v = self.open_shared(name)?;
                    self.compact_in_background(name, v, None);
                    return Ok(Response::Ok);
                }
                let v = self.pool.open_volume(name)?;
                let r = v.compact();
                let closed = v.close();
                let r = r?;
                closed?;
                if r.layer.is_some() {
                    self.reclaim_later();
                }
                Ok(compacted(name, &r))
            }
        }
    }

    /// Builds template volume `name` unless it exists with its snapshot:
    /// `mkfs.ext4` on a sparse scratch file in the pool (with discard, so
    /// mke2fs marks the inode tables zeroed and the kernel never initialises
    /// them lazily on each container), its data extents copied into the
    /// volume, then the snapshot. A leftover from an interrupted attempt
    /// (no snapshot) is replaced.
    fn ensure_template(&self, name: &str, size: u64) -> Result<()> {
        match self.pool.info(name) {
            Ok(info) if info.snapshots.iter().any(|s| s.name == TEMPLATE_SNAPSHOT) => {
                return Ok(());
            }
            Ok(_) => {
                self.refuse_attached(name)?;
                self.once_closed(name, || self.pool.delete_volume(name))?;
            }
            Err(VolumeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // Scratch files live in the pool (same filesystem, removed below; a
        // crash leaves them for the next attempt to replace).
        let scratch = self.paths.pool.join(format!(".template-{name}"));
        let _ = std::fs::remove_dir_all(&scratch);
        let r = self.build_template(name, size, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        r
    }

    fn build_template(&self, name: &str, size: u64, scratch: &Path) -> Result<()> {
        let img = scratch.join("ext4.img");
        let seed = scratch.join("seed");
        for d in ["upper", "work"] {
            std::fs::create_dir_all(seed.join(d))
                .map_err(super::io_err("creating the template's directories"))?;
        }
        let f = std::fs::File::create(&img).map_err(super::io_err("creating the template"))?;
        f.set_len(size)
            .map_err(super::io_err("sizing the template"))?;
        drop(f);
        // inline_data: a new directory's entries (and a small file's
        // bytes) live in its inode until they outgrow it, so the
        // `work/work` directory overlayfs deletes and makes again at every
        // mount allocates no block: no block bitmap to read and no buddy to
        // build on each container's first mount (the overlay mount took
        // half the time on a loop device; docs/benchmarks.md).
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-m", "0", "-L", "fukastor"])
            // 256-byte inodes: inline data needs room in them, and
            // e2fsprogs before 1.46.4 gave filesystems under 512 MiB
            // 128-byte ones (mke2fs then refuses inline_data).
            .args(["-O", "inline_data", "-I", "256"])
            .args(["-E", "lazy_journal_init=1,discard", "-d"])
            .arg(&seed)
            .arg(&img)
            .output()
            .map_err(|e| VolumeError::Template(format!("running mkfs.ext4: {e}")))?;
        if !out.status.success() {
            return Err(VolumeError::Template(format!(
                "mkfs.ext4: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.pool.create_volume(name, &VolumeOptions::new(size))?;
        let v = self.pool.open_volume(name)?;
        copy_data_extents(&img, &v)?;
        v.snapshot(TEMPLATE_SNAPSHOT)?;
        v.close()
    }
}

/// Copies the parts of sparse file `img` that hold data into `v`.
fn copy_data_extents(img: &Path, v: &super::Volume) -> Result<()> {
    use rustix::fs::SeekFrom;
    let f = std::fs::File::open(img).map_err(super::io_err("opening the template"))?;
    let len = f
        .metadata()
        .map_err(super::io_err("reading the template"))?
        .len();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(super::io_err("seeking the template")(e.into())),
        };
        let end = match rustix::fs::seek(&f, SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(e) => return Err(super::io_err("seeking the template")(e.into())),
        };
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            rustix::io::pread(&f, &mut buf[..n], at)
                .map_err(|e| super::io_err("reading the template")(e.into()))?;
            v.write_at(at, &buf[..n])?;
            at += n as u64;
        }
        pos = end;
    }
    Ok(())
}

/// Unbinds loop devices left over by a dead server (all of them, or those
/// of volume `only`) and detaches its dead FUSE mount once nothing uses it.
/// Returns how many things it cleaned.
fn cleanup_stale(paths: &Paths, only: Option<&str>) -> usize {
    let mut n = 0;
    let target = match only {
        Some(name) => paths.mnt.join(name),
        None => paths.mnt.clone(),
    };
    for (dev, backing) in loopdev::devices_backed_by(&target, only.is_none()) {
        tracing::info!(
            "unbinding {dev} (left over, backed by {})",
            backing.display()
        );
        match loopdev::detach(&dev) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let live_server = std::fs::read(paths.record())
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| v["pid"].as_u64())
        .is_some_and(|pid| {
            pid != u64::from(std::process::id()) && crate::mount::track::alive(pid as u32)
        });
    if !live_server
        && loopdev::devices_backed_by(&paths.mnt, true).is_empty()
        && crate::mount::is_mountpoint(&paths.mnt)
    {
        match rustix::mount::unmount(&paths.mnt, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!("detaching {}: {e}", paths.mnt.display()),
        }
    }
    n
}

/// Runs the volume server in the foreground: `fukastor volume-serve`.
/// Returns when nothing has been attached for [`IDLE`], or on SIGTERM,
/// SIGINT or SIGHUP when nothing is attached (with volumes attached those
/// signals only flush them: detach them first).
pub fn serve(paths: &Paths) -> Result<()> {
    // Wait for a server that is stopping to let go of the pool.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lock = loop {
        if let Some(l) = try_lock(paths)? {
            break l;
        }
        if connect(paths).is_ok() {
            tracing::info!("another volume server runs for this store");
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(VolumeError::Server(
                "the pool stayed locked by another process for 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    crate::raise_nofile();
    if let Err(e) = rustix::process::configure_io_flusher_behavior(true) {
        tracing::warn!("PR_SET_IO_FLUSHER: {e} (the server may deadlock under memory pressure)");
    }
    // Before looking at `mnt`: a dead server's mount there fails every
    // stat with ENOTCONN.
    cleanup_stale(paths, None);
    std::fs::create_dir_all(&paths.mnt)
        .map_err(super::io_err(format!("creating {}", paths.mnt.display())))?;

    let ctx = Ctx {
        paths: paths.clone(),
        pool: Pool::open(&paths.pool)?,
        served: Some(Served {
            disks: DiskFs::new(),
            devices: Default::default(),
            session: Default::default(),
            compactions: Default::default(),
            reclaims: Default::default(),
        }),
    };
    let served = serve_with(&ctx, paths);
    if served.is_err() {
        // A failed start: what it made is this server's (it holds the lock).
        let _ = std::fs::remove_file(paths.socket());
        let _ = std::fs::remove_file(paths.record());
    }
    // However serving ended (a failed start too), nothing of this server
    // may run, or be left half made, once the pool's lock is let go.
    let_the_pool_go(&ctx);
    drop(ctx);
    drop(lock);
    tracing::info!("volume server {} stopped", std::process::id());
    served
}

/// Serves requests until told to stop or idle (the pool's lock held by
/// the caller), then stops taking them.
fn serve_with(ctx: &Ctx, paths: &Paths) -> Result<()> {
    // Free what earlier crashes, rollbacks and removals left, and have a
    // spare head ready for the first snapshot or rollback (deleted again
    // by `let_the_pool_go` however this ends).
    ctx.reclaim_later();
    ctx.pool.want_spare(false);
    ctx.spares_later();
    let listener = bind(paths).map_err(super::io_err("binding the control socket"))?;
    listener
        .set_nonblocking(true)
        .map_err(super::io_err("configuring the control socket"))?;
    let record = serde_json::json!({
        "pid": std::process::id(),
        "mountpoint": paths.mnt,
    });
    crate::store::write_atomic(&paths.record(), record.to_string().as_bytes())
        .map_err(super::io_err("writing server.json"))?;
    tracing::info!("volume server {} ready", std::process::id());
    std::thread::spawn(keep_code_mapped);

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| VolumeError::Server(format!("installing signal handlers: {e}")))?;
    }

    let mut idle_since = Instant::now();
    let mut checked = Instant::now();
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &listener,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        while let Ok((stream, _)) = listener.accept() {
            handle(ctx, stream, false);
            idle_since = Instant::now();
        }
        if stop.swap(false, Ordering::Relaxed) {
            if ctx.attached() == 0 {
                break;
            }
            tracing::warn!(
                "signal: {} volumes attached; flushing them, not stopping (detach them first)",
                ctx.attached()
            );
            if let Some(s) = &ctx.served {
                for name in s.disks.names() {
                    if let Some(v) = s.disks.get(&name) {
                        let _ = v.flush();
                    }
                }
            }
        }
        if checked.elapsed() >= COMPACT_CHECK {
            checked = Instant::now();
            ctx.compact_attached();
        }
        if ctx.compactions() > 0 {
            idle_since = Instant::now();
        }
        if ctx.attached() == 0 && idle_since.elapsed() >= IDLE {
            break;
        }
    }
    // Compactions of detached volumes: give up (nothing is lost) and wait.
    ctx.stop_compaction(None);
    // Stop taking requests: new commands find no socket and wait for the
    // lock; those already queued are told to ask again.
    let _ = std::fs::remove_file(paths.socket());
    let _ = std::fs::remove_file(paths.record());
    while let Ok((stream, _)) = listener.accept() {
        handle(ctx, stream, true);
    }
    Ok(())
}

/// What a server does after its last request, before it lets the pool's
/// lock go. No reclaim may run after that: the next owner may have made a
/// layer its metadata does not name yet (a spare head), so what a request
/// left for a coalesced reclaim is done now.
fn let_the_pool_go(ctx: &Ctx) {
    if let Some(s) = &ctx.served
        && s.reclaims.close()
    {
        match ctx.pool.reclaim() {
            Ok(r) => tracing::info!("reclaimed {} layers, {} bytes", r.layers, r.bytes),
            Err(e) => tracing::warn!("reclaiming space: {e}"),
        }
    }
    // Spare heads are garbage once the pool is let go: delete them now
    // (one being made is waited for), not at the next server's start (a
    // full disk gets them back at once).
    if let Err(e) = ctx.pool.drop_spares() {
        tracing::warn!("deleting the spare head layers: {e}");
    }
}

/// Maps every page of this program's file into the server's page tables
/// (`MADV_POPULATE_READ`), on a thread of its own once the server is
/// ready. A page of code a process has mapped stays in memory when the
/// host drops clean caches (`drop_caches`, or reclaim that prefers
/// unmapped pages); without this, the first snapshot or rollback a server
/// answers after such a drop waited ~1.5 ms for the disk to page in code it
/// had not run yet (a major fault, seen with `perf`). Costs the program's
/// size in page cache (~11 MB, shared with every other process running
/// it), read from the disk only if it is not cached already.
fn keep_code_mapped() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        // "start-end perms offset dev inode   path" (a path may hold
        // spaces: it is the rest of the line)
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(path)) = (fields.next(), fields.nth(4)) else {
            continue;
        };
        if Path::new(path.trim_start()) != exe {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if let Some(len) = end.checked_sub(start) {
            populate(start, len);
        }
    }
}

/// `madvise(MADV_POPULATE_READ)` on a mapping of this process.
#[allow(unsafe_code)]
fn populate(start: usize, len: usize) {
    // SAFETY: the range is one of this process's own file mappings, read
    // from /proc/self/maps, and populating it only faults its pages in for
    // reading; it changes no memory contents, and the program's own
    // mappings are never unmapped while it runs.
    let r = unsafe {
        rustix::mm::madvise(
            start as *mut std::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxPopulateRead,
        )
    };
    if let Err(e) = r {
        tracing::debug!("populating the program's pages: {e}");
    }
}

fn handle(ctx: &Ctx, stream: UnixStream, stopping: bool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let reply = match BufReader::new(&stream).read_line(&mut line) {
        // A connection closed without a request: `start` checking that
        // the server is up. Nothing to answer.
        Ok(0) => return,
        _ if stopping => Response::Retry,
        Err(e) => error_response(&VolumeError::Server(format!("reading a request: {e}"))),
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Err(e) => error_response(&VolumeError::Server(format!("{MALFORMED_REQUEST}: {e}"))),
            Ok(Request::Compact { name }) if ctx.served.is_some() => {
                // The compaction's thread answers when it is done.
                tracing::debug!("request compact {name:?}");
                match ctx.open_shared(&name) {
                    Ok(v) => return ctx.compact_in_background(&name, v, Some(stream)),
                    Err(e) => error_response(&e),
                }
            }
            Ok(req) => {
                let reply = {
                    let _s = tracing::debug_span!("request", ?req).entered();
                    ctx.execute_request(&req)
                        .unwrap_or_else(|e| error_response(&e))
                };
                // The client waits for the answer, not for what follows it.
                send(&stream, &reply);
                drop(stream);
                ctx.after(&req);
                return;
            }
        },
    };
    send(&stream, &reply);
}

/// Writes an answer on a control connection.
fn send(stream: &UnixStream, reply: &Response) {
    let mut out = serde_json::to_vec(reply).unwrap_or_default();
    out.push(b'\n');
    let _ = (&*stream).write_all(&out);
    let _ = stream.as_fd();
}

fn error_response(e: &VolumeError) -> Response {
    Response::Error {
        code: e.code().to_string(),
        message: e.to_string(),
        hint: e.hint(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_requests_on_the_wire_and_the_policy() {
        let req = serde_json::to_string(&Request::Compact { name: "v".into() }).unwrap();
        assert_eq!(req, r#"{"op":"compact","name":"v"}"#);
        let r = CompactReport {
            replaced: vec![3, 4],
            layer: Some(9),
            bytes_before: 100,
            bytes_after: 10,
            blocks: 2,
            garbage_before: 90,
            garbage_after: 0,
        };
        let answer = serde_json::to_string(&compacted("v", &r)).unwrap();
        assert_eq!(
            answer,
            r#"{"reply":"compacted","volume":"v","replaced":[3,4],"layer":9,"bytes_before":100,"bytes_after":10,"garbage_before":90,"garbage_after":0}"#
        );
        let stats = |garbage_bytes, own_bytes| VolumeStats {
            layers: vec![1],
            head_bytes: 0,
            unflushed_records: 0,
            layer_bytes: own_bytes,
            own_bytes,
            garbage_bytes,
        };
        assert!(worth_compacting(&stats(65 << 20, 100 << 20)));
        assert!(!worth_compacting(&stats(63 << 20, 100 << 20)), "too little");
        assert!(!worth_compacting(&stats(65 << 20, 140 << 20)), "under half");

        // Every layer counts, shared (snapshots, a template) or not.
        let heads = |head_bytes, layer_bytes| VolumeStats {
            head_bytes,
            own_bytes: head_bytes,
            ..stats(0, layer_bytes)
        };
        assert!(
            worth_sealing(&heads(16 << 20, 16 << 20)),
            "all data in the head"
        );
        assert!(
            !worth_sealing(&heads((16 << 20) - 1, 16 << 20)),
            "too little"
        );
        assert!(
            worth_sealing(&heads(64 << 20, (64 + 1024) << 20)),
            "a sixteenth"
        );
        assert!(
            !worth_sealing(&heads(63 << 20, (63 + 1024) << 20)),
            "under a sixteenth"
        );
    }

    /// Requests made while a coalesced job runs, or in the pause after it,
    /// make it run exactly once more; a request once it is idle runs it
    /// again; none is lost: the last request is always followed by a run
    /// that starts after it, or reported by `close`; a panicking job does
    /// not stop later runs; after `close` nothing runs.
    #[test]
    fn coalesced_requests_run_the_job_once_more() {
        use std::sync::atomic::AtomicUsize;
        let c = Arc::new(Coalesced::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let job = |runs: &Arc<AtomicUsize>| {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let idle = |c: &Coalesced| {
            let start = Instant::now();
            while super::super::lock(&c.state).running {
                assert!(start.elapsed() < Duration::from_secs(10), "never idle");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        c.request(job(&runs));
        std::thread::sleep(Duration::from_millis(10));
        for _ in 0..5 {
            c.request(job(&runs));
        }
        // The run takes 50 ms, then its pause 0.5 s: the 5 requests wait.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "ran again before the pause ended"
        );
        idle(&c);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "one run, then one for the 5 requests made during it"
        );
        c.request(|| panic!("a failing job"));
        idle(&c);
        c.request(job(&runs));
        idle(&c);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "a request once idle runs it"
        );

        // Closing: a request during the pause is reported, not run; the
        // pause (2 s after a 200 ms run) ends at once; nothing runs
        // afterwards.
        let slow = {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        c.request(slow);
        std::thread::sleep(Duration::from_millis(300));
        c.request(job(&runs));
        let start = Instant::now();
        assert!(c.close(), "the pending request is reported");
        assert!(start.elapsed() < MAX_RECLAIM_PAUSE / 2, "the pause went on");
        c.request(job(&runs));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert!(!c.close());
    }

    /// A server's context on a new pool in `dir`, nothing mounted.
    fn served_ctx(dir: &Path) -> Ctx {
        let paths = Paths::new(dir);
        std::fs::create_dir_all(&paths.pool).unwrap();
        Ctx {
            pool: Pool::open(&paths.pool).unwrap(),
            paths,
            served: Some(Served {
                disks: DiskFs::new(),
                devices: Default::default(),
                session: Default::default(),
                compactions: Default::default(),
                reclaims: Default::default(),
            }),
        }
    }

    /// Starts sealing `v`'s head, asks right away for a compaction with a
    /// connection waiting for its answer, and returns that answer once the
    /// job has ended.
    fn seal_then_compact(ctx: &Ctx, v: &Arc<Volume>) -> serde_json::Value {
        ctx.in_background("v", v.clone(), Work::SealHead, None);
        let (ours, theirs) = UnixStream::pair().unwrap();
        ctx.compact_in_background("v", v.clone(), Some(theirs));
        answer_and_end(ctx, &ours)
    }

    /// The answer a job sends on `ours`, once the job has ended.
    fn answer_and_end(ctx: &Ctx, ours: &UnixStream) -> serde_json::Value {
        ours.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(ours)
            .read_line(&mut line)
            .expect("an answer within 20 s");
        let start = Instant::now();
        while ctx.compactions() > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the job never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// A compaction asked for (with a connection waiting for its answer)
    /// right after a head sealing started on the same volume is done and
    /// answered, whether it finds the sealing still running (it follows it
    /// in the same job) or already ended (a job of its own); the job ends,
    /// the head is sealed and the garbage freed.
    #[test]
    fn a_compaction_asked_for_during_a_head_sealing_is_done_and_answered() {
        for round in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let ctx = served_ctx(dir.path());
            ctx.pool
                .create_volume("v", &crate::volume::VolumeOptions::new(64 << 20))
                .unwrap();
            let v = Arc::new(ctx.pool.open_volume("v").unwrap());
            let mib = vec![round as u8 + 1; 1 << 20];
            for i in 0..20 {
                v.write_at(i << 20, &mib).unwrap();
            }
            v.write_at(0, &mib).unwrap(); // 1 MiB of garbage
            let head = v.stats().layers.len();
            let answer = seal_then_compact(&ctx, &v);
            assert_eq!(answer["reply"], "compacted", "round {round}: {answer}");
            let s = v.stats();
            assert!(
                s.layers.len() > head,
                "round {round}: the head was sealed: {s:?}"
            );
            assert_eq!(s.garbage_bytes, 0, "round {round}: compacted: {s:?}");
            let mut back = vec![0u8; 1 << 20];
            v.read_at(19 << 20, &mut back).unwrap();
            assert!(back == mib, "round {round}: the data is unchanged");
        }
    }

    /// What [`HookedCreate`] runs before each `create`.
    type CreateHook = Box<dyn Fn(&Path) -> std::io::Result<()> + Send + Sync>;

    /// A backend whose `create` runs a test's hook first (a fault injected
    /// there: a panic, an error, a wait).
    struct HookedCreate {
        inner: crate::volume::StdBackend,
        hook: CreateHook,
    }

    impl std::fmt::Debug for HookedCreate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HookedCreate").finish_non_exhaustive()
        }
    }

    impl crate::volume::backend::Backend for HookedCreate {
        fn open(
            &self,
            path: &Path,
            writable: bool,
        ) -> std::io::Result<Arc<dyn crate::volume::backend::BackendFile>> {
            self.inner.open(path, writable)
        }
        fn create(
            &self,
            path: &Path,
        ) -> std::io::Result<Arc<dyn crate::volume::backend::BackendFile>> {
            (self.hook)(path)?;
            self.inner.create(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.inner.rename(from, to)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            self.inner.remove(path)
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            self.inner.list(dir)
        }
        fn create_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.inner.create_dir(dir)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.inner.sync_dir(dir)
        }
    }

    /// `ctx` on a pool whose backend runs `hook` before every `create`,
    /// with volume "v" (64 MiB) open and 20 MiB written to its head, 1 MiB
    /// of it twice (garbage for a compaction).
    fn hooked_ctx(
        dir: &Path,
        hook: impl Fn(&Path) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> (Ctx, Arc<Volume>) {
        let mut ctx = served_ctx(dir);
        let backend = Arc::new(HookedCreate {
            inner: crate::volume::StdBackend::new(&ctx.paths.pool),
            hook: Box::new(hook),
        });
        ctx.pool = Pool::with_backend(backend).unwrap();
        ctx.pool
            .create_volume("v", &crate::volume::VolumeOptions::new(64 << 20))
            .unwrap();
        let v = Arc::new(ctx.pool.open_volume("v").unwrap());
        for i in 0..20 {
            v.write_at(i << 20, &[7u8; 1 << 20]).unwrap();
        }
        v.write_at(0, &[8u8; 1 << 20]).unwrap();
        (ctx, v)
    }

    /// A job whose thread panics (a bug: here the new head's `create`)
    /// still ends: its entry goes, so waiting for it (what a removal, a
    /// rollback and the server's stop do) returns, and a connection that
    /// waits for a compaction's answer gets an error instead of nothing.
    #[test]
    fn a_job_whose_thread_panics_ends_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let hook_armed = armed.clone();
        let (ctx, v) = hooked_ctx(dir.path(), move |path| {
            assert!(
                !hook_armed.load(Ordering::SeqCst),
                "injected: creating {path:?}"
            );
            Ok(())
        });
        armed.store(true, Ordering::SeqCst);
        // The answer comes once the job has ended (its entry gone).
        let answer = seal_then_compact(&ctx, &v);
        assert_eq!(answer["reply"], "error", "{answer}");
        assert_eq!(ctx.compactions(), 0);
    }

    /// A head sealing asked for while a compaction of the same volume runs
    /// is done after it, also when that compaction fails before its own
    /// sealing step (here: its first `create`, held until the sealing was
    /// asked for, fails): the compaction is answered with its error, then
    /// the head is sealed. The sealing was dropped before.
    #[test]
    fn a_sealing_asked_for_during_a_failing_compaction_is_done_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let hook = (armed.clone(), std::sync::Mutex::new((entered_tx, go_rx)));
        let (ctx, v) = hooked_ctx(dir.path(), move |_| {
            if !hook.0.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
            let chans = hook.1.lock().unwrap();
            let _ = chans.0.send(());
            let _ = chans.1.recv_timeout(Duration::from_secs(20));
            Err(std::io::Error::other("injected: the compaction's create"))
        });
        let before = v.stats().layers.len();
        armed.store(true, Ordering::SeqCst);
        let (ours, theirs) = UnixStream::pair().unwrap();
        ctx.compact_in_background("v", v.clone(), Some(theirs));
        entered_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the compaction creates a file");
        ctx.in_background("v", v.clone(), Work::SealHead, None);
        go_tx.send(()).unwrap();
        let answer = answer_and_end(&ctx, &ours);
        assert_eq!(answer["reply"], "error", "the compaction failed: {answer}");
        let s = v.stats();
        assert!(
            s.layers.len() > before,
            "the head was sealed after the failed compaction: {s:?}"
        );
        let mut back = vec![0u8; 1 << 20];
        v.read_at(19 << 20, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 7), "the data is unchanged");
    }

    /// A server's rollback, snapshot and rm of a volume just detached wait for the
    /// FUSE request thread that still holds it (here a thread that keeps a
    /// reference for 200 ms), and give up after 2 s with FK0714, which
    /// says the volume is still open.
    #[test]
    fn requests_on_a_detached_volume_wait_for_a_request_thread_to_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = served_ctx(dir.path());
        ctx.pool
            .create_volume("v", &crate::volume::VolumeOptions::new(1 << 20))
            .unwrap();
        let v = ctx.pool.open_volume("v").unwrap();
        v.snapshot("s").unwrap();
        let held_for = |v: Volume, ms| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                drop(v)
            })
        };
        let rollback = Request::Rollback {
            volume: "v".into(),
            name: "s".into(),
        };
        let t = held_for(v, 200);
        assert!(matches!(ctx.execute_request(&rollback), Ok(Response::Ok)));
        t.join().unwrap();

        let t = held_for(ctx.pool.open_volume("v").unwrap(), 200);
        let snapshot = Request::Snapshot {
            volume: "v".into(),
            name: "t".into(),
            atomic: false,
        };
        assert!(matches!(ctx.execute_request(&snapshot), Ok(Response::Ok)));
        t.join().unwrap();

        let t = held_for(ctx.pool.open_volume("v").unwrap(), 200);
        let remove = Request::Remove { name: "v".into() };
        assert!(matches!(ctx.execute_request(&remove), Ok(Response::Ok)));
        t.join().unwrap();
        assert!(ctx.pool.volumes().unwrap().is_empty());

        ctx.pool
            .create_volume("w", &crate::volume::VolumeOptions::new(1 << 20))
            .unwrap();
        let _kept = ctx.pool.open_volume("w").unwrap();
        let remove = Request::Remove { name: "w".into() };
        let started = Instant::now();
        let e = ctx.execute_request(&remove).unwrap_err();
        assert_eq!(e.code(), "FK0714", "{e}");
        assert!(e.to_string().contains("still open"), "{e}");
        assert!(started.elapsed() >= Duration::from_secs(2), "gave up early");
    }

    thread_local! {
        /// Makes [`same_executable`] say no in this thread: the fake
        /// servers of [`a_server_of_another_build_is_named_as_such`] run in
        /// the test's own process.
        pub(super) static PRETEND_OTHER_BUILD: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    /// A server of another build (here a fake one on the store's socket,
    /// answering every connection the same) that does not know a request,
    /// or answers what this build cannot read: one coded error at once
    /// (FK0723, naming its pid) after one connection, not "a malformed
    /// request" alone or a minute of asking again. The same answers from
    /// a server of this very binary keep their codes (a bug here).
    #[test]
    fn a_server_of_another_build_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        std::fs::create_dir_all(&paths.dir).unwrap();
        let unknown = error_response(&VolumeError::Server(
            "a malformed request: unknown variant `detach2`".into(),
        ));
        let me = std::process::id();
        for other in [true, false] {
            PRETEND_OTHER_BUILD.with(|c| c.set(other));
            for (answer, says, same_build_code) in [
                (
                    serde_json::to_string(&unknown).unwrap(),
                    "did not understand this command's request: volume server: a malformed request",
                    "FK0714",
                ),
                (
                    r#"{"reply":"something new"}"#.to_string(),
                    "gave an answer this command cannot read",
                    "FK0714",
                ),
                (
                    "\u{1}not json \u{e9}".to_string(),
                    "gave an answer this command cannot read",
                    "FK0714",
                ),
            ] {
                let listener = UnixListener::bind(paths.socket()).unwrap();
                listener.set_nonblocking(true).unwrap();
                let stop = Arc::new(AtomicBool::new(false));
                let server = std::thread::spawn({
                    let stop = stop.clone();
                    move || {
                        let mut lines = Vec::new();
                        while !stop.load(Ordering::SeqCst) {
                            let Ok((stream, _)) = listener.accept() else {
                                std::thread::sleep(Duration::from_millis(2));
                                continue;
                            };
                            stream.set_nonblocking(false).unwrap();
                            let mut line = String::new();
                            BufReader::new(&stream).read_line(&mut line).unwrap();
                            let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
                            lines.push(line);
                        }
                        lines
                    }
                });
                let started = Instant::now();
                let e = call(&paths, &Request::Detach { name: "v".into() }).unwrap_err();
                stop.store(true, Ordering::SeqCst);
                let lines = server.join().unwrap();
                assert_eq!(lines.len(), 1, "asked again: {e}");
                assert!(lines[0].contains("\"op\":\"detach\""), "{lines:?}");
                assert!(started.elapsed() < Duration::from_secs(5), "{e}");
                if !other {
                    assert_eq!(e.code(), same_build_code, "{e}");
                    std::fs::remove_file(paths.socket()).unwrap();
                    continue;
                }
                assert_eq!(e.code(), "FK0723", "{e}");
                assert!(
                    e.to_string()
                        .starts_with(&format!("the volume server (pid {me}) {says}")),
                    "{e}"
                );
                assert!(
                    e.hint().contains(&format!("/proc/{me}/exe")),
                    "{}",
                    e.hint()
                );
                std::fs::remove_file(paths.socket()).unwrap();
            }
        }
        PRETEND_OTHER_BUILD.with(|c| c.set(false));
        // A server whose binary was replaced (deleted) since it started is
        // said to be one; one whose binary is there is not.
        let bin = dir.path().join("sleep-copy");
        std::fs::copy("/bin/sleep", &bin).unwrap();
        let spawn = |program: &Path| {
            // ETXTBSY while another test thread's fork still holds the
            // copy open for writing: try again.
            for _ in 0..50 {
                match Command::new(program).arg("10").spawn() {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    r => return r.unwrap(),
                }
            }
            panic!("{} stayed busy", program.display())
        };
        let mut copy = spawn(&bin);
        std::fs::remove_file(&bin).unwrap();
        let mut plain = spawn(Path::new("/bin/sleep"));
        let replaced = executable_replaced(copy.id() as i32);
        let kept = executable_replaced(plain.id() as i32);
        let same = same_executable(plain.id() as i32);
        for c in [&mut copy, &mut plain] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(replaced && !kept && !same, "{replaced} {kept} {same}");
        // What a real server answers to a request it does not know, or
        // to one with a field it does not know (not ignored: a later
        // build's request that needs it must not be done without it), is
        // what the check above looks for; the requests it knows still
        // parse, optional fields left out included.
        let other = tempfile::tempdir().unwrap();
        let ctx = served_ctx(other.path());
        for request in [
            r#"{"op":"from-a-newer-build"}"#,
            r#"{"op":"detach","name":"v","from_a_newer_build":true}"#,
            r#"{"op":"list","from_a_newer_build":true}"#,
        ] {
            let (a, b) = UnixStream::pair().unwrap();
            (&a).write_all(format!("{request}\n").as_bytes()).unwrap();
            handle(&ctx, b, false);
            let mut line = String::new();
            BufReader::new(&a).read_line(&mut line).unwrap();
            match serde_json::from_str::<Response>(&line).unwrap() {
                Response::Error { code, message, .. } => assert!(
                    code == "FK0714" && is_malformed_request(&message),
                    "{request}: {line}"
                ),
                _ => panic!("{request}: {line}"),
            }
        }
        for known in [
            Request::Detach { name: "v".into() },
            Request::Compact { name: "v".into() },
        ] {
            let line = serde_json::to_string(&known).unwrap();
            serde_json::from_str::<Request>(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}
