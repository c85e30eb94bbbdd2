//! `gc`: remove what no name reaches.
//!
//! Images in `keep` (those mounted right now) count as named. Objects are
//! swept in `objects/` and in every filter chain's objects directory, each
//! against the images stored through it; a chain whose images cannot be
//! decoded here (a key that is not configured) is left alone.
//!
//! Runs under the exclusive store lock, so no import is in flight: every
//! staging directory is a leftover, and every object not referenced by a
//! named image is garbage. Removes, in this order: unnamed images (link and
//! record), unreferenced objects, the directories of filter chains no named
//! image is stored through (`chain.json` first) and the scripts no remaining
//! chain names, staging directories, temporary files. Each step only
//! deletes, so a `kill -9` during `gc` leaves a store that is still
//! consistent, with less garbage (a chain directory without `chain.json` is
//! garbage to the next `gc`, and `pull` makes it again when it needs it).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;

use composefs::fsverity::FsVerityHashValue;
use serde::Serialize;

use super::{ObjectId, Result, Store, io_err, is_tmp_name, object_id_of};
use crate::filter::ChainSpec;

/// What `gc` removed (or, with `--dry-run`, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// True for a dry run.
    pub dry_run: bool,
    /// Images without a name.
    pub images: u64,
    /// Objects.
    pub objects: u64,
    /// Bytes of those objects (allocated on disk).
    pub bytes: u64,
    /// Staging directories of unfinished imports.
    pub staging_dirs: u64,
    /// Temporary files.
    pub temp_files: u64,
    /// Filter chains no named image is stored through (their directory,
    /// with the objects counted above).
    pub chains: u64,
    /// Filter scripts no remaining chain names.
    pub scripts: u64,
}

pub(super) fn run(store: &Store, dry_run: bool, keep: &[ObjectId]) -> Result<GcReport> {
    use std::os::unix::fs::MetadataExt;
    let mut r = GcReport {
        dry_run,
        ..Default::default()
    };
    let root = store.root();
    let rm = |p: &std::path::Path| -> Result<()> {
        if dry_run {
            return Ok(());
        }
        match fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("removing garbage")(e))
            }
            _ => Ok(()),
        }
    };

    let mut named: HashSet<ObjectId> = store.refs()?.into_iter().map(|(_, id)| id).collect();
    named.extend(keep.iter().cloned());
    // Live objects per objects directory (`objects/`, and each chain's).
    let mut live: HashMap<PathBuf, HashSet<ObjectId>> = HashMap::new();
    // Chain directories whose images cannot be read (a key not configured
    // here, say): nothing in them is removed.
    let mut unsure: HashSet<PathBuf> = HashSet::new();
    for id in store.image_ids()? {
        if !named.contains(&id) {
            r.images += 1;
            if !dry_run {
                store.forget_image(&id)?;
            }
            continue;
        }
        let objects = match store.objects_of(&id) {
            Ok(o) => o,
            Err(e) if store.is_filtered(&id) => {
                tracing::warn!(
                    "gc: image {}: {e}; keeping its chain's objects",
                    id.to_hex()
                );
                // Keep every chain directory its record could mean, checked
                // or not (a damaged record may name another chain's).
                match store.record(&id).map(|rec| rec.filter) {
                    Ok(Some(f)) => {
                        for digest in [f.chain_digest.clone(), f.chain.digest()] {
                            unsure.insert(store.chain_dir(&digest).join("objects"));
                        }
                    }
                    _ => return Err(e),
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let dir = objects.dir().to_path_buf();
        let bytes = match store.image_bytes(&id) {
            Ok(b) => b,
            Err(e) if objects.chain().is_some() => {
                tracing::warn!(
                    "gc: image {}: {e}; keeping its chain's objects",
                    id.to_hex()
                );
                unsure.insert(dir);
                continue;
            }
            Err(e) => return Err(e),
        };
        let refs = composefs::erofs::reader::collect_objects::<ObjectId>(&bytes).map_err(|e| {
            super::StoreError::Damaged(format!("image {} cannot be read: {e}", id.to_hex()))
        })?;
        let set = live.entry(dir).or_default();
        set.extend(refs);
        match store.record(&id)?.filter {
            Some(f) => set.extend(ObjectId::from_hex(&f.erofs).ok()),
            None => {
                set.insert(id);
            }
        }
    }
    // Records without an image.
    for entry in fs::read_dir(root.join("fukastor/records")).map_err(io_err("listing records"))? {
        let entry = entry.map_err(io_err("listing records"))?;
        let name = entry.file_name();
        let keep = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|h| ObjectId::from_hex(h).ok())
            .is_some_and(|id| named.contains(&id));
        if !keep {
            if is_tmp_name(&name) {
                r.temp_files += 1;
            }
            rm(&entry.path())?;
        }
    }
    let mut dirs = vec![store.objects_dir()];
    if let Ok(chains) = fs::read_dir(store.filters_dir().join("chains")) {
        for c in chains.flatten() {
            dirs.push(c.path().join("objects"));
        }
    }
    let empty = HashSet::new();
    for objects in dirs {
        if unsure.contains(&objects) {
            continue;
        }
        let live = live.get(&objects).unwrap_or(&empty);
        for i in 0..=255u8 {
            let dir = objects.join(format!("{i:02x}"));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.map_err(io_err("listing objects"))?;
                let name = entry.file_name();
                let id = object_id_of(i, &name);
                if id.as_ref().is_some_and(|id| live.contains(id)) {
                    continue;
                }
                if id.is_none() && !is_tmp_name(&name) {
                    continue; // not ours: leave it for fsck to report
                }
                let md = entry.metadata().map_err(io_err("listing objects"))?;
                if id.is_some() {
                    r.objects += 1;
                    r.bytes += md.blocks() * 512;
                } else {
                    r.temp_files += 1;
                }
                rm(&entry.path())?;
            }
        }
    }
    sweep_chains(store, &live, &unsure, dry_run, &mut r)?;
    for entry in fs::read_dir(root.join("fukastor/staging")).map_err(io_err("listing staging"))? {
        let entry = entry.map_err(io_err("listing staging"))?;
        r.staging_dirs += 1;
        if !dry_run {
            fs::remove_dir_all(entry.path()).map_err(io_err("removing a staging directory"))?;
        }
    }
    if !dry_run {
        store.sync()?;
    }
    Ok(r)
}

