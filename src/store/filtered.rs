//! Filtered images: images whose objects are stored encoded by a Lua filter
//! chain (issue 6, DESIGN §6).
//!
//! ```text
//! fukastor/filters/scripts/<sha256>.lua            every script a chain used, by the SHA-256 of its text
//! fukastor/filters/chains/<chain>/chain.json       the chain (filter::ChainSpec); <chain> is its digest
//! fukastor/filters/chains/<chain>/objects/XX/<62>  encoded objects, named by the digest of the PLAIN bytes
//! fukastor/filters/images/<id>                     symlink -> ../chains/<chain>/objects/XX/<62>: the encoded EROFS
//! ```
//!
//! Invariants kept here:
//! - A filtered object's name is the fs-verity digest of its plain bytes, as
//!   in `objects/`, so an EROFS image references the same names whether or
//!   not its objects are filtered; what the file holds is `encode(plain)`
//!   through the chain of the directory it is in. Plain and filtered objects
//!   never share a directory, so a kernel mount (which reads `objects/`
//!   directly) can never be handed encoded bytes.
//! - A filtered image's EROFS is stored encoded too (small files are inline
//!   in it), under its plain digest `E`. The image ID is not `E` (the same
//!   tree pulled without a filter has ID `E`) but the fs-verity digest of
//!   `"fukastor filtered image v1\n" E "\n" <chain>` ([`filtered_image_id`]), so
//!   the two are separate images with separate records.
//! - Filtered images are not in `images/` (composefs tools would try to
//!   mount them); their names live in `images/refs/` with every other name,
//!   pointing at `../../fukastor/filters/images/<id>`.
//! - Everything is written with the same staging, publish-by-rename and
//!   syncfs-before-name order as plain images (see `objects.rs`), so a
//!   `kill -9` leaves at most garbage.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use composefs::fsverity::{FsVerityHashValue, compute_verity};
use serde::{Deserialize, Serialize};

use super::{ObjectId, Result, Store, StoreError, io_err, write_atomic};
use crate::filter::{Chain, ChainSpec, Ctx, FilterError, Limits, Stage, save_scripts};

/// What an image record says about a filtered image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilterInfo {
    /// The chain its objects (and EROFS) were encoded with.
    pub chain: ChainSpec,
    /// The chain's digest ([`ChainSpec::digest`]): its directory name.
    pub chain_digest: String,
    /// The fs-verity digest of the plain EROFS image, hex.
    pub erofs: String,
    /// The plain EROFS image's size.
    pub erofs_size: u64,
}

impl FilterInfo {
    /// Checks that this section belongs to filtered image `id`: its chain
    /// digest is its chain's, and `id` is made of that digest and its EROFS
    /// digest (what [`filtered_image_id`] computed when it was pulled).
    /// Returns the plain EROFS image's ID.
    pub fn check(&self, id: &ObjectId) -> Result<ObjectId> {
        let damaged = |why: &str| {
            StoreError::Damaged(format!(
                "the record of filtered image {}: {why}",
                id.to_hex()
            ))
        };
        let erofs = ObjectId::from_hex(&self.erofs)
            .map_err(|_| damaged("its EROFS digest is not valid"))?;
        if self.chain_digest != self.chain.digest() {
            return Err(damaged("its chain digest is not its chain's"));
        }
        if filtered_image_id(&erofs, &self.chain_digest) != *id {
            return Err(damaged("its EROFS and chain are not this image's"));
        }
        Ok(erofs)
    }
}

impl super::ImageRecord {
    /// The filter section of filtered image `id`'s record, checked against
    /// the ID ([`FilterInfo::check`]), and the plain EROFS image's ID.
    pub fn checked_filter(&self, id: &ObjectId) -> Result<(&FilterInfo, ObjectId)> {
        let info = self.filter.as_ref().ok_or_else(|| {
            StoreError::Damaged(format!(
                "filtered image {} has a record without its filter chain",
                id.to_hex()
            ))
        })?;
        Ok((info, info.check(id)?))
    }
}

