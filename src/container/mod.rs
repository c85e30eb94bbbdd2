//! Containers' root filesystems: an image (a tree) joined with a private
//! writable layer (a volume) by overlayfs (DESIGN §1).
//!
//! # What it owns
//!
//! ```text
//! STORE/fukastor/containers/<name>.json   the record: image, volume, size, mountpoint
//! STORE/fukastor/containers/<name>/fs     the volume's ext4 (directories upper/ and work/)
//! STORE/fukastor/containers/<name>/rootfs the root filesystem: the default mountpoint
//! ```
//!
//! The root filesystem is one overlayfs ([`crate::mount::mount_writable`]):
//! the image's EROFS (mounted detached, attached nowhere else) as its lower
//! layer, the store's objects as its data-only layer, and `fs/upper` as its
//! upper layer: a writable composefs mount, with the source
//! `fukastor-container:<name>@<store>` (`mounts` lists only image mounts).
//! (Before, the image had its own
//! read-only composefs mount at `<name>/lower` under the container's
//! overlay; [`LEGACY_LOWER`] is still unmounted where one is found.)
//!
//! A container's volume is `ctr.<name>`, a clone of snapshot `formatted` of
//! the template volume `template.ext4-inline-<size>` (built once per size by the
//! volume server: `mkfs.ext4` happens once, never per container).
//!
//! # Steps and what a crash leaves
//!
//! `create`: clone the template (one metadata file), then write the record,
//! under `fukastor/containers.lock` (`flock`) from the name check to the
//! record, so a volume without a record is never another create's at work.
//! A crash between leaves a volume `ctr.<name>` without a record (and drops
//! the lock); the next `create` of that name removes it first.
//!
//! `mount`: the image's EROFS (on a thread) while the volume is attached and
//! its ext4 mounted at `fs`, then the overlay at the mountpoint; the record
//! names the mountpoint only when it is not the default `rootfs` (so
//! mounting and unmounting there write no record). A failure undoes the
//! steps already done, in reverse. A crash leaves some of these mounts;
//! `container umount` (and `rm --force`) undoes whatever it finds, each
//! step tolerating the ones already gone. `umount` unmounts the overlay
//! (the image's EROFS goes with it), then the ext4, and detaches the volume
//! once the ext4 is gone.
//!
//! `run --rm` mounts with [`Containers::mount_disposable`] (ext4
//! `nobarrier,noload`) and ends with [`Containers::discard`] (the volume detached
//! and deleted unflushed), so the container never costs the volume a flush.

use std::path::{Path, PathBuf};

use composefs::fsverity::FsVerityHashValue;
use serde::{Deserialize, Serialize};

use crate::error::Coded;
use crate::mount::MountError;
use crate::store::{LockMode, Store, StoreError, write_atomic, write_atomic_volatile};
use crate::volume::VolumeError;
use crate::volume::server::{self, Paths, Request, Response, TEMPLATE_SNAPSHOT};

/// Default size of a container's writable layer (thin: only what is
/// written takes space).
pub const DEFAULT_SIZE: u64 = 10 << 30;

/// What can go wrong with containers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No such container.
    #[error("no container named {0:?}")]
    NotFound(String),
    /// The name is taken.
    #[error("a container named {0:?} exists already")]
    Exists(String),
    /// Not a valid container name.
    #[error("{0:?} is not a valid container name: {1}")]
    BadName(String, &'static str),
    /// The container is mounted and the operation needs it unmounted.
    #[error("container {0:?} is mounted")]
    Mounted(String),
    /// A mount step failed.
    #[error("mounting container {0:?}: {1}")]
    Mount(String, String),
    /// An unmount step failed.
    #[error("unmounting container {0:?}: {1}")]
    Umount(String, String),
    /// `fsck --repair` set a damaged record of that name aside; its volume
    /// may still hold the container's files.
    #[error("container {0:?} has a damaged record that `fsck --repair` set aside ({1})")]
    SetAside(String, String),
    /// Its volume.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// Its image mount.
    #[error(transparent)]
    ImageMount(#[from] MountError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coded for ContainerError {
    fn code(&self) -> &'static str {
        match self {
            ContainerError::NotFound(_) => "FK0750",
            ContainerError::Exists(_) => "FK0751",
            ContainerError::BadName(..) => "FK0752",
            ContainerError::Mounted(_) => "FK0753",
            ContainerError::Mount(..) => "FK0754",
            ContainerError::Umount(..) => "FK0755",
            ContainerError::SetAside(..) => "FK0756",
            ContainerError::Volume(e) => e.code(),
            ContainerError::ImageMount(e) => e.code(),
            ContainerError::Store(e) => e.code(),
        }
    }

    fn hint(&self) -> String {
        match self {
            ContainerError::NotFound(_) => "list containers with `fukastor ps`".into(),
            ContainerError::Exists(_) => {
                "choose another name, or remove it with `fukastor rm NAME`".into()
            }
            ContainerError::BadName(..) => {
                "use up to 64 letters, digits, '.', '_' and '-', starting with a letter or digit"
                    .into()
            }
            ContainerError::Mounted(_) => {
                "unmount it first: `fukastor container umount NAME` (or `rm --force`)".into()
            }
            ContainerError::Mount(..) => {
                "containers need root, overlayfs, ext4 and loop devices; `fukastor container umount NAME` cleans up".into()
            }
            ContainerError::Umount(..) => {
                "stop the processes using the container's files, then try again".into()
            }
            ContainerError::SetAside(name, _) => format!(
                "copy what you need out of its volume (`fukastor volume attach ctr.{name}` gives its ext4), \
                 then `fukastor volume rm ctr.{name}` and delete the set-aside file; or choose another name"
            ),
            ContainerError::Volume(e) => e.hint(),
            ContainerError::ImageMount(e) => e.hint(),
            ContainerError::Store(e) => e.hint(),
        }
    }
}

/// Shorthand.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// A container's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The image ID.
    pub image_id: String,
    /// Its volume.
    pub volume: String,
    /// The volume's size.
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    /// Where its root filesystem is mounted, when it is mounted somewhere
    /// else than its own `rootfs` directory (`container mount NAME DIR`);
    /// `None`: there, when it is mounted (the mount table tells).
    pub mountpoint: Option<PathBuf>,
}

