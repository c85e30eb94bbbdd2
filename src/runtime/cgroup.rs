//! Warming the kernel's cgroup attach lock before crun needs it.
//!
//! crun puts each container into its cgroups by writing the container's pid
//! into `cgroup.procs`. Every such write takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing. That lock is a per-CPU rwsem:
//! unless another writer took it within the last RCU grace period,
//! `percpu_down_write` first waits for a grace period (`rcu_sync_enter`), so
//! that readers (every fork and exit on the machine) switch to its slow path.
//! On this kind of host that wait was 5–13 ms of a ~40 ms `crun run`
//! (docs/benchmarks.md, *Running containers*).
//!
//! A write of a process's own pid into its own cgroup's `cgroup.procs` (a
//! migration to where it already is) takes the same lock, so it starts that
//! grace period. A writer that comes while it is running waits only for the
//! rest of it; one that comes within a grace period after it does not wait.
//! [`Warmer`] makes that write on a thread of its own when `run` starts, so
//! the grace period passes while the root filesystem is assembled instead
//! of inside crun, and repeats it until crun starts so that the fast path is
//! still open when crun gets to its cgroups.
//!
//! It is an optimisation only: a write that fails (no cgroup filesystem, not
//! root) is logged at debug level and changes nothing. Where the cgroup
//! hierarchy is mounted with `favordynmods`, the lock stays in its slow mode,
//! no writer waits, and the write costs the thread ~0.1 ms.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How often the write is repeated until crun starts: a write keeps the
/// lock's fast path for at least a grace period after it (15–20 ms on an
/// idle machine here), so the window never closes while `run` mounts.
const REWRITE: Duration = Duration::from_millis(8);

/// The thread that keeps the cgroup attach lock warm until crun starts
/// (module docs). Dropping it stops the thread and waits for it: at most
/// one write, which after crun has run is long done.
#[derive(Debug)]
pub struct Warmer {
    crun_starts: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Warmer {
    /// Starts the thread (root only: crun as another user does not write
    /// cgroup files as root does). It writes at once, then every
    /// [`REWRITE`], until [`Warmer::crun_starts`] or the drop.
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
            .spawn(move || keep_warm(&rx));
        match spawned {
            Ok(t) => {
                w.crun_starts = Some(tx);
                w.thread = Some(t);
            }
            Err(e) => tracing::debug!("warming the cgroup lock: {e}"),
        }
        w
    }

    /// crun is about to be started: one last write, then the thread ends.
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

fn keep_warm(crun_starts: &mpsc::Receiver<()>) {
    let path = match write_own_pid() {
        Ok(path) => path,
        Err(e) => {
            tracing::debug!("warming the cgroup lock: {e}");
            return;
        }
    };
    let mut writes = 1;
    // A write that fails later (the cgroup went away) ends the loop too.
    while let Err(mpsc::RecvTimeoutError::Timeout) = crun_starts.recv_timeout(REWRITE) {
        writes += 1;
        if write_to(&path).is_err() {
            break;
        }
    }
    // As crun starts: its own write comes a few ms later, inside the window
    // this one opens.
    let last = write_to(&path);
    tracing::debug!(
        "cgroup lock warmed through {} ({} writes; the last: {last:?})",
        path.display(),
        writes + 1
    );
}

fn write_to(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(std::process::id().to_string().as_bytes()))
}

/// Writes this process's pid into the `cgroup.procs` of a cgroup it is in;
/// returns that file.
fn write_own_pid() -> std::io::Result<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup.procs found");
    for path in candidates(&own) {
        match write_to(&path) {
            Ok(()) => return Ok(path),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The `cgroup.procs` files of the cgroups named by a `/proc/PID/cgroup`
/// text, where systemd-style hosts mount them: the unified (v2) hierarchy
/// first, then each v1 hierarchy. Every one of them takes the same lock.
fn candidates(proc_cgroup: &str) -> Vec<PathBuf> {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // A path the kernel writes is absolute and has no `..`; anything
        // else (a cgroup outside our namespace shows as `/..`) is skipped.
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                v2.push(PathBuf::from(root).join(rel).join("cgroup.procs"));
            }
        } else if let Some(first) = controllers.split(',').next() {
            let dir = first.strip_prefix("name=").unwrap_or(first);
            if !dir.is_empty() && !dir.contains('/') {
                v1.push(
                    PathBuf::from("/sys/fs/cgroup")
                        .join(dir)
                        .join(rel)
                        .join("cgroup.procs"),
                );
            }
        }
    }
    v2.extend(v1);
    v2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_v2_then_v1_and_skip_paths_outside() {
        let text = "10:hugetlb:/\n9:name=systemd:/\n4:memory:/a/b\n\
                    3:cpu,cpuacct:/x\n2:pids:/..\n0::/\n";
        let got: Vec<String> = candidates(text)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        similar_asserts::assert_eq!(
            got,
            [
                "/sys/fs/cgroup/unified/cgroup.procs",
                "/sys/fs/cgroup/cgroup.procs",
                "/sys/fs/cgroup/hugetlb/cgroup.procs",
                "/sys/fs/cgroup/systemd/cgroup.procs",
                "/sys/fs/cgroup/memory/a/b/cgroup.procs",
                "/sys/fs/cgroup/cpu/x/cgroup.procs",
            ]
        );
        assert!(candidates("garbage\n\n1:cpu\n").is_empty());
    }
}
