//! Shared helpers for `tests/hostile.rs` and `tests/crash.rs` (included by both
//! with `#[path]`; built on its own it holds no tests).
//!
//! - [`TarW`]: a tar writer that writes raw headers, so it can produce the
//!   archives a well-behaved builder refuses (`..`, absolute paths, lying sizes).
//! - [`Layout`]: an OCI image layout written by hand (blobs, manifest, config,
//!   index), with knobs to make every piece of it wrong.
//! - [`Fk`]: runs the `fukastor` binary against one store, with a timeout, and
//!   parses its `fsck`, `images` and `dump` output.
//! - [`snapshot`]: every path under a directory with its type, size, content
//!   digest and symlink target, to prove that a failed command changed nothing.
//!
//! Nothing here depends on the crate under test: only on its command line.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ------------------------------------------------------------------ tar ----

/// Modification time of every generated entry.
pub const MTIME: u64 = 1_700_000_000;

/// A tar stream assembled header by header. Headers are built with the `tar`
/// crate, but names are copied into the raw fields, so nothing is validated.
#[derive(Debug, Default)]
pub struct TarW {
    pub buf: Vec<u8>,
    /// Counter used to name PAX headers.
    n: usize,
}

impl TarW {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ustar header with `path` and `link` copied verbatim (cut at 100 bytes:
    /// longer names need a PAX or GNU long-name record before the header).
    pub fn header(
        path: &[u8],
        kind: tar::EntryType,
        mode: u32,
        size: u64,
        link: &[u8],
    ) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().expect("ustar header");
            let n = path.len().min(100);
            u.name[..n].copy_from_slice(&path[..n]);
            let n = link.len().min(100);
            u.linkname[..n].copy_from_slice(&link[..n]);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h.set_cksum();
        h
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
    }

    /// Appends a header as is (its checksum must already be set).
    pub fn raw_header(&mut self, h: &tar::Header) {
        assert!(self.buf.len().is_multiple_of(512));
        self.buf.extend_from_slice(h.as_bytes());
    }

    /// Appends bytes without padding.
    pub fn raw_bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Appends a header, its data and the padding to the next block.
    pub fn entry(&mut self, h: &tar::Header, data: &[u8]) {
        self.raw_header(h);
        self.raw_bytes(data);
        self.pad();
    }

    pub fn dir(&mut self, path: impl AsRef<[u8]>) {
        let mut p = path.as_ref().to_vec();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        let h = Self::header(&p, tar::EntryType::Directory, 0o755, 0, b"");
        self.entry(&h, b"");
    }

    pub fn file(&mut self, path: impl AsRef<[u8]>, data: &[u8]) {
        self.file_mode(path, data, 0o644);
    }

    pub fn file_mode(&mut self, path: impl AsRef<[u8]>, data: &[u8], mode: u32) {
        let h = Self::header(
            path.as_ref(),
            tar::EntryType::Regular,
            mode,
            data.len() as u64,
            b"",
        );
        self.entry(&h, data);
    }

    pub fn symlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) {
        let h = Self::header(
            path.as_ref(),
            tar::EntryType::Symlink,
            0o777,
            0,
            target.as_ref(),
        );
        self.entry(&h, b"");
    }

    pub fn hardlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) {
        let h = Self::header(
            path.as_ref(),
            tar::EntryType::Link,
            0o644,
            0,
            target.as_ref(),
        );
        self.entry(&h, b"");
    }

    /// A PAX extended header (`x`) that applies to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (k, v) in records {
            data.extend_from_slice(&pax_record(k, v));
        }
        self.n += 1;
        let name = format!("PaxHeaders.0/entry{}", self.n);
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::XHeader,
            0o644,
            data.len() as u64,
            b"",
        );
        self.entry(&h, &data);
    }

    /// A GNU `././@LongLink` record of type `L` (long name of the next entry).
    pub fn gnu_long_name(&mut self, name: &[u8]) {
        self.gnu_long(tar::EntryType::GNULongName, name);
    }

    /// A GNU `././@LongLink` record of type `K` (long link target of the next entry).
    pub fn gnu_long_link(&mut self, target: &[u8]) {
        self.gnu_long(tar::EntryType::GNULongLink, target);
    }

    fn gnu_long(&mut self, kind: tar::EntryType, name: &[u8]) {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.entry(&h, &data);
    }

    /// The stream with its two zero end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.pad();
        self.buf.extend_from_slice(&[0u8; 1024]);
        self.buf
    }

    /// The stream without end-of-archive blocks.
    pub fn into_inner(mut self) -> Vec<u8> {
        self.pad();
        self.buf
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `len` counts itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), len);
    r
}

