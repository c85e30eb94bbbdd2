//! Warming the kernel's cgroup attach lock before crun needs it.
//!
//! crun puts each container into its cgroups by writing the container's pid
//! into `cgroup.procs`. Every such write takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing. That lock is a per-CPU rwsem:
//! unless another writer took it within the last RCU grace period,
//! `percpu_down_write` first waits for a grace period (`rcu_sync_enter`), so
//! that readers (every fork and exit on the machine) switch to its slow path.
//! On this project's host (Linux 6.18, cgroup v1 controllers with a v2
//! hierarchy beside them) that wait was 5–13 ms of a ~40 ms `crun run`
//! (docs/benchmarks.md, *Running containers*).
//!
//! A thread that writes its own thread ID into its own cgroup's
//! `cgroup.threads` (v2) or `tasks` (v1) takes the same lock (a write of
//! `0` does not, measured), so it starts that grace period; the move to
//! where the thread already is changes nothing. A writer that comes while
//! the grace period runs waits only for the rest of it; one that comes
//! within a grace period after it does not wait. [`Warmer`] makes that
//! write on a thread of its own when `run` starts, so the grace period
//! passes while the root filesystem is assembled instead of inside crun. It
//! repeats the write every [`REWRITE`] until crun starts (at most
//! [`BEFORE_CRUN`] times: a `run` that waits long for a busy store stops
//! early) and [`AFTER_CRUN`] times after, so the fast path is still open
//! when crun gets to its cgroups.
//!
//! Only the warmer thread is ever named, never the process: a file that
//! is not the thread's own cgroup (a hierarchy mounted from elsewhere) can
//! at worst move that thread, which ends right after, and cgroup v2 refuses
//! to move a thread out of its domain. The files are found through the
//! mount table ([`crate::mount::table`]), whose cgroup roots are relative
//! to the same cgroup namespace as `/proc/self/cgroup`.
//!
//! Costs: while the lock is in its slow mode, every fork and exit on the
//! machine takes the slower path (as after any cgroup move); each write
//! holds the lock for a move that does nothing. crun's own write would put
//! the lock in that mode anyway; this puts it there ~10 ms earlier and keeps
//! it there for `run`'s setup. It is an optimisation only: it runs for root
//! (crun as root writes cgroupfs itself; rootless crun goes through
//! systemd), and a write that fails (no cgroup filesystem, read-only) is
//! logged at debug level and ends the thread. Where the hierarchy is mounted
//! with `favordynmods`, no writer waits for a grace period, and the writes
//! save nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::mount::MountEntry;
use std::sync::mpsc;
use std::time::Duration;

/// How often the write is repeated: a write keeps the lock's fast path
/// open for at least a grace period after it (15–20 ms on an idle machine
/// here), so the window does not close in between.
const REWRITE: Duration = Duration::from_millis(8);

/// Writes before crun starts at most (the first included): ~250 ms.
const BEFORE_CRUN: usize = 32;

/// Writes after crun is spawned (the first at once): the window stays open
/// ~40 ms more, however long crun takes to reach its cgroups.
const AFTER_CRUN: usize = 5;

