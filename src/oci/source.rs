//! Reading OCI layouts, OCI archives and docker archives.
//!
//! Every document is read through its digest: the index names the manifest
//! by digest, the manifest names the config and layers by digest, and each is
//! checked before use (layers are checked while they stream, in `layer`).
//! Sizes are capped before anything is read into memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use super::{OciError, Source};

/// Largest JSON document read (index, manifest, config).
const MAX_JSON: u64 = 16 << 20;

/// A blob being read, and its size.
type OpenBlob = (Box<dyn Read + Send>, u64);

/// Where the blobs are.
#[derive(Debug)]
enum Blobs {
    /// A directory; blob paths are relative to it.
    Dir(PathBuf),
    /// A tar file: path → (offset, size).
    Archive(PathBuf, HashMap<String, (u64, u64)>),
}

impl Blobs {
    fn open(&self, path: &str) -> Result<Option<OpenBlob>, OciError> {
        match self {
            Blobs::Dir(dir) => {
                if path.split('/').any(|c| c == ".." || c.is_empty()) {
                    return Ok(None);
                }
                let p = dir.join(path);
                match File::open(&p) {
                    Ok(f) => match f.metadata() {
                        Ok(m) if m.is_file() => Ok(Some((Box::new(f), m.len()))),
                        _ => Ok(None),
                    },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(OciError::NotFound { path: p, source: e }),
                }
            }
            Blobs::Archive(file, index) => {
                let key = path.trim_start_matches("./");
                let Some(&(off, len)) = index.get(key) else {
                    return Ok(None);
                };
                let mut f = File::open(file).map_err(|e| OciError::NotFound {
                    path: file.clone(),
                    source: e,
                })?;
                f.seek(SeekFrom::Start(off))
                    .map_err(|e| OciError::NotFound {
                        path: file.clone(),
                        source: e,
                    })?;
                Ok(Some((Box::new(f.take(len)), len)))
            }
        }
    }

    fn read_small(&self, path: &str, what: &str) -> Result<Option<Vec<u8>>, OciError> {
        let Some((r, len)) = self.open(path)? else {
            return Ok(None);
        };
        if len > MAX_JSON {
            return Err(OciError::BadJson {
                what: what.into(),
                why: format!("{len} bytes is too large"),
            });
        }
        let mut data = Vec::with_capacity(len as usize);
        r.take(MAX_JSON)
            .read_to_end(&mut data)
            .map_err(|e| OciError::BadJson {
                what: what.into(),
                why: e.to_string(),
            })?;
        Ok(Some(data))
    }
}

/// Indexes the members of a tar archive (regular files only).
fn index_archive(path: &Path) -> Result<HashMap<String, (u64, u64)>, OciError> {
    let f = File::open(path).map_err(|e| OciError::NotFound {
        path: path.into(),
        source: e,
    })?;
    let mut ar = tar::Archive::new(io::BufReader::new(f));
    let mut index = HashMap::new();
    let bad = |e: io::Error| OciError::Tar {
        layer: path.display().to_string(),
        why: e.to_string(),
    };
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if entry.header().entry_type().is_file() {
            let name = String::from_utf8_lossy(&entry.path_bytes())
                .trim_start_matches("./")
                .to_string();
            index.insert(name, (entry.raw_file_position(), entry.size()));
        }
    }
    Ok(index)
}

/// One layer to import.
#[derive(Debug)]
pub(crate) struct LayerRef {
    /// Path of the blob within the source.
    pub path: String,
    /// Expected blob digest (`sha256:…`), when the source states one.
    pub digest: Option<String>,
    /// Expected blob size, when stated.
    pub size: Option<u64>,
    /// Expected diff_id (`sha256:…`).
    pub diff_id: Option<String>,
    /// Media type.
    pub media_type: String,
}

/// An opened image: its documents, verified, and its layers to stream.
#[derive(Debug)]
pub(crate) struct OpenedImage {
    blobs: Blobs,
    pub manifest_digest: Option<String>,
    pub config_digest: String,
    pub config: serde_json::Value,
    pub layers: Vec<LayerRef>,
    /// The name the source gives the image, if any.
    pub source_name: Option<String>,
}

