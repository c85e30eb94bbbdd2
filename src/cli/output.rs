//! Human and JSON output of the commands.

use std::collections::HashSet;
use std::io::Write;

use composefs::fsverity::FsVerityHashValue;

use super::{Cli, CliResult, io};
use crate::oci::PullReport;
use crate::store::{FsckReport, GcReport, ObjectId, Store};

/// `1.5 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn json(out: &mut impl Write, v: &impl serde::Serialize) -> CliResult {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).expect("serializes")
    )
    .map_err(io)
}

pub(super) fn pull(out: &mut impl Write, cli: &Cli, r: &PullReport) -> CliResult {
    let id = r.id.to_hex();
    if cli.json {
        return json(
            out,
            &serde_json::json!({
                "id": id, "name": r.name.as_str(), "layers": r.layers, "stats": r.stats,
                "new_objects": r.new_objects, "new_bytes": r.new_bytes,
                "content_bytes": r.content_bytes, "seconds": r.seconds,
            }),
        );
    }
    if cli.quiet {
        return writeln!(out, "{id}").map_err(io);
    }
    let mbs = r.content_bytes as f64 / 1e6 / r.seconds.max(1e-9);
    writeln!(out, "pulled {} ({})", r.name, &id[..12]).map_err(io)?;
    writeln!(
        out,
        "  {} layers, {} paths, {} files, {} of content; {} new objects ({}) in {:.2}s, {mbs:.0} MB/s",
        r.layers,
        r.stats.paths,
        r.stats.regular_files,
        bytes(r.stats.logical_bytes),
        r.new_objects,
        bytes(r.new_bytes),
        r.seconds
    )
    .map_err(io)
}

pub(super) fn images(out: &mut impl Write, cli: &Cli, store: &Store) -> CliResult {
    let refs = store.refs()?;
    let mut rows = Vec::new();
    for (name, id) in &refs {
        let rec = store.record(id)?;
        rows.push(serde_json::json!({
            "name": name.as_str(), "id": id.to_hex(), "imported": rec.imported,
            "size": rec.stats.logical_bytes, "files": rec.stats.regular_files,
            "paths": rec.stats.paths, "source": rec.source,
        }));
    }
    if cli.json {
        return json(out, &rows);
    }
    if cli.quiet {
        for r in &rows {
            writeln!(out, "{}", r["id"].as_str().unwrap_or_default()).map_err(io)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<40} {:<12} {:>10} {:>8}  SOURCE",
        "NAME", "ID", "SIZE", "FILES"
    )
    .map_err(io)?;
    for r in rows {
        writeln!(
            out,
            "{:<40} {:<12} {:>10} {:>8}  {}",
            r["name"].as_str().unwrap_or_default(),
            &r["id"].as_str().unwrap_or_default()[..12],
            bytes(r["size"].as_u64().unwrap_or(0)),
            r["files"].as_u64().unwrap_or(0),
            r["source"].as_str().unwrap_or_default()
        )
        .map_err(io)?;
    }
    Ok(())
}

/// The figures of `df`.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Df {
    pub images: u64,
    pub paths: u64,
    pub files_in_images: u64,
    pub objects_referenced: u64,
    pub logical_bytes: u64,
    pub unique_bytes: u64,
    pub stored_bytes: u64,
    pub dedup_ratio: f64,
}