/// The thread that keeps the cgroup attach lock warm until crun starts
/// (module docs). Dropping it stops the thread and waits for it: at most
/// one write in flight.
#[derive(Debug)]
pub struct Warmer {
    crun_starts: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Warmer {
    /// Starts the thread, as root only (module docs).
    pub fn start() -> Warmer {
        let mut w = Warmer {
            crun_starts: None,
            thread: None,
        };
        if !rustix::process::geteuid().is_root() {
            return w;
        }
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("cgroup-warm".into())
            .spawn(move || {
                keep_warm(&rx, first_write, write_own_tid);
            });
        match spawned {
            Ok(t) => {
                w.crun_starts = Some(tx);
                w.thread = Some(t);
            }
            Err(e) => tracing::debug!("warming the cgroup lock: {e}"),
        }
        w
    }

    /// crun is about to be spawned.
    pub fn crun_starts(&self) {
        if let Some(tx) = &self.crun_starts {
            let _ = tx.send(());
        }
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        drop(self.crun_starts.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What [`keep_warm`] did: the writes made, and whether it ended on a
/// failed write.
#[derive(Debug, PartialEq)]
struct Warmed {
    writes: usize,
    failed: bool,
}

/// The thread's work. `first` finds the file and makes the first write;
/// `again` repeats it on that file. A message on `crun_starts` says crun is
/// being spawned; its sender's drop says `run` is over.
fn keep_warm(
    crun_starts: &mpsc::Receiver<()>,
    first: fn() -> std::io::Result<PathBuf>,
    again: fn(&Path) -> std::io::Result<()>,
) -> Warmed {
    let path = match first() {
        Ok(path) => path,
        Err(e) => {
            tracing::debug!("warming the cgroup lock: {e}");
            return Warmed {
                writes: 0,
                failed: true,
            };
        }
    };
    let mut done = Warmed {
        writes: 1,
        failed: false,
    };
    let write = |done: &mut Warmed| match again(&path) {
        Ok(()) => {
            done.writes += 1;
            true
        }
        Err(e) => {
            tracing::debug!("warming the cgroup lock through {}: {e}", path.display());
            done.failed = true;
            false
        }
    };
    // Until crun starts.
    let mut crun = loop {
        match crun_starts.recv_timeout(REWRITE) {
            Ok(()) => break true,
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if done.writes >= BEFORE_CRUN {
                    // Enough: wait for crun without writing.
                    break crun_starts.recv().is_ok();
                }
                if !write(&mut done) {
                    break false;
                }
            }
        }
    };
    // From crun's start until its own write.
    for i in 0..AFTER_CRUN {
        if !crun || !write(&mut done) {
            break;
        }
        if i + 1 < AFTER_CRUN
            && let Err(mpsc::RecvTimeoutError::Disconnected) = crun_starts.recv_timeout(REWRITE)
        {
            crun = false;
        }
    }
    tracing::debug!(
        "cgroup lock warmed through {} ({} writes{})",
        path.display(),
        done.writes,
        if done.failed { ", the last failed" } else { "" }
    );
    done
}

/// Writes the calling thread's ID into the first of [`candidates`] that
/// takes it; returns that file.
fn first_write() -> std::io::Result<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let mounts = crate::mount::table();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup file found");
    for path in candidates(&own, &mounts) {
        match write_own_tid(&path) {
            Ok(()) => return Ok(path),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Writes the calling thread's ID into `path` (a `cgroup.threads` or
/// `tasks` file).
fn write_own_tid(path: &Path) -> std::io::Result<()> {
    let tid = rustix::thread::gettid().as_raw_nonzero().to_string();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(tid.as_bytes()))
}

/// The files a thread of this process writes its ID into to move to the
/// cgroup it is in, given `/proc/self/cgroup` and the mount table:
/// `cgroup.threads` of the v2 cgroup first, then `tasks` of each v1 one,
/// each under a mount of its hierarchy whose root holds it. Every one of
/// them takes the same lock.
fn candidates(proc_cgroup: &str, mounts: &[MountEntry]) -> Vec<PathBuf> {
    let mut found_v2 = Vec::new();
    let mut found_v1 = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // The kernel writes absolute paths; a cgroup outside our namespace
        // shows as `/..`.
        let path = Path::new(path);
        if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
            continue;
        }
        let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
        for m in mounts {
            let v2 = match m.fstype.as_str() {
                "cgroup2" => true,
                "cgroup" => false,
                _ => continue,
            };
            let holds = if controllers.is_empty() {
                v2
            } else {
                !v2 && wanted
                    .iter()
                    .all(|c| m.super_options.split(',').any(|o| o == *c))
            };
            let Ok(rel) = path.strip_prefix(&m.root) else {
                continue;
            };
            if !holds {
                continue;
            }
            if v2 {
                found_v2.push(m.mountpoint.join(rel).join("cgroup.threads"));
            } else {
                found_v1.push(m.mountpoint.join(rel).join("tasks"));
            }
        }
    }
    found_v2.extend(found_v1);
    found_v2
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 31 0:31 / /sys/fs/cgroup/systemd rw,relatime shared:9 - cgroup cgroup rw,xattr,name=systemd
35 31 0:32 /a /sys/fs/cgroup/mem\\040ory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
37 31 0:34 /.. /elsewhere rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn candidates_follow_the_mounts_v2_first() {
        let cgroup = "9:name=systemd:/\n8:pids:/x:y\n4:memory:/a/b\n\
                      3:cpu,cpuacct:/c\n2:blkio:/\n1:freezer:/..\n0::/s\n";
        let got: Vec<String> = candidates(cgroup, &crate::mount::parse_table(MOUNTINFO))
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        similar_asserts::assert_eq!(
            got,
            [
                "/sys/fs/cgroup/unified/s/cgroup.threads",
                "/sys/fs/cgroup/systemd/tasks",
                "/sys/fs/cgroup/pids/x:y/tasks",
                // The mount's root /a holds /a/b: its b.
                "/sys/fs/cgroup/mem ory/b/tasks",
                "/sys/fs/cgroup/cpu,cpuacct/c/tasks",
            ]
        );
        // A cgroup outside the mount's root has no file; nor has a
        // hierarchy that is not mounted (blkio), or a path with `..`.
        assert!(candidates("4:memory:/z\n", &crate::mount::parse_table(MOUNTINFO)).is_empty());
        assert!(candidates("0::/../x\n", &crate::mount::parse_table(MOUNTINFO)).is_empty());
        assert!(candidates("garbage\n\n1:cpu\n", &crate::mount::parse_table(MOUNTINFO)).is_empty());
    }

    fn found() -> std::io::Result<PathBuf> {
        Ok(PathBuf::from("/cg/tasks"))
    }
    fn not_found() -> std::io::Result<PathBuf> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn ok(_: &Path) -> std::io::Result<()> {
        Ok(())
    }
    fn fails(_: &Path) -> std::io::Result<()> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }

    #[test]
    fn keep_warm_writes_until_crun_then_a_bounded_number_more() {
        // crun starts at once: the first write, then AFTER_CRUN more.
        let (tx, rx) = mpsc::channel();
        tx.send(()).unwrap();
        let t = std::thread::spawn(move || keep_warm(&rx, found, ok));
        let got = t.join().unwrap();
        drop(tx);
        assert_eq!(
            got,
            Warmed {
                writes: 1 + AFTER_CRUN,
                failed: false
            }
        );

        // run ends before crun (here: before the thread's first wait):
        // the first write only, none of the writes for crun.
        let (tx, rx) = mpsc::channel::<()>();
        drop(tx);
        assert_eq!(
            keep_warm(&rx, found, ok),
            Warmed {
                writes: 1,
                failed: false
            }
        );

        // crun never starts: the writes stop at BEFORE_CRUN, and the
        // thread waits without writing until the drop. (Counted, not
        // timed: a loaded machine only makes it slower.)
        static COUNTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        fn counted(_: &Path) -> std::io::Result<()> {
            COUNTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        let repeats = || COUNTED.load(std::sync::atomic::Ordering::SeqCst);
        let (tx, rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || keep_warm(&rx, found, counted));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while repeats() < BEFORE_CRUN - 1 {
            assert!(std::time::Instant::now() < deadline, "hang guard");
            std::thread::sleep(REWRITE);
        }
        std::thread::sleep(REWRITE * 5);
        assert_eq!(repeats(), BEFORE_CRUN - 1, "writes went on past the bound");
        drop(tx);
        assert_eq!(
            t.join().unwrap(),
            Warmed {
                writes: BEFORE_CRUN,
                failed: false
            }
        );
    }

    #[test]
    fn keep_warm_stops_at_the_first_failure() {
        let (tx, rx) = mpsc::channel();
        tx.send(()).unwrap();
        let got = keep_warm(&rx, not_found, ok);
        assert_eq!(
            got,
            Warmed {
                writes: 0,
                failed: true
            }
        );
        let got = keep_warm(&rx, found, fails);
        assert_eq!(
            got,
            Warmed {
                writes: 1,
                failed: true
            }
        );
        drop(tx);
    }
}
