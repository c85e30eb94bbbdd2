//! Fidelity: an image pulled into fukastor and mounted by the kernel
//! (composefs: EROFS + overlayfs, `fukastor mount --kernel`) must show exactly
//! the tree that `umoci unpack` of the same OCI image writes to disk: every
//! path, file type, permission bits (setuid/setgid/sticky too), owner, size,
//! content (sha256), symlink target, device number, xattr, mtime (seconds and
//! nanoseconds) and hardlink group, with names that are not UTF-8.
//!
//! The images come from `integration/fixtures.sh` (see there what each tag
//! holds); the same image is also pulled through `oci-archive:`,
//! `docker-archive:` and with zstd and uncompressed layers, and compared with
//! the same reference. A last test checks that `fukastor dump` prints a
//! composefs dumpfile that describes the mounted tree.
//!
//! Needs root and the fixtures; without them the tests fail (never skip).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use sha2::{Digest, Sha256};

/// Pulls the image that `source` names, mounts it with the kernel, and
/// compares the mounted tree with the `umoci unpack` of the fixture tag
/// `reference_tag`.
fn check_fidelity(source: impl FnOnce(&Fixtures) -> String, reference_tag: &str) {
    require_root();
    let fx = fixtures();
    let source = &source(&fx);
    let reference = umoci_reference(&fx, reference_tag);

    let store = Store::new();
    let id = store.pull(source);
    let mnt = scratch_dir("fukastor-test-mnt-");
    let mount = store.mount_kernel(&id, mnt.path());
    check_kernel_mount(mount.path());

    let mounted = walk(mount.path());
    mount.unmount();
    assert_trees_eq(
        &format!("{source} mounted with --kernel vs umoci unpack {reference_tag}"),
        "umoci",
        &reference,
        "fukastor",
        &mounted,
    );
    store.assert_fsck_clean();
}

/// The mount is the composefs stack: an overlay whose source names composefs.
fn check_kernel_mount(mountpoint: &Path) {
    let (source, fstype) = findmnt_source_fstype(mountpoint);
    assert_eq!(
        fstype, "overlay",
        "a --kernel mount is an overlayfs (EROFS + objects), findmnt says {source} {fstype}"
    );
    assert!(
        source.contains("composefs"),
        "the overlay's source should name composefs, findmnt says {source:?}"
    );
}

#[test]
fn busybox_oci_gzip() {
    check_fidelity(|fx| fx.oci("busybox"), "busybox");
}

#[test]
fn busybox_oci_zstd() {
    check_fidelity(|fx| fx.oci("busybox-zstd"), "busybox");
}

#[test]
fn busybox_oci_uncompressed() {
    check_fidelity(|fx| fx.oci("busybox-uncompressed"), "busybox");
}

#[test]
fn busybox_oci_archive() {
    check_fidelity(
        |fx| {
            format!(
                "oci-archive:{}:busybox",
                fx.file("busybox.oci.tar").display()
            )
        },
        "busybox",
    );
}

#[test]
fn busybox_docker_archive() {
    check_fidelity(
        |fx| format!("docker-archive:{}", fx.file("busybox.docker.tar").display()),
        "busybox",
    );
}

#[test]
fn bookworm_oci() {
    check_fidelity(|fx| fx.oci("bookworm"), "bookworm");
}

#[test]
fn bookworm_mod_oci() {
    check_fidelity(|fx| fx.oci("bookworm-mod"), "bookworm-mod");
}

#[test]
fn bookworm_mod_docker_archive() {
    check_fidelity(
        |fx| {
            format!(
                "docker-archive:{}",
                fx.file("bookworm-mod.docker.tar").display()
            )
        },
        "bookworm-mod",
    );
}

