//! Serving trees: the kernel path (EROFS + overlayfs), and mount bookkeeping.
//!
//! A kernel mount is the image's EROFS file mounted by the kernel (file-backed
//! EROFS, no loop device on Linux 6.12+) as the overlayfs layer holding all
//! metadata, with the store's `objects/` directory as a data-only lower layer
//! that overlayfs follows through each file's `redirect` xattr. It is built
//! with the new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`)
//! through the `composefs` crate. This host has no fs-verity, so the mount is
//! made without `verity=require`: file contents are trusted as stored (`fsck`
//! re-checks them).
//!
//! Kernel mounts are read-only and named `composefs:NAME@STORE` in the mount
//! table; FUSE mounts (see [`crate::fuse`]) are `fukastor:NAME@STORE` of type
//! `fuse` (`fuse.fukastor` when mounted through fusermount3). That is what `findmnt` shows as the source and how
//! `umount` recognises its own mounts. Every mount is also tracked in the
//! store ([`track`]).

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use composefs::fsverity::FsVerityHashValue;
use composefs::mount::{MountOptions, VerityRequirement, composefs_fsmount, mount_at};
use rustix::fs::{CWD, Mode, OFlags};

pub mod track;

use crate::error::Coded;
use crate::store::{ObjectId, Store, StoreError};

/// What can go wrong mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Not privileged.
    #[error("mounting {0} through the kernel needs root (CAP_SYS_ADMIN)")]
    NotPrivileged(String),
    /// Bad mountpoint.
    #[error("mountpoint {0}: {1}")]
    Mountpoint(String, String),
    /// The kernel said no.
    #[error("the kernel refused the mount: {0}")]
    Kernel(String),
    /// Not ours.
    #[error("{0} is not a fukastor mount")]
    NotOurs(String, Option<String>),
    /// Unmount failed.
    #[error("cannot unmount {0}: {1}")]
    Umount(String, String),
    /// The FUSE server failed to start.
    #[error("the FUSE server did not start: {0}")]
    Server(String),
    /// A filtered image: the kernel would read encoded bytes.
    #[error(
        "image {0} is filtered (its objects are stored encoded by Lua filters); the kernel cannot read it"
    )]
    Filtered(String),
    /// The store's filesystem cannot back a file-backed EROFS mount (the
    /// kernel says ENOTBLK from a store on tmpfs).
    #[error("the kernel cannot mount images from the store's filesystem ({0}): {1}")]
    StoreFs(String, String),
    /// The mountpoint already holds a live mount of this store.
    #[error("{0} already holds a fukastor mount of {1} ({2})")]
    Taken(String, String, String),
    /// Store trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coded for MountError {
    fn code(&self) -> &'static str {
        match self {
            MountError::NotPrivileged(_) => "FK0300",
            MountError::Mountpoint(..) => "FK0301",
            MountError::Kernel(_) => "FK0302",
            MountError::NotOurs(..) => "FK0303",
            MountError::Umount(..) => "FK0304",
            MountError::Server(_) => "FK0305",
            MountError::Filtered(_) => "FK0306",
            MountError::StoreFs(..) => "FK0307",
            MountError::Taken(..) => "FK0308",
            MountError::Store(e) => e.code(),
        }
    }

    fn hint(&self) -> String {
        match self {
            MountError::NotPrivileged(_) => "run as root, or mount through FUSE: `fukastor mount --fuse IMAGE MOUNTPOINT`".into(),
            MountError::Mountpoint(..) => "create an empty directory and mount there".into(),
            MountError::Kernel(_) => {
                "the kernel needs file-backed EROFS and overlayfs with data-only lowers (Linux 6.12+); check `dmesg`".into()
            }
            MountError::NotOurs(_, Some(c)) => format!(
                "it is container {c}'s root filesystem: `fukastor container umount {c}`"
            ),
            MountError::NotOurs(_, None) => "list mounts with `findmnt -t overlay`".into(),
            MountError::Umount(..) => "close files and shells using the mount, then try again".into(),
            MountError::Server(_) => "check that /dev/fuse exists and fuse3 (fusermount3) is installed; see the log above".into(),
            MountError::Filtered(_) => {
                "mount it through FUSE, which decodes: `fukastor mount --fuse IMAGE MOUNTPOINT`".into()
            }
            MountError::StoreFs(..) => {
                "keep the store on ext4, xfs or btrfs (`--store DIR`); `mount --fuse` works from any filesystem".into()
            }
            MountError::Taken(at, ..) => {
                format!("unmount it first (`fukastor umount {at}`), or mount somewhere else")
            }
            MountError::Store(e) => e.hint(),
        }
    }
}

