//! The command line: flags (clap), dispatch, output, and coded errors.
//!
//! This is the only module that prints. Library errors reach it typed; it
//! prints `error[CODE]: message` and `  hint: …` on stderr (and a JSON object
//! with `--json`), and exits 1. Usage errors (the argument parser's)
//! are coded FK0501 the same way and exit 2. `run` and `start` exit 125,
//! 126 or 127 instead ([`run_failure_status`]), as podman does.

mod demo;
mod output;
mod volume;

pub use volume::parse_size;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use composefs::fsverity::FsVerityHashValue;

use crate::error::Coded;
use crate::oci::{PullOptions, Source};
use crate::store::{ImageName, LockMode, ObjectId, Store, StoreError};

/// fukastor: a composefs-style image store with kernel mounts.
#[derive(Debug, Parser)]
#[command(name = "fukastor", version, about, max_term_width = 100)]
pub struct Cli {
    /// The store directory [env: FUKASTOR_STORE, unless empty] [default:
    /// /var/lib/fukastor for root, $XDG_DATA_HOME/fukastor otherwise].
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print machine-readable JSON (listings, reports and errors) [env:
    /// FUKASTOR_JSON: empty, 0, false, f, no, n or off is off, anything else on].
    #[arg(long, global = true)]
    pub json: bool,
    /// Print less: no progress, only IDs.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more (repeat for debug output).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import an image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME], dir:PATH.
    Pull {
        /// Where the image comes from.
        source: String,
        /// The name to give it [default: the source's own name].
        name: Option<String>,
        /// Worker threads [default: one per core].
        #[arg(long, env = "FUKASTOR_THREADS", default_value_t = 0)]
        threads: usize,
        /// Store the objects encoded through a Lua filter:
        /// SCRIPT[,NAME=VALUE…] (repeatable, in encode order). A filtered
        /// image is served through FUSE only.
        #[arg(long = "filter", value_name = "SCRIPT[,NAME=VALUE…]")]
        filters: Vec<String>,
    },
    /// List images.
    Images,
    /// Show everything known of an image (JSON).
    Inspect {
        /// Name or ID prefix.
        image: String,
    },
    /// Give an image another name.
    Tag {
        /// Name or ID prefix.
        image: String,
        /// The new name.
        name: String,
    },
    /// Remove an image name (and the image, when it was its last name).
    Rmi {
        /// Names or ID prefixes.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Print an image's composefs dumpfile.
    Dump {
        /// Name or ID prefix.
        image: String,
    },
    /// Copy a file or directory out of an image, with its metadata.
    Restore {
        /// Name or ID prefix.
        image: String,
        /// The path inside the image.
        path: String,
        /// Where to put it (must not exist).
        dest: PathBuf,
    },
    /// Write an image as an OCI layout: oci:DIR[:TAG].
    Export {
        /// Name or ID prefix.
        image: String,
        /// The destination.
        dest: String,
    },
    /// Mount an image read-only: through the kernel when it can, FUSE otherwise.
    Mount {
        /// Name or ID prefix.
        image: String,
        /// An existing directory.
        mountpoint: PathBuf,
        /// Through the kernel: EROFS + overlayfs.
        #[arg(long, conflicts_with = "fuse")]
        kernel: bool,
        /// Through fukastor's FUSE server; `--fuse=passthrough` lets the kernel read objects directly.
        #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "plain", value_parser = ["plain", "passthrough"])]
        fuse: Option<String>,
        /// FUSE worker threads [default: one per core].
        #[arg(long, env = "FUKASTOR_FUSE_THREADS", default_value_t = 0)]
        threads: usize,
    },
    /// Serve an image through FUSE in the foreground (Ctrl-C unmounts).
    FuseServe {
        /// Name or ID prefix.
        image: String,
        /// An existing directory.
        mountpoint: PathBuf,
        /// Let the kernel read objects directly (root, Linux 6.9+).
        #[arg(long)]
        passthrough: bool,
        /// Worker threads [default: one per core].
        #[arg(long, env = "FUKASTOR_FUSE_THREADS", default_value_t = 0)]
        threads: usize,
    },
    /// Unmount an image mounted by fukastor.
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// List fukastor's kernel mounts.
    Mounts,
    /// Show store usage and deduplication.
    Df,
    /// Check the store; --repair fixes what it can.
    Fsck {
        /// Restore lost names, drop broken names and corrupt objects.
        #[arg(long)]
        repair: bool,
    },
    /// Remove what no image name reaches.
    Gc {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Thin copy-on-write volumes: create, ls, rm, attach, detach.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshots of containers and volumes: create, list, rollback, rm.
    #[command(subcommand)]
    Snapshot(volume::SnapshotCommand),
    /// Create a container: the image plus a writable layer on a thin volume; prints its name.
    Create {
        /// Name or ID prefix of the image.
        image: String,
        /// The container's name [default: IMAGE-xxxxxx].
        #[arg(long)]
        name: Option<String>,
        /// Size of its writable layer [default: 10G; thin].
        #[arg(long, value_parser = volume::parse_size)]
        size: Option<u64>,
    },
    /// Mount or unmount a container's root filesystem.
    #[command(subcommand)]
    Container(volume::ContainerCommand),
    /// Remove containers and their writable layers.
    Rm {
        /// Container names.
        #[arg(required = true)]
        containers: Vec<String>,
        /// Unmount a mounted container first.
        #[arg(long, short)]
        force: bool,
    },
    /// List containers.
    Ps,
    /// Run a command in a new container under crun; exits with its status (125-127 when fukastor fails).
    Run {
        /// Remove the container (and its writable layer) when it exits.
        #[arg(long)]
        rm: bool,
        /// The container's name [default: IMAGE-xxxxxx].
        #[arg(long)]
        name: Option<String>,
        /// Set an environment variable (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The working directory inside the container.
        #[arg(short, long)]
        workdir: Option<String>,
        /// The user: NAME, UID, NAME:GROUP or UID:GID.
        #[arg(short, long)]
        user: Option<String>,
        /// Size of its writable layer [default: 10G; thin].
        #[arg(long, value_parser = volume::parse_size)]
        size: Option<u64>,
        /// Name or ID prefix of the image.
        image: String,
        /// The command [default: the image's Entrypoint and Cmd].
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Run an existing container again (as its `run` set it up); exits with its status (125-127 when fukastor fails).
    Start {
        /// The container.
        container: String,
    },
    /// podman OCI hooks: `hook precreate` (config on stdin, config out) and `hook poststop` (state on stdin).
    Hook {
        /// The stage.
        #[arg(value_parser = ["precreate", "poststop"])]
        stage: String,
    },
    /// The volume server (started by `volume attach`; runs in the foreground).
    #[command(hide = true)]
    VolumeServe,
    /// Build a small image from this host's binaries, import it, mount it, and show the figures.
    Demo {
        /// Keep the demo store in this directory instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

/// An error on its way to the user.
#[derive(Debug)]
pub struct CliError {
    /// The stable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// What to do.
    pub hint: String,
}

impl<E: Coded> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError {
            code: e.code(),
            message: e.to_string(),
            hint: e.hint(),
        }
    }
}

/// Shorthand.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Runs the command line; returns the exit status.
pub fn main() -> i32 {
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        // `--help`, `--version`: printed as they are.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        // No subcommand (`fukastor`, `fukastor volume`): the help, on
        // stderr, as a usage error.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return 2;
        }
        Err(e) => {
            let (command, json) = refused_line(std::env::args_os());
            let error = usage_error(&e.render().to_string(), &command.join(" "));
            print_error(&error, json || env_on("FUKASTOR_JSON"));
            return match command.get(1).map(String::as_str) {
                Some("run" | "start") => run_failure_status(error.code),
                _ => 2,
            };
        }
    };
    cli.json |= env_on("FUKASTOR_JSON");
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let explicit = tracing_subscriber::EnvFilter::try_from_env("FUKASTOR_LOG");
    let timed = explicit.is_ok();
    let logger = tracing_subscriber::fmt()
        .with_env_filter(explicit.unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        // Spans (debug level: the steps of `run` and of the volume
        // server's requests) print their duration when they close.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    // Timestamps (and span durations) only when FUKASTOR_LOG asks for a
    // filter: the plain messages of -v stay short.
    let _ = if timed {
        logger.try_init()
    } else {
        logger.without_time().try_init()
    };
    let result = match &cli.command {
        Command::Run {
            rm,
            name,
            env,
            workdir,
            user,
            size,
            image,
            cmd,
        } => {
            let mut opts =
                crate::runtime::RunOptions::new(size.unwrap_or(crate::container::DEFAULT_SIZE));
            opts.rm = *rm;
            opts.name = name.clone();
            opts.process.env = env.clone();
            opts.process.workdir = workdir.clone();
            opts.process.user = user.clone();
            opts.process.cmd = cmd.clone();
            crate::runtime::run(&store_root(&cli), image, &opts).map_err(CliError::from)
        }
        Command::Start { container } => {
            crate::runtime::start(&store_root(&cli), container).map_err(CliError::from)
        }
        _ => run(&cli).map(|()| 0),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            print_error(&e, cli.json);
            match cli.command {
                Command::Run { .. } | Command::Start { .. } => run_failure_status(e.code),
                _ => 1,
            }
        }
    }
}

/// The exit status of a `run` or `start` that failed with error `code`,
/// the container's own status not being known (it may not have run):
/// podman's, so that fukastor's own errors do not look like a container's
/// status 1: 127 when the command or its script's interpreter is not in
/// the image (FK0808, FK0810), 126 when it cannot be run (FK0809), 125 for
/// anything else.
fn run_failure_status(code: &str) -> i32 {
    match code {
        "FK0808" | "FK0810" => 127,
        "FK0809" => 126,
        _ => 125,
    }
}

/// What a command line the parser refused (`args`) still says, parsed
/// again leniently: the (sub)command it names (the program's name and the
/// subcommands, for a report without a usage line: a bad value) and
/// whether it asks for `--json`.
fn refused_line(args: impl IntoIterator<Item = std::ffi::OsString>) -> (Vec<String>, bool) {
    use clap::CommandFactory;
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let program = args
        .first()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "fukastor".into());
    let mut path = vec![program];
    let Ok(m) = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
    else {
        return (path, false);
    };
    let json = m.get_flag("json");
    let mut sub = m.subcommand();
    while let Some((name, m)) = sub {
        path.push(name.to_string());
        sub = m.subcommand();
    }
    (path, json)
}

/// Prints error `e` on stderr: `error[CODE]: message` and `  hint: …`,
/// after it as one JSON object with `json`.
fn print_error(e: &CliError, json: bool) {
    if json {
        let j =
            serde_json::json!({"error": {"code": e.code, "message": e.message, "hint": e.hint}});
        let _ = writeln!(std::io::stderr(), "{j}");
    }
    // Not eprintln!, which panics when stderr cannot be written: a
    // background server's stderr is its log, in the store, and the
    // error may be that the store's filesystem is full.
    let _ = writeln!(
        std::io::stderr(),
        "error[{}]: {}\n  hint: {}",
        e.code,
        e.message,
        e.hint
    );
}

/// The coded error (FK0501) for a command line the argument parser refused,
/// from the parser's own report (`rendered`: `error: …`, maybe indented
/// lines that belong to it, `tip:` lines, a blank line, `Usage: …`): its
/// message on one line, its tips and where the command's help is as the
/// hint (the command named by the report's usage line, else `command`).
fn usage_error(rendered: &str, command: &str) -> CliError {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let mut message = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let mut tips = Vec::new();
    let mut command = command.to_string();
    let mut in_message = true;
    for line in lines {
        let t = line.trim();
        if t.is_empty() {
            in_message = false;
        } else if let Some(tip) = t.strip_prefix("tip: ") {
            tips.push(tip.to_string());
        } else if let Some(usage) = t.strip_prefix("Usage: ") {
            // `fukastor volume create [OPTIONS] …`: the words before the
            // first option or argument.
            command = usage
                .split(' ')
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect::<Vec<_>>()
                .join(" ");
        } else if in_message {
            // "the following required arguments were not provided:" and
            // one argument per line; "[possible values: …]".
            let sep = if message.ends_with(':') || t.starts_with('[') {
                " "
            } else {
                ", "
            };
            message = format!("{message}{sep}{t}");
        }
    }
    tips.push(format!("see `{command} --help`"));
    if message.trim().is_empty() {
        message = "the command line is malformed".into();
    }
    CliError {
        code: "FK0501",
        message,
        hint: tips.join("; "),
    }
}

/// Where the store is.
fn store_root(cli: &Cli) -> PathBuf {
    cli.store
        .clone()
        .or_else(|| env_set("FUKASTOR_STORE").map(PathBuf::from))
        .unwrap_or_else(Store::default_root)
}

/// Environment variable `name` when it is set and not empty (an empty
/// setting, `FUKASTOR_STORE=`, is taken as unset, as shells and most tools
/// do).
fn env_set(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// Whether environment variable `name` turns a switch on: set to anything
/// but empty, `0`, `false`, `f`, `no`, `n` or `off` (any case).
fn env_on(name: &str) -> bool {
    env_set(name).is_some_and(|v| {
        let v = v.to_string_lossy().to_ascii_lowercase();
        !["0", "false", "f", "no", "n", "off"].contains(&v.as_str())
    })
}

fn open(cli: &Cli, mode: LockMode) -> CliResult<Store> {
    Ok(Store::open(&store_root(cli), mode)?)
}

/// [`open`] for a command on image `image`: no store is created where
/// there was none (the image is not found, FK0110).
fn open_for(cli: &Cli, mode: LockMode, image: &str) -> CliResult<Store> {
    Ok(Store::open_for_image(&store_root(cli), mode, image)?)
}

fn run(cli: &Cli) -> CliResult {
    let out = &mut std::io::stdout().lock();
    match &cli.command {
        Command::Pull {
            source,
            name,
            threads,
            filters,
        } => {
            let src = Source::parse(source)?;
            let stages = filters
                .iter()
                .map(|f| crate::filter::Stage::from_arg(f))
                .collect::<Result<Vec<_>, _>>()?;
            let store = open(cli, LockMode::Shared)?;
            let progress = !cli.quiet && !cli.json && std::io::stderr().is_terminal();
            let opts = PullOptions::named(name.clone())
                .progress(progress)
                .threads(*threads)
                .filters(stages);
            let report = crate::oci::pull(&store, &src, source, &opts)?;
            output::pull(out, cli, &report)
        }
        Command::Images => {
            let store = open(cli, LockMode::Shared)?;
            output::images(out, cli, &store)
        }
        Command::Inspect { image } => {
            let store = open_for(cli, LockMode::Shared, image)?;
            let (id, asked) = store.resolve(image)?;
            let record = store
                .record(&id)?
                .as_named(asked.map(|n| n.to_string()).as_deref());
            let names: Vec<String> = store
                .refs()?
                .into_iter()
                .filter(|(_, i)| *i == id)
                .map(|(n, _)| n.to_string())
                .collect();
            let mut v = serde_json::to_value(&record).expect("serializes");
            v["names"] = serde_json::json!(names);
            v["erofs"] = serde_json::json!(store.root().join("images").join(id.to_hex()));
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).expect("serializes")
            )
            .map_err(io)
        }
        Command::Tag { image, name } => {
            let store = open_for(cli, LockMode::Shared, image)?;
            let name = ImageName::parse(name)?;
            let (id, from) = store.resolve(image)?;
            let mut record = store.record(&id)?;
            let before = record.clone();
            record.add_name(&name.to_string(), from.map(|f| f.to_string()).as_deref());
            if record != before {
                store.write_record(&id, &record)?;
            }
            store.set_ref(&name, &id)?;
            if !cli.quiet {
                writeln!(out, "{name} -> {}", &id.to_hex()[..12]).map_err(io)?;
            }
            Ok(())
        }
        Command::Rmi { images } => {
            let store = open_for(cli, LockMode::Shared, images.first().map_or("", |i| i))?;
            // Held from the check to the removal: a `create` resolves its
            // image and writes its record under this lock, so it cannot
            // take the image in between.
            let _creates = crate::container::Containers::new(store.root()).lock_creates()?;
            let targets = images
                .iter()
                .map(|image| rmi_names(&store, image))
                .collect::<CliResult<Vec<_>>>()?;
            refuse_in_use(&store, images, &targets)?;
            // A name given twice (or by name and by ID) goes once.
            let mut gone: Vec<ImageName> = Vec::new();
            for (id, names) in &targets {
                let names: Vec<ImageName> = names
                    .iter()
                    .filter(|n| !gone.contains(n))
                    .cloned()
                    .collect();
                if !names.is_empty() {
                    rmi(&store, id, &names, out, cli.quiet)?;
                    gone.extend(names);
                }
            }
            Ok(())
        }
        Command::Dump { image } => {
            let store = open_for(cli, LockMode::Shared, image)?;
            let (id, _) = store.resolve(image)?;
            let tree = store.image_tree(&id)?;
            crate::tree::write_dumpfile(out, &tree).map_err(io)
        }
        Command::Restore { image, path, dest } => {
            let store = open_for(cli, LockMode::Shared, image)?;
            let (id, _) = store.resolve(image)?;
            let tree = store.image_tree(&id)?;
            let rel = crate::tree::TreeBuilder::normalize(path.trim_start_matches('/').as_bytes())?;
            let stats = crate::tree::restore(&store.objects_of(&id)?, &tree, &rel, dest)?;
            if !cli.quiet {
                writeln!(
                    out,
                    "restored {} paths, {} bytes to {}",
                    stats.paths,
                    stats.bytes,
                    dest.display()
                )
                .map_err(io)?;
                if stats.skipped_xattrs > 0 {
                    writeln!(
                        out,
                        "({} xattrs could not be set at the destination)",
                        stats.skipped_xattrs
                    )
                    .map_err(io)?;
                }
            }
            Ok(())
        }
        Command::Export { image, dest } => {
            let store = open_for(cli, LockMode::Shared, image)?;
            let (id, name) = store.resolve(image)?;
            let name = name.map(|n| n.to_string());
            let r = crate::oci::export(&store, &id, name.as_deref(), dest)?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string(&r).expect("serializes")).map_err(io)
            } else if cli.quiet {
                Ok(())
            } else {
                writeln!(
                    out,
                    "exported to {}:{} ({})",
                    r.path.display(),
                    r.tag,
                    r.manifest_digest
                )
                .map_err(io)
            }
        }
        Command::Mount {
            image,
            mountpoint,
            kernel,
            fuse,
            threads,
        } => {
            let store = open_for(cli, LockMode::Shared, image)?;
            let (id, name) = store.resolve(image)?;
            let label = name.map_or_else(|| id.to_hex()[..12].to_string(), |n| n.to_string());
            let filtered = store.is_filtered(&id);
            let want_kernel =
                *kernel || (fuse.is_none() && !filtered && rustix::process::geteuid().is_root());
            let mut how = String::from("kernel: EROFS + overlayfs");
            let mut done = false;
            if want_kernel {
                match crate::mount::mount_kernel(&store, &id, &label, mountpoint) {
                    Ok(()) => done = true,
                    Err(e)
                        if *kernel
                            || matches!(
                                e,
                                crate::mount::MountError::Mountpoint(..)
                                    | crate::mount::MountError::Taken(..)
                            ) =>
                    {
                        return Err(e.into());
                    }
                    Err(e) => tracing::warn!("kernel mount failed ({e}); using FUSE"),
                }
            }
            if !done {
                let passthrough = fuse.as_deref() == Some("passthrough");
                let opts = crate::fuse::ServeOptions::new(passthrough, *threads);
                let root = store.root().to_path_buf();
                drop(store);
                let pid = crate::fuse::spawn(&root, &id.to_hex(), mountpoint, &opts)?;
                let kind = match (passthrough, rustix::process::geteuid().is_root()) {
                    _ if filtered && passthrough => {
                        "FUSE; the image is filtered, so reads are decoded by the server (no passthrough)"
                    }
                    _ if filtered => "FUSE, decoding filtered objects",
                    (true, true) => "FUSE with passthrough",
                    (true, false) => "FUSE; passthrough needs root, reads go through the server",
                    (false, _) => "FUSE",
                };
                how = format!("{kind}, server pid {pid}");
            }
            if !cli.quiet {
                writeln!(out, "mounted {label} at {} ({how})", mountpoint.display()).map_err(io)?;
            }
            Ok(())
        }
        Command::FuseServe {
            image,
            mountpoint,
            passthrough,
            threads,
        } => {
            let store = open_for(cli, LockMode::Shared, image)?;
            let (id, name) = store.resolve(image)?;
            let label = match name {
                Some(n) => n.to_string(),
                None => store
                    .refs()?
                    .into_iter()
                    .find(|(_, i)| *i == id)
                    .map_or_else(|| id.to_hex()[..12].to_string(), |(n, _)| n.to_string()),
            };
            let opts = crate::fuse::ServeOptions::new(*passthrough, *threads);
            crate::fuse::serve(store, &id, &label, mountpoint, &opts)?;
            Ok(())
        }
        Command::Umount { mountpoint } => {
            crate::mount::umount(&store_root(cli), mountpoint)?;
            Ok(())
        }
        Command::Mounts => output::mounts(out, cli, &store_root(cli)),
        Command::Df => {
            let store = open(cli, LockMode::Shared)?;
            output::df(out, cli, &store)
        }
        Command::Fsck { repair } => {
            let mode = if *repair {
                LockMode::Exclusive
            } else {
                LockMode::Shared
            };
            let store = open(cli, mode)?;
            let containers = crate::container::Containers::new(store.root());
            // A damaged container record is fsck's to report below, not a
            // reason to stop: only its image then counts as unused.
            let keep = images_in_use(&store, &containers, true)?;
            let mut report = store.fsck(*repair, &keep)?;
            let (problems, checked) = containers.check_records(*repair)?;
            report.containers = checked;
            report.add(problems);
            output::fsck(out, cli, &report)?;
            if report.clean {
                Ok(())
            } else {
                Err(CliError {
                    code: "FK0500",
                    message: format!(
                        "the store has {} problems",
                        report.problems.iter().filter(|p| !p.repaired).count()
                    ),
                    hint: "run `fukastor fsck --repair`".into(),
                })
            }
        }
        Command::Gc { dry_run } => {
            let store = open(cli, LockMode::Exclusive)?;
            let containers = crate::container::Containers::new(store.root());
            if !*dry_run {
                let n = containers.remove_stale_records()?;
                if n > 0 {
                    tracing::info!("removed {n} records of disposable containers of earlier boots");
                }
            }
            let report = store.gc(*dry_run, &images_in_use(&store, &containers, false)?)?;
            if !*dry_run {
                let n = crate::oci::prune_layer_cache(&store)?;
                tracing::info!("dropped {n} cached layers no image uses");
            }
            output::gc(out, cli, &report)
        }
        Command::Demo { keep } => demo::run(out, keep.as_deref()),
        Command::Volume(cmd) => volume::volume(out, cli, cmd),
        Command::Snapshot(cmd) => volume::snapshot(out, cli, cmd),
        Command::Create { image, name, size } => {
            volume::create(out, cli, image, name.as_deref(), *size)
        }
        Command::Container(cmd) => volume::container(out, cli, cmd),
        Command::Rm { containers, force } => volume::rm(cli, containers, *force),
        Command::Ps => volume::ps(out, cli),
        Command::Run { .. } | Command::Start { .. } => unreachable!("handled in main"),
        Command::Hook { stage } => {
            // podman waits for hooks: do not wait 10 minutes for a busy store.
            crate::store::set_default_lock_timeout(10);
            let root = store_root(cli);
            if stage == "precreate" {
                crate::runtime::hook::precreate(&root, &mut std::io::stdin().lock(), out)?;
            } else {
                crate::runtime::hook::poststop(&root, &mut std::io::stdin().lock())?;
            }
            Ok(())
        }
        Command::VolumeServe => {
            crate::volume::server::serve(&crate::volume::server::Paths::new(&store_root(cli)))?;
            Ok(())
        }
    }
}

