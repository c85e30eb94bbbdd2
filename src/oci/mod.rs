//! Image sources and import.
//!
//! This module owns everything between a source the user names and a tree in
//! the store:
//! - [`Source`]: parsing `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
//!   `docker-archive:FILE` and `dir:PATH` (skopeo's spelling);
//! - `source`: reading index, manifest, config and blobs of OCI layouts and
//!   archives, verifying every digest;
//! - `layer`: decoding layers (gzip, zstd, plain) into tree entries, with
//!   hashing and object writing spread over every core;
//! - `layer_cache`: what each layer decoded to, by diff_id, so a layer is
//!   read only once;
//! - `dir`: committing a host directory, incrementally;
//! - `export`: writing an image back as an OCI layout.
//!
//! Invariant: an import either publishes a complete image (objects, EROFS,
//! record, then name) or changes nothing in the store; see
//! [`crate::store::Staging`].

mod dir;
mod export;
mod layer;
mod layer_cache;
pub mod layout;
mod pull;
mod source;

pub use export::export;
pub use pull::{PullOptions, PullReport, pull};

use std::path::PathBuf;

use crate::error::Coded;
use crate::store::StoreError;
use crate::tree::TreeError;

/// Drops cached layers that no named image uses; returns how many.
pub fn prune_layer_cache(store: &crate::store::Store) -> Result<u64, StoreError> {
    let mut keep = std::collections::HashSet::new();
    for (_, id) in store.refs()? {
        if let Ok(r) = store.record(&id) {
            keep.extend(r.layers.into_iter().map(|l| l.diff_id));
        }
    }
    Ok(layer_cache::prune(store.root(), &keep))
}

/// A parsed source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout directory, with an optional tag (ref name).
    OciDir(PathBuf, Option<String>),
    /// An OCI image layout in a tar file.
    OciArchive(PathBuf, Option<String>),
    /// A `docker save` / `podman save` archive.
    DockerArchive(PathBuf, Option<String>),
    /// A host directory, committed as a one-layer image.
    Dir(PathBuf),
}

impl Source {
    /// Parses `TRANSPORT:REFERENCE`.
    pub fn parse(s: &str) -> Result<Source, OciError> {
        let bad = || OciError::BadSource(s.to_string());
        let (transport, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        // The optional :TAG follows the last ':' unless what follows has a '/'.
        let split_tag = |r: &str| -> (PathBuf, Option<String>) {
            match r.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !p.is_empty() => (
                    PathBuf::from(p),
                    Some(t.to_string()).filter(|t| !t.is_empty()),
                ),
                _ => (PathBuf::from(r), None),
            }
        };
        Ok(match transport {
            "oci" => {
                let (p, t) = split_tag(rest);
                Source::OciDir(p, t)
            }
            "oci-archive" => {
                let (p, t) = split_tag(rest);
                Source::OciArchive(p, t)
            }
            "docker-archive" => {
                // docker-archive:FILE[:NAME:TAG] — the image inside, by name.
                match rest.split_once(':') {
                    Some((p, t)) if !t.is_empty() => {
                        Source::DockerArchive(p.into(), Some(t.into()))
                    }
                    _ => Source::DockerArchive(rest.into(), None),
                }
            }
            "dir" => Source::Dir(rest.into()),
            _ => return Err(bad()),
        })
    }

    /// The name an image gets when the user gives none.
    pub fn default_name(&self) -> String {
        let stem = |p: &PathBuf| {
            let s = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let s: String = s
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let s = s
                .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string();
            if s.is_empty() { "image".to_string() } else { s }
        };
        match self {
            Source::OciDir(p, Some(t)) | Source::OciArchive(p, Some(t)) => {
                if t.contains(':') || t.contains('/') {
                    t.clone()
                } else {
                    format!("{}:{t}", stem(p))
                }
            }
            Source::DockerArchive(_, Some(t)) => t.clone(),
            Source::OciDir(p, None)
            | Source::OciArchive(p, None)
            | Source::DockerArchive(p, None)
            | Source::Dir(p) => stem(p),
        }
    }
}