/// One mount of ours, from the mount table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The source as the mount table shows it.
    pub source: String,
    /// The filesystem type.
    pub fstype: String,
    /// The directory of its filesystem shown at the mountpoint (`/` but
    /// for bind mounts; for cgroup filesystems, relative to this process's
    /// cgroup namespace).
    pub root: PathBuf,
    /// The superblock's options (for cgroup v1: its controllers).
    pub super_options: String,
    /// The filesystem's device number, `MAJOR:MINOR` (for FUSE, the
    /// connection's, which names its `/sys/class/bdi/` entry).
    pub device: String,
}

/// Mounts image `id` read-only at `mountpoint` through the kernel.
pub fn mount_kernel(
    store: &Store,
    id: &ObjectId,
    label: &str,
    mountpoint: &Path,
) -> Result<(), MountError> {
    let shown = mountpoint.display().to_string();
    match fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MountError::Mountpoint(shown, "not a directory".into())),
        Err(e) => return Err(MountError::Mountpoint(shown, e.to_string())),
    }
    if store.is_filtered(id) {
        return Err(MountError::Filtered(label.to_string()));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(MountError::NotPrivileged(label.to_string()));
    }
    let canonical = fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    // Held from the check until the mount is attached (the end of this
    // function): see `lock_mountpoint`.
    let _mountpoint_lock = lock_mountpoint(&canonical)?;
    refuse_taken(store.root(), &canonical)?;
    let (image_path, image, objects) = open_image(store, id)?;
    let name = format!("{label}@{}", store.root().display());
    let mnt = composefs_fsmount(
        image,
        &name,
        &[objects.as_fd()],
        VerityRequirement::Disabled,
        &MountOptions::default(),
    )
    .map_err(|e| kernel_refused(e, label, &image_path))?;
    // Tracked before it is attached: a store too full for the tracking
    // file then leaves no mount behind (the detached mount goes with `mnt`).
    track::record(
        store.root(),
        &track::Tracked {
            mountpoint: canonical.clone(),
            image: label.to_string(),
            id: id.to_hex(),
            mode: "kernel".into(),
            pid: None,
            started: now(),
        },
    )?;
    mount_at(mnt.as_fd(), CWD, mountpoint).map_err(|e| {
        track::forget(store.root(), &canonical);
        MountError::Kernel(e.to_string())
    })?;
    Ok(())
}

/// Image `id`'s EROFS file (its path and an open file) and the store's
/// objects directory (`O_PATH`), what a composefs mount is made of.
fn open_image(store: &Store, id: &ObjectId) -> Result<(PathBuf, OwnedFd, OwnedFd), MountError> {
    let image_path = store.root().join("images").join(id.to_hex());
    let image: OwnedFd =
        rustix::fs::open(&image_path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| StoreError::Damaged(format!("image {}: {e}", id.to_hex())))?;
    let objects: OwnedFd = rustix::fs::open(
        store.objects_dir(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::PATH,
        Mode::empty(),
    )
    .map_err(|e| StoreError::Damaged(format!("objects directory: {e}")))?;
    Ok((image_path, image, objects))
}

/// What a writable mount of an image through the kernel is made of
/// ([`mount_writable`]): the image's EROFS, mounted but attached nowhere
/// (it lives as long as an overlay uses it), and the store's objects
/// directory.
#[derive(Debug)]
pub struct ImageLayers {
    erofs: OwnedFd,
    objects: OwnedFd,
}

/// Mounts image `id`'s EROFS (detached) for [`mount_writable`].
pub fn image_layers(store: &Store, id: &ObjectId, label: &str) -> Result<ImageLayers, MountError> {
    if store.is_filtered(id) {
        return Err(MountError::Filtered(label.to_string()));
    }
    let (image_path, image, objects) = open_image(store, id)?;
    let erofs =
        composefs::mount::erofs_mount(image).map_err(|e| kernel_refused(e, label, &image_path))?;
    Ok(ImageLayers { erofs, objects })
}

/// The error for the kernel refusing to mount image `label` (EROFS file
/// `image_path`).
fn kernel_refused(e: std::io::Error, label: &str, image_path: &Path) -> MountError {
    match e.raw_os_error() {
        Some(libc::EPERM) => MountError::NotPrivileged(label.to_string()),
        // ENOTBLK also comes from kernels without file-backed EROFS
        // (before 6.12): only a store on tmpfs is told to move.
        Some(libc::ENOTBLK) if fs_type_of(image_path) == "tmpfs" => {
            MountError::StoreFs("tmpfs".into(), e.to_string())
        }
        _ => MountError::Kernel(e.to_string()),
    }
}

/// The source of container `name`'s root filesystem in the store at
/// (canonical) `store_root`: `fukastor-container:NAME@STORE`. Not
/// `composefs:…`, which names the image mounts that [`list`] shows, so that
/// `mounts` and `umount` leave it to `ps` and `container umount`.
pub fn container_source(name: &str, store_root: &Path) -> String {
    format!("fukastor-container:{name}@{}", store_root.display())
}

/// The container whose root filesystem has mount source `source`
/// ([`container_source`]) in the store at `store_root`.
fn container_of_source<'a>(source: &'a str, store_root: &Path) -> Option<&'a str> {
    source
        .strip_prefix("fukastor-container:")?
        .strip_suffix(&format!("@{}", store_root.display()))
}