// ---------------------------------------------------------- compression ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

pub fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}

pub fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

// ----------------------------------------------------------- OCI layout ----

#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
}

impl Desc {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        })
    }
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap()
    }
}

/// A layer as it goes into an image: the uncompressed tar and its compression.
#[derive(Clone, Debug)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub comp: Comp,
}

impl Layer {
    pub fn new(tar: Vec<u8>, comp: Comp) -> Self {
        Self { tar, comp }
    }
    pub fn diff_id(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.tar))
    }
}

pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout directory written by hand.
#[derive(Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn create(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Self { dir };
        l.write_index(&[]);
        l
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Stores `bytes` under their own digest.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let hex = sha256_hex(bytes);
        self.put_blob_named(media_type, &hex, bytes)
    }

    /// Stores `bytes` under any name (to make the digest lie).
    pub fn put_blob_named(&self, media_type: &str, hex: &str, bytes: &[u8]) -> Desc {
        std::fs::write(self.blob_path(hex), bytes).unwrap();
        Desc {
            media_type: media_type.to_string(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
        }
    }

    pub fn config_json(diff_ids: &[String]) -> Vec<u8> {
        serde_json::to_vec_pretty(&serde_json::json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": [],
        }))
        .unwrap()
    }

    pub fn put_config(&self, diff_ids: &[String]) -> Desc {
        self.put_blob(
            "application/vnd.oci.image.config.v1+json",
            &Self::config_json(diff_ids),
        )
    }

    pub fn manifest_json(config: &Desc, layers: &[Desc]) -> Vec<u8> {
        serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.json(),
            "layers": layers.iter().map(Desc::json).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    pub fn put_manifest(&self, config: &Desc, layers: &[Desc]) -> Desc {
        self.put_blob(
            "application/vnd.oci.image.manifest.v1+json",
            &Self::manifest_json(config, layers),
        )
    }

    pub fn write_index(&self, entries: &[(&str, &Desc)]) {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(tag, d)| {
                let mut j = d.json();
                j["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
                j
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
    }

    /// Compresses and stores the layers, writes config and manifest; returns
    /// the manifest descriptor (not yet in the index).
    pub fn put_image(&self, layers: &[Layer]) -> Desc {
        let descs: Vec<Desc> = layers
            .iter()
            .map(|l| self.put_blob(l.comp.media_type(), &compress(&l.tar, l.comp)))
            .collect();
        let diff_ids: Vec<String> = layers.iter().map(Layer::diff_id).collect();
        let config = self.put_config(&diff_ids);
        self.put_manifest(&config, &descs)
    }
}

/// Writes a complete layout at `dir` with one image tagged `tag`; returns the
/// `oci:DIR:TAG` source string.
pub fn write_image(dir: &Path, tag: &str, layers: &[Layer]) -> String {
    let l = Layout::create(dir);
    let m = l.put_image(layers);
    l.write_index(&[(tag, &m)]);
    oci_source(dir, tag)
}

pub fn oci_source(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

// --------------------------------------------------------------- running ----

/// The binary under test. Other engineers rebuild `target/release/fukastor`
/// while tests run (cargo replaces the file): each test process runs its own
/// hardlink to the binary it was built with, `CARGO_TARGET_TMPDIR/fk-bin-PID`.
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let orig = Path::new(env!("CARGO_BIN_EXE_fukastor"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let _ = std::fs::create_dir_all(dir);
        // Links of test processes that are gone.
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("fk-bin-")) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let link = dir.join(format!("fk-bin-{}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        for _ in 0..600 {
            match std::fs::hard_link(orig, &link) {
                Ok(()) => return link,
                // Being replaced by a build right now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(_) => break,
            }
        }
        orig.to_path_buf()
    })
}

#[derive(Debug)]
pub struct Out {
    pub args: Vec<OsString>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    pub fn describe(&self) -> String {
        format!(
            "command: fukastor {}\nstatus: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
    /// The `FKnnnn` code of the first `error[FKnnnn]` on stderr.
    pub fn error_code(&self) -> Option<String> {
        let i = self.stderr.find("error[FK")?;
        let code = self.stderr.get(i + 6..i + 12)?;
        if self.stderr.get(i + 12..i + 14) != Some("]:") {
            return None;
        }
        Some(code.to_string())
    }
    pub fn has_hint(&self) -> bool {
        self.stderr.lines().any(|l| {
            l.strip_prefix("  hint: ")
                .is_some_and(|h| !h.trim().is_empty())
        })
    }
    pub fn panicked(&self) -> bool {
        self.stderr.contains("panicked") || self.stderr.contains("RUST_BACKTRACE")
    }
    pub fn killed_by(&self) -> Option<i32> {
        self.status.signal()
    }
}

/// Default time limit for one command.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `fukastor` against one store.
#[derive(Debug, Clone)]
pub struct Fk {
    pub store: PathBuf,
    /// Working directory of every command.
    pub cwd: PathBuf,
    /// `TMPDIR` of every command, if set.
    pub tmpdir: Option<PathBuf>,
    pub timeout: Duration,
}

impl Fk {
    pub fn new(store: impl Into<PathBuf>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            store: store.into(),
            cwd: cwd.into(),
            tmpdir: None,
            timeout: TIMEOUT,
        }
    }

    /// `fukastor --store STORE ARGS…` with a clean environment.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> (Command, Vec<OsString>) {
        let mut all: Vec<OsString> = vec!["--store".into(), self.store.clone().into()];
        all.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        let mut c = Command::new(bin());
        c.args(&all)
            .current_dir(&self.cwd)
            .env_remove("FUKASTOR_STORE")
            .env_remove("FUKASTOR_FAILPOINT")
            .env_remove("FUKASTOR_JSON")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = &self.tmpdir {
            c.env("TMPDIR", t);
        }
        (c, all)
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Out {
        self.run_env(args, &[])
    }

    pub fn run_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> Out {
        let (mut c, all) = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("spawn fukastor");
        wait_out(child, all, self.timeout)
    }

    /// Spawns without waiting (for kills and concurrency).
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> Running {
        let (mut c, all) = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Running {
            child: c.spawn().expect("spawn fukastor"),
            args: all,
            started: Instant::now(),
        }
    }

    /// `pull -q SOURCE NAME`, asserting success; returns the image ID.
    pub fn pull(&self, source: &str, name: &str) -> String {
        let out = self.run(&["-q", "pull", source, name]);
        pull_id(&out)
    }

    /// `--json fsck`: status and parsed report.
    pub fn fsck_raw(&self) -> (Out, Option<serde_json::Value>) {
        let out = self.run(&["--json", "fsck"]);
        let v = parse_json(&out.stdout);
        (out, v)
    }

    /// Asserts that `fsck` calls the store clean; returns the report.
    pub fn assert_fsck_clean(&self, context: &str) -> serde_json::Value {
        let (out, v) = self.fsck_raw();
        let Some(v) = v else {
            panic!("{context}: fsck printed no JSON report\n{}", out.describe());
        };
        assert!(
            out.status.code() == Some(0)
                && v["clean"] == serde_json::Value::Bool(true)
                && v["problems"].as_array().is_some_and(|p| p.is_empty()),
            "{context}: fsck does not call the store clean\n{}",
            out.describe()
        );
        assert!(
            !out.panicked(),
            "{context}: fsck panicked\n{}",
            out.describe()
        );
        v
    }

    /// `--json images`, asserting success.
    pub fn images(&self) -> serde_json::Value {
        let out = self.run(&["--json", "images"]);
        assert!(out.ok(), "images failed\n{}", out.describe());
        let v = parse_json(&out.stdout)
            .unwrap_or_else(|| panic!("images printed no JSON\n{}", out.describe()));
        assert!(
            v.is_array(),
            "images is not a JSON array\n{}",
            out.describe()
        );
        v
    }

    /// IDs listed by `images`.
    pub fn image_ids(&self) -> Vec<String> {
        self.images()
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    }

    pub fn gc(&self) -> Out {
        let out = self.run(&["gc"]);
        assert!(out.ok(), "gc failed\n{}", out.describe());
        assert!(!out.panicked(), "gc panicked\n{}", out.describe());
        out
    }

    /// `dump IMAGE`, asserting success; returns parsed entries by path.
    pub fn dump(&self, image: &str) -> Dump {
        let out = self.run(&["dump", image]);
        assert!(out.ok(), "dump failed\n{}", out.describe());
        Dump::parse(&out.stdout)
    }
}

pub fn pull_id(out: &Out) -> String {
    assert!(
        out.ok() && !out.panicked(),
        "pull failed\n{}",
        out.describe()
    );
    let id = out.stdout.trim();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "pull -q must print only a 64-hex image ID\n{}",
        out.describe()
    );
    id.to_string()
}

/// Parses stdout as one JSON value (or, failing that, its last JSON line).
pub fn parse_json(s: &str) -> Option<serde_json::Value> {
    if let Ok(v) = serde_json::from_str(s.trim()) {
        return Some(v);
    }
    s.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}

#[derive(Debug)]
pub struct Running {
    pub child: Child,
    pub args: Vec<OsString>,
    pub started: Instant,
}

impl Running {
    pub fn kill(&mut self) {
        // SIGKILL; an error means it has already exited.
        let _ = self.child.kill();
    }
    pub fn wait(self, timeout: Duration) -> Out {
        wait_out(self.child, self.args, timeout)
    }
}

fn wait_out(mut child: Child, args: Vec<OsString>, timeout: Duration) -> Out {
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let s = child.wait().unwrap();
            let out = Out {
                args,
                status: s,
                stdout: String::from_utf8_lossy(&to.join().unwrap()).into_owned(),
                stderr: String::from_utf8_lossy(&te.join().unwrap()).into_owned(),
            };
            panic!("timed out after {timeout:?}\n{}", out.describe());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        args,
        status,
        stdout: String::from_utf8_lossy(&to.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&te.join().unwrap()).into_owned(),
    }
}

// ----------------------------------------------------------------- dump ----

/// One line of a composefs dumpfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpEntry {
    pub path: Vec<u8>,
    pub size: u64,
    /// Octal mode, or `@…` for a hardlink line.
    pub mode: String,
    pub nlink: String,
    pub payload: Option<Vec<u8>>,
    pub content: Option<Vec<u8>>,
    pub digest: Option<String>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DumpEntry {
    pub fn is_hardlink(&self) -> bool {
        self.mode.starts_with('@')
    }
    pub fn file_type(&self) -> u32 {
        u32::from_str_radix(self.mode.trim_start_matches('@'), 8).unwrap() & 0o170000
    }
    pub fn is_dir(&self) -> bool {
        !self.is_hardlink() && self.file_type() == 0o040000
    }
    pub fn is_reg(&self) -> bool {
        !self.is_hardlink() && self.file_type() == 0o100000
    }
    pub fn is_symlink(&self) -> bool {
        !self.is_hardlink() && self.file_type() == 0o120000
    }
}

/// A parsed dumpfile, by path.
#[derive(Debug, Default)]
pub struct Dump {
    pub entries: BTreeMap<Vec<u8>, DumpEntry>,
    pub text: String,
}

/// Undoes the dumpfile escapes (`\\`, `\n`, `\r`, `\t`, `\xHH`).
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                }
                b'x' if i + 3 < b.len() => {
                    let h = &s[i + 2..i + 4];
                    out.push(u8::from_str_radix(h, 16).expect("bad \\x escape in dump"));
                    i += 4;
                }
                _ => panic!("unknown escape in dump field {s:?}"),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn optional(s: &str) -> Option<Vec<u8>> {
    if s == "-" { None } else { Some(unescape(s)) }
}

