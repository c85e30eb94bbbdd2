//! # fukastor: a composefs-style image and rootfs backend
//!
//! fukastor keeps container images in a content-addressed, deduplicated
//! **store** and serves them as read-only root filesystems.
//!
//! The crate is laid out by the architecture (see `docs/design.md`):
//!
//! | module | owns |
//! |---|---|
//! | [`store`] | the store directory: objects, image records, refs, locks, fsck, gc |
//! | [`tree`] | image trees (the `composefs` tree model): building from layers, dump, restore |
//! | [`volume`] | thin copy-on-write volumes: layer stacks, snapshots, clones, rollback, crash recovery; the volume server (control socket, loop devices) |
//! | [`container`] | containers' root filesystems: image + volume joined by overlayfs |
//! | [`oci`] | image sources (`oci:`, `oci-archive:`, `docker-archive:`, `dir:`), layer import, export |
//! | [`mount`] | serving trees through the kernel (EROFS + overlayfs); tracking mounts |
//! | [`fuse`] | serving trees through our own FUSE server (passthrough, multithreaded); exporting attached volumes as files |
//! | [`runtime`] | running containers: OCI runtime config from the image config, crun, podman hooks |
//! | [`filter`] | Lua I/O filters: sandboxed scripts with native helpers (zstd, CRC-32C, AEAD, replicas) that encode objects and blocks |
//! | [`cli`] | the command line: flags, output, coded errors, `demo` |
//!
//! Every module has one error type. Each error knows its stable code and a
//! hint ([`error::Coded`]); only the CLI turns them into text.

pub mod cli;
pub mod container;
pub mod error;
pub mod filter;
pub mod fuse;
pub mod mount;
pub mod oci;
pub mod runtime;
pub mod store;
pub mod tree;
pub mod volume;

/// Raises the soft limit on open descriptors to the hard one, for the two
/// long-lived servers: the FUSE server keeps one per object read
/// (src/fuse/fds.rs) and one per open under passthrough; the volume server
/// one per layer of every open volume.
pub(crate) fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("raising the descriptor limit: {e}");
        }
    }
}

/// Test hook for crash tests: when `FUKASTOR_FAILPOINT` equals `name`, the
/// process kills itself with SIGKILL right here. Costs one environment look-up.
#[doc(hidden)]
pub fn failpoint(name: &str) {
    if std::env::var_os("FUKASTOR_FAILPOINT").is_some_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Test hook for race tests: when `FUKASTOR_DELAYPOINT` is `name:MS`, the
/// process sleeps MS milliseconds (at most 10 s) right here.
#[doc(hidden)]
pub fn delaypoint(name: &str) {
    let Some(v) = std::env::var_os("FUKASTOR_DELAYPOINT") else {
        return;
    };
    let v = v.to_string_lossy();
    if let Some(ms) = v
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
    }
}
