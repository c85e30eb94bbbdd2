//! `fsck`: check that every name leads to a complete, intact image.
//!
//! *Problems* are states no sequence of crashes can produce: a name whose
//! image is missing, an image whose EROFS or objects are missing or whose
//! digest is wrong, a corrupt record. *Garbage* is what crashes and removals
//! leave behind by design (staging directories, unreferenced objects, images
//! without a name); it is reported, not a problem, and `gc` removes it.
//!
//! `--repair` (under the exclusive lock) restores names of unnamed images from
//! their records, removes names that lead nowhere and drops corrupt objects
//! and the images that need them, so that `fsck` is clean afterwards.

use std::collections::{HashMap, HashSet};
use std::fs;

use composefs::fsverity::FsVerityHashValue;
use serde::Serialize;

use super::{
    ImageName, ObjectId, Result, Store, io_err, is_tmp_name, object_id_of, objects::verify_file,
};
use crate::error::Coded;

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A short kind, such as `missing-object`.
    pub kind: &'static str,
    /// What exactly.
    pub detail: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

/// What `fsck` found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FsckReport {
    /// True when there is no problem left.
    pub clean: bool,
    /// Images checked.
    pub images: u64,
    /// Objects checked (each digest recomputed).
    pub objects: u64,
    /// Container records checked (by the CLI, which adds their problems:
    /// containers are not the store's to know).
    pub containers: u64,
    /// Problems found.
    pub problems: Vec<Problem>,
    /// Garbage found (not problems).
    pub garbage: Garbage,
}

impl FsckReport {
    /// Adds problems found outside the store (container records); clean
    /// stays true only if each was repaired.
    pub fn add(&mut self, problems: Vec<Problem>) {
        self.clean &= problems.iter().all(|p| p.repaired);
        self.problems.extend(problems);
    }
}

/// Leftovers that `gc` removes.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Garbage {
    /// Staging directories of imports that did not finish.
    pub staging_dirs: u64,
    /// Objects no named image references.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Images without a name.
    pub unnamed_images: u64,
    /// Temporary files.
    pub temp_files: u64,
}