/// Where an image's objects are and how to read them.
#[derive(Debug, Clone)]
pub struct Objects {
    dir: PathBuf,
    chain: Option<Chain>,
}

impl Objects {
    /// The directory holding the objects (`objects/` or a chain's).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain the objects are encoded with; `None` for plain objects.
    pub fn chain(&self) -> Option<&Chain> {
        self.chain.as_ref()
    }

    /// The path of an object's file.
    pub fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(id.to_object_pathname())
    }

    /// True when the object's file is present.
    pub fn has(&self, id: &ObjectId) -> bool {
        self.path(id).exists()
    }

    /// Reads an object's plain bytes (`size` is its plain size, from the
    /// tree). A filtered object is decoded; a decode failure is
    /// [`StoreError::Filter`] (FK0905 for damaged data).
    pub fn read(&self, id: &ObjectId, size: u64) -> Result<Vec<u8>> {
        match fs::read(self.path(id)) {
            Ok(stored) => self.decode(id, size, stored),
            // A replicating chain may still have a copy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.chain.is_some() => {
                let chain = self.chain.as_ref().expect("checked");
                let ctx = Ctx::Object {
                    digest: id.to_hex(),
                    size,
                };
                match chain.recover(&ctx) {
                    Ok(d) => {
                        tracing::warn!(
                            "object {}: the stored copy is missing; served the copy of filter {}",
                            id.to_hex(),
                            d.recovered_by.as_deref().unwrap_or("?")
                        );
                        Ok(d.data)
                    }
                    Err(_) => Err(missing_or_io(id, e)),
                }
            }
            Err(e) => Err(missing_or_io(id, e)),
        }
    }

    /// Decodes what an object's file holds.
    pub fn decode(&self, id: &ObjectId, size: u64, stored: Vec<u8>) -> Result<Vec<u8>> {
        let Some(chain) = &self.chain else {
            return Ok(stored);
        };
        let ctx = Ctx::Object {
            digest: id.to_hex(),
            size,
        };
        let d = chain
            .decode_report(stored, &ctx)
            .map_err(StoreError::Filter)?;
        if let Some(by) = &d.recovered_by {
            tracing::warn!(
                "object {}: the stored copy is damaged; served the copy of filter {by}",
                id.to_hex()
            );
        }
        Ok(d.data)
    }

    /// Encodes plain `data` (the object `id`) for storing here; `None` for
    /// plain objects (stored as they are).
    pub fn encode(&self, id: &ObjectId, data: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(chain) = &self.chain else {
            return Ok(None);
        };
        let ctx = Ctx::Object {
            digest: id.to_hex(),
            size: data.len() as u64,
        };
        chain
            .encode(data.to_vec(), &ctx)
            .map(Some)
            .map_err(StoreError::Filter)
    }

    /// A reader of an object's plain bytes: the file itself when plain,
    /// the decoded bytes in memory when filtered.
    pub fn reader(&self, id: &ObjectId, size: u64) -> Result<Box<dyn Read + Send>> {
        if self.chain.is_some() {
            return Ok(Box::new(std::io::Cursor::new(self.read(id, size)?)));
        }
        let f = fs::File::open(self.path(id)).map_err(|e| missing_or_io(id, e))?;
        Ok(Box::new(f))
    }
}

fn missing_or_io(id: &ObjectId, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::Damaged(format!("object {} is missing", id.to_hex()))
    } else {
        StoreError::Io {
            context: format!("reading object {}", id.to_hex()),
            source: e,
        }
    }
}

/// The ID of the filtered image whose plain EROFS has digest `erofs`.
pub fn filtered_image_id(erofs: &ObjectId, chain_digest: &str) -> ObjectId {
    let text = format!(
        "fukastor filtered image v1\n{}\n{chain_digest}",
        erofs.to_hex()
    );
    compute_verity(text.as_bytes())
}

impl Store {
    pub(super) fn filters_dir(&self) -> PathBuf {
        self.root().join("fukastor/filters")
    }

    pub(super) fn scripts_dir(&self) -> PathBuf {
        self.filters_dir().join("scripts")
    }

