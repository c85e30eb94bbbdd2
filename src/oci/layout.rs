//! Writing small OCI image layouts from tar streams (used by `demo` and by
//! tests that need images with exact contents).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Builds an OCI image layout directory, one image at a time.
#[derive(Debug)]
pub struct LayoutBuilder {
    dir: PathBuf,
    layers: Vec<serde_json::Value>,
    diff_ids: Vec<String>,
    manifests: Vec<serde_json::Value>,
}

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

impl LayoutBuilder {
    /// Creates (or extends) a layout at `dir`.
    pub fn new(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let manifests = fs::read(dir.join("index.json"))
            .ok()
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
            .and_then(|v| v["manifests"].as_array().cloned())
            .unwrap_or_default();
        Ok(LayoutBuilder {
            dir: dir.to_path_buf(),
            layers: Vec::new(),
            diff_ids: Vec::new(),
            manifests,
        })
    }

    /// Writes a blob; returns its digest.
    pub fn blob(&self, data: &[u8]) -> io::Result<String> {
        let d = digest(data);
        fs::write(self.dir.join("blobs/sha256").join(&d[7..]), data)?;
        Ok(d)
    }

    /// Adds a layer from an uncompressed tar stream.
    pub fn layer(&mut self, tar: &[u8], c: Compression) -> io::Result<()> {
        let (data, media) = match c {
            Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar)?;
                (e.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Compression::Zstd => (
                zstd::encode_all(tar, 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let d = self.blob(&data)?;
        self.layers
            .push(serde_json::json!({"mediaType": media, "digest": d, "size": data.len()}));
        self.diff_ids.push(digest(tar));
        Ok(())
    }

    /// Writes config, manifest and index entry for the layers added since the
    /// last image, tagged `tag`. `config` is the image config's `config`
    /// object (Env, Cmd, …). Returns the manifest digest.
    pub fn image(&mut self, tag: &str, config: serde_json::Value) -> io::Result<String> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let cfg = serde_json::json!({
            "architecture": arch, "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": std::mem::take(&mut self.diff_ids)},
        });
        let cfg = serde_json::to_vec(&cfg)?;
        let cd = self.blob(&cfg)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
            "layers": std::mem::take(&mut self.layers),
        });
        let m = serde_json::to_vec(&manifest)?;
        let md = self.blob(&m)?;
        self.manifests
            .retain(|d| d["annotations"]["org.opencontainers.image.ref.name"] != tag);
        self.manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": m.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index)?,
        )?;
        Ok(md)
    }
}