/// Mounts an image **writable** at `target` through the kernel: one
/// overlayfs (what `composefs_fsmount` makes, with an upper layer) of the
/// image's EROFS (`layers`), the store's objects as its data-only layer
/// (`metacopy=on`, `redirect_dir=on`), and `upper` and `work`
/// (directories on one filesystem) as its upper and work directories. A
/// container's root filesystem: one mount where a read-only composefs
/// mount under an overlay would be two. Not tracked (the container's record
/// says where it is); `source` is a [`container_source`]. Not
/// `composefs_fsmount` itself, which mounts the EROFS too (a container's
/// is mounted on a thread while its volume is attached) and always names
/// its mount `composefs:…`.
pub fn mount_writable(
    layers: &ImageLayers,
    source: &str,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_fd,
        fsconfig_set_string, fsmount, fsopen,
    };
    let failed = |what: &str, e: rustix::io::Errno| format!("overlay {what}: {e}");
    let dir = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| failed(&p.display().to_string(), e))
    };
    let (upper, work) = (dir(upper)?, dir(work)?);
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| failed("fsopen", e))?;
    for (k, v) in [
        ("source", source),
        ("metacopy", "on"),
        ("redirect_dir", "on"),
    ] {
        fsconfig_set_string(&fs, k, v).map_err(|e| failed(k, e))?;
    }
    for (k, fd) in [
        ("upperdir", upper.as_fd()),
        ("workdir", work.as_fd()),
        ("lowerdir+", layers.erofs.as_fd()),
        ("datadir+", layers.objects.as_fd()),
    ] {
        fsconfig_set_fd(&fs, k, fd).map_err(|e| failed(k, e))?;
    }
    fsconfig_create(&fs).map_err(|e| failed("create", e))?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| failed("fsmount", e))?;
    mount_at(mnt.as_fd(), CWD, target).map_err(|e| format!("mounting at {}: {e}", target.display()))
}

/// Takes an exclusive `flock` on directory `mountpoint`, held until the
/// file returned is dropped: [`mount_kernel`] and the FUSE server
/// (`fuse::serve`) each hold it from their check that nothing of the store
/// is mounted there ([`refuse_taken`]) until their mount is in place, so
/// that of two mounts at once on one mountpoint one is refused with FK0308
/// instead of both stacking there (the second would hide the first, and
/// `umount` would take only one). A process that opens the path once the
/// first mount is in place locks that mount's root instead and is refused
/// by the check all the same. `None` when the path cannot be opened (the
/// mount step then says why).
pub(crate) fn lock_mountpoint(mountpoint: &Path) -> Result<Option<fs::File>, MountError> {
    let Ok(dir) = fs::File::open(mountpoint) else {
        return Ok(None);
    };
    crate::store::flock_timed(
        &dir,
        crate::store::LockMode::Exclusive,
        &format!("the lock of mountpoint {}", mountpoint.display()),
    )?;
    Ok(Some(dir))
}

