//! Building a container's OCI runtime `config.json` from its image config
//! (with `oci-spec`): what `podman run` would give, minus what needs a
//! network stack.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use super::{Result, RuntimeError};

/// What the user asked for on top of the image config.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ProcessOptions {
    /// `-e KEY=VALUE`, in order.
    pub env: Vec<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// The command after `--` (replaces the image's Cmd).
    pub cmd: Vec<String>,
}

/// The parts of an OCI image config a container's process uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageProcess {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: String,
    /// `User`.
    pub user: String,
}

impl ImageProcess {
    /// Reads them from an image config (`{"config": {"Entrypoint": …}}`).
    pub fn from_config(config: &serde_json::Value) -> ImageProcess {
        let c = &config["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        ImageProcess {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            workdir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
        }
    }
}

/// podman's default capabilities (containers.conf `default_capabilities`).
const CAPABILITIES: [Capability; 11] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the runtime config of container `name` whose root filesystem is
/// mounted at `rootfs` (users and groups are looked up there).
pub fn build(
    name: &str,
    rootfs: &Path,
    image: &ImageProcess,
    opts: &ProcessOptions,
) -> Result<Spec> {
    let mut args = image.entrypoint.clone();
    if opts.cmd.is_empty() {
        args.extend(image.cmd.iter().cloned());
    } else {
        args.extend(opts.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    let env = environment(name, &image.env, &opts.env)?;
    let cwd = opts
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| image.workdir.clone());
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    if !cwd.starts_with('/') {
        return Err(RuntimeError::Config(format!(
            "the working directory {cwd:?} is not absolute"
        )));
    }
    let user_spec = opts.user.clone().unwrap_or_else(|| image.user.clone());
    let (uid, gid) = resolve_user(rootfs, &user_spec)?;
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.into_iter().collect();
    let effective = if uid == 0 {
        caps.clone()
    } else {
        Default::default()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .permitted(effective.clone())
        .effective(effective)
        .inheritable(oci_spec::runtime::Capabilities::default())
        .ambient(oci_spec::runtime::Capabilities::default())
        .build()
        .map_err(|e| RuntimeError::Config(e.to_string()))?;
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .build()
        .map_err(|e| RuntimeError::Config(e.to_string()))?;
    let default_process = ProcessBuilder::default()
        .build()
        .map_err(|e| RuntimeError::Config(e.to_string()))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(user)
        .capabilities(capabilities)
        .no_new_privileges(false)
        .rlimits(default_process.rlimits().clone().unwrap_or_default())
        .build()
        .map_err(|e| RuntimeError::Config(e.to_string()))?;
    let root = RootBuilder::default()
        .path(rootfs)
        .readonly(false)
        .build()
        .map_err(|e| RuntimeError::Config(e.to_string()))?;
    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(Some(name.chars().take(63).collect()));
    let mut annotations = std::collections::HashMap::new();
    annotations.insert("io.fukastor.container".to_string(), name.to_string());
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

/// The image's environment, `PATH` if it has none, `HOSTNAME`, then the
/// user's `-e` settings (each replacing the same key).
fn environment(name: &str, image: &[String], user: &[String]) -> Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |kv: &str| {
        let (k, _) = kv.split_once('=').unwrap_or((kv, ""));
        if !vars.contains_key(k) {
            order.push(k.to_string());
        }
        vars.insert(k.to_string(), kv.to_string());
    };
    if !image.iter().any(|e| e.starts_with("PATH=")) {
        set(DEFAULT_PATH);
    }
    for e in image {
        set(e);
    }
    set(&format!(
        "HOSTNAME={}",
        name.chars().take(63).collect::<String>()
    ));
    for e in user {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => set(e),
            _ => {
                return Err(RuntimeError::Config(format!("-e {e:?} is not KEY=VALUE")));
            }
        }
    }
    Ok(order.into_iter().map(|k| vars[&k].clone()).collect())
}

/// Resolves `user[:group]` (names or numbers) to a uid and gid, looking
/// names up in the container's `/etc/passwd` and `/etc/group`. An empty
/// spec is root.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<(u32, u32)> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd");
    // name:x:uid:gid:...
    let entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || !pred(&f) {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, entry(&|f| f[2] == user).map_or(0, |(_, g)| g)),
        Err(_) => entry(&|f| f[0] == user).ok_or_else(|| RuntimeError::User {
            user: spec.to_string(),
            why: format!("no user {user:?} in the image's /etc/passwd"),
        })?,
    };
    let gid = match group {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_in_root(rootfs, "etc/group")
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
                })
                .ok_or_else(|| RuntimeError::User {
                    user: spec.to_string(),
                    why: format!("no group {g:?} in the image's /etc/group"),
                })?,
        },
    };
    Ok((uid, gid))
}