pub(super) fn run(store: &Store, repair: bool, keep: &[ObjectId]) -> Result<FsckReport> {
    let mut r = FsckReport::default();
    let root = store.root();
    let problem = |r: &mut FsckReport, kind, detail: String, repaired| {
        r.problems.push(Problem {
            kind,
            detail,
            repaired,
        })
    };

    // 1. Objects: names are digests, and digests are right.
    let mut objects: HashMap<ObjectId, u64> = HashMap::new();
    let mut corrupt: HashSet<ObjectId> = HashSet::new();
    for i in 0..=255u8 {
        let dir = root.join(format!("objects/{i:02x}"));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problem(
                    &mut r,
                    "missing-directory",
                    dir.display().to_string(),
                    repair,
                );
                if repair {
                    fs::create_dir_all(&dir).map_err(io_err("recreating an objects directory"))?;
                }
                continue;
            }
            Err(e) => return Err(io_err("listing objects")(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("listing objects"))?;
            let name = entry.file_name();
            if is_tmp_name(&name) {
                r.garbage.temp_files += 1;
                continue;
            }
            let Some(id) = object_id_of(i, &name) else {
                problem(
                    &mut r,
                    "stray-file",
                    entry.path().display().to_string(),
                    false,
                );
                continue;
            };
            let path = entry.path();
            let len = entry.metadata().map_err(io_err("reading an object"))?.len();
            r.objects += 1;
            let actual = verify_file(&path).map_err(io_err("reading an object"))?;
            if actual != id {
                problem(
                    &mut r,
                    "corrupt-object",
                    format!("object {} has the digest {}", id.to_hex(), actual.to_hex()),
                    repair,
                );
                if repair {
                    fs::remove_file(&path).map_err(io_err("removing a corrupt object"))?;
                }
                corrupt.insert(id);
                continue;
            }
            objects.insert(id, len);
        }
    }

    // 2. Images: EROFS present and intact, record readable, objects present.
    let mut live: HashSet<ObjectId> = HashSet::new();
    let mut good_images: HashSet<ObjectId> = HashSet::new();
    let mut records: HashMap<ObjectId, Vec<String>> = HashMap::new();
    // Filtered objects already checked, per chain: intact or not.
    let mut filtered_seen: HashMap<(String, ObjectId), bool> = HashMap::new();
    // Filtered images whose chain cannot run here: not known to be broken,
    // so their names stay and their chain's objects are not garbage.
    let mut unsure: HashSet<ObjectId> = HashSet::new();
    for id in store.image_ids()? {
        r.images += 1;
        let hex = id.to_hex();
        if store.is_filtered(&id) {
            match check_filtered(store, &id, repair, &mut filtered_seen, &mut r) {
                Ok(Some(rec)) => {
                    records.insert(id.clone(), rec.names);
                    good_images.insert(id.clone());
                }
                Ok(None) => {}
                // A chain that cannot run here (missing key or script) is
                // a problem `--repair` must not "fix" by deleting data.
                Err(e) => {
                    problem(
                        &mut r,
                        "filter-unavailable",
                        format!("image {hex}: {} {e}", e.code()),
                        false,
                    );
                    unsure.insert(id.clone());
                }
            }
            continue;
        }
        let mut broken = Vec::new();
        if !objects.contains_key(&id) {
            broken.push(
                if corrupt.contains(&id) {
                    "its EROFS image is corrupt"
                } else {
                    "its EROFS image is missing"
                }
                .to_string(),
            );
        }
        match store.record(&id) {
            Ok(rec) => {
                records.insert(id.clone(), rec.names);
            }
            Err(e) => broken.push(e.to_string()),
        }
        if broken.is_empty() {
            let bytes = store.image_bytes(&id)?;
            match composefs::erofs::reader::collect_objects::<ObjectId>(&bytes) {
                Ok(refs) => {
                    let missing = refs.iter().filter(|o| !objects.contains_key(o)).count();
                    if missing > 0 {
                        broken.push(format!("{missing} of its objects are missing or corrupt"));
                    }
                    live.extend(refs);
                }
                Err(e) => broken.push(format!("its EROFS image cannot be read: {e}")),
            }
        }
        live.insert(id.clone());
        if broken.is_empty() {
            good_images.insert(id);
        } else {
            problem(
                &mut r,
                "broken-image",
                format!("image {hex}: {}", broken.join("; ")),
                repair,
            );
            if repair {
                store.forget_image(&id)?;
            }
        }
    }

    // 3. Names: each leads to a good image.
    let mut named: HashSet<ObjectId> = HashSet::new();
    let refs_dir = root.join("images/refs");
    let mut stack = vec![refs_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err("listing names"))? {
            let entry = entry.map_err(io_err("listing names"))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io_err("listing names"))?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if is_tmp_name(&entry.file_name()) {
                r.garbage.temp_files += 1;
                continue;
            }
            let rel = path
                .strip_prefix(&refs_dir)
                .expect("below")
                .to_string_lossy()
                .into_owned();
            let target = fs::read_link(&path)
                .ok()
                .and_then(|t| super::parse_image_link(&t));
            match target {
                Some(id) if good_images.contains(&id) || unsure.contains(&id) => {
                    named.insert(id);
                }
                _ => {
                    problem(
                        &mut r,
                        "dangling-name",
                        format!("name {rel} leads to no intact image"),
                        repair,
                    );
                    if repair {
                        fs::remove_file(&path).map_err(io_err("removing a name"))?;
                    }
                }
            }
        }
    }

    // 4. Unnamed images: garbage, or names to restore.
    for id in &good_images {
        if named.contains(id) {
            continue;
        }
        let names = records.get(id).cloned().unwrap_or_default();
        let mut restored = false;
        if repair {
            for n in &names {
                if let Ok(name) = ImageName::parse(n)
                    && store.lookup_ref(&name)?.is_none()
                {
                    store.set_ref(&name, id)?;
                    restored = true;
                }
            }
        }
        // An image a container or a mount uses is kept by `gc` too.
        if !restored && !keep.contains(id) {
            r.garbage.unnamed_images += 1;
        }
    }

    // 5. Other leftovers.
    for entry in fs::read_dir(root.join("fukastor/staging")).map_err(io_err("listing staging"))? {
        entry.map_err(io_err("listing staging"))?;
        r.garbage.staging_dirs += 1;
    }
    for (id, len) in &objects {
        if !live.contains(id) {
            r.garbage.objects += 1;
            r.garbage.bytes += len;
        }
    }
    let unsure_chains: HashSet<String> = unsure
        .iter()
        .filter_map(|id| store.filter_info(id).ok().map(|i| i.chain_digest))
        .collect();
    garbage_filtered(store, &filtered_seen, &unsure_chains, &mut r)?;
    r.clean = r.problems.iter().all(|p| p.repaired);
    Ok(r)
}