impl Dump {
    pub fn parse(text: &str) -> Self {
        let mut entries = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(' ').collect();
            assert!(
                f.len() >= 11,
                "dump line has fewer than 11 fields: {line:?}"
            );
            let xattrs = f[11..]
                .iter()
                .map(|x| {
                    let (k, v) = x.split_once('=').expect("xattr field without '='");
                    (unescape(k), unescape(v))
                })
                .collect();
            let e = DumpEntry {
                path: unescape(f[0]),
                size: f[1].parse().expect("dump size"),
                mode: f[2].to_string(),
                nlink: f[3].to_string(),
                payload: optional(f[8]),
                content: optional(f[9]),
                digest: if f[10] == "-" {
                    None
                } else {
                    Some(f[10].to_string())
                },
                xattrs,
            };
            let prev = entries.insert(e.path.clone(), e);
            assert!(prev.is_none(), "dump lists a path twice: {line:?}");
        }
        Self {
            entries,
            text: text.to_string(),
        }
    }

    pub fn get(&self, path: impl AsRef<[u8]>) -> Option<&DumpEntry> {
        self.entries.get(path.as_ref())
    }

    pub fn has(&self, path: impl AsRef<[u8]>) -> bool {
        self.entries.contains_key(path.as_ref())
    }

    pub fn must(&self, path: impl AsRef<[u8]>) -> &DumpEntry {
        let p = path.as_ref();
        self.get(p).unwrap_or_else(|| {
            panic!(
                "dump has no {:?}\n--- dump ---\n{}",
                String::from_utf8_lossy(p),
                self.text
            )
        })
    }

    pub fn assert_absent(&self, path: impl AsRef<[u8]>) {
        let p = path.as_ref();
        assert!(
            !self.has(p),
            "dump must not list {:?}\n--- dump ---\n{}",
            String::from_utf8_lossy(p),
            self.text
        );
    }

    /// Asserts that `path` is a regular file holding `data`: inline in the
    /// dump, or as the object `STORE/objects/PAYLOAD`.
    pub fn assert_file(&self, store: &Path, path: impl AsRef<[u8]>, data: &[u8]) {
        let e = self.must(path.as_ref());
        let name = String::from_utf8_lossy(&e.path).into_owned();
        assert!(e.is_reg(), "{name} is not a regular file: {e:?}");
        assert_eq!(e.size, data.len() as u64, "{name}: size in dump");
        check_content(store, e, data);
    }
}

