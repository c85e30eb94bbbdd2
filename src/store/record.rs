//! Image records: `fukastor/records/<id>.json`.
//!
//! The EROFS image is the tree; the record is everything else fukastor knows
//! of an image: where it came from, its OCI config (for `run` and `export`),
//! its layers, and the figures `images` and `df` show. Records are written
//! atomically before the image's name, and carry the names the image was
//! imported under so that `fsck --repair` can restore a lost name.

use std::collections::BTreeMap;
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
    /// Names whose config is not `config`: two images with the same files
    /// and different configs (a rebuild that changed only `CMD` or `ENV`)
    /// are one image ID, and each name keeps the config it was pulled with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_configs: BTreeMap<String, NamedConfig>,
}

/// The config of one name of an image, when it differs from the record's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamedConfig {
    /// The config digest, for OCI sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// The OCI image config.
    pub config: serde_json::Value,
}

impl ImageRecord {
    /// The config of the image as named `name` (`None`: by its ID): the one
    /// that name was pulled or tagged with.
    pub fn config_for(&self, name: Option<&str>) -> &serde_json::Value {
        name.and_then(|n| self.named_configs.get(n))
            .map_or(&self.config, |c| &c.config)
    }

    /// The record as `name` shows it: `config` and `config_digest` are
    /// that name's (what `inspect NAME` prints).
    pub fn as_named(mut self, name: Option<&str>) -> ImageRecord {
        if let Some(c) = name.and_then(|n| self.named_configs.remove(n)) {
            self.config_digest = c.config_digest;
            self.config = c.config;
        }
        self
    }

    /// `self` is a new pull of `name` (its `config` this pull's); `old` the
    /// record the image had. Keeps `old`'s names, each with the config it
    /// had.
    pub fn merge_old(&mut self, name: &str, old: &ImageRecord) {
        for n in &old.names {
            if n == name {
                continue;
            }
            if !self.names.contains(n) {
                self.names.push(n.clone());
            }
            let had = old.config_for(Some(n));
            if *had != self.config {
                let digest = old
                    .named_configs
                    .get(n)
                    .map_or(&old.config_digest, |c| &c.config_digest);
                self.named_configs.insert(
                    n.clone(),
                    NamedConfig {
                        config_digest: digest.clone(),
                        config: had.clone(),
                    },
                );
            }
        }
    }

    /// Adds name `new` with the config of `from` (`None`: the image's ID).
    pub fn add_name(&mut self, new: &str, from: Option<&str>) {
        if !self.names.iter().any(|n| n == new) {
            self.names.push(new.to_string());
        }
        match from.and_then(|f| self.named_configs.get(f)).cloned() {
            Some(c) => {
                self.named_configs.insert(new.to_string(), c);
            }
            None => {
                self.named_configs.remove(new);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, config: serde_json::Value) -> ImageRecord {
        ImageRecord {
            id: "00".into(),
            source: "test".into(),
            imported: 0,
            manifest_digest: None,
            config_digest: Some(format!("sha256:{name}")),
            config,
            layers: vec![],
            stats: ImageStats::default(),
            names: vec![name.into()],
            filter: None,
            named_configs: BTreeMap::new(),
        }
    }

    #[test]
    fn each_name_keeps_the_config_it_was_pulled_or_tagged_with() {
        let (a, b) = (
            serde_json::json!({"Cmd": ["a"]}),
            serde_json::json!({"Cmd": ["b"]}),
        );
        let first = rec("x:a", a.clone());
        // Pulled again as x:b with another config.
        let mut r = rec("x:b", b.clone());
        r.merge_old("x:b", &first);
        assert_eq!(r.names, ["x:b", "x:a"]);
        assert_eq!(
            (r.config_for(Some("x:a")), r.config_for(Some("x:b"))),
            (&a, &b)
        );
        assert_eq!(r.config_for(None), &b);
        assert_eq!(
            r.named_configs["x:a"].config_digest.as_deref(),
            Some("sha256:x:a")
        );
        // x:a pulled again: its own config is the record's now, x:b keeps b.
        let mut again = rec("x:a", a.clone());
        again.merge_old("x:a", &r);
        assert_eq!(
            (again.config_for(Some("x:a")), again.config_for(Some("x:b"))),
            (&a, &b)
        );
        assert!(!again.named_configs.contains_key("x:a"));
        // A tag takes the config of the name it was made from.
        again.add_name("y:1", Some("x:b"));
        assert_eq!(again.config_for(Some("y:1")), &b);
        // Tagged again, from a name with the record's own config (or from
        // no name): the config it had before is dropped.
        for (tag, from) in [("y:2", Some("x:a")), ("y:3", None)] {
            again.add_name(tag, Some("x:b"));
            assert_eq!(again.config_for(Some(tag)), &b, "{tag}");
            again.add_name(tag, from);
            assert_eq!(again.config_for(Some(tag)), &a, "{tag}");
        }
        let shown = again.clone().as_named(Some("y:1"));
        assert_eq!(
            (&shown.config, shown.config_digest.as_deref()),
            (&b, Some("sha256:x:b"))
        );
        assert_eq!(again.clone().as_named(None).config, a);
        // The same config under two names is not stored twice.
        let mut same = rec("z:1", a.clone());
        same.merge_old("z:1", &rec("z:0", a.clone()));
        assert!(same.named_configs.is_empty());
    }
}