/// Whether the command `spec` runs can start in the root filesystem at
/// `rootfs`, looked up as crun does: a name with a slash as it is,
/// relative to the working directory; a bare name in each directory of the
/// process's `PATH`, the first program found winning (a file there that is
/// no program is passed over). crun would fail to start it with its own
/// message and status 1, after creating the container; this says why
/// before: [`RuntimeError::NoSuchCommand`] when no such file exists,
/// [`RuntimeError::NotRunnable`] when none of the files found is a program
/// (a directory, a file with no execute bit set).
/// Symlinks resolve inside the root. A command under one of the spec's
/// mounts (`/proc`, `/dev`, …) is not judged, nor is a file that could not
/// be looked at (crun says why), nor one some user may execute (whether the
/// container's user may is left to crun). A script whose `#!` interpreter
/// is not there is [`RuntimeError::NoInterpreter`].
pub fn check_command(rootfs: &Path, spec: &Spec) -> Result<()> {
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let Some(cmd) = process.args().as_ref().and_then(|a| a.first()).cloned() else {
        return Ok(());
    };
    let path = process
        .env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or_default()
        .to_string();
    // crun: "cannot find `` in $PATH".
    if cmd.is_empty() {
        return Err(RuntimeError::NoSuchCommand { cmd, path });
    }
    let cwd = process.cwd().to_string_lossy().into_owned();
    let in_cwd = |p: &str| {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{p}", cwd.trim_end_matches('/'))
        }
    };
    let candidates: Vec<String> = if cmd.contains('/') {
        vec![in_cwd(&cmd)]
    } else {
        path.split(':')
            .map(|d| in_cwd(&format!("{}/{cmd}", if d.is_empty() { "." } else { d })))
            .collect()
    };
    let mounts: Vec<String> = spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| {
            m.destination()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string()
        })
        .filter(|d| !d.is_empty())
        .collect();
    let Some(root) = open_root(rootfs) else {
        return Ok(());
    };
    let look = InRoot { root, mounts };
    // The first file found that is no program, and why.
    let mut not_runnable: Option<(String, &str)> = None;
    for c in &candidates {
        if look.under_a_mount(c) {
            return Ok(());
        }
        match look.open(c, OFlags::empty()) {
            Ok(fd) => match not_a_program(&fd) {
                None => return look.check_interpreter(&cmd, c, &fd),
                Some(why) => {
                    not_runnable.get_or_insert((c.clone(), why));
                }
            },
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {}
            // Another failure (a loop of symlinks, no permission): crun's
            // to report.
            Err(_) => return Ok(()),
        }
    }
    // No program found: only now the slower look at symlinks into mounts
    // (for the files found too, which crun would then not see: what is
    // mounted there hides them).
    if candidates.iter().any(|c| look.leads_into_a_mount(c, 0)) {
        return Ok(());
    }
    Err(match not_runnable {
        Some((file, why)) => RuntimeError::NotRunnable {
            cmd,
            file: normalize(&file),
            why: why.to_string(),
        },
        None => RuntimeError::NoSuchCommand { cmd, path },
    })
}