/// The image `image` names and the names `rmi image` removes: that name,
/// or every name of the image for an ID.
fn rmi_names(store: &Store, image: &str) -> CliResult<(ObjectId, Vec<ImageName>)> {
    let (id, name) = store.resolve(image)?;
    let names: Vec<ImageName> = match name {
        Some(n) => vec![n],
        None => store
            .refs()?
            .into_iter()
            .filter(|(_, i)| *i == id)
            .map(|(n, _)| n)
            .collect(),
    };
    Ok((id, names))
}

/// Refuses an `rmi` that would take the last name of an image a container
/// or a live mount uses (as podman's rmi refuses), before anything changes:
/// removed, its objects would go at the next `gc` from under them. Every
/// argument is weighed together (`rmi a b` of an image named only a and b
/// takes its last name).
fn refuse_in_use(
    store: &Store,
    images: &[String],
    targets: &[(ObjectId, Vec<ImageName>)],
) -> CliResult {
    let going: Vec<&ImageName> = targets.iter().flat_map(|(_, n)| n).collect();
    let refs = store.refs()?;
    for (image, (id, _)) in images.iter().zip(targets) {
        let last = !refs.iter().any(|(n, i)| i == id && !going.contains(&n));
        if !last {
            continue;
        }
        let users = image_users(store, id)?;
        if !users.is_empty() {
            return Err(CliError {
                code: "FK0113",
                message: format!("image {image} is in use by {}", users.join(", ")),
                hint: "remove those containers (`fukastor rm NAME`) and unmount those mounts \
                       (`fukastor umount MOUNTPOINT`) first"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Removes `names`, then image `id` when no name is left.
fn rmi(
    store: &Store,
    id: &ObjectId,
    names: &[ImageName],
    out: &mut impl Write,
    quiet: bool,
) -> CliResult {
    // Record first, then the ref: a crash in between leaves a named image
    // whose record forgot the name, never a lost name that repair revives.
    if let Ok(mut record) = store.record(id) {
        record
            .names
            .retain(|n| !names.iter().any(|m| m.as_str() == n));
        store.write_record(id, &record)?;
    }
    for n in names {
        store.remove_ref(n)?;
        if !quiet {
            writeln!(out, "untagged {n}").map_err(io)?;
        }
    }
    if !store.refs()?.iter().any(|(_, i)| i == id) {
        store.forget_image(id)?;
        if !quiet {
            writeln!(
                out,
                "removed {} (run `fukastor gc` to free its objects)",
                &id.to_hex()[..12]
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// The images that live mounts and containers use: `gc` keeps them, and
/// `fsck` does not count them as garbage when they have no name. With
/// `lenient`, a container record that cannot be read is skipped (fsck
/// reports it) instead of failing.
fn images_in_use(
    store: &Store,
    containers: &crate::container::Containers,
    lenient: bool,
) -> CliResult<Vec<ObjectId>> {
    let mut in_use: Vec<String> = crate::mount::track::mounted(store)
        .into_iter()
        .map(|t| t.id)
        .collect();
    if lenient {
        in_use.extend(containers.readable_image_ids());
    } else {
        in_use.extend(containers.image_ids()?);
    }
    Ok(in_use
        .iter()
        .filter_map(|h| ObjectId::from_hex(h).ok())
        .collect())
}

/// The containers and live mounts that use image `id`, as "container NAME"
/// and "the mount at PATH".
fn image_users(store: &Store, id: &ObjectId) -> CliResult<Vec<String>> {
    let hex = id.to_hex();
    let mut users: Vec<String> = crate::container::Containers::new(store.root())
        .list()?
        .into_iter()
        .filter(|c| c.image_id == hex)
        .map(|c| format!("container {}", c.name))
        .collect();
    let own = store.root().join("fukastor/containers");
    users.extend(
        crate::mount::track::mounted(store)
            .into_iter()
            // A container's own image mount: the container is named.
            .filter(|t| t.id == hex && !t.mountpoint.starts_with(&own))
            .map(|t| format!("the mount at {}", t.mountpoint.display())),
    );
    Ok(users)
}

fn io(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // `fukastor dump | head`: not an error worth a code.
        std::process::exit(0);
    }
    CliError::from(StoreError::Io {
        context: "writing output".into(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::{refused_line, usage_error};

    #[test]
    fn the_parsers_reports_become_one_coded_line_and_a_hint() {
        let e = usage_error(
            "error: the following required arguments were not provided:\n  --size <SIZE>\n  <NAME>\n\nUsage: fukastor volume create --size <SIZE> <NAME>\n\nFor more information, try '--help'.\n",
            "fukastor",
        );
        assert_eq!(e.code, "FK0501");
        assert_eq!(
            e.message,
            "the following required arguments were not provided: --size <SIZE>, <NAME>"
        );
        assert_eq!(e.hint, "see `fukastor volume create --help`");
        let e = usage_error(
            "error: unexpected argument '-3' found\n\n  tip: to pass '-3' as a value, use '-- -3'\n\nUsage: fukastor run [OPTIONS] <IMAGE> [-- <CMD>...]\n",
            "fukastor",
        );
        assert_eq!(e.message, "unexpected argument '-3' found");
        assert_eq!(
            e.hint,
            "to pass '-3' as a value, use '-- -3'; see `fukastor run --help`"
        );
        // Something unforeseen still gives a message and a hint.
        let e = usage_error("", "fukastor");
        assert_eq!(
            (e.message.as_str(), e.hint.as_str()),
            ("the command line is malformed", "see `fukastor --help`")
        );
        // A bad value: no usage line, the command line names the command.
        let e = usage_error(
            "error: invalid value '1P' for '--size <SIZE>': \"1P\" is not a size\n\nFor more information, try '--help'.\n",
            &refused_line(
                [
                    "/usr/bin/fukastor",
                    "--store",
                    "s",
                    "run",
                    "--size",
                    "1P",
                    "img",
                    "--",
                    "volume",
                ]
                .map(Into::into),
            )
            .0
            .join(" "),
        );
        assert_eq!(e.hint, "see `fukastor run --help`");
        let path = |args: &[&str]| {
            let (path, json) = refused_line(args.iter().map(Into::into));
            (path.join(" "), json)
        };
        assert_eq!(
            path(&["fk", "volume", "create", "-q", "x"]),
            ("fk volume create".into(), false)
        );
        assert_eq!(path(&["fk", "nosuch"]), ("fk".into(), false));
        assert_eq!(
            path(&["fk", "mounts", "--json", "--bogus"]),
            ("fk mounts".into(), true)
        );
        // An option's value is not a subcommand.
        assert_eq!(
            path(&[
                "fk", "--store", "images", "run", "-e", "mount", "--size", "1P", "x"
            ]),
            ("fk run".into(), false)
        );
        assert_eq!(
            path(&["fk", "--store=images", "volume", "ls", "--", "--json"]),
            ("fk volume ls".into(), false)
        );
        let e = usage_error(
            "error: invalid value 'x' for '--fuse[=<MODE>]'\n  [possible values: plain, passthrough]\n\nFor more information, try '--help'.\n",
            "fukastor mount",
        );
        assert_eq!(
            e.message,
            "invalid value 'x' for '--fuse[=<MODE>]' [possible values: plain, passthrough]"
        );
    }
}
