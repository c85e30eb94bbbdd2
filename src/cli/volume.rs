//! `volume`, `snapshot`, `create`, `container`, `rm`, `ps`.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::{Cli, CliError, CliResult, io, store_root};
use crate::container::{Containers, DEFAULT_SIZE};
use crate::volume::server::{self, Paths, Request, Response};

/// `volume …`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a thin volume (only what is written takes space).
    Create {
        /// Its name.
        name: String,
        /// Its size: bytes, or with a K, M, G or T suffix (powers of 1024) [default: the base's].
        #[arg(long, value_parser = parse_size, required_unless_present = "base")]
        size: Option<u64>,
        /// A read-only file or block device the volume starts from, used in place.
        #[arg(long)]
        base: Option<PathBuf>,
        /// Store every block through a Lua filter: SCRIPT[,NAME=VALUE…]
        /// (repeatable; the order given is the encode order), e.g.
        /// `--filter examples/filters/compress.lua,level=3`.
        #[arg(long = "filter", value_name = "SCRIPT[,NAME=VALUE…]")]
        filters: Vec<String>,
    },
    /// List volumes.
    Ls,
    /// Remove a volume and its snapshots.
    Rm {
        /// Its name.
        name: String,
    },
    /// Serve a volume as a block device; prints the loop device.
    Attach {
        /// Its name.
        name: String,
    },
    /// Remove a volume's loop device (after unmounting what is on it).
    Detach {
        /// Its name.
        name: String,
    },
    /// Rewrite a volume's own layers with only their live blocks (the server also does this by itself).
    Compact {
        /// Its name.
        name: String,
    },
}

/// `snapshot …` (TARGET: a container or a volume).
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot (constant time).
    Create {
        /// A container or a volume.
        target: String,
        /// The snapshot's name.
        #[arg(long)]
        name: String,
        /// Freeze the filesystem mounted on the volume around the snapshot (FIFREEZE).
        #[arg(long)]
        atomic: bool,
    },
    /// List snapshots.
    List {
        /// A container or a volume.
        target: String,
    },
    /// Make a stopped container or a detached volume what it was at a snapshot.
    Rollback {
        /// A container or a volume.
        target: String,
        /// The snapshot.
        name: String,
    },
    /// Remove a snapshot (its space is freed in the background).
    Rm {
        /// A container or a volume.
        target: String,
        /// The snapshot.
        name: String,
    },
}

/// `container …`
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Mount a container's root filesystem; prints where.
    Mount {
        /// The container.
        container: String,
        /// An existing directory [default: STORE/fukastor/containers/NAME/rootfs].
        mountpoint: Option<PathBuf>,
    },
    /// Unmount a container's root filesystem.
    Umount {
        /// The container.
        container: String,
    },
}

/// Parses `4096`, `512M`, `10G`, `1T` (powers of 1024; `KiB`/`K`/`k` alike).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512M, 10G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn human(bytes: u64) -> String {
    super::output::bytes(bytes)
}

/// "12 s ago", "3 min ago", "5 h ago", "2 days ago".
fn ago(unix: u64) -> String {
    let d = crate::mount::now().saturating_sub(unix);
    match d {
        0..120 => format!("{d} s ago"),
        120..7200 => format!("{} min ago", d / 60),
        7200..172800 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86400),
    }
}

fn paths(cli: &Cli) -> Paths {
    Paths::new(&store_root(cli))
}

