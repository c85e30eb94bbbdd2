//! `demo`: the main job on an embedded default image.
//!
//! Builds a two-layer OCI image from this host's binaries (busybox-static
//! when present, otherwise a shell and a few tools with the shared libraries
//! `ldd` names), imports it into a temporary store, mounts it through the
//! kernel, then through the FUSE server with and without passthrough, reads
//! files back and checks their digests against the host's,
//! shows the deduplication figures, unmounts; pulls it again through the
//! example Lua filters compress and checksum (embedded) and reads it back
//! through FUSE, which decodes; as root, creates a container
//! (writable layer on a thin volume), writes, snapshots, writes again, rolls
//! back and shows the second write gone; checks the store, and prints
//! what each step took.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use composefs::fsverity::FsVerityHashValue;
use sha2::{Digest, Sha256};

use super::output::{bytes, df_figures};
use super::{CliError, CliResult, io};
use crate::container::{Containers, DEFAULT_SIZE};
use crate::oci::layout::{Compression, LayoutBuilder};
use crate::oci::{PullOptions, Source};
use crate::store::{LockMode, Store};
use crate::volume::server::{self, Request};

fn demo_err(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError {
        code: "FK0600",
        message: format!("demo: {what}: {e}"),
        hint: "run `fukastor selftest`-style steps by hand: `fukastor pull`, `fukastor mount`"
            .into(),
    }
}

/// The host files that go into the demo image: (path in image, host path).
fn host_files() -> Vec<(String, PathBuf)> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if let Some(bb) = busybox {
        return vec![("bin/busybox".into(), bb)];
    }
    let mut files = Vec::new();
    for tool in ["sh", "ls", "cat", "echo"] {
        let Some(p) = ["/bin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let real = fs::canonicalize(&p).unwrap_or(p.clone());
        files.push((format!("bin/{tool}"), real.clone()));
        // Shared libraries, as ldd lists them: "libc.so.6 => /lib/... (0x...)".
        if let Ok(out) = Command::new("ldd").arg(&real).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let path = line
                    .split("=>")
                    .nth(1)
                    .unwrap_or(line)
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                if path.starts_with('/') {
                    let rel = path.trim_start_matches('/').to_string();
                    if !files.iter().any(|(r, _)| *r == rel) {
                        files.push((rel, PathBuf::from(path)));
                    }
                }
            }
        }
    }
    files
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// Builds the demo image; returns the layout dir and the files to verify.
fn build_image(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let files = host_files();
    let is_busybox = files.len() == 1;
    let mut layout = LayoutBuilder::new(dir)?;

    // Layer 1: the binaries, /etc, /tmp.
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "usr", "usr/share", "usr/share/demo"] {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    for (rel, host) in &files {
        let data = fs::read(host)?;
        let mut h = header(tar::EntryType::Regular, 0o755, data.len() as u64);
        b.append_data(&mut h, rel, data.as_slice())?;
    }
    if is_busybox {
        for applet in ["sh", "ls", "cat", "echo", "uname"] {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
        }
    }
    let text: &[(&str, &str)] = &[
        (
            "etc/os-release",
            "NAME=\"fukastor demo\"\nID=fukastor-demo\nVERSION_ID=1\n",
        ),
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    for (p, t) in text {
        let mut h = header(tar::EntryType::Regular, 0o644, t.len() as u64);
        b.append_data(&mut h, p, t.as_bytes())?;
    }
    // Some documents, the same 200 KiB twice: stored once.
    let doc: Vec<u8> = (0..200 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for p in [
        "usr/share/demo/manual.txt",
        "usr/share/demo/manual-copy.txt",
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, doc.len() as u64);
        b.append_data(&mut h, p, doc.as_slice())?;
    }
    layout.layer(&b.into_inner()?, Compression::Gzip)?;

    // Layer 2: an app directory with a copy of the first binary (same bytes:
    // deduplicated), a hardlink into layer 1, a change and a deletion.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "app/", std::io::empty())?;
    let (first_rel, first_host) = &files[0];
    let data = fs::read(first_host)?;
    let mut h = header(tar::EntryType::Regular, 0o755, data.len() as u64);
    b.append_data(&mut h, "app/tool-copy", data.as_slice())?;
    let mut h = header(tar::EntryType::Link, 0o755, 0);
    b.append_link(&mut h, "app/tool-link", first_rel)?;
    let motd =
        b"Served from a fukastor store: content-addressed, deduplicated, mounted by the kernel.\n";
    let mut h = header(tar::EntryType::Regular, 0o644, motd.len() as u64);
    b.append_data(&mut h, "etc/motd", &motd[..])?;
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(
        &mut h,
        "usr/share/demo/.wh.manual-copy.txt",
        std::io::empty(),
    )?;
    layout.layer(&b.into_inner()?, Compression::Zstd)?;
    layout.image(
        "demo",
        serde_json::json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
    )?;
    Ok(files)
}

/// "1 file", "3 files".
fn files_n(n: usize) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// Compares each host file with its copy under `mnt`; returns how many.
fn verify(mnt: &Path, files: &[(String, PathBuf)]) -> CliResult<usize> {
    let mut n = 0;
    for (rel, host) in files {
        let a =
            Sha256::digest(fs::read(mnt.join(rel)).map_err(|e| demo_err("reading the mount", e))?);
        let b = Sha256::digest(fs::read(host).map_err(|e| demo_err("reading the host file", e))?);
        if a != b {
            return Err(demo_err(
                "content check",
                format!("{rel} differs from {}", host.display()),
            ));
        }
        n += 1;
    }
    Ok(n)
}

struct Steps<'o, W: Write> {
    out: &'o mut W,
    rows: Vec<(String, f64)>,
}