/// Checks the content of a regular-file dump entry against `data`.
pub fn check_content(store: &Path, e: &DumpEntry, data: &[u8]) {
    check_content_sha(store, e, data.len() as u64, &sha256_hex(data));
}

/// Checks the content of a regular-file dump entry against a size and a
/// sha256: inline in the dump, or in the object `STORE/objects/PAYLOAD`.
pub fn check_content_sha(store: &Path, e: &DumpEntry, size: u64, sha: &str) {
    let name = String::from_utf8_lossy(&e.path).into_owned();
    match (&e.content, &e.payload) {
        (Some(c), _) => assert!(
            c.len() as u64 == size && sha256_hex(c) == sha,
            "{name}: inline content differs"
        ),
        (None, Some(p)) => {
            let obj = store.join("objects").join(OsStr::from_bytes(p));
            let got = std::fs::read(&obj)
                .unwrap_or_else(|err| panic!("{name}: object {} unreadable: {err}", obj.display()));
            assert!(
                got.len() as u64 == size && sha256_hex(&got) == sha,
                "{name}: object {} does not hold the file's content ({} bytes, expected {size})",
                obj.display(),
                got.len(),
            );
        }
        (None, None) => assert!(size == 0, "{name}: no content and no object in dump"),
    }
}

// ------------------------------------------------------------- snapshot ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { size: u64, sha256: String },
    Symlink(Vec<u8>),
    Other(String),
}

