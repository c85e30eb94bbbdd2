//! `pull`: import a source into the store.
//!
//! Steps, and what a `kill -9` after each leaves behind (`docs/design.md`
//! has the full argument):
//! 1. open and verify index, manifest, config — nothing written;
//! 2. decode layers and stage objects — a staging directory (garbage);
//! 3. build the tree and its EROFS image, staged too — the same;
//! 4. publish the objects the tree references into `objects/` (content
//!    that later layers replaced or deleted is dropped) — unreferenced
//!    objects (garbage);
//! 5. record, `images/<id>` link, `syncfs` — an unnamed image (garbage);
//! 6. the name ref — the image, complete and named.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use composefs::erofs::writer::{ValidatedFileSystem, mkfs_erofs};
use composefs::fsverity::FsVerityHashValue;
use composefs::tree::RegularFile;

use super::layer::{self, Job, JobResult, LayerInput};
use super::{OciError, Source, dir, layer_cache, source};
use crate::store::{ImageName, ImageRecord, ImageStats, LayerInfo, ObjectId, Staging, Store};
use crate::tree::{Entry, EntryKind, TreeBuilder};

/// How to pull.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PullOptions {
    /// The name to give the image; the source's own name when `None`.
    pub name: Option<String>,
    /// Show a progress bar.
    pub progress: bool,
    /// Worker threads; the number of cores when 0.
    pub threads: usize,
    /// Filters (`--filter`, in encode order): objects are stored encoded.
    pub filters: Vec<crate::filter::Stage>,
}

impl PullOptions {
    /// Options with a name.
    pub fn named(name: Option<String>) -> Self {
        PullOptions {
            name,
            ..Default::default()
        }
    }