impl<W: Write> Steps<'_, W> {
    fn time<T>(&mut self, what: &str, f: impl FnOnce() -> CliResult<T>) -> CliResult<T> {
        writeln!(self.out, "==> {what}").map_err(io)?;
        let t = Instant::now();
        let r = f()?;
        self.rows
            .push((what.to_string(), t.elapsed().as_secs_f64() * 1000.0));
        Ok(r)
    }
}

const CONTAINER: &str = "demo-ctr";

/// The image again, stored through Lua filters (compress, then checksum)
/// and read back through FUSE, which decodes.
fn filtered<W: Write>(
    s: &mut Steps<'_, W>,
    store_dir: &Path,
    spelled: &str,
    mnt: &Path,
    files: &[(String, PathBuf)],
) -> CliResult {
    use crate::filter::{Script, Stage, floor::example_script};
    let script = |name: &str| Script::new(name, example_script(name).unwrap_or_default());
    let stages = vec![
        Stage::new(script("compress")).param("level", 3),
        Stage::new(script("checksum")),
    ];
    let store = Store::open(store_dir, LockMode::Shared)?;
    let report = s.time(
        "pull it again through Lua filters (compress, checksum): objects stored encoded",
        || {
            let src = Source::parse(spelled)?;
            let opts = PullOptions::named(Some("demo:filtered".into())).filters(stages);
            Ok(crate::oci::pull(&store, &src, spelled, &opts)?)
        },
    )?;
    writeln!(
        s.out,
        "    image {} : {} objects, {} stored for {} of content",
        &report.id.to_hex()[..12],
        report.new_objects,
        bytes(report.new_bytes),
        bytes(report.stats.logical_bytes),
    )
    .map_err(io)?;
    drop(store);
    fuse_round_trip(
        s,
        (store_dir, "demo:filtered", mnt, files),
        false,
        [
            "mount the filtered image through FUSE (the kernel mount refuses it)",
            "read files back through FUSE (decoded by Lua) and compare with the host",
            "unmount the filtered image",
        ],
    )
}