    pub(super) fn chain_dir(&self, chain_digest: &str) -> PathBuf {
        self.filters_dir().join("chains").join(chain_digest)
    }

    pub(super) fn filtered_link(&self, id: &ObjectId) -> PathBuf {
        self.filters_dir().join("images").join(id.to_hex())
    }

    /// True when `id` is a filtered image.
    pub fn is_filtered(&self, id: &ObjectId) -> bool {
        fs::symlink_metadata(self.filtered_link(id)).is_ok()
    }

    /// Builds the chain of `stages` (what `pull --filter` asked for).
    /// Writes nothing: a script that does not load is refused with the
    /// store unchanged.
    pub fn new_chain(&self, stages: Vec<Stage>) -> Result<Chain> {
        Chain::new(stages, Limits::configured()).map_err(StoreError::Filter)
    }

    /// Keeps the scripts of `stages` (the stages `chain` was built from) in
    /// the store and makes the chain's objects directory. Called once the
    /// objects are encoded, just before they are published, so a pull that
    /// fails earlier leaves nothing behind.
    pub fn keep_chain(&self, stages: &[Stage], chain: &Chain) -> Result<()> {
        save_scripts(stages, &self.scripts_dir()).map_err(io_err("saving filter scripts"))?;
        let dir = self.chain_dir(&chain.spec().digest());
        if !dir.join("chain.json").exists() {
            for i in 0..=255u8 {
                fs::create_dir_all(dir.join(format!("objects/{i:02x}")))
                    .map_err(io_err("creating a chain's objects directory"))?;
            }
            fs::create_dir_all(self.filters_dir().join("images"))
                .map_err(io_err("creating the filtered images directory"))?;
            write_atomic(&dir.join("chain.json"), chain.spec().to_json().as_bytes())
                .map_err(io_err("writing a chain"))?;
        }
        Ok(())
    }

    /// The chain of a recorded spec, with the scripts the store keeps.
    pub fn chain(&self, spec: &ChainSpec) -> Result<Chain> {
        Chain::from_spec(spec, &self.scripts_dir(), Limits::configured())
            .map_err(StoreError::Filter)
    }

    /// The plain objects (`objects/`).
    pub fn plain_objects(&self) -> Objects {
        Objects {
            dir: self.objects_dir(),
            chain: None,
        }
    }

    /// The objects of a chain (for pulling through it).
    pub fn chain_objects(&self, chain: &Chain) -> Objects {
        Objects {
            dir: self.chain_dir(&chain.spec().digest()).join("objects"),
            chain: Some(chain.clone()),
        }
    }

    /// Where image `id`'s objects are and how to read them.
    pub fn objects_of(&self, id: &ObjectId) -> Result<Objects> {
        if !self.is_filtered(id) {
            return Ok(self.plain_objects());
        }
        let info = self.filter_info(id)?;
        let chain = self.chain(&info.chain)?;
        Ok(self.chain_objects(&chain))
    }

    /// The filter section of a filtered image's record, checked against
    /// the image's ID ([`FilterInfo::check`]).
    pub fn filter_info(&self, id: &ObjectId) -> Result<FilterInfo> {
        Ok(self.checked_filter_info(id)?.0)
    }

    /// [`Store::filter_info`] and the plain EROFS image's ID.
    fn checked_filter_info(&self, id: &ObjectId) -> Result<(FilterInfo, ObjectId)> {
        let record = self.record(id)?;
        let (info, erofs) = record.checked_filter(id)?;
        Ok((info.clone(), erofs))
    }

    /// The plain EROFS bytes of filtered image `id`.
    pub(super) fn filtered_image_bytes(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let (info, erofs) = self.checked_filter_info(id)?;
        let chain = self.chain(&info.chain)?;
        self.chain_objects(&chain).read(&erofs, info.erofs_size)
    }
}

/// Turns a filter error into the store's (keeps the filter's code).
impl From<FilterError> for StoreError {
    fn from(e: FilterError) -> Self {
        StoreError::Filter(e)
    }
}