/// The fixture's edge cases really are in the reference, so that the
/// comparisons above cover them (guards against a fixture recipe that
/// silently lost one).
#[test]
fn bookworm_mod_reference_has_the_edge_cases() {
    require_root();
    let fx = fixtures();
    let tree = umoci_reference(&fx, "bookworm-mod");
    let get = |p: &[u8]| {
        tree.get(&RawPath(p.to_vec()))
            .unwrap_or_else(|| panic!("umoci reference lacks {}", p.escape_ascii()))
    };
    let absent = |p: &[u8]| {
        assert!(
            !tree.contains_key(&RawPath(p.to_vec())),
            "{} should be deleted",
            p.escape_ascii()
        )
    };

    absent(b"/etc/issue.net");
    absent(b"/usr/share/doc/dpkg");
    let opaque: Vec<_> = tree
        .keys()
        .filter(|p| p.as_bytes().starts_with(b"/etc/apt/apt.conf.d/"))
        .collect();
    assert_eq!(
        opaque,
        [&RawPath(b"/etc/apt/apt.conf.d/99fukastor".to_vec())],
        "opaque dir content"
    );
    assert_eq!(get(b"/etc/motd").mode, 0o600);
    assert_eq!((get(b"/etc/motd").uid, get(b"/etc/motd").gid), (1000, 1000));
    assert_eq!(get(b"/etc/issue").kind, Kind::Dir);
    assert_eq!(get(b"/var/opt").kind, Kind::Symlink);
    assert_eq!(get(b"/srv").mtime, (981173106, 123456789));
    assert_eq!(
        get(b"/opt/fixture/hardlink-to-lower-dpkg").hardlink_group,
        Some(RawPath(b"/opt/fixture/hardlink-to-lower-dpkg".to_vec())),
        "cross-layer hardlink"
    );
    assert_eq!(
        get(b"/usr/bin/dpkg").hardlink_group,
        get(b"/opt/fixture/hardlink-to-lower-dpkg").hardlink_group
    );
    assert!(get(b"/opt/fixture/hardlink-b").hardlink_group.is_some());
    assert_eq!(get(b"/opt/fixture/fifo").kind, Kind::Fifo);
    assert_eq!(get(b"/opt/fixture/chardev").rdev, Some((10, 229)));
    assert_eq!(get(b"/opt/fixture/blockdev").rdev, Some((7, 200)));
    assert_eq!(get(b"/opt/fixture/setuid-true").mode, 0o4755);
    assert_eq!(get(b"/opt/fixture/sticky-dir").mode, 0o1777);
    assert!(
        get(b"/opt/fixture/cap-net-raw")
            .xattrs
            .contains_key(&b"security.capability"[..])
    );
    assert_eq!(get(b"/opt/fixture/user-xattr").xattrs.len(), 2);
    get(b"/opt/fixture/caf\xe9");
    get(b"/opt/fixture/dir-\xff\xfe/file");
    assert!(
        tree.keys().any(|p| p.as_bytes().len() > 255),
        "a path longer than 255 bytes"
    );
    assert_eq!(get(b"/opt/fixture/empty").size, Some(0));
    assert_eq!(get(b"/opt/fixture/random-20m").size, Some(20 << 20));
    assert_eq!(get(b"/opt/fixture/sparse").size, Some(16 << 20));
    assert!(
        tree.len() > 6000,
        "bookworm has ~7k paths, the reference has {}",
        tree.len()
    );
}

