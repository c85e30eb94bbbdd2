//! Loop devices over exported volume files, bound and unbound with the
//! loop driver's ioctls (`LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE`,
//! `LOOP_CLR_FD`: what util-linux's `losetup --find` and `losetup -d` do,
//! without starting a process for each), and freezing the filesystem on one.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{Mode, OFlags};

use super::{Result, VolumeError};

/// `<linux/loop.h>`: the ioctls and structures used here (libc has none).
mod sys {
    pub const LOOP_CTL_GET_FREE: u32 = 0x4C82;
    pub const LOOP_CONFIGURE: u32 = 0x4C0A;
    pub const LOOP_CLR_FD: u32 = 0x4C01;
    pub const LO_FLAGS_DIRECT_IO: u32 = 16;
    pub const LO_NAME_SIZE: usize = 64;

    /// `struct loop_info64`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LoopInfo64 {
        pub lo_device: u64,
        pub lo_inode: u64,
        pub lo_rdevice: u64,
        pub lo_offset: u64,
        pub lo_sizelimit: u64,
        pub lo_number: u32,
        pub lo_encrypt_type: u32,
        pub lo_encrypt_key_size: u32,
        pub lo_flags: u32,
        pub lo_file_name: [u8; LO_NAME_SIZE],
        pub lo_crypt_name: [u8; LO_NAME_SIZE],
        pub lo_encrypt_key: [u8; 32],
        pub lo_init: [u64; 2],
    }

    /// `struct loop_config`, the argument of `LOOP_CONFIGURE` (Linux 5.8+).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LoopConfig {
        pub fd: u32,
        pub block_size: u32,
        pub info: LoopInfo64,
        pub reserved: [u64; 8],
    }

    // The sizes the kernel's uapi header gives them.
    const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
    const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);
}

/// How many times a free device is looked for when another process takes
/// the one the driver named first.
const FIND_TRIES: usize = 32;

