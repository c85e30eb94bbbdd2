//! `restore`: copy one file or a subtree of an image out of the store.
//!
//! The destination must not exist (its parent must): everything below it is
//! created by us, with `O_EXCL`/`mkdir`, so no existing symlink can redirect a
//! write outside it. Ownership is restored when running as root, xattrs when
//! the destination filesystem and privileges allow (a refused xattr is a
//! warning), modes and mtimes always; directory metadata is applied after
//! their children. Hardlinks inside the copied subtree stay hardlinks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use composefs::generic_tree::{LeafContent, LeafId, Stat};
use composefs::tree::{Directory, Inode, RegularFile};
use rustix::fs::{AtFlags, CWD, Mode, Timespec, Timestamps, UTIME_OMIT};

use super::{TreeError, lookup, show};
use crate::store::{Objects, Tree};

/// What `restore` copied.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreStats {
    /// Paths created.
    pub paths: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Xattrs the destination refused.
    pub skipped_xattrs: u64,
}

/// Copies `path` (normalized, relative to the image root) of `tree` to `dest`.
pub fn restore(
    objects: &Objects,
    tree: &Tree,
    path: &[u8],
    dest: &Path,
) -> Result<RestoreStats, TreeError> {
    let dest_err = |why: &str| TreeError::Destination(dest.display().to_string(), why.to_string());
    if dest.symlink_metadata().is_ok() {
        return Err(dest_err("it already exists"));
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(dest_err("its parent directory does not exist"));
    }
    let mut r = Restorer {
        objects,
        tree,
        root: rustix::process::geteuid().is_root(),
        links: HashMap::new(),
        stats: RestoreStats::default(),
    };
    if path.is_empty() {
        r.dir(&tree.root, dest)?;
    } else {
        let inode = lookup(tree, path).ok_or_else(|| TreeError::NotInImage(show(path)))?;
        match inode {
            Inode::Directory(d) => r.dir(d, dest)?,
            Inode::Leaf(id, _) => r.leaf(*id, dest)?,
        }
    }
    Ok(r.stats)
}

struct Restorer<'a> {
    objects: &'a Objects,
    tree: &'a Tree,
    root: bool,
    links: HashMap<LeafId, PathBuf>,
    stats: RestoreStats,
}

fn werr(p: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |e| TreeError::Write(p.display().to_string(), e)
}

impl Restorer<'_> {
    fn dir(&mut self, d: &Directory<crate::store::ObjectId>, at: &Path) -> Result<(), TreeError> {
        fs::create_dir(at).map_err(werr(at))?;
        fs::set_permissions(at, fs::Permissions::from_mode(0o700)).map_err(werr(at))?;
        self.stats.paths += 1;
        for (name, inode) in d.sorted_entries() {
            let child = at.join(name);
            match inode {
                Inode::Directory(sub) => self.dir(sub, &child)?,
                Inode::Leaf(id, _) => self.leaf(*id, &child)?,
            }
        }
        self.meta(&d.stat, at, false)
    }

    fn leaf(&mut self, id: LeafId, at: &Path) -> Result<(), TreeError> {
        if let Some(first) = self.links.get(&id) {
            fs::hard_link(first, at).map_err(werr(at))?;
            self.stats.paths += 1;
            return Ok(());
        }
        let leaf = self.tree.leaf(id);
        let mode = Mode::from_raw_mode(leaf.stat.st_mode & 0o7777);
        match &leaf.content {
            LeafContent::Regular(f) => {
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(at)
                    .map_err(werr(at))?;
                match f {
                    RegularFile::Inline(data) => out.write_all(data).map_err(werr(at))?,
                    RegularFile::External(oid, size) | RegularFile::ExternalNoVerity(oid, size) => {
                        let mut src = self.objects.reader(oid, *size)?;
                        let n = std::io::copy(&mut src, &mut out).map_err(werr(at))?;
                        if n != *size {
                            return Err(TreeError::Store(crate::store::StoreError::Damaged(
                                format!(
                                    "object {} has {n} bytes, the image says {size}",
                                    super::hex(oid)
                                ),
                            )));
                        }
                    }
                    RegularFile::Sparse(size) => out.set_len(*size).map_err(werr(at))?,
                }
                self.stats.bytes += f.file_size();
            }
            LeafContent::Symlink(target) => {
                std::os::unix::fs::symlink(Path::new(&**target), at).map_err(werr(at))?;
            }
            LeafContent::Fifo => rustix::fs::mknodat(CWD, at, rustix::fs::FileType::Fifo, mode, 0)
                .map_err(|e| werr(at)(e.into()))?,
            LeafContent::Socket => {
                rustix::fs::mknodat(CWD, at, rustix::fs::FileType::Socket, mode, 0)
                    .map_err(|e| werr(at)(e.into()))?
            }
            LeafContent::CharacterDevice(dev) | LeafContent::BlockDevice(dev) => {
                let ft = if matches!(leaf.content, LeafContent::CharacterDevice(_)) {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::BlockDevice
                };
                rustix::fs::mknodat(CWD, at, ft, mode, *dev).map_err(|e| werr(at)(e.into()))?
            }
        }
        self.stats.paths += 1;
        self.links.insert(id, at.to_path_buf());
        let is_link = matches!(leaf.content, LeafContent::Symlink(_));
        self.meta(&leaf.stat, at, is_link)
    }

    /// Owner, xattrs, mode, mtime, in that order (chown clears setuid bits).
    fn meta(&mut self, st: &Stat, at: &Path, symlink: bool) -> Result<(), TreeError> {
        if self.root {
            rustix::fs::chownat(
                CWD,
                at,
                Some(rustix::fs::Uid::from_raw(st.st_uid)),
                Some(rustix::fs::Gid::from_raw(st.st_gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| werr(at)(e.into()))?;
        }
        for (k, v) in &st.xattrs {
            if rustix::fs::lsetxattr(at, k.as_ref() as &OsStr, v, rustix::fs::XattrFlags::empty())
                .is_err()
            {
                self.stats.skipped_xattrs += 1;
                tracing::warn!(
                    "{}: could not set xattr {}",
                    at.display(),
                    show(k.as_bytes())
                );
            }
        }
        if !symlink {
            fs::set_permissions(at, fs::Permissions::from_mode(st.st_mode & 0o7777))
                .map_err(werr(at))?;
        }
        let ts = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtim_sec,
                tv_nsec: i64::from(st.st_mtim_nsec) as _,
            },
        };
        rustix::fs::utimensat(CWD, at, &ts, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| werr(at)(e.into()))?;
        Ok(())
    }
}
