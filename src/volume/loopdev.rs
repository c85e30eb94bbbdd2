//! Loop devices over exported volume files, through util-linux's `losetup`
//! (which uses `LOOP_CONFIGURE`), and freezing the filesystem on one.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Result, VolumeError};

/// Binds a free loop device to `file` with 4096-byte sectors and direct I/O;
/// returns the device path. Falls back to buffered I/O (with a log line)
/// when the kernel refuses direct I/O on the file.
pub fn attach(file: &Path) -> Result<String> {
    let run = |direct: bool| {
        Command::new("losetup")
            .args(["--find", "--show", "--sector-size", "4096"])
            .arg(format!("--direct-io={}", if direct { "on" } else { "off" }))
            .arg(file)
            .output()
    };
    let out = run(true).map_err(|e| VolumeError::Loop(format!("running losetup: {e}")))?;
    let out = if out.status.success() {
        out
    } else {
        tracing::warn!(
            "losetup with direct I/O failed ({}); using buffered I/O",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        run(false).map_err(|e| VolumeError::Loop(format!("running losetup: {e}")))?
    };
    if !out.status.success() {
        return Err(VolumeError::Loop(format!(
            "losetup {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !dev.starts_with("/dev/") {
        return Err(VolumeError::Loop(format!("losetup printed {dev:?}")));
    }
    Ok(dev)
}

/// Unbinds loop device `dev`.
pub fn detach(dev: &str) -> Result<()> {
    let out = Command::new("losetup")
        .arg("-d")
        .arg(dev)
        .output()
        .map_err(|e| VolumeError::Loop(format!("running losetup: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VolumeError::Loop(format!(
            "losetup -d {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// True when something holds `dev` open exclusively (a mounted filesystem,
/// a device-mapper table, another exclusive opener).
pub fn in_use(dev: &str) -> bool {
    use rustix::fs::{Mode, OFlags};
    matches!(
        rustix::fs::open(
            dev,
            OFlags::RDONLY | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::empty()
        ),
        Err(rustix::io::Errno::BUSY)
    )
}

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