/// A container as `ps` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContainerEntry {
    /// Name.
    pub name: String,
    /// Image name.
    pub image: String,
    /// Image ID.
    pub image_id: String,
    /// Volume name.
    pub volume: String,
    /// `mounted` or `stopped` (`ps` says `running` for a mounted
    /// container that crun runs).
    pub state: String,
    /// The mounted root filesystem.
    pub rootfs: Option<PathBuf>,
}

/// The containers of one store.
#[derive(Debug, Clone)]
pub struct Containers {
    paths: Paths,
    dir: PathBuf,
}

/// The volume of container `name`.
pub fn volume_of(name: &str) -> String {
    format!("ctr.{name}")
}

/// The template volume containers of `size` bytes are cloned from. The
/// name changes with the template's format: a store made by an older
/// fukastor builds the current one on its next `create`, and its
/// containers keep the blocks of the one they were cloned from.
fn template_of(size: u64) -> String {
    format!("template.ext4-inline-{size}")
}

/// The template of `size` bytes before it had `inline_data` (until
/// 2026-12-03): removed once the current one is built. Containers cloned
/// from it keep its layers (a pool frees only what no volume uses).
fn legacy_template_of(size: u64) -> String {
    format!("template.ext4-{size}")
}

fn check_name(name: &str) -> Result<()> {
    let bad = |why| Err(ContainerError::BadName(name.to_string(), why));
    if name.is_empty() || name.len() > 64 {
        return bad("it must have 1 to 64 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("it must start with a letter or a digit");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn call(paths: &Paths, req: &Request) -> Result<Response> {
    Ok(server::call(paths, req)?)
}

/// A container's work directory tree: what a spare tree holds.
const SPARE_TREE: [&str; 3] = ["bundle", "fs", "rootfs"];

/// Where fukastor mounted a container's image before its root filesystem
/// became one overlay (a container mounted then may still have it):
/// unmounted when found, and never reached into.
const LEGACY_LOWER: &str = "lower";

/// Spare work directory trees kept at most (one per `run --rm` that may
/// overlap another).
const MAX_SPARE_TREES: usize = 8;

impl Containers {
    /// The containers of the store at `store_root`.
    pub fn new(store_root: &Path) -> Containers {
        let paths = Paths::new(store_root);
        Containers {
            dir: paths.store.join("fukastor/containers"),
            paths,
        }
    }

    /// The volume paths (for snapshot commands).
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Where a disposable container's record is kept: like an ephemeral
    /// volume's metadata, never synced and valid only in the boot that
    /// wrote it, whose ID the name carries. `None` without a boot ID. (In
    /// `containers/.ephemeral/`: a container's name cannot start with a
    /// dot, so no work directory is ever that one.)
    fn ephemeral_record_path(&self, name: &str) -> Option<PathBuf> {
        let boot = crate::volume::boot_id()?;
        let file = crate::volume::boot_file(name, &boot, ".json");
        Some(self.dir.join(".ephemeral").join(file))
    }

    /// Takes `fukastor/containers.lock` (`flock`, exclusive, waiting for
    /// it) until the file returned is dropped: creates hold it from the
    /// image's resolution to the record, `rmi` from its check that no
    /// container uses the image to the image's removal. The kernel drops
    /// the lock when its holder dies.
    pub fn lock_creates(&self) -> Result<std::fs::File> {
        let io = |e: std::io::Error| StoreError::Io {
            context: "taking the containers' create lock".into(),
            source: e,
        };
        let path = self.paths.store.join("fukastor/containers.lock");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(e.into()))?;
        Ok(file)
    }

    /// Container `name`'s record file, if it has one: the durable one,
    /// else this boot's ephemeral one.
    fn locate(&self, name: &str) -> Option<PathBuf> {
        std::iter::once(self.record_path(name))
            .chain(self.ephemeral_record_path(name))
            .find(|p| p.exists())
    }

    fn work_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Takes container `name`'s lock: an exclusive `flock` on its work
    /// directory `work` (a spare tree or a new directory when missing), held until the file returned
    /// is dropped (or its holder dies); waited for as long as the store
    /// lock (`FUKASTOR_LOCK_TIMEOUT`, then FK0102). `container mount`,
    /// `container umount`, `rm` and the end of `run --rm` each take it
    /// once they know the name is a container's, and look at the container
    /// again once they hold it, so that two of them never interleave their
    /// steps: two mounts racing used to both mount the ext4, and the loser's
    /// undo took it from under the winner's overlay. A directory retired
    /// while its lock was awaited (`rm`, the end of `run --rm`) is noticed
    /// and made again.
    fn lock(&self, name: &str, work: &Path) -> Result<std::fs::File> {
        let io = |e: std::io::Error| StoreError::Io {
            context: format!("locking container {name}"),
            source: e,
        };
        loop {
            // A spare tree when one is kept (what a mount needs), else an
            // empty directory; never renamed over one that exists, which
            // would move the lock away from the path.
            self.reuse_spare_tree(work);
            match std::fs::create_dir(work) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e).into()),
            }
            let dir = match std::fs::File::open(work) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e).into()),
            };
            crate::store::flock_timed(
                &dir,
                LockMode::Exclusive,
                &format!("container {name}'s lock"),
            )?;
            let held = rustix::fs::fstat(&dir).map_err(|e| io(e.into()))?;
            match rustix::fs::stat(work) {
                Ok(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => {
                    return Ok(dir);
                }
                Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io(e.into()).into()),
            }
        }
    }

    /// Container `name`'s record, read again once its lock
    /// ([`Containers::lock`]) is held, and the lock. A container removed
    /// while the lock was awaited is [`ContainerError::NotFound`], and the
    /// work directory the lock made for it is retired.
    fn get_locked(&self, name: &str) -> Result<(std::fs::File, Container)> {
        // A valid name with a record (read once, below), before any path
        // is made from it.
        if check_name(name).is_err() || self.locate(name).is_none() {
            return Err(ContainerError::NotFound(name.to_string()));
        }
        let work = self.work_dir(name);
        let lock = self.lock(name, &work)?;
        match self.get(name) {
            Ok(c) => Ok((lock, c)),
            Err(e) => {
                if matches!(e, ContainerError::NotFound(_)) {
                    self.retire_work_dir(&work);
                }
                Err(e)
            }
        }
    }

    /// Where emptied work directory trees wait to be reused
    /// (`containers/.spare/`; no container name starts with a dot).
    fn spare_dir(&self) -> PathBuf {
        self.dir.join(".spare")
    }

    /// Gives a container that has no work directory `work` a spare tree
    /// (`bundle`, `fs`, `rootfs`, all empty), if one is kept: one
    /// rename instead of four `mkdir`s, each of which allocates a block
    /// (about 1 ms apiece on this project's CI hosts' ext4; their `rmdir`
    /// frees it again, a discard each). Any failure leaves the `mkdir`s to
    /// the caller; two runs racing for one spare both try the next one.
    fn reuse_spare_tree(&self, work: &Path) {
        if work.symlink_metadata().is_ok() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.spare_dir()) else {
            return;
        };
        for e in entries.flatten() {
            // Only a directory (never a symlink: the container's mounts
            // would follow it).
            // RENAME_NOREPLACE: a directory made meanwhile (another
            // command's, maybe locked already) is never replaced.
            if e.file_type().is_ok_and(|t| t.is_dir())
                && rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    e.path(),
                    rustix::fs::CWD,
                    work,
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .is_ok()
            {
                return;
            }
            if work.symlink_metadata().is_ok() {
                return;
            }
        }
    }

    /// Keeps container work directory `work` as a spare tree when it is
    /// exactly what [`Containers::reuse_spare_tree`] hands out once
    /// `bundle/config.json` is gone: a directory holding the three
    /// directories (none a symlink; the caller made sure none is a mount),
    /// `fs` and `rootfs` empty, nothing in `bundle` but that file.
    /// Returns false (and changes nothing but `config.json`) otherwise, or
    /// when [`MAX_SPARE_TREES`] are kept already; the caller
    /// then removes `work`.
    fn keep_as_spare(&self, work: &Path) -> bool {
        let names = |d: &Path| -> Option<Vec<std::ffi::OsString>> {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .ok()?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .ok()?;
            v.sort();
            Some(v)
        };
        if !work.symlink_metadata().is_ok_and(|m| m.is_dir())
            || names(work).as_deref() != Some(&SPARE_TREE.map(std::ffi::OsString::from)[..])
        {
            return false;
        }
        for d in SPARE_TREE {
            let p = work.join(d);
            // (Nothing is mounted here: `retire_work_dir` checked.)
            if !p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                return false;
            }
            let inside = names(&p);
            let ok = match d {
                "bundle" => inside
                    .as_ref()
                    .is_some_and(|v| v.is_empty() || (v.len() == 1 && v[0] == "config.json")),
                _ => inside.as_ref().is_some_and(Vec::is_empty),
            };
            if !ok {
                return false;
            }
        }
        let config = work.join("bundle/config.json");
        if config.symlink_metadata().is_ok_and(|m| m.is_file())
            && std::fs::remove_file(&config).is_err()
        {
            return false;
        }
        let spares = self.spare_dir();
        let kept = std::fs::read_dir(&spares).map_or(0, |d| d.count());
        if kept >= MAX_SPARE_TREES || std::fs::create_dir_all(&spares).is_err() {
            return false;
        }
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        std::fs::rename(work, spares.join(unique)).is_ok()
    }

    /// Removes container work directory `work`: kept as a spare tree when
    /// it can be ([`Containers::keep_as_spare`]), else deleted; left alone
    /// (with a warning) while anything is mounted in it, since removal must
    /// never reach into a mounted filesystem.
    fn retire_work_dir(&self, work: &Path) {
        let mounted = std::iter::once(work.to_path_buf())
            .chain(SPARE_TREE.iter().map(|d| work.join(d)))
            .chain(std::iter::once(work.join(LEGACY_LOWER)))
            .find(|d| crate::mount::is_mount_root(d));
        if let Some(m) = mounted {
            tracing::warn!(
                "not removing {}: {} is mounted",
                work.display(),
                m.display()
            );
            return;
        }
        if !self.keep_as_spare(work) {
            let _ = std::fs::remove_dir_all(work);
        }
    }

    /// Container `name`'s record.
    pub fn get(&self, name: &str) -> Result<Container> {
        check_name(name).map_err(|_| ContainerError::NotFound(name.to_string()))?;
        let Some(path) = self.locate(name) else {
            return Err(ContainerError::NotFound(name.to_string()));
        };
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(name.to_string()));
            }
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("reading container {name}"),
                    source: e,
                }
                .into());
            }
        };
        serde_json::from_slice(&data)
            .map_err(|e| StoreError::Damaged(format!("container record {name}: {e}")).into())
    }

    /// Writes container `c`'s record again, where it is (ephemeral or
    /// not); NotFound if it has none (removed meanwhile).
    fn put(&self, c: &Container) -> Result<()> {
        let path = self
            .locate(&c.name)
            .ok_or_else(|| ContainerError::NotFound(c.name.clone()))?;
        let ephemeral = (path != self.record_path(&c.name)).then_some(path);
        self.write_record(c, ephemeral)
    }

    /// Writes container `c`'s record: durably (`write_atomic`), or at
    /// `ephemeral`, not synced (`write_atomic_volatile`).
    fn write_record(&self, c: &Container, ephemeral: Option<PathBuf>) -> Result<()> {
        let path = ephemeral
            .clone()
            .unwrap_or_else(|| self.record_path(&c.name));
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            context: format!("creating {}", dir.display()),
            source: e,
        })?;
        let data = serde_json::to_vec_pretty(c).expect("serializes");
        let written = if ephemeral.is_some() {
            write_atomic_volatile(&path, &data)
        } else {
            write_atomic(&path, &data)
        };
        written.map_err(|e| {
            StoreError::Io {
                context: format!("writing container {}", c.name),
                source: e,
            }
            .into()
        })
    }

    /// Every container, sorted by name. A record being written (its temp
    /// file) or removed meanwhile (`run --rm` takes no store lock for
    /// either) is not an error: it is listed or not. A damaged record is.
    pub fn list(&self) -> Result<Vec<Container>> {
        let names = self.record_names();
        let mut found = Vec::with_capacity(names.len());
        for n in &names {
            match self.get(n) {
                Ok(c) => found.push(c),
                Err(ContainerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// The names of the containers that have a record (durable, or
    /// ephemeral of this boot), sorted.
    fn record_names(&self) -> Vec<String> {
        let names_in = |dir: &Path, name_of: &dyn Fn(&str) -> Option<String>| -> Vec<String> {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return vec![];
            };
            entries
                .filter_map(|e| e.ok())
                // A container's work directory may be named like a record
                // (a container `x.json`): only files are records.
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| name_of(e.file_name().to_str()?))
                .filter(|n| check_name(n).is_ok())
                .collect()
        };
        let mut names = names_in(&self.dir, &|f| f.strip_suffix(".json").map(str::to_string));
        // Disposable containers of this boot (those of other boots died
        // with the machine; their files are never read).
        if let Some(boot) = crate::volume::boot_id() {
            names.extend(names_in(&self.dir.join(".ephemeral"), &|f| {
                crate::volume::split_boot_file(f, ".json")
                    .filter(|(_, b)| *b == boot)
                    .map(|(n, _)| n.to_string())
            }));
        }
        names.sort();
        names.dedup();
        names
    }

    /// `fsck`'s part for containers. A record that does not parse, or
    /// names no valid image ID, is a problem (`ps`, `gc` and every command
    /// naming the container fail on it); so is one that cannot be read
    /// (reported only). With `repair` a damaged record is moved aside, to
    /// `<record>.damaged` (never over an earlier one), unless the container's work directory has something mounted: then
    /// the problem stays, with what to unmount. The container's volume and
    /// work directory stay, as they may hold the only copy of its data;
    /// `create` refuses the name while a durable record is set aside
    /// ([`ContainerError::SetAside`]). Returns the problems and how many
    /// records were checked.
    pub fn check_records(&self, repair: bool) -> Result<(Vec<crate::store::Problem>, u64)> {
        let names = self.record_names();
        let mut problems = Vec::new();
        for name in &names {
            let Some(path) = self.locate(name) else {
                continue;
            };
            let why = match self.get(name) {
                Ok(c) if crate::store::ObjectId::from_hex(&c.image_id).is_ok() => continue,
                Ok(c) => format!("container record {name}: bad image ID {:?}", c.image_id),
                Err(ContainerError::NotFound(_)) => continue,
                Err(ContainerError::Store(StoreError::Damaged(why))) => why,
                Err(e) => {
                    problems.push(crate::store::Problem {
                        kind: "unreadable-container-record",
                        detail: format!("{}: {e}", path.display()),
                        repaired: false,
                    });
                    continue;
                }
            };
            let volume = volume_of(name);
            let mut detail = format!("{why}; its volume {volume} is kept");
            let mut repaired = false;
            if repair {
                let work = self.work_dir(name);
                let mounted: Vec<String> = ["rootfs", "fs", LEGACY_LOWER]
                    .iter()
                    .map(|d| work.join(d))
                    .filter(|p| crate::mount::is_mount_root(p))
                    .map(|p| p.display().to_string())
                    .collect();
                if !mounted.is_empty() {
                    detail.push_str(&format!(
                        "; not moved aside while mounted: unmount {} (in that order), then repair again",
                        mounted.join(", ")
                    ));
                } else {
                    match set_aside(&path) {
                        Ok(aside) => {
                            repaired = true;
                            detail.push_str(&format!(
                                "; the record is now {} (`fukastor volume attach {volume}` gives \
                                 the container's ext4; `create --name {name}` is refused until \
                                 that file is deleted)",
                                aside.display()
                            ));
                        }
                        Err(e) => detail.push_str(&format!("; could not move it aside: {e}")),
                    }
                }
            }
            problems.push(crate::store::Problem {
                kind: "damaged-container-record",
                detail,
                repaired,
            });
        }
        Ok((problems, names.len() as u64))
    }

    /// A durable record of `name` that `fsck --repair` set aside, if any
    /// (one `stat`: `create` asks on every container).
    fn set_aside_record(&self, name: &str) -> Option<PathBuf> {
        let p = self.record_path(name).with_extension("json.damaged");
        p.symlink_metadata().is_ok().then_some(p)
    }

    /// `ps`: every container and whether it is mounted.
    pub fn entries(&self) -> Result<Vec<ContainerEntry>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|c| {
                let rootfs =
                    Some(self.mountpoint_of(&c)).filter(|m| crate::mount::is_mount_root(m));
                ContainerEntry {
                    state: if rootfs.is_some() {
                        "mounted"
                    } else {
                        "stopped"
                    }
                    .into(),
                    rootfs,
                    name: c.name,
                    image: c.image,
                    image_id: c.image_id,
                    volume: c.volume,
                }
            })
            .collect())
    }

    /// Removes the records of disposable containers of earlier boots of
    /// the machine, unread (they died with it; their volumes are gone);
    /// returns how many. For `gc`.
    pub fn remove_stale_records(&self) -> Result<usize> {
        let Some(boot) = crate::volume::boot_id() else {
            return Ok(0);
        };
        let dir = self.dir.join(".ephemeral");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut n = 0;
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            // This boot's records, and their temp files, are live.
            let live = name
                .to_str()
                .and_then(|f| crate::volume::split_boot_file(f, ".json"));
            if live.is_some_and(|(_, b)| b == boot) {
                continue;
            }
            std::fs::remove_file(e.path()).map_err(|e| StoreError::Io {
                context: format!("removing {}", dir.join(&name).display()),
                source: e,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// IDs of the images containers use (`gc` keeps them). An error (a
    /// damaged record) is returned, never taken for "no containers": gc
    /// would delete images in use.
    pub fn image_ids(&self) -> Result<Vec<String>> {
        Ok(self.list()?.into_iter().map(|c| c.image_id).collect())
    }

    /// [`Containers::image_ids`] of the records that can be read (the
    /// others are skipped: `fsck`, which reports them).
    pub fn readable_image_ids(&self) -> Vec<String> {
        self.record_names()
            .iter()
            .filter_map(|n| self.get(n).ok())
            .map(|c| c.image_id)
            .collect()
    }

    /// Creates container `name` (or a generated name) from `image`.
    pub fn create(&self, image: &str, name: Option<&str>, size: u64) -> Result<Container> {
        self.create_as(image, name, size, false)
    }

    /// Creates a **disposable** container (`run --rm`): like
    /// [`Containers::create`], with an ephemeral volume
    /// ([`crate::volume::Pool::clone_ephemeral`]): its metadata is never
    /// synced, and a crash of the machine takes the volume with it (the
    /// record then names a missing volume, which `rm` accepts).
    pub fn create_disposable(
        &self,
        image: &str,
        name: Option<&str>,
        size: u64,
    ) -> Result<Container> {
        self.create_as(image, name, size, true)
    }

    fn create_as(
        &self,
        image: &str,
        name: Option<&str>,
        size: u64,
        ephemeral: bool,
    ) -> Result<Container> {
        // Before anything is written: a bad size would otherwise surface
        // as a failed mkfs of the template.
        crate::volume::check_size(size)?;
        // No store there: no image either, and nothing is made.
        Store::require_for_image(&self.paths.store, image)?;
        // Held until the record is written, from before the image is
        // resolved: two creates of one name (two `run --rm --name X` at
        // once) would otherwise both find no record, and the second take
        // the first's fresh volume for a crash's leftover and delete it;
        // and an `rmi` (which takes it too) could remove the image between
        // its resolution here and the record that names it.
        let _creating = self.lock_creates()?;
        let store = Store::open(&self.paths.store, LockMode::Shared)?;
        let (id, image_name) = store.resolve(image)?;
        drop(store);
        let label = image_name.map_or_else(|| id.to_hex()[..12].to_string(), |n| n.to_string());
        let name = match name {
            Some(n) => n.to_string(),
            None => generated_name(&label),
        };
        check_name(&name)?;
        if self.locate(&name).is_some() {
            return Err(ContainerError::Exists(name));
        }
        if let Some(aside) = self.set_aside_record(&name) {
            let shown = aside.display().to_string();
            return Err(ContainerError::SetAside(name, shown));
        }
        // A disposable container of that name that died with the machine
        // left its work directory, and maybe a torn config.json in it,
        // which `start` would run: the new container gets its own.
        let stale = self.work_dir(&name).join("bundle/config.json");
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Io {
                    context: format!("removing {}", stale.display()),
                    source: e,
                }
                .into());
            }
            _ => {}
        }
        let volume = volume_of(&name);
        let template = template_of(size);
        // One request when the template exists and the name is free; else
        // the clone's refusal says what to mend first: a volume without a
        // record (FK0702) is what a crash during create left; no template
        // (FK0701) or one without its snapshot (FK0704, an interrupted
        // build) is made or rebuilt.
        let (mut removed, mut built) = (false, false);
        loop {
            let cloned = call(
                &self.paths,
                &Request::Clone {
                    volume: template.clone(),
                    snapshot: TEMPLATE_SNAPSHOT.into(),
                    new: volume.clone(),
                    ephemeral,
                },
            );
            match cloned {
                Ok(_) => break,
                Err(ContainerError::Volume(e)) if e.code() == "FK0702" && !removed => {
                    removed = true;
                    self.remove_volume(&volume)?;
                }
                Err(ContainerError::Volume(e))
                    if (e.code() == "FK0701" || e.code() == "FK0704") && !built =>
                {
                    built = true;
                    call(
                        &self.paths,
                        &Request::Template {
                            name: template.clone(),
                            size,
                        },
                    )?;
                    self.remove_legacy_template(size);
                }
                Err(e) => return Err(e),
            }
        }
        let c = Container {
            name,
            image: label,
            image_id: id.to_hex(),
            volume,
            size,
            created: crate::mount::now(),
            mountpoint: None,
        };
        let record = if ephemeral {
            self.ephemeral_record_path(&c.name)
        } else {
            None
        };
        self.write_record(&c, record)?;
        Ok(c)
    }

    /// Removes the template of `size` bytes an older fukastor built
    /// ([`legacy_template_of`]), if that volume is one (it has the snapshot
    /// [`TEMPLATE_SNAPSHOT`]: a volume a user named so is left alone). Best
    /// effort: a legacy template left behind costs a few MiB of disk, never
    /// correctness.
    fn remove_legacy_template(&self, size: u64) {
        let legacy = legacy_template_of(size);
        let req = Request::Snapshots {
            volume: legacy.clone(),
        };
        let is_template = matches!(
            call(&self.paths, &req),
            Ok(Response::Snapshots { snapshots })
                if snapshots.iter().any(|s| s.name == TEMPLATE_SNAPSHOT)
        );
        if is_template && let Err(e) = self.remove_volume(&legacy) {
            tracing::debug!("keeping {legacy}: {e}");
        }
    }

    /// Where container `c`'s root filesystem is mounted when it is: the
    /// mountpoint its record names, else its own `rootfs` directory.
    fn mountpoint_of(&self, c: &Container) -> PathBuf {
        c.mountpoint
            .clone()
            .unwrap_or_else(|| self.work_dir(&c.name).join("rootfs"))
    }

    /// Mounts container `name`'s root filesystem at `mountpoint` (default:
    /// its `rootfs` directory); returns the mountpoint. Mounting a mounted
    /// container returns where it is. The record is written only for a
    /// mountpoint other than the default.
    pub fn mount(&self, name: &str, mountpoint: Option<&Path>) -> Result<PathBuf> {
        Ok(self.mount_with(name, mountpoint, false)?.0)
    }

    /// [`Containers::mount`] at its `rootfs`, and whether this call
    /// mounted it (false: it was mounted already, maybe elsewhere), decided
    /// under the container's lock. For `start`, which unmounts only what it
    /// mounted.
    pub fn mount_noting(&self, name: &str) -> Result<(PathBuf, bool)> {
        self.mount_with(name, None, false)
    }

    /// Mounts container `name` at its `rootfs` for a run after which it is
    /// removed (`run --rm`): its ext4 is mounted `nobarrier`, so neither it
    /// nor the unmounts send the volume a flush (each one an `fdatasync` of
    /// the volume's layer on the host), and [`Containers::discard`] deletes
    /// the volume without one; and `noload`, without its journal, which
    /// only protects what a flush made durable (none is made), so the mount
    /// and unmount skip loading it and stopping its thread. A crash before
    /// the removal leaves the volume as it was cloned (volumes keep what
    /// their last flush committed, nothing after it): a container the
    /// crash left behind comes back empty, never torn; what its processes
    /// fsynced is not kept, as it would not have been by the removal.
    pub fn mount_disposable(&self, name: &str) -> Result<PathBuf> {
        Ok(self.mount_with(name, None, true)?.0)
    }

    fn mount_with(
        &self,
        name: &str,
        mountpoint: Option<&Path>,
        disposable: bool,
    ) -> Result<(PathBuf, bool)> {
        // Mounted already (also while the lock was awaited): where it is.
        let (_lock, mut c) = self.get_locked(name)?;
        let current = self.mountpoint_of(&c);
        if crate::mount::is_mount_root(&current) {
            return Ok((current, false));
        }
        let work = self.work_dir(name);
        let fs = work.join("fs");
        let default = work.join("rootfs");
        let target = match mountpoint {
            Some(m) => m.to_path_buf(),
            None => default.clone(),
        };
        std::fs::create_dir_all(&fs).map_err(|e| StoreError::Io {
            context: format!("creating {}", fs.display()),
            source: e,
        })?;
        if mountpoint.is_none() {
            std::fs::create_dir_all(&target).map_err(|e| StoreError::Io {
                context: format!("creating {}", target.display()),
                source: e,
            })?;
        }
        let target = std::fs::canonicalize(&target).map_err(|e| {
            ContainerError::Mount(name.into(), format!("mountpoint {}: {e}", target.display()))
        })?;
        // Steps, undone in reverse on failure. The image's EROFS (on a
        // thread) and the volume (attached by the volume server, its ext4
        // mounted here) need nothing from each other; then one overlay of
        // the image over the ext4's `upper`.
        let mut undo = Undo::new(self, name);
        let image = || -> Result<crate::mount::ImageLayers> {
            let _s = tracing::debug_span!("image").entered();
            let store = Store::open(&self.paths.store, LockMode::Shared)?;
            let id = crate::store::ObjectId::from_hex(&c.image_id).map_err(|_| {
                StoreError::Damaged(format!("container {name}: bad image ID {}", c.image_id))
            })?;
            Ok(crate::mount::image_layers(&store, &id, &c.image)?)
        };
        let (image, volume) = std::thread::scope(|s| {
            let image = s.spawn(image);
            let volume = self.attach_fs(&c, &fs, disposable, &mut undo);
            let image = image
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (image, volume)
        });
        let image = image?;
        volume?;
        {
            let _s = tracing::debug_span!("overlay").entered();
            crate::mount::mount_writable(
                &image,
                &crate::mount::container_source(name, &self.paths.store),
                &fs.join("upper"),
                &fs.join("work"),
                &target,
            )
            .map_err(|e| ContainerError::Mount(name.into(), e))?;
        }
        let recorded = (target != default).then_some(target.clone());
        if c.mountpoint != recorded {
            c.mountpoint = recorded;
            // A record that cannot be written (a full store) undoes the
            // mount: unrecorded, no command would find it to unmount.
            if let Err(e) = self.put(&c) {
                if unmount(&target).is_err() {
                    // Busy: detached at least, so that the undo below can
                    // take the ext4 and the image away.
                    let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
                }
                return Err(e);
            }
        }
        undo.disarm();
        Ok((target, true))
    }

    /// Attaches container `c`'s volume and mounts its ext4 at `fs`
    /// (`nobarrier,noload` when `disposable`), noting each step done in `undo`.
    fn attach_fs(
        &self,
        c: &Container,
        fs: &Path,
        disposable: bool,
        undo: &mut Undo<'_>,
    ) -> Result<()> {
        let name = c.name.as_str();
        let attach_span = tracing::debug_span!("attach").entered();
        let device = match call(
            &self.paths,
            &Request::Attach {
                name: c.volume.clone(),
            },
        )? {
            Response::Device { device } => device,
            other => {
                return Err(ContainerError::Mount(
                    name.into(),
                    format!("unexpected answer from the volume server: {other:?}"),
                ));
            }
        };
        undo.volume = Some(c.volume.clone());
        drop(attach_span);
        if !crate::mount::is_mount_root(fs) {
            let _s = tracing::debug_span!("ext4").entered();
            rustix::mount::mount(
                device.as_str(),
                fs,
                "ext4",
                rustix::mount::MountFlags::NOATIME,
                // `noload` needs a journal that wants no recovery: the
                // template's was never mounted, so clones' never do.
                disposable.then_some(c"nobarrier,noload"),
            )
            .map_err(|e| {
                ContainerError::Mount(
                    name.into(),
                    format!("ext4 on {device} at {}: {e}", fs.display()),
                )
            })?;
        }
        undo.fs = true;
        Ok(())
    }

    /// Unmounts container `name`: overlay, ext4, volume, image, each one
    /// that is there.
    pub fn umount(&self, name: &str) -> Result<()> {
        let (_lock, mut c) = self.get_locked(name)?;
        let work = self.work_dir(name);
        let mp = self.mountpoint_of(&c);
        if crate::mount::is_mount_root(&mp) {
            let _s = tracing::debug_span!("overlay").entered();
            unmount(&mp).map_err(|e| ContainerError::Umount(name.into(), e))?;
        }
        self.teardown(name, &c.volume, &work, false)?;
        if c.mountpoint.is_none() {
            return Ok(());
        }
        c.mountpoint = None;
        self.put(&c)
    }

    /// Unmounts the ext4 (and a [`LEGACY_LOWER`] image mount) and then
    /// detaches the volume (the volume server). With `discard` (the end of
    /// a `run --rm`, `rm`), the volume is detached unflushed and deleted
    /// instead ([`Containers::forget`] then removes the record and `work`).
    fn teardown(
        &self,
        name: &str,
        volume: &str,
        work: &Path,
        discard: bool,
    ) -> Result<Option<String>> {
        let (fs, lower) = (work.join("fs"), work.join(LEGACY_LOWER));
        if crate::mount::is_mount_root(&lower) {
            crate::mount::umount(&self.paths.store, &lower)?;
        }
        if crate::mount::is_mount_root(&fs) {
            let _s = tracing::debug_span!("ext4").entered();
            unmount(&fs).map_err(|e| ContainerError::Umount(name.into(), e))?;
        }
        let _s = tracing::debug_span!("detach").entered();
        let req = if discard {
            Request::Discard {
                name: volume.to_string(),
            }
        } else {
            Request::Detach {
                name: volume.to_string(),
            }
        };
        let lost = match call(&self.paths, &req) {
            Ok(Response::Discarded { lost }) => lost,
            Ok(_) => None,
            // Not attached, or gone (a `discard` a crash cut short).
            Err(ContainerError::Volume(e)) if e.code() == "FK0716" || e.code() == "FK0701" => None,
            Err(e) => return Err(e),
        };
        drop(_s);
        Ok(lost)
    }

    /// Removes container `name` and its volume. A mounted container is
    /// refused unless `force`, which unmounts it first.
    pub fn remove(&self, name: &str, force: bool) -> Result<()> {
        let (_lock, c) = self.get_locked(name)?;
        let work = self.work_dir(name);
        let mounted = crate::mount::is_mount_root(&self.mountpoint_of(&c))
            || crate::mount::is_mount_root(&work.join("fs"))
            || crate::mount::is_mount_root(&work.join(LEGACY_LOWER));
        if mounted && !force {
            return Err(ContainerError::Mounted(name.into()));
        }
        // What the end of `run --rm` does: whatever is left of its mounts
        // goes (a volume left attached by an unmount cut short included),
        // and the volume is detached and deleted in one request, unflushed.
        self.discard_locked(name, &c, &work).map(drop)
    }

    /// Deletes volume `volume` (the volume server), if it is there.
    fn remove_volume(&self, volume: &str) -> Result<()> {
        let req = Request::Remove {
            name: volume.to_string(),
        };
        match call(&self.paths, &req) {
            Ok(_) => Ok(()),
            Err(ContainerError::Volume(e)) if e.code() == "FK0701" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes container `name`'s record and then its directory `work`
    /// (its lock held): in this order, a command that got the lock on a
    /// directory made after the old one was retired finds no record and
    /// retires that one too ([`Containers::get_locked`]), instead of
    /// mounting a container whose volume is gone. A crash between leaves
    /// the directory, which the next container of that name reuses.
    fn forget(&self, name: &str, work: &Path) -> Result<()> {
        if let Some(path) = self.locate(name) {
            std::fs::remove_file(path).map_err(|e| StoreError::Io {
                context: format!("removing container {name}"),
                source: e,
            })?;
        }
        if work.symlink_metadata().is_ok() {
            let _s = tracing::debug_span!("rmdir").entered();
            self.retire_work_dir(work);
        }
        Ok(())
    }

    /// Unmounts and removes container `name` at the end of a `run --rm`:
    /// what `umount` then `remove` do, with the volume detached and deleted
    /// in one request and not flushed first (its data is being dropped). A
    /// crash part way leaves the container, unmounted or not, for `rm`.
    /// Returns why its volume had stopped taking writes while it ran (the
    /// store's filesystem full, an I/O error), if it had: the container's
    /// processes may not have seen the failure.
    pub fn discard(&self, name: &str) -> Result<Option<String>> {
        let (_lock, c) = self.get_locked(name)?;
        let work = self.work_dir(name);
        self.discard_locked(name, &c, &work)
    }

    /// [`Containers::discard`] of container `c`, its lock held.
    fn discard_locked(&self, name: &str, c: &Container, work: &Path) -> Result<Option<String>> {
        let mp = self.mountpoint_of(c);
        if crate::mount::is_mount_root(&mp) {
            let _s = tracing::debug_span!("overlay").entered();
            unmount(&mp).map_err(|e| ContainerError::Umount(name.into(), e))?;
        }
        let lost = self.teardown(name, &c.volume, work, true)?;
        self.forget(name, work)?;
        Ok(lost)
    }

    /// The volume behind snapshot target `target`: a container's volume when
    /// a container has that name, else the volume of that name. With
    /// `need_unmounted`, a mounted container is refused.
    pub fn snapshot_target(&self, target: &str, need_unmounted: bool) -> Result<String> {
        match self.get(target) {
            Ok(c) => {
                if need_unmounted
                    && (crate::mount::is_mount_root(&self.mountpoint_of(&c))
                        || crate::mount::is_mount_root(&self.work_dir(target).join("fs")))
                {
                    return Err(ContainerError::Mounted(target.into()));
                }
                Ok(c.volume)
            }
            Err(ContainerError::NotFound(_)) => Ok(target.to_string()),
            Err(e) => Err(e),
        }
    }
}

/// Undoes the steps of a failed mount.
struct Undo<'a> {
    containers: &'a Containers,
    name: &'a str,
    armed: bool,
    volume: Option<String>,
    fs: bool,
}

