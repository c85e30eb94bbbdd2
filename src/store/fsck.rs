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

use super::{ImageName, ObjectId, Result, Store, io_err, is_tmp_name, objects::verify_file};

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
    /// Problems found.
    pub problems: Vec<Problem>,
    /// Garbage found (not problems).
    pub garbage: Garbage,
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

pub(super) fn run(store: &Store, repair: bool) -> Result<FsckReport> {
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
            let Some(id) = name
                .to_str()
                .and_then(|n| ObjectId::from_hex(format!("{i:02x}{n}")).ok())
            else {
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
    for id in store.image_ids()? {
        r.images += 1;
        let hex = id.to_hex();
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
                Some(id) if good_images.contains(&id) => {
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
                if let Ok(name) = ImageName::parse(n) {
                    if store.lookup_ref(&name)?.is_none() {
                        store.set_ref(&name, id)?;
                        restored = true;
                    }
                }
            }
        }
        if !restored {
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
    r.clean = r.problems.iter().all(|p| p.repaired);
    Ok(r)
}