/// Runs `volume …`.
pub fn volume(out: &mut impl Write, cli: &Cli, cmd: &VolumeCommand) -> CliResult {
    let paths = paths(cli);
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            base,
            filters,
        } => {
            let filters = if filters.is_empty() {
                None
            } else {
                Some(filter_chain(&paths, filters)?)
            };
            server::call(
                &paths,
                &Request::Create {
                    name: name.clone(),
                    size: *size,
                    base: base
                        .as_ref()
                        .map(|b| std::path::absolute(b).unwrap_or(b.clone())),
                    filters,
                },
            )?;
            Ok(())
        }
        VolumeCommand::Ls => {
            let Response::Volumes { volumes } = server::call(&paths, &Request::List {})? else {
                return Err(unexpected());
            };
            if cli.json {
                return writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&volumes).expect("json")
                )
                .map_err(io);
            }
            writeln!(
                out,
                "{:<32} {:>10} {:>10} {:>9}  {:<12} {:<9} FILTERS",
                "NAME", "SIZE", "USED", "SNAPSHOTS", "DEVICE", "KIND"
            )
            .map_err(io)?;
            for v in volumes {
                let filters = if v.filters.is_empty() {
                    "-".to_string()
                } else {
                    v.filters.join(",")
                };
                writeln!(
                    out,
                    "{:<32} {:>10} {:>10} {:>9}  {:<12} {:<9} {filters}",
                    v.name,
                    human(v.size),
                    human(v.used),
                    v.snapshots.len(),
                    v.device.as_deref().unwrap_or("-"),
                    if v.ephemeral { "ephemeral" } else { "durable" }
                )
                .map_err(io)?;
            }
            Ok(())
        }
        VolumeCommand::Rm { name } => {
            refuse_container_volume(cli, name)?;
            server::call(&paths, &Request::Remove { name: name.clone() })?;
            Ok(())
        }
        VolumeCommand::Attach { name } => {
            let Response::Device { device } =
                server::call(&paths, &Request::Attach { name: name.clone() })?
            else {
                return Err(unexpected());
            };
            writeln!(out, "{device}").map_err(io)
        }
        VolumeCommand::Detach { name } => {
            server::call(&paths, &Request::Detach { name: name.clone() })?;
            Ok(())
        }
        VolumeCommand::Compact { name } => {
            let r = server::call(&paths, &Request::Compact { name: name.clone() })?;
            let Response::Compacted {
                replaced,
                bytes_before,
                bytes_after,
                garbage_before,
                ..
            } = &r
            else {
                return Err(unexpected());
            };
            if cli.json {
                return writeln!(out, "{}", serde_json::to_string_pretty(&r).expect("json"))
                    .map_err(io);
            }
            if replaced.is_empty() {
                writeln!(out, "{name}: nothing to compact").map_err(io)
            } else {
                writeln!(
                    out,
                    "{name}: {} layers ({}, {} of it garbage) rewritten as {}",
                    replaced.len(),
                    human(*bytes_before),
                    human(*garbage_before),
                    human(*bytes_after)
                )
                .map_err(io)
            }
        }
    }
}

/// Reads the `--filter` arguments, builds the chain once (so that a
/// missing script, a syntax error, a bad parameter or an unreadable key is
/// a coded error, FK0900–FK0909, before anything is written), keeps the
/// scripts in the pool's filter directory by digest, and returns the
/// chain's spec as JSON for the server.
fn filter_chain(paths: &Paths, args: &[String]) -> Result<String, CliError> {
    use crate::filter::{Chain, Limits, Stage, save_scripts};
    let stages = args
        .iter()
        .map(|a| Stage::from_arg(a))
        .collect::<Result<Vec<_>, _>>()?;
    let chain = Chain::new(stages.clone(), Limits::configured())?;
    let dir = paths.pool.join(crate::volume::FILTER_DIR);
    save_scripts(&stages, &dir).map_err(|e| CliError {
        code: "FK0700",
        message: format!("saving filter scripts in {}: {e}", dir.display()),
        hint: "check free space and permissions of the store".into(),
    })?;
    Ok(chain.spec().to_json())
}

/// A container's volume is removed with the container.
fn refuse_container_volume(cli: &Cli, volume: &str) -> CliResult {
    let containers = Containers::new(&store_root(cli));
    if let Some(c) = containers.list()?.into_iter().find(|c| c.volume == volume) {
        return Err(CliError {
            code: "FK0715",
            message: format!("volume {volume:?} belongs to container {:?}", c.name),
            hint: format!("remove the container: `fukastor rm {}`", c.name),
        });
    }
    Ok(())
}

fn unexpected() -> CliError {
    CliError {
        code: "FK0714",
        message: "the volume server gave an unexpected answer".into(),
        hint: "use the same fukastor binary for every command of a store".into(),
    }
}