/// Every path under `root` (relative, as bytes) with type, size, content
/// digest and symlink target. Does not follow symlinks.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut m = BTreeMap::new();
    walk(root, root, &mut m);
    m
}

fn walk(root: &Path, p: &Path, m: &mut BTreeMap<Vec<u8>, Node>) {
    let md = match std::fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("{}: {e}", p.display()),
    };
    let rel = p
        .strip_prefix(root)
        .unwrap()
        .as_os_str()
        .as_bytes()
        .to_vec();
    let ft = md.file_type();
    let node = if ft.is_dir() {
        Node::Dir
    } else if ft.is_file() {
        let data = std::fs::read(p).unwrap_or_default();
        Node::File {
            size: md.len(),
            sha256: sha256_hex(&data),
        }
    } else if ft.is_symlink() {
        Node::Symlink(std::fs::read_link(p).unwrap().into_os_string().into_vec())
    } else if ft.is_fifo() {
        Node::Other("fifo".into())
    } else if ft.is_socket() {
        Node::Other("socket".into())
    } else {
        Node::Other("device".into())
    };
    m.insert(rel, node);
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            walk(root, &p.join(n), m);
        }
    }
}

/// Describes the differences between two snapshots (empty when equal).
pub fn snapshot_diff(a: &BTreeMap<Vec<u8>, Node>, b: &BTreeMap<Vec<u8>, Node>) -> String {
    let mut s = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => s += &format!("  removed: {}\n", String::from_utf8_lossy(k)),
            Some(w) if w != v => {
                s += &format!("  changed: {} {v:?} -> {w:?}\n", String::from_utf8_lossy(k))
            }
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            s += &format!("  added:   {} {w:?}\n", String::from_utf8_lossy(k));
        }
    }
    s
}

/// Total size of the regular files under `root`.
pub fn tree_bytes(root: &Path) -> u64 {
    snapshot_sizes(root)
}

fn snapshot_sizes(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if md.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| snapshot_sizes(&e.path()))
            .sum()
    } else if md.is_file() {
        md.len()
    } else {
        0
    }
}

// ------------------------------------------------------------------ rng ----

/// splitmix64: a small seeded generator, good enough for test data and delays.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}