/// Refuses mountpoint `canonical` when the mount table shows a mount of
/// this store there and a tracking file names it: a mount over it would
/// replace its tracking file, and `mounts` and `umount` would lose the one
/// below (a FUSE server would be left running untracked). Only the mount
/// table counts: a tracking file whose mount is gone (unmounted by other
/// means, its server maybe still exiting, or its pid reused since) does not
/// block, nor does another store's mount. Costs one failed `open` when
/// nothing was mounted there.
pub(crate) fn refuse_taken(store_root: &Path, canonical: &Path) -> Result<(), MountError> {
    let Some(t) = track::read(store_root, canonical) else {
        return Ok(());
    };
    let ours = format!("@{}", store_root.display());
    if list()
        .iter()
        .any(|m| m.mountpoint == canonical && m.source.ends_with(&ours))
    {
        return Err(MountError::Taken(
            canonical.display().to_string(),
            t.image,
            t.mode,
        ));
    }
    Ok(())
}

/// The type of the filesystem holding `path`, from the mount table (the
/// longest mountpoint above it), or "unknown".
fn fs_type_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    table()
        .into_iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.as_os_str().len())
        .map_or_else(|| "unknown".into(), |m| m.fstype)
}

/// Unix seconds.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every mount of this process's mount namespace, from
/// `/proc/self/mountinfo` (mountpoint, source and type unescaped).
pub fn table() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse_table(&info))
        .unwrap_or_default()
}

/// The entries of a `/proc/PID/mountinfo` text (see [`table`]).
pub(crate) fn parse_table(info: &str) -> Vec<MountEntry> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let device = l.nth(2)?.to_string();
            let root = unescape(l.next()?);
            let mountpoint = unescape(l.next()?);
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = unescape(r.next()?);
            let super_options = r.next().unwrap_or_default().to_string();
            Some(MountEntry {
                mountpoint: PathBuf::from(mountpoint),
                source,
                fstype,
                root: PathBuf::from(root),
                super_options,
                device,
            })
        })
        .collect()
}

/// Our mounts, from `/proc/self/mountinfo`.
pub fn list() -> Vec<MountEntry> {
    table()
        .into_iter()
        // FUSE mounts show type `fuse` (or `fuse.fukastor` through fusermount).
        .filter(|m| {
            (m.source.starts_with("composefs:") && m.source.contains('@'))
                || (m.fstype.starts_with("fuse") && m.source.starts_with("fukastor:"))
        })
        .collect()
}

/// True when `path` is a mountpoint (any filesystem), from the mount table.
/// Never touches the filesystem mounted there, so it is the one to use where
/// that may be a FUSE mount whose server died or hangs.
pub fn is_mountpoint(path: &Path) -> bool {
    table().iter().any(|m| m.mountpoint == path)
}

/// True when `path` is the root of a mount, asked with one `statx`
/// (`STATX_ATTR_MOUNT_ROOT`, which the VFS sets; `AT_STATX_DONT_SYNC`, so a
/// FUSE filesystem is not asked for attributes either) instead of reading
/// the whole mount table, which costs ~0.3–1 ms and grows with every mount.
/// Falls back to [`is_mountpoint`] when `statx` cannot tell or fails other
/// than with "no such file" (a dead FUSE mount answers `ENOTCONN`).
pub fn is_mount_root(path: &Path) -> bool {
    mount_root_by_statx(path).unwrap_or_else(|| is_mountpoint(path))
}

/// [`is_mount_root`]'s `statx` answer, `None` when it cannot tell.
fn mount_root_by_statx(path: &Path) -> Option<bool> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    use rustix::io::Errno;
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT | AtFlags::STATX_DONT_SYNC;
    match rustix::fs::statx(CWD, path, flags, StatxFlags::empty()) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            Some(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
        }
        Err(Errno::NOENT | Errno::NOTDIR) => Some(false),
        Ok(_) | Err(_) => None,
    }
}

/// Where `source` (a device such as `/dev/loop3`) is mounted.
pub fn mountpoints_of(source: &str) -> Vec<PathBuf> {
    table()
        .into_iter()
        .filter(|m| m.source == source)
        .map(|m| m.mountpoint)
        .collect()
}