/// What can go wrong reading a source.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Not `TRANSPORT:REFERENCE`.
    #[error("{0:?} is not a source fukastor can read")]
    BadSource(String),
    /// The path cannot be read.
    #[error("cannot read {path}: {source}")]
    NotFound {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// JSON that is not what it should be.
    #[error("{what} is not valid: {why}")]
    BadJson {
        /// Which document.
        what: String,
        /// The parser's words.
        why: String,
    },
    /// No such tag.
    #[error("no image tagged {tag:?} in {source_name} (it has: {available})")]
    TagNotFound {
        /// The tag asked for.
        tag: String,
        /// The source.
        source_name: String,
        /// The tags it has.
        available: String,
    },
    /// A blob is missing.
    #[error("blob {0} is missing from the source")]
    MissingBlob(String),
    /// Bytes that do not match their digest.
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The manifest's digest.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// Uncompressed layer does not match its diff_id.
    #[error(
        "layer {layer}: uncompressed content does not match its diff_id: expected {expected}, got {actual}"
    )]
    DiffIdMismatch {
        /// The layer.
        layer: String,
        /// The config's diff_id.
        expected: String,
        /// What the tar hashes to.
        actual: String,
    },
    /// A corrupt compressed stream.
    #[error("layer {layer}: the compressed stream is corrupt or truncated: {why}")]
    Compression {
        /// The layer.
        layer: String,
        /// The decoder's words.
        why: String,
    },
    /// Something fukastor does not support.
    #[error("{0}")]
    Unsupported(String),
    /// A hostile or broken layer entry.
    #[error("layer {layer}: {source}")]
    Layer {
        /// The layer.
        layer: String,
        /// What is wrong with the entry.
        source: TreeError,
    },
    /// A malformed tar stream.
    #[error("layer {layer}: malformed tar stream: {why}")]
    Tar {
        /// The layer.
        layer: String,
        /// What is wrong.
        why: String,
    },
    /// An unsupported tar entry type.
    #[error("layer {layer}: entry {path:?} has an unsupported type ({kind})")]
    EntryType {
        /// The layer.
        layer: String,
        /// The path.
        path: String,
        /// The tar type.
        kind: String,
    },
    /// An entry beyond a limit.
    #[error("layer {layer}: entry {path:?}: {what}")]
    TooLarge {
        /// The layer.
        layer: String,
        /// The path.
        path: String,
        /// Which limit.
        what: String,
    },
    /// A `dir:` source failed.
    #[error("cannot read {path}: {source}")]
    Dir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Export failed.
    #[error("cannot export to {path}: {why}")]
    Export {
        /// The destination.
        path: String,
        /// What failed.
        why: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A tree operation failed outside a layer.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

impl Coded for OciError {
    fn code(&self) -> &'static str {
        match self {
            OciError::BadSource(_) => "FK0200",
            OciError::NotFound { .. } => "FK0201",
            OciError::BadJson { .. } => "FK0202",
            OciError::TagNotFound { .. } => "FK0203",
            OciError::MissingBlob(_) => "FK0204",
            OciError::DigestMismatch { .. } => "FK0205",
            OciError::DiffIdMismatch { .. } => "FK0206",
            OciError::Compression { .. } => "FK0207",
            OciError::Unsupported(_) => "FK0208",
            OciError::Layer { source, .. } => source.code(),
            OciError::Tar { .. } => "FK0215",
            OciError::EntryType { .. } => "FK0216",
            OciError::TooLarge { .. } => "FK0217",
            OciError::Dir { .. } => "FK0220",
            OciError::Export { .. } => "FK0230",
            OciError::Store(e) => e.code(),
            OciError::Tree(e) => e.code(),
        }
    }

    fn hint(&self) -> String {
        match self {
            OciError::BadSource(_) => {
                "write oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or dir:PATH".into()
            }
            OciError::NotFound { .. } => "check the path and that you may read it".into(),
            OciError::TagNotFound { .. } => "name one of the tags listed, or leave the tag out".into(),
            OciError::Unsupported(_) => "convert the image with `skopeo copy` to a plain OCI layout".into(),
            OciError::Dir { .. } => "check that the directory exists and is readable".into(),
            OciError::Export { .. } => "name a destination directory you may write".into(),
            OciError::Layer { source, .. } => source.hint(),
            OciError::Store(e) => e.hint(),
            OciError::Tree(e) => e.hint(),
            _ => "the image is damaged or hostile; fetch it again from a trusted source (nothing was stored)".into(),
        }
    }
}
