//! Image records: `fukastor/records/<id>.json`.
//!
//! The EROFS image is the tree; the record is everything else fukastor knows
//! of an image: where it came from, its OCI config (for `run` and `export`),
//! its layers, and the figures `images` and `df` show. Records are written
//! atomically before the image's name, and carry the names the image was
//! imported under so that `fsck --repair` can restore a lost name.

use std::fs;
use std::path::Path;

use composefs::fsverity::FsVerityHashValue;
use serde::{Deserialize, Serialize};

use super::{ObjectId, Result, StoreError, io_err, write_atomic};

/// What fukastor knows of one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The image ID (fs-verity digest of its EROFS image), in hex.
    pub id: String,
    /// The source it was imported from, as typed (`oci:…`, `dir:…`).
    pub source: String,
    /// When it was imported, seconds since the Unix epoch.
    pub imported: u64,
    /// The manifest digest, for OCI sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// The config digest, for OCI sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// The OCI image config (for `run` and `export`).
    pub config: serde_json::Value,
    /// The layers, bottom first.
    #[serde(default)]
    pub layers: Vec<LayerInfo>,
    /// Figures about the tree.
    pub stats: ImageStats,
    /// The names the image was imported under.
    #[serde(default)]
    pub names: Vec<String>,
    /// For an image pulled with `--filter`: its chain and plain EROFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<super::FilterInfo>,
}

/// One layer of an OCI image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInfo {
    /// The blob digest (`sha256:…`).
    pub digest: String,
    /// The digest of the uncompressed tar (`sha256:…`).
    pub diff_id: String,
    /// The media type.
    pub media_type: String,
    /// The blob size in bytes.
    pub size: u64,
}

/// Figures about an image's tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageStats {
    /// Paths in the tree, the root included.
    pub paths: u64,
    /// Directories.
    pub directories: u64,
    /// Regular files (inodes; hardlinks counted once).
    pub regular_files: u64,
    /// Extra names of hardlinked files.
    pub hardlinks: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub special: u64,
    /// Bytes of regular-file content (each inode once).
    pub logical_bytes: u64,
    /// Bytes of content stored inline in the EROFS image.
    pub inline_bytes: u64,
    /// Regular files stored as objects.
    pub external_files: u64,
    /// Distinct objects the image references.
    pub unique_objects: u64,
    /// Bytes of those distinct objects.
    pub unique_bytes: u64,
    /// Size of the EROFS image.
    pub erofs_bytes: u64,
}

impl ImageRecord {
    pub(super) fn write(&self, root: &Path, id: &ObjectId) -> Result<()> {
        let path = root
            .join("fukastor/records")
            .join(format!("{}.json", id.to_hex()));
        let data = serde_json::to_vec_pretty(self).expect("records serialize");
        write_atomic(&path, &data).map_err(io_err("writing an image record"))
    }

    pub(super) fn read(root: &Path, id: &ObjectId) -> Result<ImageRecord> {
        let path = root
            .join("fukastor/records")
            .join(format!("{}.json", id.to_hex()));
        let data = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::Damaged(format!("image {} has no record", id.to_hex()))
            } else {
                io_err("reading an image record")(e)
            }
        })?;
        serde_json::from_slice(&data).map_err(|e| {
            StoreError::Damaged(format!(
                "the record of image {} is not valid: {e}",
                id.to_hex()
            ))
        })
    }
}