/// Runs `snapshot …`.
pub fn snapshot(out: &mut impl Write, cli: &Cli, cmd: &SnapshotCommand) -> CliResult {
    let containers = Containers::new(&store_root(cli));
    let paths = containers.paths().clone();
    match cmd {
        SnapshotCommand::Create {
            target,
            name,
            atomic,
        } => {
            let volume = containers.snapshot_target(target, false)?;
            server::call(
                &paths,
                &Request::Snapshot {
                    volume,
                    name: name.clone(),
                    atomic: *atomic,
                },
            )?;
            Ok(())
        }
        SnapshotCommand::List { target } => {
            let volume = containers.snapshot_target(target, false)?;
            let Response::Snapshots { snapshots } =
                server::call(&paths, &Request::Snapshots { volume })?
            else {
                return Err(unexpected());
            };
            if cli.json {
                return writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&snapshots).expect("json")
                )
                .map_err(io);
            }
            writeln!(out, "{:<32} CREATED", "NAME").map_err(io)?;
            for s in snapshots {
                writeln!(out, "{:<32} {}", s.name, ago(s.created)).map_err(io)?;
            }
            Ok(())
        }
        SnapshotCommand::Rollback { target, name } => {
            let volume = containers.snapshot_target(target, true)?;
            server::call(
                &paths,
                &Request::Rollback {
                    volume,
                    name: name.clone(),
                },
            )?;
            Ok(())
        }
        SnapshotCommand::Rm { target, name } => {
            let volume = containers.snapshot_target(target, false)?;
            server::call(
                &paths,
                &Request::DeleteSnapshot {
                    volume,
                    name: name.clone(),
                },
            )?;
            Ok(())
        }
    }
}

/// Runs `create`.
pub fn create(
    out: &mut impl Write,
    cli: &Cli,
    image: &str,
    name: Option<&str>,
    size: Option<u64>,
) -> CliResult {
    let c = Containers::new(&store_root(cli)).create(image, name, size.unwrap_or(DEFAULT_SIZE))?;
    if cli.json {
        return writeln!(out, "{}", serde_json::to_string_pretty(&c).expect("json")).map_err(io);
    }
    writeln!(out, "{}", c.name).map_err(io)
}

/// Runs `container …`.
pub fn container(out: &mut impl Write, cli: &Cli, cmd: &ContainerCommand) -> CliResult {
    let containers = Containers::new(&store_root(cli));
    match cmd {
        ContainerCommand::Mount {
            container,
            mountpoint,
        } => {
            let at = containers.mount(container, mountpoint.as_deref())?;
            writeln!(out, "{}", at.display()).map_err(io)
        }
        ContainerCommand::Umount { container } => {
            // Its processes keep their own copies of the mounts: unmounting
            // here would stop at the volume, busy under them.
            crate::runtime::refuse_running(container)?;
            Ok(containers.umount(container)?)
        }
    }
}

/// Runs `rm`.
pub fn rm(cli: &Cli, names: &[String], force: bool) -> CliResult {
    let containers = Containers::new(&store_root(cli));
    for n in names {
        crate::runtime::refuse_running(n)?;
        containers.remove(n, force)?;
    }
    Ok(())
}

/// Runs `ps`.
pub fn ps(out: &mut impl Write, cli: &Cli) -> CliResult {
    let mut entries = Containers::new(&store_root(cli)).entries()?;
    // A mounted container that crun runs (`run`, `start`) is `running`.
    for e in entries.iter_mut().filter(|e| e.state == "mounted") {
        if crate::runtime::is_running(&e.name) {
            e.state = "running".into();
        }
    }
    if cli.json {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&entries).expect("json")
        )
        .map_err(io);
    }
    writeln!(out, "{:<24} {:<24} {:<8} ROOTFS", "NAME", "IMAGE", "STATE").map_err(io)?;
    for e in entries {
        writeln!(
            out,
            "{:<24} {:<24} {:<8} {}",
            e.name,
            e.image,
            e.state,
            e.rootfs.map_or("-".into(), |p| p.display().to_string())
        )
        .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