    /// Shows a progress bar or not.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Sets the worker count (0: one per core).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Stores the objects encoded through these filters.
    pub fn filters(mut self, stages: Vec<crate::filter::Stage>) -> Self {
        self.filters = stages;
        self
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image ID.
    pub id: ObjectId,
    /// The name it got.
    pub name: ImageName,
    /// Figures about its tree.
    pub stats: ImageStats,
    /// Number of layers.
    pub layers: usize,
    /// Objects this pull added to the store.
    pub new_objects: u64,
    /// Their bytes.
    pub new_bytes: u64,
    /// Uncompressed bytes read (tar streams, or files for `dir:`).
    pub content_bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// A decoded layer.
pub(super) struct Decoded {
    pub entries: Vec<Entry>,
    /// True when the entries came from the layer cache.
    pub cached: bool,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub tar_bytes: u64,
}

type Producer<'a, T> =
    Box<dyn FnOnce(&SyncSender<Job>, &AtomicBool) -> Result<T, OciError> + Send + 'a>;

/// Runs producers (at most `threads` at once) that feed file contents to a
/// pool of `threads` hashing workers. Returns the producers' results in
/// order, or the first error in that order, and the workers' results.
pub(super) fn with_pool<'a, T: Send>(
    staging: &Staging<'_>,
    threads: usize,
    producers: Vec<Producer<'a, T>>,
) -> Result<(Vec<T>, Vec<JobResult>), OciError> {
    let n = producers.len();
    let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
    let job_rx = Mutex::new(job_rx);
    let results = Mutex::new(Vec::new());
    let abort = AtomicBool::new(false);
    let queue: Mutex<Vec<(usize, Producer<'a, T>)>> =
        Mutex::new(producers.into_iter().enumerate().rev().collect());
    let outputs: Vec<Mutex<Option<Result<T, OciError>>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| layer::worker(staging, &job_rx, &results));
        }
        for _ in 0..threads.min(n) {
            let tx = job_tx.clone();
            let (queue, outputs, abort) = (&queue, &outputs, &abort);
            s.spawn(move || {
                loop {
                    let Some((i, p)) = queue.lock().expect("not poisoned").pop() else {
                        break;
                    };
                    let r = p(&tx, abort);
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    *outputs[i].lock().expect("not poisoned") = Some(r);
                }
            });
        }
        drop(job_tx);
    });
    let mut out = Vec::with_capacity(n);
    let mut first_err = None;
    for o in outputs {
        match o.into_inner().expect("not poisoned") {
            Some(Ok(t)) => out.push(t),
            Some(Err(e)) => {
                // An "aborted" layer only echoes another layer's failure.
                let echo = matches!(&e, OciError::Tar { why, .. } if why == "aborted");
                if first_err.is_none() && !echo {
                    first_err = Some(e);
                }
            }
            None => {}
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut results = results.into_inner().expect("not poisoned");
    // A store failure (disk full, …) keeps its own code.
    if let Some(i) = results.iter().position(|(_, _, r)| r.is_err()) {
        let (_, _, r) = results.swap_remove(i);
        return Err(OciError::Store(r.expect_err("position found an error")));
    }
    Ok((out, results))
}

/// Puts the pool's object IDs in place of the placeholders.
pub(super) fn patch(layers: &mut [Vec<Entry>], results: Vec<JobResult>) {
    for (l, e, r) in results {
        if let (Ok(id), Some(entry)) = (r, layers.get_mut(l).and_then(|es| es.get_mut(e)))
            && let EntryKind::File(RegularFile::Sparse(len)) = entry.kind
        {
            entry.kind = EntryKind::File(RegularFile::External(id, len));
        }
    }
}

/// Imports `source` into `store`.
pub fn pull(
    store: &Store,
    source: &Source,
    spelled: &str,
    opts: &PullOptions,
) -> Result<PullReport, OciError> {
    let start = Instant::now();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let mut name = match &opts.name {
        Some(n) => ImageName::parse(n)?,
        None => ImageName::parse(&source.default_name())?,
    };
    // A filtered pull publishes into its chain's objects directory. It does
    // not use the layer cache: cached entries name objects of `objects/`.
    let chain = if opts.filters.is_empty() {
        None
    } else {
        Some(store.new_chain(opts.filters.clone())?)
    };
    let staging = match &chain {
        None => store.staging()?,
        Some(c) => store.staging_into(store.chain_objects(c))?,
    };
    let use_cache = chain.is_none();
    let mut to_cache: Vec<(String, Vec<Entry>)> = Vec::new();

    let (layers, config, manifest_digest, config_digest, content_bytes) = match source {
        Source::Dir(path) => {
            let (entries, bytes) = dir::scan(path, &staging, threads, store)?;
            let config = dir::config();
            let digest = format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(config.to_string()))
            );
            (vec![(entries, None)], config, None, digest, bytes)
        }
        _ => {
            let opened = source::open(source)?;
            if opts.name.is_none()
                && let (Source::DockerArchive(_, None), Some(n)) = (source, &opened.source_name)
            {
                name = ImageName::parse(n)?;
            }
            let total: u64 = opened.layers.iter().filter_map(|l| l.size).sum();
            let bar = progress_bar(opts.progress, total);
            let mut producers: Vec<Producer<'_, Decoded>> = Vec::new();
            for (index, l) in opened.layers.iter().enumerate() {
                let (staging, opened, bar) = (&staging, &opened, bar.clone());
                producers.push(Box::new(
                    move |jobs: &SyncSender<Job>, abort: &AtomicBool| {
                        let known = l
                            .diff_id
                            .as_deref()
                            .filter(|_| use_cache)
                            .and_then(|d| layer_cache::get(store, d));
                        if let Some(entries) = known {
                            tracing::info!(
                                "layer {} is known: not read again",
                                l.diff_id.as_deref().unwrap_or_default()
                            );
                            if let (Some(b), Some(size)) = (&bar, l.size) {
                                b.inc(size);
                            }
                            return Ok(Decoded {
                                entries,
                                digest: l
                                    .digest
                                    .clone()
                                    .or_else(|| l.diff_id.clone())
                                    .unwrap_or_default(),
                                diff_id: l.diff_id.clone().unwrap_or_default(),
                                size: l.size.unwrap_or(0),
                                tar_bytes: 0,
                                cached: true,
                            });
                        }
                        let reader = opened.open_layer(l)?;
                        let label = l.digest.clone().unwrap_or_else(|| l.path.clone());
                        let d = layer::decode(
                            LayerInput {
                                index,
                                label,
                                reader,
                                digest: l.digest.clone(),
                                diff_id: l.diff_id.clone(),
                            },
                            staging,
                            jobs,
                            abort,
                            bar,
                        )?;
                        Ok(d)
                    },
                ));
            }
            let (decoded, results) = with_pool(&staging, threads, producers)?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let mut entries: Vec<Vec<Entry>> = Vec::new();
            let mut infos = Vec::new();
            let mut content = 0;
            let mut fresh = Vec::new();
            for (d, l) in decoded.into_iter().zip(&opened.layers) {
                content += d.tar_bytes;
                if !d.cached {
                    fresh.push(entries.len());
                }
                infos.push(LayerInfo {
                    digest: d.digest,
                    diff_id: d.diff_id,
                    media_type: l.media_type.clone(),
                    size: d.size,
                });
                entries.push(d.entries);
            }
            patch(&mut entries, results);
            // What to cache once the objects are published.
            to_cache = fresh
                .into_iter()
                .filter(|_| use_cache)
                .map(|i| (infos[i].diff_id.clone(), entries[i].clone()))
                .collect();
            let layers = entries
                .into_iter()
                .zip(infos.into_iter().map(Some))
                .collect();
            (
                layers,
                opened.config,
                opened.manifest_digest,
                opened.config_digest,
                content,
            )
        }
    };

    tracing::info!(
        "decoded and staged in {:.3}s",
        start.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut builder = TreeBuilder::new();
    let mut infos = Vec::new();
    for (entries, info) in layers {
        builder.begin_layer();
        let label = info
            .as_ref()
            .map_or_else(|| spelled.to_string(), |i: &LayerInfo| i.digest.clone());
        for e in entries {
            builder.apply(e).map_err(|source| OciError::Layer {
                layer: label.clone(),
                source,
            })?;
        }
        infos.extend(info);
    }
    let tree = builder.finish();
    let mut stats = crate::tree::stats(&tree);
    let mut keep = crate::tree::objects(&tree);
    let tree = ValidatedFileSystem::new(tree).map_err(|e| OciError::Tar {
        layer: spelled.to_string(),
        why: format!("the merged tree is not valid: {e}"),
    })?;
    tracing::info!("tree built in {:.3}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let erofs = mkfs_erofs(&tree);
    stats.erofs_bytes = erofs.len() as u64;
    let erofs_id = staging.put(&erofs)?;
    keep.insert(erofs_id.clone());
    let (id, filter) = match &chain {
        None => (erofs_id, None),
        Some(c) => {
            let digest = c.spec().digest();
            let info = crate::store::FilterInfo {
                chain: c.spec().clone(),
                erofs: erofs_id.to_hex(),
                erofs_size: erofs.len() as u64,
                chain_digest: digest.clone(),
            };
            (
                crate::store::filtered_image_id(&erofs_id, &digest),
                Some(info),
            )
        }
    };
    crate::failpoint("pull:staged");
    tracing::info!(
        "EROFS ({} bytes) built in {:.3}s",
        erofs.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    if let Some(c) = &chain {
        store.keep_chain(&opts.filters, c)?;
    }
    let published = staging.publish_only(Some(&keep))?;
    tracing::info!("objects published in {:.3}s", t.elapsed().as_secs_f64());
    let t = Instant::now();

    let record = ImageRecord {
        id: id.to_hex(),
        source: spelled.to_string(),
        imported: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        manifest_digest,
        config_digest: Some(config_digest),
        config,
        layers: infos,
        stats: stats.clone(),
        names: vec![name.to_string()],
        filter,
        named_configs: Default::default(),
    };
    let record = merge_names(store, &id, &name.to_string(), record);
    store.publish_image(&id, &record, Some(&name))?;
    tracing::info!(
        "image published (with syncfs) in {:.3}s",
        t.elapsed().as_secs_f64()
    );
    crate::failpoint("pull:ref-written");
    for (diff_id, entries) in &to_cache {
        layer_cache::put(store, diff_id, entries);
    }
    Ok(PullReport {
        id,
        name,
        layers: record.layers.len().max(1),
        stats,
        new_objects: published.new_objects,
        new_bytes: published.new_bytes,
        content_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// `record` (of image `id`, just pulled as `name`) with the names and
/// per-name configs of the image's earlier record, if there is one: an
/// image pulled again under another name keeps both, each with its config.
fn merge_names(store: &Store, id: &ObjectId, name: &str, mut record: ImageRecord) -> ImageRecord {
    if let Ok(old) = store.record(id) {
        record.merge_old(name, &old);
    }
    record
}

fn progress_bar(on: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !on {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} importing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    Some(bar)
}