/// Mounts `image` through FUSE at `mnt`, checks `files` against the host,
/// unmounts; `steps` names the three timed steps.
fn fuse_round_trip<W: Write>(
    s: &mut Steps<'_, W>,
    (store_dir, image, mnt, files): (&Path, &str, &Path, &[(String, PathBuf)]),
    passthrough: bool,
    steps: [&str; 3],
) -> CliResult {
    let pid = s.time(steps[0], || {
        let opts = crate::fuse::ServeOptions::new(passthrough, 0);
        Ok(crate::fuse::spawn(store_dir, image, mnt, &opts)?)
    })?;
    let n = s.time(steps[1], || verify(mnt, files))?;
    writeln!(
        s.out,
        "    {} identical to the host's; server pid {pid}",
        files_n(n)
    )
    .map_err(io)?;
    s.time(steps[2], || Ok(crate::mount::umount(store_dir, mnt)?))?;
    Ok(())
}

/// A container: its writable layer on a thin volume, a snapshot, a write
/// after it, a rollback that drops that write.
fn containers<W: Write>(s: &mut Steps<'_, W>, store_dir: &Path) -> CliResult {
    let c = Containers::new(store_dir);
    let made = s.time(
        "create a container (its writable layer: a clone of an ext4 template volume)",
        || Ok(c.create("demo:latest", Some(CONTAINER), DEFAULT_SIZE)?),
    )?;
    writeln!(
        s.out,
        "    container {}: volume {} ({} thin); the first container of a size also builds the template",
        made.name,
        made.volume,
        bytes(made.size)
    )
    .map_err(io)?;
    let again = s.time("create a second container (a clone only)", || {
        Ok(c.create("demo:latest", Some("demo-ctr2"), DEFAULT_SIZE)?)
    })?;
    s.time("remove the second container", || {
        Ok(c.remove(&again.name, false)?)
    })?;
    let rootfs = s.time(
        "mount it: image (kernel) + volume (FUSE file, loop device, ext4) + overlayfs",
        || Ok(c.mount(CONTAINER, None)?),
    )?;
    let write = |name: &str, text: &str| {
        fs::write(rootfs.join(name), text).map_err(|e| demo_err("writing in the container", e))
    };
    write("first.txt", "written before the snapshot\n")?;
    let paths = c.paths().clone();
    let volume = made.volume.clone();
    s.time(
        "snapshot it while mounted (--atomic: FIFREEZE, flush, seal, FITHAW)",
        || {
            Ok(server::call(
                &paths,
                &Request::Snapshot {
                    volume: volume.clone(),
                    name: "clean".into(),
                    atomic: true,
                },
            )
            .map(|_| ())?)
        },
    )?;
    write("second.txt", "written after the snapshot\n")?;
    writeln!(
        s.out,
        "    wrote /first.txt, snapshot 'clean', wrote /second.txt: both there: {}",
        rootfs.join("first.txt").exists() && rootfs.join("second.txt").exists()
    )
    .map_err(io)?;
    s.time("unmount the container", || Ok(c.umount(CONTAINER)?))?;
    s.time("roll it back to 'clean'", || {
        Ok(server::call(
            &paths,
            &Request::Rollback {
                volume: volume.clone(),
                name: "clean".into(),
            },
        )
        .map(|_| ())?)
    })?;
    let rootfs = s.time("mount it again", || Ok(c.mount(CONTAINER, None)?))?;
    let first = fs::read_to_string(rootfs.join("first.txt")).unwrap_or_default();
    let second_gone = !rootfs.join("second.txt").exists();
    writeln!(
        s.out,
        "    /first.txt: {:?}; /second.txt gone: {second_gone}",
        first.trim()
    )
    .map_err(io)?;
    s.time("remove the container (unmount, drop its volume)", || {
        Ok(c.remove(CONTAINER, true)?)
    })?;
    match crate::runtime::which_crun() {
        Err(_) => writeln!(
            s.out,
            "==> run a command in a container with crun: not run, crun is not installed (apt-get install crun)"
        )
        .map_err(io)?,
        Ok(_) => {
            let mut opts = crate::runtime::RunOptions::new(DEFAULT_SIZE);
            opts.rm = true;
            opts.name = Some("demo-run".into());
            opts.process.cmd = vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo \"    hello from container $(uname -n), pid $$, $(cat /etc/os-release | head -1)\"".into(),
            ];
            s.out.flush().map_err(io)?;
            let status = s.time(
                "run a command in a new container with crun (run --rm: create, mount, crun, remove)",
                || Ok(crate::runtime::run(store_dir, "demo:latest", &opts)?),
            )?;
            writeln!(s.out, "    exit status {status}").map_err(io)?;
            if status != 0 {
                return Err(demo_err("crun", format!("the container exited with {status}")));
            }
        }
    }
    if first.trim() != "written before the snapshot" || !second_gone {
        return Err(demo_err(
            "rollback",
            "the container does not hold what it held at the snapshot",
        ));
    }
    Ok(())
}