impl<'a> Undo<'a> {
    fn new(containers: &'a Containers, name: &'a str) -> Self {
        Undo {
            containers,
            name,
            armed: true,
            volume: None,
            fs: false,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let work = self.containers.work_dir(self.name);
        if self.fs {
            let _ = unmount(&work.join("fs"));
        }
        if let Some(v) = &self.volume {
            let _ = call(&self.containers.paths, &Request::Detach { name: v.clone() });
        }
    }
}

/// Renames a damaged record to `<record>.damaged`, never over an existing
/// one (`create` refuses the name while it exists, so a second one comes
/// only from files put there by hand); syncs its directory.
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let to = path.with_extension("json.damaged");
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        path,
        rustix::fs::CWD,
        &to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| match e {
        rustix::io::Errno::EXIST => {
            std::io::Error::other(format!("{} exists: move it away first", to.display()))
        }
        e => e.into(),
    })?;
    crate::store::fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(to)
}

fn unmount(path: &Path) -> Result<(), String> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `<image>-<6 hex digits>` from the image's name (its last path part, tag
/// dropped, characters outside the name alphabet replaced).
fn generated_name(label: &str) -> String {
    let base = label.rsplit('/').next().unwrap_or(label);
    let base = base.split([':', '@']).next().unwrap_or(base);
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        clean.insert(0, 'c');
    }
    use sha2::Digest;
    let seed = format!(
        "{}-{:?}-{:?}",
        std::process::id(),
        std::time::SystemTime::now(),
        std::thread::current().id()
    );
    let h = sha2::Sha256::digest(seed.as_bytes());
    format!("{clean}-{}", hex::encode(&h[..3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("web-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(".x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        let g = generated_name("docker.io/library/debian:bookworm");
        assert!(g.starts_with("debian-") && check_name(&g).is_ok(), "{g}");
        assert!(check_name(&generated_name("_x")).is_ok());
    }

    /// A record of container `name` from image `image_id`.
    fn record(name: &str, image_id: &str) -> Container {
        Container {
            name: name.into(),
            image: "img".into(),
            image_id: image_id.into(),
            volume: volume_of(name),
            size: 1 << 30,
            created: 0,
            mountpoint: None,
        }
    }

    /// A work directory tree is kept for reuse only when it is exactly the
    /// empty tree (less `bundle/config.json`), handed to the next container
    /// without one, and never more than [`MAX_SPARE_TREES`] are kept.
    #[test]
    fn work_directory_trees_are_reused_only_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cs = Containers::new(dir.path());
        let tree = |name: &str| {
            let w = cs.work_dir(name);
            for d in SPARE_TREE {
                std::fs::create_dir_all(w.join(d)).unwrap();
            }
            std::fs::write(w.join("bundle/config.json"), b"{}").unwrap();
            w
        };
        let spares = || std::fs::read_dir(cs.spare_dir()).map_or(0, |d| d.count());

        let a = tree("a");
        cs.retire_work_dir(&a);
        assert!(!a.exists());
        assert_eq!(spares(), 1);
        let b = cs.work_dir("b");
        cs.reuse_spare_tree(&b);
        assert_eq!(spares(), 0, "the spare was taken");
        for d in SPARE_TREE {
            assert!(b.join(d).is_dir(), "{d}");
        }
        assert!(!b.join("bundle/config.json").exists(), "no old config.json");
        // A container that has its directory keeps it.
        cs.retire_work_dir(&tree("c"));
        cs.reuse_spare_tree(&b);
        assert_eq!(spares(), 1);

        // Anything else in the tree: removed, not kept.
        for (i, extra) in ["fs/x", "bundle/other", "rootfs/.hidden", "more"]
            .into_iter()
            .enumerate()
        {
            let w = tree(&format!("d{i}"));
            std::fs::write(w.join(extra), b"x").unwrap();
            cs.retire_work_dir(&w);
            assert!(!w.exists(), "{extra}");
            assert_eq!(spares(), 1, "{extra}: not kept");
        }
        let w = tree("sym");
        std::fs::remove_dir(w.join("fs")).unwrap();
        std::os::unix::fs::symlink("/", w.join("fs")).unwrap();
        cs.retire_work_dir(&w);
        assert!(!w.exists() && spares() == 1, "a symlink in the tree");

        for i in 0..MAX_SPARE_TREES + 2 {
            cs.retire_work_dir(&tree(&format!("e{i}")));
        }
        assert_eq!(spares(), MAX_SPARE_TREES);
        assert_eq!(
            std::fs::read_dir(&cs.dir)
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with('e'))
                .count(),
            0,
            "the trees past the cap are removed"
        );
    }

    /// A disposable container's record is ephemeral: in
    /// `.ephemeral/<name>@<boot>.json`, listed, found, updated and removed
    /// there; one of another boot is never read (a crash may have left
    /// anything in it), and gc's sweep removes it.
    #[test]
    fn disposable_records_are_ephemeral() {
        let dir = tempfile::tempdir().unwrap();
        let cs = Containers::new(dir.path());
        let c = |name: &str| record(name, "1111");
        assert!(crate::volume::boot_id().is_some(), "/proc gives a boot ID");
        cs.write_record(&c("a"), None).unwrap();
        let eph = cs.ephemeral_record_path("b").unwrap();
        cs.write_record(&c("b"), Some(eph.clone())).unwrap();
        assert!(eph.exists() && !cs.record_path("b").exists());
        let other = cs.dir.join(".ephemeral/c@0000-other-boot.json");
        std::fs::write(&other, b"garbage a crash left").unwrap();
        let names: Vec<String> = cs.list().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["a", "b"]);
        let mut b = cs.get("b").unwrap();
        b.mountpoint = Some("/mnt/x".into());
        cs.put(&b).unwrap();
        assert!(!cs.record_path("b").exists(), "updated where it is");
        let e = cs.put(&c("gone")).unwrap_err();
        assert!(matches!(e, ContainerError::NotFound(_)), "{e:?}");
        assert_eq!(cs.get("b").unwrap(), b);
        assert_eq!(cs.remove_stale_records().unwrap(), 1);
        assert!(!other.exists() && eph.exists());
        cs.forget("b", &cs.work_dir("b")).unwrap();
        assert!(!eph.exists());
        assert_eq!(cs.list().unwrap().len(), 1);
    }

    /// `list` (and so gc's `image_ids`) skips a record's temp file and a
    /// record removed meanwhile, and fails on a damaged record instead of
    /// taking it for no containers (gc would then delete images in use).
    #[test]
    fn listing_skips_temp_files_and_fails_on_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cs = Containers::new(dir.path());
        cs.write_record(&record("a", "1111"), None).unwrap();
        cs.write_record(&record("b", "2222"), None).unwrap();
        std::fs::write(cs.dir.join(".tmp-1-0-c.json"), b"{").unwrap();
        assert_eq!(cs.image_ids().unwrap(), ["1111", "2222"]);
        std::fs::write(cs.record_path("b"), b"").unwrap();
        let e = cs.image_ids().unwrap_err();
        assert!(
            matches!(e, ContainerError::Store(StoreError::Damaged(_))),
            "{e:?}"
        );
        assert!(cs.list().is_err());
    }
}