pub(crate) fn df_figures(store: &Store) -> CliResult<Df> {
    let mut d = Df::default();
    let ids: HashSet<ObjectId> = store.refs()?.into_iter().map(|(_, i)| i).collect();
    let mut objects: HashSet<ObjectId> = HashSet::new();
    for id in &ids {
        let rec = store.record(id)?;
        d.images += 1;
        d.paths += rec.stats.paths;
        d.files_in_images += rec.stats.regular_files;
        d.logical_bytes += rec.stats.logical_bytes;
        d.unique_bytes += rec.stats.inline_bytes;
        let bytes = store.image_bytes(id)?;
        if let Ok(refs) = composefs::erofs::reader::collect_objects::<ObjectId>(&bytes) {
            objects.extend(refs);
        }
    }
    for o in &objects {
        d.unique_bytes += std::fs::metadata(store.object_path(o))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    d.objects_referenced = objects.len() as u64;
    d.stored_bytes = store.disk_usage()?;
    d.dedup_ratio = if d.unique_bytes > 0 {
        d.logical_bytes as f64 / d.unique_bytes as f64
    } else {
        1.0
    };
    Ok(d)
}

pub(super) fn df(out: &mut impl Write, cli: &Cli, store: &Store) -> CliResult {
    let d = df_figures(store)?;
    if cli.json {
        return json(out, &d);
    }
    writeln!(out, "images            {}", d.images).map_err(io)?;
    writeln!(
        out,
        "files in images   {} (stored once as {} objects)",
        d.files_in_images, d.objects_referenced
    )
    .map_err(io)?;
    writeln!(out, "logical content   {}", bytes(d.logical_bytes)).map_err(io)?;
    writeln!(out, "unique content    {}", bytes(d.unique_bytes)).map_err(io)?;
    writeln!(
        out,
        "store on disk     {} (objects, EROFS images, records, block rounding)",
        bytes(d.stored_bytes)
    )
    .map_err(io)?;
    writeln!(out, "dedup ratio       {:.2}x", d.dedup_ratio).map_err(io)
}

pub(super) fn fsck(out: &mut impl Write, cli: &Cli, r: &FsckReport) -> CliResult {
    if cli.json {
        return json(out, r);
    }
    for p in &r.problems {
        let tag = if p.repaired { "repaired" } else { "PROBLEM" };
        writeln!(out, "{tag}: {}: {}", p.kind, p.detail).map_err(io)?;
    }
    let g = &r.garbage;
    writeln!(
        out,
        "checked {} images, {} objects and {} container records: {}",
        r.images,
        r.objects,
        r.containers,
        if r.clean { "clean" } else { "NOT clean" }
    )
    .map_err(io)?;
    if g.objects + g.staging_dirs + g.unnamed_images + g.temp_files > 0 {
        writeln!(
            out,
            "garbage (gc removes it): {} objects ({}), {} unfinished imports, {} unnamed images, {} temporary files",
            g.objects,
            bytes(g.bytes),
            g.staging_dirs,
            g.unnamed_images,
            g.temp_files
        )
        .map_err(io)?;
    }
    Ok(())
}

pub(super) fn gc(out: &mut impl Write, cli: &Cli, r: &GcReport) -> CliResult {
    if cli.json {
        return json(out, r);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    write!(
        out,
        "{verb} {} objects ({}), {} unnamed images, {} unfinished imports, {} temporary files",
        r.objects,
        bytes(r.bytes),
        r.images,
        r.staging_dirs,
        r.temp_files
    )
    .map_err(io)?;
    if r.chains + r.scripts > 0 {
        write!(
            out,
            ", {} unused filter chains, {} unused filter scripts",
            r.chains, r.scripts
        )
        .map_err(io)?;
    }
    writeln!(out).map_err(io)
}

pub(super) fn mounts(out: &mut impl Write, cli: &Cli, store_root: &std::path::Path) -> CliResult {
    let table = crate::mount::list();
    let tracked = crate::mount::track::all(store_root);
    let rows: Vec<serde_json::Value> = table
        .iter()
        .map(|m| {
            let t = tracked.iter().find(|t| t.mountpoint == m.mountpoint);
            let state = match t.and_then(|t| t.pid) {
                Some(pid) if crate::mount::track::alive(pid) => "serving",
                Some(_) => "server gone: run `fukastor umount`",
                None if m.fstype.starts_with("fuse") => "unknown server",
                None => "mounted",
            };
            let mode = t.map(|t| t.mode.clone()).unwrap_or_else(|| {
                if m.fstype.starts_with("fuse") {
                    "fuse".into()
                } else {
                    "kernel".into()
                }
            });
            serde_json::json!({
                "mountpoint": m.mountpoint, "source": m.source, "fstype": m.fstype, "mode": mode,
                "image": t.map(|t| t.image.clone()), "id": t.map(|t| t.id.clone()),
                "pid": t.and_then(|t| t.pid), "state": state,
            })
        })
        .collect();
    if cli.json {
        return json(out, &rows);
    }
    writeln!(
        out,
        "{:<36} {:<17} {:<24} {:>8}  STATE",
        "MOUNTPOINT", "MODE", "IMAGE", "PID"
    )
    .map_err(io)?;
    for r in rows {
        writeln!(
            out,
            "{:<36} {:<17} {:<24} {:>8}  {}",
            r["mountpoint"].as_str().unwrap_or_default(),
            r["mode"].as_str().unwrap_or_default(),
            r["image"].as_str().unwrap_or("-"),
            r["pid"].as_u64().map_or("-".to_string(), |p| p.to_string()),
            r["state"].as_str().unwrap_or_default()
        )
        .map_err(io)?;
    }
    Ok(())
}