/// Mount tables escape space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u16, |v, c| v * 8 + u16::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts a fukastor mount: a kernel mount directly; a FUSE mount by
/// asking its server to unmount and exit (SIGTERM), or, when the server is
/// gone, by a lazy unmount. Forgets the mount's tracking file in `store_root`.
pub fn umount(store_root: &Path, mountpoint: &Path) -> Result<(), MountError> {
    let shown = mountpoint.display().to_string();
    let canonical = fs::canonicalize(mountpoint)
        .or_else(|e| {
            // A dead FUSE server makes stat fail with ENOTCONN: use the path.
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                std::path::absolute(mountpoint)
            } else {
                Err(e)
            }
        })
        .map_err(|e| MountError::Mountpoint(shown.clone(), e.to_string()))?;
    let Some(entry) = list().into_iter().find(|m| m.mountpoint == canonical) else {
        track::forget(store_root, &canonical);
        // A container's root filesystem is the container commands' to
        // unmount.
        let root = fs::canonicalize(store_root).unwrap_or_else(|_| store_root.to_path_buf());
        let container = table()
            .into_iter()
            .filter(|m| m.mountpoint == canonical)
            .find_map(|m| container_of_source(&m.source, &root).map(str::to_string));
        return Err(MountError::NotOurs(shown, container));
    };
    if entry.fstype.starts_with("fuse") {
        if let Some(pid) = track::read(store_root, &canonical)
            .and_then(|t| t.pid)
            .filter(|p| track::alive(*p))
        {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
            // Wait for the mount to go, then for the server to exit (it
            // forgets its tracking file on the way out), so that a mount
            // right after this returns never meets the old server.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline
                && (list().iter().any(|m| m.mountpoint == canonical) || track::alive(pid))
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        if list().iter().any(|m| m.mountpoint == canonical) {
            lazy_unmount(&canonical).map_err(|e| MountError::Umount(shown.clone(), e))?;
        }
    } else {
        rustix::mount::unmount(&canonical, rustix::mount::UnmountFlags::empty()).map_err(|e| {
            match e {
                rustix::io::Errno::PERM => MountError::NotPrivileged(shown.clone()),
                e => MountError::Umount(shown.clone(), e.to_string()),
            }
        })?;
    }
    track::forget(store_root, &canonical);
    Ok(())
}

/// Detaches a mount whose server is gone: directly as root, through
/// `fusermount3 -u -z` otherwise.
fn lazy_unmount(mountpoint: &Path) -> Result<(), String> {
    if rustix::process::geteuid().is_root() {
        return rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| e.to_string());
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .output()
        .map_err(|e| format!("running fusermount3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::unescape(r"/a\040b"), "/a b");
        assert_eq!(super::unescape(r"/end\134"), "/end\\");
        assert_eq!(super::unescape(r"/bad\777"), r"/bad\777");
        assert_eq!(super::unescape(r"/short\04"), r"/short\04");
    }

    #[test]
    fn mount_table_fields() {
        let t = super::parse_table(
            "36 25 0:32 / /mnt/a\\040b rw,relatime shared:1 - fuse fukastor:x@y rw,user_id=0\n\
             37 25 259:1 /sub /mnt/c rw - ext4 /dev/vda rw\n\
             garbage\n",
        );
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[0].mountpoint, std::path::Path::new("/mnt/a b"));
        assert_eq!(t[0].device, "0:32");
        assert_eq!(t[0].fstype, "fuse");
        assert_eq!(t[0].source, "fukastor:x@y");
        assert_eq!(t[0].super_options, "rw,user_id=0");
        assert_eq!(t[1].device, "259:1");
        assert_eq!(t[1].root, std::path::Path::new("/sub"));
    }

    /// `is_mount_root` agrees with the mount table on a mount, on paths
    /// next to and inside it, and once it is gone, answering from `statx`
    /// alone (not from its fallback, the mount table).
    #[test]
    fn mount_root_agrees_with_the_mount_table() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root: it mounts a tmpfs (run it as root, e.g. integration/run-tests.sh)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let mp = tmp.path().join("mp");
        std::fs::create_dir(&mp).unwrap();
        let mp = std::fs::canonicalize(&mp).unwrap();
        let check = |p: &std::path::Path, want: bool| {
            assert_eq!(
                super::mount_root_by_statx(p),
                Some(want),
                "statx on {}",
                p.display()
            );
            assert_eq!(
                super::is_mount_root(p),
                want,
                "is_mount_root({})",
                p.display()
            );
            assert_eq!(
                super::is_mountpoint(p),
                want,
                "is_mountpoint({})",
                p.display()
            );
        };
        check(&mp, false);
        rustix::mount::mount(
            "tmpfs",
            &mp,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap();
        std::fs::create_dir(mp.join("inside")).unwrap();
        check(&mp, true);
        check(&mp.join("inside"), false);
        check(tmp.path(), false);
        check(&mp.join("missing"), false);
        rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::empty()).unwrap();
        check(&mp, false);
    }
}
