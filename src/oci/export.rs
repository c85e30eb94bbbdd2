//! `export IMAGE oci:DIR[:TAG]`: write an image back as an OCI image layout.

use std::path::PathBuf;

use super::OciError;
use crate::store::{ObjectId, Store};

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    /// The layout directory.
    pub path: PathBuf,
    /// The tag written.
    pub tag: String,
    /// The manifest digest.
    pub manifest_digest: String,
    /// Compressed size of the layer.
    pub layer_bytes: u64,
}

/// Exports image `id` to `dest` (`oci:DIR[:TAG]`).
pub fn export(store: &Store, id: &ObjectId, dest: &str) -> Result<ExportReport, OciError> {
    let _ = (store, id);
    Err(OciError::Export {
        path: dest.to_string(),
        why: "export is not written yet".into(),
    })
}