/// Runs the demo.
pub(super) fn run(out: &mut impl Write, keep: Option<&Path>) -> CliResult {
    let base = match keep {
        Some(p) => p.to_path_buf(),
        None => std::env::temp_dir().join(format!("fukastor-demo-{}", std::process::id())),
    };
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).map_err(|e| demo_err("creating a work directory", e))?;
    let result = run_in(out, &base);
    if keep.is_none() {
        let mnt = base.join("mnt");
        let _ = crate::mount::umount(&base.join("store"), &mnt);
        let c = Containers::new(&base.join("store"));
        for name in [CONTAINER, "demo-ctr2"] {
            let _ = c.remove(name, true);
        }
        // The volume server keeps its FUSE mount inside the store until it
        // has been idle for a moment: removing the directory before that
        // would leave part of it behind.
        let vserve = server::Paths::new(&base.join("store")).mnt;
        let start = std::time::Instant::now();
        while crate::mount::is_mount_root(&vserve)
            && start.elapsed() < server::IDLE + std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = fs::remove_dir_all(&base);
    } else {
        let _ = writeln!(
            out,
            "kept the demo store in {}",
            base.join("store").display()
        );
    }
    result
}

fn run_in(out: &mut impl Write, base: &Path) -> CliResult {
    let layout = base.join("image");
    let store_dir = base.join("store");
    let mnt = base.join("mnt");
    let mut s = Steps {
        out,
        rows: Vec::new(),
    };

    let files = s.time(
        "build a 2-layer OCI image from this host's binaries",
        || build_image(&layout).map_err(|e| demo_err("building the image", e)),
    )?;
    writeln!(
        s.out,
        "    {} host files: {}",
        files.len(),
        files
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
    .map_err(io)?;

    let store = Store::open(&store_dir, LockMode::Shared)?;
    let spelled = format!("oci:{}:demo", layout.display());
    let report = s.time("pull it into a new store", || {
        let src = Source::parse(&spelled)?;
        Ok(crate::oci::pull(
            &store,
            &src,
            &spelled,
            &PullOptions::named(Some("demo:latest".into())),
        )?)
    })?;
    writeln!(
        s.out,
        "    image {} : {} paths, {} files, {} content, {} objects written",
        &report.id.to_hex()[..12],
        report.stats.paths,
        report.stats.regular_files,
        bytes(report.stats.logical_bytes),
        report.new_objects
    )
    .map_err(io)?;

    let again = s.time(
        "pull it again under a second name (everything deduplicated)",
        || {
            let src = Source::parse(&spelled)?;
            Ok(crate::oci::pull(
                &store,
                &src,
                &spelled,
                &PullOptions::named(Some("demo:again".into())),
            )?)
        },
    )?;
    writeln!(
        s.out,
        "    {} new objects, same image ID: {}",
        again.new_objects,
        again.id == report.id
    )
    .map_err(io)?;

    let df = df_figures(&store)?;
    writeln!(
        s.out,
        "    store: {} files in images stored as {} objects; logical {} -> unique {} (dedup {:.2}x); {} on disk",
        df.files_in_images,
        df.objects_referenced,
        bytes(df.logical_bytes),
        bytes(df.unique_bytes),
        df.dedup_ratio,
        bytes(df.stored_bytes)
    )
    .map_err(io)?;

    fs::create_dir_all(&mnt).map_err(|e| demo_err("creating the mountpoint", e))?;
    if !rustix::process::geteuid().is_root() {
        writeln!(
            s.out,
            "==> kernel mount: not run, it needs root (run the demo as root to see it)"
        )
        .map_err(io)?;
    } else {
        s.time(
            "mount it through the kernel (EROFS + overlayfs, objects as data-only lower)",
            || {
                Ok(crate::mount::mount_kernel(
                    &store,
                    &report.id,
                    "demo:latest",
                    &mnt,
                )?)
            },
        )?;
        let checked = s.time(
            "read files back through the mount and compare with the host",
            || verify(&mnt, &files),
        )?;
        writeln!(s.out, "    {} identical to the host's", files_n(checked)).map_err(io)?;
        let motd = fs::read_to_string(mnt.join("etc/motd")).unwrap_or_default();
        writeln!(s.out, "    /etc/motd: {}", motd.trim()).map_err(io)?;
        let gone = !mnt.join("usr/share/demo/manual-copy.txt").exists();
        writeln!(
            s.out,
            "    whiteout applied (manual-copy.txt deleted by layer 2): {gone}"
        )
        .map_err(io)?;
        let sh = mnt.join("bin/sh");
        if let Ok(o) = Command::new(&sh)
            .arg("-c")
            .arg("echo hello from a shell inside the image")
            .output()
        {
            writeln!(
                s.out,
                "    bin/sh -c echo: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            )
            .map_err(io)?;
        }
        if let Ok(o) = Command::new("findmnt")
            .arg("-n")
            .arg("-o")
            .arg("SOURCE,FSTYPE,OPTIONS")
            .arg(&mnt)
            .output()
        {
            let line = String::from_utf8_lossy(&o.stdout);
            let short: String = line.trim().chars().take(110).collect();
            writeln!(s.out, "    findmnt: {short}").map_err(io)?;
        }
        s.time("unmount", || Ok(crate::mount::umount(&store_dir, &mnt)?))?;
    }
    drop(store);
    let root = rustix::process::geteuid().is_root();
    for (how, passthrough) in [("FUSE", false), ("FUSE with passthrough", true)] {
        if passthrough && !root {
            writeln!(s.out, "==> {how}: not run, passthrough needs root").map_err(io)?;
            continue;
        }
        fuse_round_trip(
            &mut s,
            (&store_dir, "demo:latest", &mnt, &files),
            passthrough,
            [
                &format!("mount it through {how} (a server that outlives the command)"),
                &format!("read files back through {how} and compare with the host"),
                &format!("unmount {how} (the server exits)"),
            ],
        )?;
    }
    filtered(&mut s, &store_dir, &spelled, &mnt, &files)?;
    if root {
        containers(&mut s, &store_dir)?;
    } else {
        writeln!(
            s.out,
            "==> container with a snapshot and a rollback: not run, it needs root (loop devices, ext4)"
        )
        .map_err(io)?;
    }
    let report = s.time("fsck the store (every object's digest recomputed)", || {
        let store = Store::open(&store_dir, LockMode::Exclusive)?;
        Ok(store.fsck(false, &[])?)
    })?;
    writeln!(
        s.out,
        "    {} images, {} objects: {}",
        report.images,
        report.objects,
        if report.clean { "clean" } else { "NOT clean" }
    )
    .map_err(io)?;

    writeln!(s.out, "\n{:<80} {:>10}", "step", "ms").map_err(io)?;
    for (what, ms) in &s.rows {
        writeln!(s.out, "{what:<80} {ms:>10.1}").map_err(io)?;
    }
    if !report.clean {
        return Err(demo_err("fsck", "the store is not clean"));
    }
    Ok(())
}