/// The container's root filesystem as [`check_command`] looks at it: paths
/// resolved inside it, and the spec's mounts, which are empty directories
/// in it until crun mounts them.
struct InRoot {
    root: OwnedFd,
    /// The mounts' destinations, without a trailing slash.
    mounts: Vec<String>,
}

impl InRoot {
    /// The most symlinks followed in a row ([`InRoot::leads_into_a_mount`]),
    /// the kernel's own limit.
    const MAX_HOPS: u32 = 40;

    fn under_a_mount(&self, p: &str) -> bool {
        let p = normalize(p);
        self.mounts.iter().any(|m| {
            p.strip_prefix(m.as_str())
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })
    }

    fn open(&self, p: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        open_in(&self.root, p, flags | OFlags::PATH)
    }

    /// For program `file` (what command `cmd` found, open at `found`, an
    /// `O_PATH` descriptor of a regular file), a script whose `#!` line
    /// names an interpreter (an absolute path) that is not there, as the
    /// kernel reads the line (at most 256 bytes; the name ends at a blank,
    /// a NUL or the line's end): [`RuntimeError::NoInterpreter`] (crun: "No
    /// such file or directory" from `execve`, status 1). Anything else, a
    /// binary's own loader included, is left to crun; so is a script or an
    /// interpreter reached through a mount.
    fn check_interpreter(&self, cmd: &str, file: &str, found: &OwnedFd) -> Result<()> {
        // The file itself (a regular file: `not_a_program`), not whatever
        // is at its path by now.
        let Ok(fd) = rustix::fs::open(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(found)),
            OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return Ok(());
        };
        // What the kernel reads of the `#!` line.
        let mut head = Vec::with_capacity(256);
        if std::fs::File::from(fd)
            .take(256)
            .read_to_end(&mut head)
            .is_err()
        {
            return Ok(());
        }
        let Some(line) = head.strip_prefix(b"#!") else {
            return Ok(());
        };
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.trim_ascii_start();
        let end = line
            .iter()
            .position(|&b| matches!(b, b' ' | b'\t' | b'\0'))
            .unwrap_or(line.len());
        // A name cut off by the 256 bytes is the kernel's to refuse
        // (`ENOEXEC`).
        if end == line.len() && head.len() == 256 && !head.contains(&b'\n') {
            return Ok(());
        }
        let Ok(interpreter) = std::str::from_utf8(&line[..end]) else {
            return Ok(());
        };
        if !interpreter.starts_with('/') || self.under_a_mount(interpreter) {
            return Ok(());
        }
        match self.open(interpreter, OFlags::empty()) {
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)
                // The slower looks only now, before saying so.
                if !self.leads_into_a_mount(interpreter, 0)
                    && !self.leads_into_a_mount(file, 0) =>
            {
                Err(RuntimeError::NoInterpreter {
                    cmd: cmd.to_string(),
                    file: normalize(file),
                    interpreter: interpreter.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Where `fd`, opened in the root, is: a path in it.
    fn where_is(&self, fd: &OwnedFd) -> Option<String> {
        // Where the root is, symlinks resolved: asked only here (the slow
        // path), not on every run.
        let root = std::fs::read_link(format!("/proc/self/fd/{}", self.root.as_raw_fd())).ok()?;
        in_root_path(&root, fd)
    }

    /// Whether the way to `p` (not there) goes through a symlink into one
    /// of the mounts: its parent directory, once resolved, is under one, or
    /// its last component is a symlink whose target is, or leads there the
    /// same way (a chain of symlinks, `hops` of them followed so far); a
    /// parent that is not there either is looked at the same way.
    fn leads_into_a_mount(&self, p: &str, hops: u32) -> bool {
        let mut p = normalize(p);
        while let Some((parent, name)) = p
            .rsplit_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
        {
            let parent = if parent.is_empty() {
                "/".to_string()
            } else {
                parent
            };
            if let Ok(dir) = self.open(&parent, OFlags::DIRECTORY) {
                let resolved = self.where_is(&dir).unwrap_or(parent);
                if self.under_a_mount(&resolved) {
                    return true;
                }
                return rustix::fs::readlinkat(&dir, name.as_str(), Vec::new()).is_ok_and(|t| {
                    let t = t.to_string_lossy();
                    let target = if t.starts_with('/') {
                        t.into_owned()
                    } else {
                        format!("{resolved}/{t}")
                    };
                    self.under_a_mount(&target)
                        || (hops < Self::MAX_HOPS && self.leads_into_a_mount(&target, hops + 1))
                });
            }
            if parent == "/" {
                return false;
            }
            p = parent;
        }
        false
    }
}

/// Why the file open at `fd` (`O_PATH`, symlinks followed) can be run by
/// no one, not even root: `execve` needs a regular file with an execute
/// bit. `None` when someone may run it (or its type cannot be read).
fn not_a_program(fd: &OwnedFd) -> Option<&'static str> {
    use rustix::fs::FileType;
    let st = rustix::fs::fstat(fd).ok()?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Some("it is a directory"),
        FileType::RegularFile if st.st_mode & 0o111 == 0 => Some("no execute bit is set"),
        FileType::RegularFile => None,
        _ => Some("it is not a regular file"),
    }
}

/// A descriptor of the root filesystem at `rootfs`, to resolve paths in.
fn open_root(rootfs: &Path) -> Option<OwnedFd> {
    rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Opens `rel` under `root` with `flags`, symlinks resolved inside it (a
/// hostile `/etc/passwd -> /host/file` cannot reach the host).
fn open_in(root: &OwnedFd, rel: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// `p` with `.`, `..` and repeated slashes taken out (`..` stops at `/`).
fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Where descriptor `fd`, opened under the root filesystem at (canonical)
/// `root`, is, as a path inside it (from `/proc/self/fd`).
fn in_root_path(root: &Path, fd: &impl std::os::fd::AsFd) -> Option<String> {
    use std::os::fd::AsRawFd;
    let at = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).ok()?;
    let rel = at.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

/// Reads a file of the container, resolving symlinks inside its root
/// ([`open_in`]). Missing or unreadable: empty.
fn read_in_root(rootfs: &Path, rel: &str) -> String {
    let Some(Ok(fd)) = open_root(rootfs).map(|root| open_in(&root, rel, OFlags::RDONLY)) else {
        return String::new();
    };
    let mut s = String::new();
    let _ = std::fs::File::from(fd).take(4 << 20).read_to_string(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Coded;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1001::/home/web:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        d
    }

    /// A spec for `args` with PATH `path`, working directory `cwd` and
    /// the default mounts.
    fn spec_for(args: &[&str], path: &str, cwd: &str) -> Spec {
        let process = ProcessBuilder::default()
            .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
            .env(vec![format!("PATH={path}")])
            .cwd(cwd)
            .build()
            .unwrap();
        let mut spec = Spec::default();
        spec.set_process(Some(process));
        spec
    }

    #[test]
    fn commands_are_looked_up_in_the_root_as_crun_does() {
        let r = rootfs();
        let root = r.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        // A file of the root with mode `mode`.
        let file = |path: &str, mode: u32| {
            std::fs::write(root.join(path), "").unwrap();
            std::fs::set_permissions(
                root.join(path),
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            )
            .unwrap();
        };
        file("usr/bin/true", 0o755);
        // Merged /usr: an absolute symlink, resolved inside the root.
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).unwrap();
        // A symlink that leaves the root is followed inside it.
        std::os::unix::fs::symlink("/../../../../usr/bin/true", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/../../../../bin/sh", root.join("hostsh")).unwrap();
        // What the check says: `Ok` (crun runs it, or is left to say why
        // not), or the error.
        let judged =
            |args: &[&str], path: &str, cwd: &str| check_command(root, &spec_for(args, path, cwd));
        let missing = |args: &[&str], path: &str, cwd: &str| match judged(args, path, cwd) {
            Ok(()) => None,
            Err(RuntimeError::NoSuchCommand { cmd, path }) => Some((cmd, path)),
            Err(e) => panic!("{args:?}: {e}"),
        };
        let std_path = "/usr/local/bin:/usr/bin:/bin";
        assert_eq!(missing(&["/bin/true"], std_path, "/"), None);
        assert_eq!(missing(&["true", "x"], std_path, "/"), None);
        assert_eq!(missing(&["true"], "/bin", "/"), None);
        assert_eq!(missing(&["bin/true"], std_path, "/"), None);
        assert_eq!(missing(&["./true"], std_path, "/usr/bin"), None);
        assert_eq!(missing(&["true"], "bin", "/usr"), None);
        assert_eq!(missing(&["/escape"], std_path, "/"), None);
        assert_eq!(
            missing(&["/hostsh"], std_path, "/"),
            Some(("/hostsh".into(), std_path.into())),
            "the host's /bin/sh is not the container's"
        );
        assert_eq!(
            missing(&["nosuch"], std_path, "/"),
            Some(("nosuch".into(), std_path.into()))
        );
        assert_eq!(
            missing(&["/usr/bin/true/x"], std_path, "/"),
            Some(("/usr/bin/true/x".into(), std_path.into()))
        );
        assert_eq!(
            missing(&["true"], "/sbin", "/"),
            Some(("true".into(), "/sbin".into()))
        );
        // Under a mount of the spec (here the default /proc): not judged,
        // however it is spelled or reached.
        assert_eq!(missing(&["/proc/self/exe"], std_path, "/"), None);
        assert_eq!(missing(&["//proc/self/exe"], std_path, "/"), None);
        assert_eq!(missing(&["/usr/../proc/self/exe"], std_path, "/"), None);
        assert_eq!(missing(&["../proc/self/exe"], std_path, "/usr"), None);
        std::fs::create_dir(root.join("proc")).unwrap();
        std::os::unix::fs::symlink("/proc/self", root.join("me")).unwrap();
        std::os::unix::fs::symlink("../../proc/self/exe", root.join("usr/bin/myself")).unwrap();
        assert_eq!(missing(&["/me/exe"], std_path, "/"), None);
        assert_eq!(missing(&["myself"], std_path, "/"), None);
        assert_eq!(
            missing(&["/me/../../nosuch"], std_path, "/"),
            Some(("/me/../../nosuch".into(), std_path.into()))
        );
        // Files that are there but that no one can run (FK0809): crun
        // would refuse them. In a PATH lookup, crun passes them over and
        // runs a program found later.
        std::fs::create_dir(root.join("usr/bin/adir")).unwrap();
        file("usr/bin/data", 0o644);
        file("usr/bin/true", 0o700);
        std::fs::create_dir_all(root.join("opt/bin/true")).unwrap();
        let cannot = |args: &[&str], path: &str, cwd: &str, file: &str, why: &str| match judged(
            args, path, cwd,
        ) {
            Err(RuntimeError::NotRunnable {
                file: f, why: w, ..
            }) => {
                assert_eq!((f.as_str(), w.as_str()), (file, why), "{args:?} in {path}")
            }
            other => panic!("{args:?} in {path}: expected FK0809, got {other:?}"),
        };
        cannot(&["/etc"], std_path, "/", "/etc", "it is a directory");
        cannot(&["../etc/"], std_path, "/usr", "/etc", "it is a directory");
        cannot(
            &["data"],
            std_path,
            "/",
            "/usr/bin/data",
            "no execute bit is set",
        );
        cannot(
            &["adir"],
            std_path,
            "/",
            "/usr/bin/adir",
            "it is a directory",
        );
        cannot(
            &["/etc/passwd"],
            std_path,
            "/",
            "/etc/passwd",
            "no execute bit is set",
        );
        // The first one found is named; a program later in PATH wins; an
        // execute bit for its owner only is left to crun (it runs as root
        // or as the owner, or crun says why).
        cannot(
            &["true"],
            "/opt/bin:/sbin",
            "/",
            "/opt/bin/true",
            "it is a directory",
        );
        assert!(judged(&["true"], "/opt/bin:/usr/bin", "/").is_ok());
        assert!(judged(&["/bin/true"], std_path, "/").is_ok());
        cannot(
            &["passwd"],
            "/etc:/nosuch",
            "/",
            "/etc/passwd",
            "no execute bit is set",
        );
        // An execute bit for group or others only, or with setuid: someone
        // may run it (crun decides for the container's user); setuid alone
        // is no execute bit.
        for (name, mode) in [("g", 0o010), ("o", 0o001), ("suid", 0o4711)] {
            file(&format!("usr/bin/{name}"), mode);
            assert!(judged(&[name], std_path, "/").is_ok(), "{name} {mode:o}");
        }
        file("usr/bin/suidonly", 0o4644);
        cannot(
            &["suidonly"],
            std_path,
            "/",
            "/usr/bin/suidonly",
            "no execute bit is set",
        );
        // The empty command: crun finds no such program.
        assert_eq!(
            missing(&[""], std_path, "/"),
            Some(("".into(), std_path.into()))
        );
        // A chain of symlinks into a mount (/proc here) is not judged,
        // whether the image has nothing there or something that is no
        // program: crun finds what is mounted there.
        let symlink = |to: &str, at: &str| std::os::unix::fs::symlink(to, root.join(at)).unwrap();
        std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        symlink("/etc/alternatives/ed", "usr/bin/editor");
        symlink("/proc/tool/ed", "etc/alternatives/ed");
        assert!(judged(&["editor"], std_path, "/").is_ok());
        std::fs::create_dir_all(root.join("proc/x/ed")).unwrap();
        symlink("/etc/alternatives/xed", "usr/bin/xeditor");
        symlink("/proc/x/ed", "etc/alternatives/xed");
        assert!(judged(&["xeditor"], std_path, "/").is_ok());
        // A chain that ends outside the mounts is judged.
        symlink("/etc/alternatives/ned", "usr/bin/neditor");
        symlink("/opt/none", "etc/alternatives/ned");
        assert_eq!(
            missing(&["neditor"], std_path, "/"),
            Some(("neditor".into(), std_path.into()))
        );
        // Scripts: a `#!` interpreter that is not there is FK0810 (also
        // a dangling symlink, a name the kernel ends at a NUL, one with
        // the CR of a DOS line end, which the kernel keeps, and a complete
        // name on a line longer than the kernel reads); one that is there
        // (through the /bin symlink, after blanks, with arguments), under a
        // mount or through symlinks into one, relative, or cut off by the
        // kernel's 256 bytes is not judged.
        let script = |path: &str, text: &str| {
            file(path, 0o755);
            std::fs::write(root.join(path), text).unwrap();
        };
        script("usr/bin/nosh", "#!/nope/sh -e\necho\n");
        script("usr/bin/oksh", "#! \t/bin/true -x\n");
        script("usr/bin/procsh", "#!/proc/self/exe\n");
        script("usr/bin/relsh", "#!nope/sh\n");
        script("usr/bin/bare", "#!\n");
        script("usr/bin/viasym", "#!/usr/bin/editor\n");
        script("usr/bin/long", &format!("#!/nope/{}", "x".repeat(300)));
        script(
            "usr/bin/longargs",
            &format!("#!/nope/sh {}", "x".repeat(300)),
        );
        script("usr/bin/crlf", "#!/bin/true\r\n");
        script("usr/bin/nul", "#!/nope/sh\0/bin/true\n");
        symlink("/nowhere", "usr/bin/dangling");
        script("usr/bin/todangling", "#!/usr/bin/dangling\n");
        for (name, interp) in [
            ("longargs", "/nope/sh"),
            ("crlf", "/bin/true\r"),
            ("nul", "/nope/sh"),
            ("todangling", "/usr/bin/dangling"),
        ] {
            match judged(&[name], std_path, "/") {
                Err(RuntimeError::NoInterpreter { interpreter, .. }) => {
                    assert_eq!(interpreter, interp, "{name}")
                }
                other => panic!("{name}: expected FK0810, got {other:?}"),
            }
        }
        // The CR is shown escaped, and the hint says what it is.
        let crlf = judged(&["crlf"], std_path, "/").unwrap_err();
        assert!(crlf.to_string().ends_with(r#""/bin/true\r""#), "{crlf}");
        assert!(crlf.hint().contains("CRLF"), "{}", crlf.hint());
        match judged(&["nosh"], std_path, "/") {
            Err(RuntimeError::NoInterpreter {
                cmd,
                file,
                interpreter,
            }) => assert_eq!(
                (cmd.as_str(), file.as_str(), interpreter.as_str()),
                ("nosh", "/usr/bin/nosh", "/nope/sh")
            ),
            other => panic!("nosh: expected FK0810, got {other:?}"),
        }
        assert!(matches!(
            judged(&["/bin/nosh"], std_path, "/"),
            Err(RuntimeError::NoInterpreter { .. })
        ));
        for ok in ["oksh", "procsh", "relsh", "bare", "viasym", "long"] {
            assert!(judged(&[ok], std_path, "/").is_ok(), "{ok}");
        }
        // The messages say which file and why.
        let message =
            |args: &[&str]| judged(args, std_path, "/").map_err(|e| (e.code(), e.to_string()));
        assert_eq!(
            message(&["data"]),
            Err((
                "FK0809",
                "\"data\" is the container's /usr/bin/data, which cannot be run: no execute bit is set".into()
            ))
        );
        assert_eq!(
            message(&["/etc"]),
            Err((
                "FK0809",
                "the container's file \"/etc\" cannot be run: it is a directory".into()
            ))
        );
        assert_eq!(
            message(&["nosh"]),
            Err((
                "FK0810",
                "\"nosh\" is the container's script /usr/bin/nosh, whose interpreter it does not have: \"/nope/sh\"".into()
            ))
        );
    }

    #[test]
    fn users() {
        let r = rootfs();
        assert_eq!(resolve_user(r.path(), "").unwrap(), (0, 0));
        assert_eq!(resolve_user(r.path(), "web").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(r.path(), "1000").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(r.path(), "1234").unwrap(), (1234, 0));
        assert_eq!(resolve_user(r.path(), "web:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_user(r.path(), "7:8").unwrap(), (7, 8));
        assert!(resolve_user(r.path(), "nobody").is_err());
        assert!(resolve_user(r.path(), "web:nogroup").is_err());
    }

    #[test]
    fn passwd_symlink_cannot_leave_the_root() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), r.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(r.path(), "evil").is_err());
    }

    #[test]
    fn environment_order_and_overrides() {
        let env = environment(
            "c1",
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        )
        .unwrap();
        assert_eq!(env, ["PATH=/bin", "A=2", "HOSTNAME=c1", "B=3"]);
        let env = environment("c1", &[], &[]).unwrap();
        assert_eq!(env, [DEFAULT_PATH, "HOSTNAME=c1"]);
        assert!(environment("c1", &[], &["=x".into()]).is_err());
        assert!(environment("c1", &[], &["novalue".into()]).is_err());
    }

    #[test]
    fn command_and_workdir() {
        let r = rootfs();
        let image = ImageProcess {
            entrypoint: vec!["/bin/ep".into()],
            cmd: vec!["default".into()],
            workdir: "/srv".into(),
            user: "web".into(),
            ..Default::default()
        };
        let spec = build("c", r.path(), &image, &ProcessOptions::default()).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/ep", "default"]);
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
        let opts = ProcessOptions {
            cmd: vec!["other".into()],
            workdir: Some("/tmp".into()),
            user: Some("0".into()),
            ..Default::default()
        };
        let spec = build("c", r.path(), &image, &opts).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/ep", "other"]);
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!(p.user().uid(), 0);
        assert!(matches!(
            build(
                "c",
                r.path(),
                &ImageProcess::default(),
                &ProcessOptions::default()
            ),
            Err(RuntimeError::NoCommand)
        ));
    }
}