/// Removes the directories of filter chains that hold no live object (`live`
/// is keyed by objects directory) and are not `unsure`, then the scripts
/// that no remaining chain names. A remaining `chain.json` that cannot be
/// read keeps every script.
fn sweep_chains(
    store: &Store,
    live: &HashMap<PathBuf, HashSet<ObjectId>>,
    unsure: &HashSet<PathBuf>,
    dry_run: bool,
    r: &mut GcReport,
) -> Result<()> {
    let Ok(chains) = fs::read_dir(store.filters_dir().join("chains")) else {
        return Ok(());
    };
    let mut named: HashSet<String> = HashSet::new();
    let mut keep_all = false;
    for c in chains {
        let dir = c.map_err(io_err("listing filter chains"))?.path();
        let objects = dir.join("objects");
        if live.contains_key(&objects) || unsure.contains(&objects) {
            match fs::read_to_string(dir.join("chain.json"))
                .ok()
                .and_then(|t| ChainSpec::from_json(&t).ok())
            {
                Some(spec) => named.extend(spec.filters.into_iter().map(|f| f.sha256)),
                None => keep_all = true,
            }
            continue;
        }
        r.chains += 1;
        if !dry_run {
            // chain.json first: what is left after a kill is visibly
            // unfinished, and garbage to the next gc.
            match fs::remove_file(dir.join("chain.json")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("removing a filter chain")(e));
                }
                _ => {}
            }
            fs::remove_dir_all(&dir).map_err(io_err("removing a filter chain"))?;
        }
    }
    if keep_all {
        return Ok(());
    }
    let Ok(scripts) = fs::read_dir(store.scripts_dir()) else {
        return Ok(());
    };
    for entry in scripts {
        let path = entry.map_err(io_err("listing filter scripts"))?.path();
        let used = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lua"))
            .is_some_and(|h| named.contains(h));
        if used {
            continue;
        }
        r.scripts += 1;
        if !dry_run {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("removing a filter script")(e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