impl OpenedImage {
    /// Opens a layer blob for streaming.
    pub fn open_layer(&self, l: &LayerRef) -> Result<Box<dyn Read + Send>, OciError> {
        let (r, len) = self.blobs.open(&l.path)?.ok_or_else(|| {
            OciError::MissingBlob(l.digest.clone().unwrap_or_else(|| l.path.clone()))
        })?;
        if let Some(size) = l.size
            && size != len
        {
            return Err(OciError::DigestMismatch {
                what: format!("layer {}", l.digest.as_deref().unwrap_or(&l.path)),
                expected: format!("{size} bytes"),
                actual: format!("{len} bytes"),
            });
        }
        Ok(r)
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha256:<64 hex>` → `blobs/sha256/<hex>`; anything else is refused.
fn blob_path(digest: &str) -> Result<String, OciError> {
    match digest.split_once(':') {
        Some(("sha256", h))
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(format!("blobs/sha256/{h}"))
        }
        Some(("sha256", _)) => Err(OciError::BadJson {
            what: "a descriptor".into(),
            why: format!("{digest:?} is not a sha256 digest"),
        }),
        _ => Err(OciError::Unsupported(format!(
            "digest algorithm of {digest:?} is not supported (only sha256)"
        ))),
    }
}

fn read_verified(
    blobs: &Blobs,
    digest: &str,
    size: Option<u64>,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let path = blob_path(digest)?;
    let data = blobs
        .read_small(&path, what)?
        .ok_or_else(|| OciError::MissingBlob(digest.to_string()))?;
    let actual = sha256_hex(&data);
    if actual != digest {
        return Err(OciError::DigestMismatch {
            what: what.into(),
            expected: digest.into(),
            actual,
        });
    }
    if let Some(s) = size
        && s != data.len() as u64
    {
        return Err(OciError::DigestMismatch {
            what: what.into(),
            expected: format!("{s} bytes"),
            actual: format!("{} bytes", data.len()),
        });
    }
    Ok(data)
}

fn parse_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T, OciError> {
    serde_json::from_slice(data).map_err(|e| OciError::BadJson {
        what: what.into(),
        why: e.to_string(),
    })
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Opens the image a source names.
pub(crate) fn open(source: &Source) -> Result<OpenedImage, OciError> {
    let check_exists = |p: &Path| -> Result<(), OciError> {
        std::fs::metadata(p)
            .map(|_| ())
            .map_err(|e| OciError::NotFound {
                path: p.into(),
                source: e,
            })
    };
    match source {
        Source::OciDir(dir, tag) => {
            check_exists(dir)?;
            open_oci(
                Blobs::Dir(dir.clone()),
                tag.as_deref(),
                &dir.display().to_string(),
            )
        }
        Source::OciArchive(file, tag) => {
            check_exists(file)?;
            let idx = index_archive(file)?;
            open_oci(
                Blobs::Archive(file.clone(), idx),
                tag.as_deref(),
                &file.display().to_string(),
            )
        }
        Source::DockerArchive(file, name) => {
            check_exists(file)?;
            let idx = index_archive(file)?;
            open_docker(
                Blobs::Archive(file.clone(), idx),
                name.as_deref(),
                &file.display().to_string(),
            )
        }
        Source::Dir(_) => unreachable!("dir: sources are committed, not opened"),
    }
}

fn open_oci(blobs: Blobs, tag: Option<&str>, shown: &str) -> Result<OpenedImage, OciError> {
    let index_data = blobs
        .read_small("index.json", "index.json")?
        .ok_or_else(|| OciError::NotFound {
            path: PathBuf::from(shown).join("index.json"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    let index: ImageIndex = parse_json(&index_data, "index.json")?;
    let manifests = index.manifests();
    let chosen = match tag {
        Some(t) => manifests.iter().find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == t)
        }),
        None if manifests.len() == 1 => manifests.first(),
        None => manifests.iter().find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == "latest")
        }),
    };
    let Some(desc) = chosen else {
        let available: Vec<String> = manifests
            .iter()
            .filter_map(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .cloned()
            })
            .collect();
        return Err(OciError::TagNotFound {
            tag: tag
                .unwrap_or("(none given, and the layout holds several images)")
                .to_string(),
            source_name: shown.to_string(),
            available: if available.is_empty() {
                "no tags".into()
            } else {
                available.join(", ")
            },
        });
    };
    let source_name = desc
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .cloned();
    let mut digest = desc.digest().to_string();
    let mut size = Some(desc.size());
    let mut media = desc.media_type().to_string();
    // A manifest list: pick this machine's platform.
    for _ in 0..4 {
        if !(media.contains("image.index") || media.contains("manifest.list")) {
            break;
        }
        let data = read_verified(&blobs, &digest, size, "the image index")?;
        let idx: ImageIndex = parse_json(&data, "the image index")?;
        let arch = host_arch();
        let d = idx
            .manifests()
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.architecture().to_string() == arch && p.os().to_string() == "linux"
                })
            })
            .ok_or_else(|| {
                OciError::Unsupported(format!("the image index has no linux/{arch} image"))
            })?;
        digest = d.digest().to_string();
        size = Some(d.size());
        media = d.media_type().to_string();
    }
    let manifest_data = read_verified(&blobs, &digest, size, "the manifest")?;
    let manifest: ImageManifest = parse_json(&manifest_data, "the manifest")?;
    let config_desc = manifest.config();
    let config_digest = config_desc.digest().to_string();
    let config_data = read_verified(
        &blobs,
        &config_digest,
        Some(config_desc.size()),
        "the image config",
    )?;
    let config: serde_json::Value = parse_json(&config_data, "the image config")?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(OciError::BadJson {
            what: "the image config".into(),
            why: format!(
                "it lists {} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        });
    }
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let mt = l.media_type().to_string();
        if !(mt.contains("layer") || mt.contains("rootfs.diff")) {
            return Err(OciError::Unsupported(format!(
                "layer media type {mt:?} is not supported"
            )));
        }
        let digest = l.digest().to_string();
        layers.push(LayerRef {
            path: blob_path(&digest)?,
            digest: Some(digest),
            size: Some(l.size()),
            diff_id: Some(diff_id),
            media_type: mt,
        });
    }
    Ok(OpenedImage {
        blobs,
        manifest_digest: Some(digest),
        config_digest,
        config,
        layers,
        source_name,
    })
}

fn diff_ids(config: &serde_json::Value) -> Result<Vec<String>, OciError> {
    let ids = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or_else(|| OciError::BadJson {
            what: "the image config".into(),
            why: "it has no rootfs.diff_ids".into(),
        })?;
    ids.iter()
        .map(|v| {
            let s = v.as_str().unwrap_or_default();
            blob_path(s).map(|_| s.to_string())
        })
        .collect()
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn open_docker(blobs: Blobs, name: Option<&str>, shown: &str) -> Result<OpenedImage, OciError> {
    let data = blobs
        .read_small("manifest.json", "manifest.json")?
        .ok_or_else(|| OciError::BadJson {
            what: shown.to_string(),
            why: "it has no manifest.json (is it a docker-archive?)".into(),
        })?;
    let entries: Vec<DockerManifestEntry> = parse_json(&data, "manifest.json")?;
    let entry = match name {
        Some(n) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == n)),
        None => entries.first(),
    };
    let Some(entry) = entry else {
        let available: Vec<String> = entries
            .iter()
            .flat_map(|e| e.repo_tags.iter().flatten().cloned())
            .collect();
        return Err(OciError::TagNotFound {
            tag: name.unwrap_or("(any)").to_string(),
            source_name: shown.to_string(),
            available: if available.is_empty() {
                "no tags".into()
            } else {
                available.join(", ")
            },
        });
    };
    let config_data = blobs
        .read_small(&entry.config, "the image config")?
        .ok_or_else(|| OciError::MissingBlob(entry.config.clone()))?;
    let config_digest = sha256_hex(&config_data);
    // The config's file name is its digest in every writer we know of.
    let stem = entry
        .config
        .trim_end_matches(".json")
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if stem.len() == 64
        && stem.bytes().all(|b| b.is_ascii_hexdigit())
        && !config_digest.ends_with(stem)
    {
        return Err(OciError::DigestMismatch {
            what: "the image config".into(),
            expected: format!("sha256:{stem}"),
            actual: config_digest,
        });
    }
    let config: serde_json::Value = parse_json(&config_data, "the image config")?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(OciError::BadJson {
            what: "the image config".into(),
            why: format!(
                "it lists {} diff_ids for {} layers",
                diff_ids.len(),
                entry.layers.len()
            ),
        });
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(path, diff_id)| {
            // Blob-named layers (`blobs/sha256/<hex>`, `<hex>.tar`) state their digest.
            let stem = path
                .trim_end_matches(".tar")
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let digest = (stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| format!("sha256:{stem}"));
            LayerRef {
                path: path.clone(),
                digest,
                size: None,
                diff_id: Some(diff_id),
                media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            }
        })
        .collect();
    Ok(OpenedImage {
        blobs,
        manifest_digest: None,
        config_digest,
        config,
        layers,
        source_name: entry.repo_tags.as_ref().and_then(|t| t.first().cloned()),
    })
}