/// Object `oid` read through `objects` (decoded by its chain) when its
/// digest is `oid`; `Ok(Err(why))` when it is missing or damaged; `Err` when
/// the chain cannot run here.
fn decoded(
    objects: &super::Objects,
    oid: &ObjectId,
    size: u64,
) -> Result<std::result::Result<Vec<u8>, String>> {
    match objects.read(oid, size) {
        Ok(plain) => {
            let actual: ObjectId = composefs::fsverity::compute_verity(&plain);
            if actual == *oid {
                Ok(Ok(plain))
            } else {
                Ok(Err(format!("decodes to digest {}", actual.to_hex())))
            }
        }
        Err(super::StoreError::Filter(e)) if e.is_damage() => Ok(Err(e.to_string())),
        Err(super::StoreError::Damaged(why)) => Ok(Err(why)),
        Err(e) => Err(e),
    }
}

/// Checks a filtered image: its record, its EROFS and every object it
/// references, each decoded through the chain and its digest recomputed.
/// `Ok(Some(record))` when intact; `Ok(None)` when broken (a problem is
/// recorded, and with `repair` the damaged objects and the image are
/// removed); `Err` when the chain cannot run here.
fn check_filtered(
    store: &Store,
    id: &ObjectId,
    repair: bool,
    seen: &mut HashMap<(String, ObjectId), bool>,
    r: &mut FsckReport,
) -> Result<Option<super::ImageRecord>> {
    let hex = id.to_hex();
    let before = r.problems.len();
    let broken = |r: &mut FsckReport, why: String| {
        r.problems.push(Problem {
            kind: "broken-image",
            detail: format!("image {hex}: {why}"),
            repaired: repair,
        });
    };
    // The record, and its filter section checked against the image's ID.
    let checked = store.record(id).and_then(|rec| {
        let (info, erofs) = rec.checked_filter(id)?;
        Ok((info.clone(), erofs, rec))
    });
    let (info, erofs, record) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            broken(r, e.to_string());
            if repair {
                store.forget_image(id)?;
            }
            return Ok(None);
        }
    };
    let objects = store.chain_objects(&store.chain(&info.chain)?);
    let mut bad: Vec<(ObjectId, String)> = Vec::new();
    let mut check = |oid: ObjectId, size: u64, r: &mut FsckReport| -> Result<bool> {
        let key = (info.chain_digest.clone(), oid.clone());
        if let Some(ok) = seen.get(&key) {
            return Ok(*ok);
        }
        r.objects += 1;
        let ok = match decoded(&objects, &oid, size)? {
            Ok(_) => true,
            Err(why) => {
                bad.push((oid.clone(), why));
                false
            }
        };
        seen.insert(key, ok);
        Ok(ok)
    };
    // The EROFS image, decoded once: checked, then read as the tree.
    r.objects += 1;
    match decoded(&objects, &erofs, info.erofs_size)? {
        Err(why) => {
            bad.push((erofs.clone(), why));
            broken(r, "its EROFS image is missing or damaged".into());
        }
        Ok(plain) => {
            let tree = super::tree_of(id, &plain)?;
            let mut missing = 0;
            for (oid, size) in crate::tree::object_sizes(&tree) {
                if !check(oid, size, r)? {
                    missing += 1;
                }
            }
            if missing > 0 {
                broken(
                    r,
                    format!("{missing} of its objects are missing or damaged"),
                );
            }
        }
    }
    for (oid, why) in &bad {
        r.problems.push(Problem {
            kind: "corrupt-object",
            detail: format!(
                "filtered object {} (chain {}): {why}",
                oid.to_hex(),
                info.chain_digest.get(..12).unwrap_or(&info.chain_digest)
            ),
            repaired: repair,
        });
        if repair {
            let _ = fs::remove_file(objects.path(oid));
        }
    }
    if r.problems.len() == before {
        return Ok(Some(record));
    }
    if repair {
        store.forget_image(id)?;
    }
    Ok(None)
}

/// Counts filtered objects no checked image references as garbage.
fn garbage_filtered(
    store: &Store,
    seen: &HashMap<(String, ObjectId), bool>,
    unsure: &HashSet<String>,
    r: &mut FsckReport,
) -> Result<()> {
    let Ok(chains) = fs::read_dir(store.filters_dir().join("chains")) else {
        return Ok(());
    };
    for c in chains.flatten() {
        let digest = c.file_name().to_string_lossy().into_owned();
        if unsure.contains(&digest) {
            continue;
        }
        for i in 0..=255u8 {
            let Ok(entries) = fs::read_dir(c.path().join(format!("objects/{i:02x}"))) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if is_tmp_name(&name) {
                    r.garbage.temp_files += 1;
                    continue;
                }
                let Some(id) = object_id_of(i, &name) else {
                    continue;
                };
                if !seen.contains_key(&(digest.clone(), id)) {
                    r.garbage.objects += 1;
                    r.garbage.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
    Ok(())
}