/// `ioctl(fd, request, arg)` for the three loop requests above.
///
/// `arg` is null (`LOOP_CTL_GET_FREE`, `LOOP_CLR_FD`: the kernel reads no
/// argument) or points to a whole `LoopConfig` (`LOOP_CONFIGURE`, which
/// copies `size_of::<LoopConfig>()` bytes in, checked against the uapi size
/// above, and writes nothing back); the caller keeps it alive across the
/// call. Returns the ioctl's non-negative result.
#[allow(unsafe_code)]
fn loop_ioctl(fd: &OwnedFd, request: u32, arg: Option<&sys::LoopConfig>) -> std::io::Result<i32> {
    let ptr = arg.map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `fd` is an open descriptor owned by the caller for the whole
    // call; `ptr` is null or points to an initialised `#[repr(C)]` value of
    // the exact layout the request reads (see above), borrowed for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, ptr) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open(path: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Binds a free loop device to `file` with 4096-byte sectors, with direct
/// I/O or not; returns the device path.
fn configure(file: &Path, direct: bool) -> std::io::Result<String> {
    let mut flags = OFlags::RDWR;
    if direct {
        flags |= OFlags::DIRECT;
    }
    let backing = open(file, flags)?;
    let control = open(Path::new("/dev/loop-control"), OFlags::RDWR)?;
    let mut info = sys::LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: if direct { sys::LO_FLAGS_DIRECT_IO } else { 0 },
        lo_file_name: [0; sys::LO_NAME_SIZE],
        lo_crypt_name: [0; sys::LO_NAME_SIZE],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // As losetup does: the name LOOP_GET_STATUS reports (truncated).
    let name = file.as_os_str().as_encoded_bytes();
    let n = name.len().min(sys::LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    let config = sys::LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: super::BLOCK_SIZE,
        info,
        reserved: [0; 8],
    };
    let mut last = None;
    for _ in 0..FIND_TRIES {
        let n = loop_ioctl(&control, sys::LOOP_CTL_GET_FREE, None)?;
        let dev = format!("/dev/loop{n}");
        let fd = open(Path::new(&dev), OFlags::RDWR)?;
        match loop_ioctl(&fd, sys::LOOP_CONFIGURE, Some(&config)) {
            Ok(_) => return Ok(dev),
            // Another process bound it between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free loop device")))
}

/// Binds a free loop device to `file` with 4096-byte sectors and direct I/O;
/// returns the device path. Falls back to buffered I/O (with a log line)
/// when the kernel refuses direct I/O on the file.
pub fn attach(file: &Path) -> Result<String> {
    let failed = |e: std::io::Error| {
        VolumeError::Loop(format!("binding a loop device to {}: {e}", file.display()))
    };
    match configure(file, true) {
        Ok(dev) => Ok(dev),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "a loop device with direct I/O on {} failed ({e}); using buffered I/O",
                file.display()
            );
            configure(file, false).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Unbinds loop device `dev` (the kernel lets go of the file once the last
/// opener of the device has closed it).
pub fn detach(dev: &str) -> Result<()> {
    open(Path::new(dev), OFlags::RDONLY)
        .and_then(|fd| loop_ioctl(&fd, sys::LOOP_CLR_FD, None))
        .map(|_| ())
        .map_err(|e| VolumeError::Loop(format!("unbinding {dev}: {e}")))
}

/// Unbinds loop device `dev` unless something holds it open exclusively
/// (a mounted filesystem, a device-mapper table, another exclusive opener):
/// false then, and nothing changed. The check and the unbind go through one
/// exclusive open of the device, so nothing can mount it in between (a
/// mount after a separate check would leave the device bound, only marked
/// to clear itself at the last close).
///
/// The kernel clears the device when its last opener closes it: at once
/// when this was the only one, later when something else has it open
/// without claiming it (udev or `blkid` probing it, a `dd` reading it).
/// So this waits (up to [`CLEAR_WAIT`]) until the device is unbound, and
/// after that says in the log that it unbinds itself at the other
/// opener's close.
pub fn detach_unless_in_use(dev: &str) -> Result<bool> {
    let fd = match open(Path::new(dev), OFlags::RDONLY | OFlags::EXCL) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
        r => r.map_err(|e| VolumeError::Loop(format!("unbinding {dev}: {e}")))?,
    };
    loop_ioctl(&fd, sys::LOOP_CLR_FD, None)
        .map_err(|e| VolumeError::Loop(format!("unbinding {dev}: {e}")))?;
    drop(fd);
    let name = Path::new(dev).file_name().unwrap_or_default();
    let bound = Path::new("/sys/block").join(name).join("loop/backing_file");
    let start = std::time::Instant::now();
    while bound.exists() {
        if start.elapsed() > CLEAR_WAIT {
            tracing::warn!(
                "{dev} is still open elsewhere; it unbinds itself when that opener closes it"
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(true)
}

/// How long [`detach_unless_in_use`] waits for another opener to close the
/// device.
const CLEAR_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Every loop device whose backing file is `file` or, when `prefix` is
/// true, any file under directory `file`: `(device, backing file)`.
pub fn devices_backed_by(file: &Path, prefix: bool) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        // The kernel prints the path it opened, with " (deleted)" if unlinked.
        let backing = PathBuf::from(backing.trim_end_matches('\n'));
        let hit = if prefix {
            backing.starts_with(file) && backing != file
        } else {
            backing == file
        };
        if hit {
            found.push((format!("/dev/{name}"), backing));
        }
    }
    found.sort();
    found
}

/// Freezes the filesystem mounted at `mountpoint` (FIFREEZE through
/// util-linux's `fsfreeze`), or thaws it.
pub fn freeze(mountpoint: &Path, frozen: bool) -> Result<()> {
    let out = Command::new("fsfreeze")
        .arg(if frozen { "--freeze" } else { "--unfreeze" })
        .arg(mountpoint)
        .output()
        .map_err(|e| VolumeError::Freeze(format!("running fsfreeze: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VolumeError::Freeze(format!(
            "fsfreeze {} {}: {}",
            if frozen { "--freeze" } else { "--unfreeze" },
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