/// Turns a dumpfile into the walk's model, so that the two can be compared
/// with the same diff. Regular files' contents are hashed from the inline
/// data or from the store object the payload names.
fn dump_to_tree(entries: &[DumpEntry], objects: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut links: Vec<(&RawPath, &RawPath)> = Vec::new();
    for e in entries {
        if let Some(target) = &e.hardlink_to {
            links.push((&e.path, target));
            continue;
        }
        let mode = e.mode.unwrap();
        let kind = match mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o100000 => Kind::File,
            0o120000 => Kind::Symlink,
            0o020000 => Kind::CharDev,
            0o060000 => Kind::BlockDev,
            0o010000 => Kind::Fifo,
            0o140000 => Kind::Socket,
            other => panic!("{}: unknown file type {other:o} in dump", e.path),
        };
        let sha256 = (kind == Kind::File).then(|| {
            if let Some(content) = &e.content {
                assert_eq!(
                    content.len() as u64,
                    e.size,
                    "{}: inline content length != size",
                    e.path
                );
                hex::encode(Sha256::digest(content))
            } else if let Some(object) = &e.payload {
                let object = objects.join(std::ffi::OsStr::new(&*String::from_utf8_lossy(object)));
                let data = std::fs::read(&object).unwrap_or_else(|err| {
                    panic!(
                        "{}: the dump names object {} which cannot be read: {err}",
                        e.path,
                        object.display()
                    )
                });
                assert_eq!(data.len() as u64, e.size, "{}: object size != size", e.path);
                hex::encode(Sha256::digest(&data))
            } else {
                assert_eq!(
                    e.size, 0,
                    "{}: a non-empty file without content or object",
                    e.path
                );
                hex::encode(Sha256::digest(b""))
            }
        });
        let rdev = e.rdev.unwrap();
        let meta = Meta {
            kind,
            mode: mode & 0o7777,
            uid: e.uid.unwrap(),
            gid: e.gid.unwrap(),
            size: (kind == Kind::File).then_some(e.size),
            sha256,
            symlink: (kind == Kind::Symlink).then(|| e.payload.clone().unwrap_or_default()),
            rdev: matches!(kind, Kind::CharDev | Kind::BlockDev)
                .then(|| (rustix::fs::major(rdev), rustix::fs::minor(rdev))),
            xattrs: e
                .xattrs
                .iter()
                .filter(|(k, _)| xattr_is_compared(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mtime: e.mtime.unwrap(),
            hardlink_group: None,
        };
        assert!(
            tree.insert(e.path.clone(), meta).is_none(),
            "{} appears twice in the dump",
            e.path
        );
    }
    // Hardlink lines share the metadata of the path they name.
    let mut groups: BTreeMap<RawPath, Vec<RawPath>> = BTreeMap::new();
    for (path, target) in links {
        let meta = tree
            .get(target)
            .unwrap_or_else(|| {
                panic!("dump: hardlink {path} names {target}, which is not listed before it")
            })
            .clone();
        assert!(
            tree.insert(path.clone(), meta).is_none(),
            "{path} appears twice in the dump"
        );
        groups
            .entry(target.clone())
            .or_insert_with(|| vec![target.clone()])
            .push(path.clone());
    }
    for members in groups.into_values() {
        let leader = members.iter().min().cloned();
        for m in members {
            tree.get_mut(&m).unwrap().hardlink_group = leader.clone();
        }
    }
    tree
}

/// `fukastor dump` parses as a composefs dumpfile and describes the same
/// tree as the kernel mount: same paths, same metadata, and content that
/// the named objects really hold.
#[test]
fn dump_matches_mounted_tree() {
    require_root();
    let fx = fixtures();
    let store = Store::new();
    let id = store.pull(&fx.oci("bookworm-mod"));
    let dump = store.ok(["dump", &id]);
    let entries = parse_dump(&dump.stdout);
    assert_eq!(
        entries.first().map(|e| e.path.as_bytes()),
        Some(&b"/"[..]),
        "the dump starts with the root"
    );

    let mnt = scratch_dir("fukastor-test-mnt-");
    let mount = store.mount_kernel(&id, mnt.path());
    let mounted = walk(mount.path());
    mount.unmount();

    let dumped = dump_to_tree(&entries, &store.path().join("objects"));
    let dump_paths: Vec<_> = dumped.keys().collect();
    let mount_paths: Vec<_> = mounted.keys().collect();
    if dump_paths != mount_paths {
        assert_trees_eq(
            "paths of fukastor dump vs the kernel mount",
            "dump",
            &dumped,
            "mount",
            &mounted,
        );
    }
    assert_trees_eq(
        "fukastor dump vs the kernel mount",
        "dump",
        &dumped,
        "mount",
        &mounted,
    );
}

/// The walker and the comparison themselves: a hand-made tree with every
/// kind of metadata is recorded exactly, and a one-field change (here a
/// nanosecond of mtime, an xattr byte, a hardlink broken) makes
/// `assert_trees_eq` fail. Without this, a walker that records nothing
/// would make every fidelity test pass.
#[test]
fn walker_records_everything_and_diff_notices() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

    require_root();
    let dir = scratch_dir("fukastor-test-walk-");
    let root = dir.path();
    let p = |name: &[u8]| root.join(OsStr::from_bytes(name));
    let set_mtime = |path: &Path, sec: i64, nsec: i64| {
        let t = Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    };

    std::fs::write(p(b"file"), b"hello").unwrap();
    // chown first: it clears the setuid bit.
    std::os::unix::fs::chown(p(b"file"), Some(12), Some(34)).unwrap();
    std::fs::set_permissions(p(b"file"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    rustix::fs::setxattr(p(b"file"), "user.test", b"v\0\xff", XattrFlags::empty()).unwrap();
    std::fs::hard_link(p(b"file"), p(b"link")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9"), p(b"sym\xff")).unwrap();
    rustix::fs::mknodat(
        CWD,
        p(b"fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let dev = rustix::fs::makedev(10, 229);
    rustix::fs::mknodat(
        CWD,
        p(b"chr"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        dev,
    )
    .unwrap();
    std::fs::create_dir(p(b"sticky")).unwrap();
    std::fs::set_permissions(p(b"sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    set_mtime(&p(b"file"), 1_000_000_000, 123_456_789);
    set_mtime(&p(b"sym\xff"), 1_000_000_001, 1);
    set_mtime(root, 1_000_000_002, 999_999_999);

    let tree = walk(root);
    let get = |path: &[u8]| {
        tree.get(&RawPath(path.to_vec()))
            .unwrap_or_else(|| panic!("walk lacks {}", path.escape_ascii()))
    };
    assert_eq!(tree.len(), 7, "{:#?}", tree.keys().collect::<Vec<_>>());
    assert_eq!(get(b"/").kind, Kind::Dir);
    assert_eq!(get(b"/").mtime, (1_000_000_002, 999_999_999));
    let file = get(b"/file");
    assert_eq!(
        (file.kind, file.mode, file.uid, file.gid, file.size),
        (Kind::File, 0o4751, 12, 34, Some(5))
    );
    assert_eq!(
        file.sha256.as_deref(),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    assert_eq!(file.mtime, (1_000_000_000, 123_456_789));
    assert_eq!(
        file.xattrs.get(&b"user.test"[..]).map(Vec::as_slice),
        Some(&b"v\0\xff"[..])
    );
    assert_eq!(file.hardlink_group, Some(RawPath(b"/file".to_vec())));
    assert_eq!(get(b"/link"), file, "both names of one inode look the same");
    let sym = get(b"/sym\xff");
    assert_eq!(
        (sym.kind, sym.symlink.as_deref(), sym.mtime),
        (Kind::Symlink, Some(&b"caf\xe9"[..]), (1_000_000_001, 1))
    );
    assert_eq!(
        (get(b"/fifo").kind, get(b"/fifo").mode),
        (Kind::Fifo, 0o640)
    );
    assert_eq!(
        (get(b"/chr").kind, get(b"/chr").rdev),
        (Kind::CharDev, Some((10, 229)))
    );
    assert_eq!(
        (get(b"/sticky").kind, get(b"/sticky").mode),
        (Kind::Dir, 0o1777)
    );

    assert_trees_eq("self-test, same tree", "a", &tree, "b", &walk(root));
    let must_differ = |what: &str, change: &dyn Fn(&mut Tree)| {
        let mut other = tree.clone();
        change(&mut other);
        let result = std::panic::catch_unwind(|| assert_trees_eq(what, "a", &tree, "b", &other));
        assert!(result.is_err(), "assert_trees_eq missed: {what}");
    };
    must_differ("one nanosecond", &|t| {
        t.get_mut(&RawPath(b"/file".to_vec())).unwrap().mtime.1 += 1
    });
    must_differ("an xattr byte", &|t| {
        t.get_mut(&RawPath(b"/file".to_vec()))
            .unwrap()
            .xattrs
            .insert(b"user.test".to_vec(), b"v\0\xfe".to_vec());
    });
    must_differ("a broken hardlink", &|t| {
        t.get_mut(&RawPath(b"/link".to_vec()))
            .unwrap()
            .hardlink_group = None
    });
    must_differ("a missing path", &|t| {
        t.remove(&RawPath(b"/fifo".to_vec()));
    });
}
