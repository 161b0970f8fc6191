//! Stage `prepare`: an image folder, tar, list file or IDX file becomes
//! `images/`: Arrow shards of `size`x`size` RGB images (schema
//! [`schema::images`]) and a `rejects` table of every input that did not
//! become an image, with the reason. seen = written + rejected, always.
//!
//! How the work is cut, and why:
//! - The input is listed first ([`crate::input`]); an image's `id` is its
//!   position in that listing. The listing is cut into chunks of
//!   `rows-per-shard` inputs, and chunk `k` becomes `images-k.arrow` (the
//!   inputs that decoded) and, when any were refused, `rejects-k.arrow`.
//!   The file names and contents depend only on the input and the
//!   parameters, never on `--threads` or timing: inputs of a chunk are
//!   processed in parallel (rayon) and collected in listing order.
//! - Resume: a chunk's files are written atomically, rejects first, images
//!   last; a chunk whose `images-k.arrow` exists is finished. After kill -9
//!   the same command keeps the finished chunks and redoes the rest, so the
//!   final files equal an uninterrupted run's.
//! - Slices (`--shard-index I --num-shards N`): slice I processes the chunks
//!   `k` with `k % N == I` (round-robin, so slices get similar mixes of
//!   classes) and names them by their global `k`. The N slices' files are
//!   therefore exactly the single run's files, byte for byte, with no name
//!   in common. Merging is a manifest step: `prepare --output DIR --merge
//!   SLICE_DIR...` (same `--input` and parameters, without the slice flags)
//!   checks that the slices are complete, come from the same input and
//!   parameters and cover 0..N, links (or copies) their files into DIR and
//!   writes the manifest the single run would have written.
//! - A writer thread writes chunk k while the workers decode chunk k+1; at
//!   most three chunks are in memory, whatever the input's size.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codec::{
    self, Codec, Color, Filter, Geometry, JpegScaling, PngCompression, Prepared, Resize,
};
use crate::error::{Error, Result, ResultExt};
use crate::input::{self, Bytes, Item, Listing};
use crate::manifest::Manifest;
use crate::progress;
use crate::shard::stored::{StoredCodec, StoredImage, StoredShape};
use crate::shard::{image_column, open_shard, schema, ShardFile, TableWriter};
use crate::stage::{Input, StageName, StageRun};
use crate::stages::{at_least, Exec, ParamError, RunDirs, Slot, Stage};

const NAME: StageName = StageName::Prepare;

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// Image folder (class sub-folders or flat), tar (or tar of per-class
    /// tars), list file (.csv/.parquet with `path[,label]`) or IDX images file.
    #[arg(long)]
    pub input: PathBuf,
    /// Side of the square output images in pixels (made by --resize; the
    /// shorter side for `--resize keep-ratio`).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// How an image of any shape is stored: the centred square of its
    /// shorter side (crop), the whole image inside the square on a
    /// --pad-color border (pad), the whole image stretched (squash), or the
    /// whole image with its shorter side at --size and its aspect ratio kept
    /// (keep-ratio: what train-gan's distorted crops are drawn from).
    #[arg(long, value_enum, default_value_t = Resize::Crop)]
    pub resize: Resize,
    /// The border colour of `--resize pad`: #rrggbb, R,G,B or black, white, gray.
    #[arg(long, default_value_t = Color::BLACK)]
    pub pad_color: Color,
    /// The resampling filter (fast_image_resize's; anti-aliased when downscaling).
    #[arg(long, value_enum, default_value_t = Filter::Bilinear)]
    pub filter: Filter,
    /// How images are stored.
    #[arg(long, value_enum, default_value_t = Codec::Png)]
    pub codec: Codec,
    /// JPEG quality for `--codec jpeg` (1-100).
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// PNG compression effort.
    #[arg(long, value_enum, default_value_t = PngCompression::Fast)]
    pub png_compression: PngCompression,
    /// Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain.
    #[arg(long, value_enum, default_value_t = JpegScaling::Auto)]
    pub jpeg_scaling: JpegScaling,
    /// Refuse images with more pixels than this (checked from the header, before decoding).
    #[arg(long, default_value_t = 100_000_000)]
    pub max_pixels: u64,
    /// Refuse files larger than this (checked before reading them): bytes,
    /// or with a unit (256MiB, 2GiB, 500kB).
    #[arg(long, default_value = "256MiB", value_parser = crate::stages::parse_bytes)]
    #[serde(deserialize_with = "crate::stages::bytes_from_number_or_text")]
    pub max_file_bytes: u64,
    /// Follow symbolic links in a folder input that lead outside it (by
    /// default each is a reject, not followed).
    #[arg(long)]
    pub follow_links: bool,
    /// Inputs per output shard (also the unit of resuming and slicing).
    #[arg(long, default_value_t = 1000)]
    pub rows_per_shard: usize,
    /// This slice's index, 0-based (with --num-shards).
    #[arg(long, default_value_t = 0)]
    pub shard_index: usize,
    /// Split the work into this many slices (one per machine).
    #[arg(long, default_value_t = 1)]
    pub num_shards: usize,
    /// Stop with exit 1 at the first input that cannot be prepared.
    #[arg(long)]
    pub strict: bool,
    /// Class names: a comma-separated list, or a file with one name per line.
    /// Needed for IDX (which stores none); renames folder classes otherwise.
    #[arg(long)]
    pub class_names: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            input: PathBuf::new(),
            size: 128,
            resize: Resize::Crop,
            pad_color: Color::BLACK,
            filter: Filter::Bilinear,
            codec: Codec::Png,
            quality: 90,
            png_compression: PngCompression::Fast,
            jpeg_scaling: JpegScaling::Auto,
            max_pixels: 100_000_000,
            max_file_bytes: 256 << 20,
            follow_links: false,
            rows_per_shard: 1000,
            shard_index: 0,
            num_shards: 1,
            strict: false,
            class_names: None,
        }
    }
}

/// `fewlabels prepare`.
pub struct Prepare;

pub const MERGE: Slot = Slot {
    multiple: true,
    in_pipeline: false,
    ..Slot::optional(
        "merge",
        StageName::Prepare,
        "Merge finished slices (`--num-shards N` runs) into --output instead of preparing.",
    )
};

impl Stage for Prepare {
    const NAME: StageName = StageName::Prepare;
    const ABOUT: &'static str =
        "Images (folder, tar, list file, IDX) to Arrow shards of --size images.";
    const OUTPUT: &'static str = "Output folder (`images/` of a run).";
    const SLOTS: &'static [Slot] = &[MERGE];
    const RUNS_NETWORKS: bool = false;
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        if p.input.as_os_str().is_empty() {
            return Err(ParamError::new(
                "input",
                "is needed: an image folder, tar, list file or IDX file",
            ));
        }
        if p.size == 0 || p.size > 4096 {
            return Err(ParamError::new("size", "must be between 1 and 4096"));
        }
        if !(1..=100).contains(&p.quality) {
            return Err(ParamError::new("quality", "must be between 1 and 100"));
        }
        if p.codec == Codec::Raw && p.resize == Resize::KeepRatio {
            return Err(ParamError::new(
                "codec",
                "raw rows carry no size of their own, so they must be squares: use png or jpeg with resize keep-ratio",
            ));
        }
        at_least("rows-per-shard", p.rows_per_shard as u64, 1)?;
        at_least("num-shards", p.num_shards as u64, 1)?;
        if p.shard_index >= p.num_shards {
            return Err(ParamError::new(
                "shard-index",
                format!("must be below num-shards ({})", p.num_shards),
            ));
        }
        Ok(())
    }

    fn check(dirs: &RunDirs, p: &Params) -> Result<()> {
        if !dirs.all(&MERGE).is_empty() && (p.num_shards != 1 || p.shard_index != 0) {
            return Err(Error::usage(
                "--merge writes the whole dataset: give the slices' other parameters, without --shard-index/--num-shards",
            ));
        }
        refuse_output_inside_input(&p.input, &dirs.output)
    }

    fn inputs(_: &RunDirs, params: &Params) -> Vec<Input> {
        let mut v = vec![Input::Path(params.input.clone())];
        if let Some(labels) = input::idx::labels_path(&params.input) {
            v.push(Input::Path(labels));
        }
        if let Some(names) = &params.class_names {
            if Path::new(names).is_file() {
                v.push(Input::Path(PathBuf::from(names)));
            }
        }
        v
    }

    fn run(dirs: &RunDirs, params: &Params, exec: &Exec, run: &mut StageRun) -> Result<()> {
        let slices = dirs.all(&MERGE);
        if slices.is_empty() {
            prepare(run, params, exec)
        } else {
            merge_body(run, slices)
        }
    }
}

/// How the squares are made, as the codec takes it and the images table records it.
fn geometry(p: &Params) -> Geometry {
    Geometry {
        resize: p.resize,
        filter: p.filter,
        pad_color: p.pad_color,
    }
}

/// The class names to store: `--class-names` when given (checked against the
/// labels found), else those of the input.
fn class_names(params: &Params, listing: &Listing) -> Result<Vec<String>> {
    let found = listing.class_names.len();
    let max_label = listing
        .items
        .iter()
        .filter_map(|i| i.label)
        .max()
        .map(|m| m as usize + 1)
        .unwrap_or(0);
    let Some(spec) = &params.class_names else {
        return Ok(listing.class_names.clone());
    };
    let path = Path::new(spec);
    let names: Vec<String> = if path.is_file() {
        std::fs::read_to_string(path)
            .map_err(|e| Error::io(path, e))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        spec.split(',').map(|s| s.trim().to_string()).collect()
    };
    if names.iter().any(|n| n.is_empty()) {
        return Err(Error::invalid(format!(
            "--class-names `{spec}`: empty name in the list"
        )));
    }
    let needed = found.max(max_label);
    if names.len() < needed || (found > 0 && names.len() != found) {
        return Err(Error::invalid(format!(
            "--class-names gives {} names but the input has {needed} classes",
            names.len()
        )));
    }
    Ok(names)
}

/// The outcome of one input.
type Outcome1 = std::result::Result<Prepared, String>;

thread_local! {
    static IN_DECODE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A decoder that panics on a hostile file costs that file, not the run: the
/// panic becomes a reject, and its message is kept off the terminal.
fn quiet_panics_in_decoders() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_DECODE.with(|f| f.get()) {
                previous(info);
            }
        }));
    });
}

fn process(listing: &Listing, item: &Item, opts: &codec::Options, max_bytes: u64) -> Outcome1 {
    IN_DECODE.with(|f| f.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| {
        match listing.fetch(item, max_bytes)? {
            Bytes::Encoded(b) => codec::prepare(&b, opts),
            Bytes::Gray {
                pixels,
                width,
                height,
            } => codec::prepare_gray(pixels, width, height, opts),
        }
    }));
    IN_DECODE.with(|f| f.set(false));
    r.unwrap_or_else(|_| Err("the decoder crashed on this file (malformed data)".to_string()))
}

/// A processed chunk on its way to the writer.
struct Chunk {
    k: usize,
    first_id: u64,
    items: Vec<(String, Option<i64>)>,
    results: Vec<Outcome1>,
}

/// Counts of a finished chunk.
#[derive(Default, Clone, Copy)]
struct Done {
    k: usize,
    seen: u64,
    written: u64,
    rejected: u64,
}

fn images_name(k: usize) -> String {
    TableWriter::shard_name("images", k)
}
fn rejects_name(k: usize) -> String {
    TableWriter::shard_name("rejects", k)
}

fn write_chunk(dir: &Path, images_schema: &arrow::datatypes::SchemaRef, c: Chunk) -> Result<Done> {
    let mut ids = Vec::new();
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    let mut widths = Vec::new();
    let mut heights = Vec::new();
    let mut images: Vec<&[u8]> = Vec::new();
    let mut rej_paths = Vec::new();
    let mut rej_reasons = Vec::new();
    for (i, ((path, label), r)) in c.items.iter().zip(&c.results).enumerate() {
        match r {
            Ok(p) => {
                ids.push(c.first_id + i as u64);
                paths.push(path.as_str());
                labels.push(*label);
                widths.push(p.width as i32);
                heights.push(p.height as i32);
                images.push(&p.bytes);
            }
            Err(reason) => {
                rej_paths.push(path.as_str());
                rej_reasons.push(reason.as_str());
            }
        }
    }
    // Rejects first, images last: the images file marks the chunk finished.
    if !rej_paths.is_empty() {
        let batch = RecordBatch::try_new(
            schema::rejects(),
            vec![
                Arc::new(StringArray::from(rej_paths.clone())) as ArrayRef,
                Arc::new(StringArray::from(rej_reasons)),
            ],
        )
        .at(dir)?;
        let mut f = ShardFile::create(dir.join(rejects_name(c.k)), &schema::rejects())?;
        f.write(&batch)?;
        f.finish()?;
    }
    let batch = RecordBatch::try_new(
        images_schema.clone(),
        vec![
            Arc::new(UInt64Array::from(ids.clone())) as ArrayRef,
            Arc::new(StringArray::from(paths)),
            Arc::new(Int64Array::from(labels)),
            Arc::new(Int32Array::from(widths)),
            Arc::new(Int32Array::from(heights)),
            image_column(images.iter().map(|b| (*b, None))),
        ],
    )
    .at(dir)?;
    let mut f = ShardFile::create(dir.join(images_name(c.k)), images_schema)?;
    f.write(&batch)?;
    f.finish()?;
    Ok(Done {
        k: c.k,
        seen: c.items.len() as u64,
        written: ids.len() as u64,
        rejected: rej_paths.len() as u64,
    })
}

/// An output folder inside a folder input would list its own files as
/// inputs (a spurious class, and a stage never up to date): refused before
/// anything runs, so nothing is created inside the input either.
fn refuse_output_inside_input(input: &Path, output: &Path) -> Result<()> {
    if !input.is_dir() {
        return Ok(());
    }
    let i = std::fs::canonicalize(input).map_err(|e| Error::io(input, e))?;
    if resolved(output).starts_with(&i) {
        return Err(Error::usage(format!(
            "--output {} is inside --input {}: its own files would become inputs; give an output folder outside the input",
            output.display(),
            input.display()
        )));
    }
    Ok(())
}

/// `path` with links resolved, for a path that may not exist yet: its
/// nearest existing ancestor resolved, the rest appended.
fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return abs,
        }
    }
}

/// Records a finished chunk's files in the manifest, images before rejects.
fn add_outputs(run: &mut StageRun, d: &Done) -> Result<()> {
    run.add_output(images_name(d.k), Some(d.written))?;
    if d.rejected > 0 {
        run.add_output(rejects_name(d.k), Some(d.rejected))?;
    }
    Ok(())
}

/// Rows of a finished Arrow file (resume).
fn rows_of(path: &Path) -> Result<u64> {
    let mut rows = 0;
    for b in open_shard(path, None)? {
        rows += b.at(path)?.num_rows() as u64;
    }
    Ok(rows)
}

fn prepare(run: &mut StageRun, params: &Params, exec: &Exec) -> Result<()> {
    quiet_panics_in_decoders();
    let opts = codec::Options {
        size: params.size,
        codec: params.codec,
        quality: params.quality,
        max_pixels: params.max_pixels,
        jpeg_scaling: params.jpeg_scaling,
        png_compression: params.png_compression,
        geometry: geometry(params),
    };
    let t = Instant::now();
    let spin = progress::spinner("inputs listed");
    let input_opts = input::Options {
        follow_links: params.follow_links,
        max_file_bytes: params.max_file_bytes,
    };
    let listing = input::list(&params.input, &input_opts)?;
    spin.finish_and_clear();
    let names = class_names(params, &listing)?;
    run.phase("list", t.elapsed().as_secs_f64());
    for c in &listing.empty_classes {
        tracing::warn!("class `{c}` has no files (it keeps its index)");
    }
    let n = listing.items.len();
    let r = params.rows_per_shard;
    let chunks = n.div_ceil(r).max(1);
    let mine: Vec<usize> = (0..chunks)
        .filter(|k| k % params.num_shards == params.shard_index)
        .collect();
    // How the rows are stored, for every reader's one decoder (shard::stored).
    let stored = StoredImage {
        codec: match params.codec {
            Codec::Png => StoredCodec::Png,
            Codec::Jpeg => StoredCodec::Jpeg,
            Codec::Raw => StoredCodec::Raw,
        },
        size: params.size,
        shape: match params.resize {
            Resize::KeepRatio => StoredShape::ShorterSide,
            _ => StoredShape::Square,
        },
    };
    let images_schema = stored.attach(&schema::with_geometry(
        &schema::images(&names),
        &geometry(params),
    ));
    let range = |k: usize| (k * r).min(n)..((k + 1) * r).min(n);

    // Finished chunks of an interrupted identical attempt are kept.
    let mut done: Vec<Done> = Vec::new();
    let mut todo = Vec::new();
    for &k in &mine {
        let img = run.dir.join(images_name(k));
        if run.resuming && img.exists() {
            let seen = range(k).len() as u64;
            let written = rows_of(&img)?;
            let rej = run.dir.join(rejects_name(k));
            let rejected = if rej.exists() { rows_of(&rej)? } else { 0 };
            if written + rejected == seen {
                done.push(Done {
                    k,
                    seen,
                    written,
                    rejected,
                });
                continue;
            }
        }
        todo.push(k);
    }
    let resumed = done.len();

    let threads = if exec.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        exec.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid(format!("--threads {threads}: {e}")))?;
    let total: u64 = todo.iter().map(|&k| range(k).len() as u64).sum();
    let bar = progress::bar(total, "images");
    let dir = run.dir.clone();
    let t = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(1);
    let manifest_run = &mut *run;
    let kept = &done;
    let written = std::thread::scope(|s| -> Result<Vec<Done>> {
        let schema = images_schema.clone();
        let dir = &dir;
        // The writer also records each chunk in the manifest as soon as it is
        // written (the checksum reads it back while the page cache holds
        // it), in chunk order with the resumed chunks, instead of all at the
        // end: only the last chunk's checksum is left after the decoding.
        let writer = s.spawn(move || -> Result<Vec<Done>> {
            let mut v = Vec::new();
            let mut kept = kept.iter().peekable();
            for c in rx {
                let t = Instant::now();
                let d = write_chunk(dir, &schema, c)?;
                let wrote = t.elapsed().as_secs_f64();
                while let Some(old) = kept.next_if(|old| old.k < d.k) {
                    add_outputs(manifest_run, old)?;
                }
                add_outputs(manifest_run, &d)?;
                tracing::debug!(
                    "prepare: chunk {} written in {wrote:.3} s, checksummed in {:.3} s",
                    d.k,
                    t.elapsed().as_secs_f64() - wrote
                );
                v.push(d);
            }
            for old in kept {
                add_outputs(manifest_run, old)?;
            }
            Ok(v)
        });
        // Read-ahead: while the workers decode chunk i, a helper thread asks
        // the kernel for chunk i + 1's files (no further, so a cold 140 GB
        // input never floods the page cache), so the workers' reads wait on
        // the disk less when the input is not cached.
        let (started, started_rx) = std::sync::mpsc::channel::<()>();
        let listing_ref = &listing;
        let todo_ref = &todo;
        s.spawn(move || {
            for (i, &k) in todo_ref.iter().enumerate() {
                if i > 0 && started_rx.recv().is_err() {
                    break;
                }
                listing_ref.prefetch(&listing_ref.items[range(k)]);
            }
        });
        let mut failure = None;
        for &k in &todo {
            let _ = started.send(());
            let t = Instant::now();
            let items = &listing.items[range(k)];
            let results: Vec<Outcome1> = pool.install(|| {
                items
                    .par_iter()
                    .map(|it| {
                        let r = process(&listing, it, &opts, params.max_file_bytes);
                        bar.inc(1);
                        r
                    })
                    .collect()
            });
            if params.strict {
                if let Some((it, Err(reason))) =
                    items.iter().zip(&results).find(|(_, r)| r.is_err())
                {
                    failure = Some(Error::Strict {
                        path: PathBuf::from(&it.path),
                        reason: reason.clone(),
                    });
                    break;
                }
            }
            let chunk = Chunk {
                k,
                first_id: range(k).start as u64,
                items: items.iter().map(|i| (i.path.clone(), i.label)).collect(),
                results,
            };
            let decoded = t.elapsed().as_secs_f64();
            if tx.send(chunk).is_err() {
                break; // the writer failed; its error is returned below
            }
            tracing::debug!(
                "prepare: chunk {k} decoded in {decoded:.3} s, waited {:.3} s for the writer",
                t.elapsed().as_secs_f64() - decoded
            );
        }
        drop(tx);
        drop(started);
        let written = writer
            .join()
            .map_err(|_| Error::invalid("prepare: the writer thread panicked"))??;
        match failure {
            Some(e) => Err(e),
            None => Ok(written),
        }
    })?;
    bar.finish_and_clear();
    run.phase("process", t.elapsed().as_secs_f64());
    done.extend(written);
    done.sort_by_key(|d| d.k);
    if done.len() != mine.len() {
        return Err(Error::invalid("prepare: a chunk was not written"));
    }

    let (mut seen, mut ok, mut rejected) = (0u64, 0u64, 0u64);
    for d in &done {
        seen += d.seen;
        ok += d.written;
        rejected += d.rejected;
    }
    debug_assert_eq!(seen, ok + rejected);
    run.count("input_kind", listing.kind);
    run.count("seen", seen);
    run.count("written", ok);
    run.count("rejected", rejected);
    run.count("classes", names.len() as u64);
    if !listing.empty_classes.is_empty() {
        run.count("empty_classes", listing.empty_classes.join(","));
    }
    if params.num_shards > 1 {
        run.count(
            "slice",
            format!("{} of {}", params.shard_index, params.num_shards),
        );
    }
    if resumed > 0 {
        progress::note(format!(
            "prepare: resumed: kept {resumed} finished shard(s) of an interrupted run"
        ));
    }
    Ok(())
}

/// The parameters of a slice's manifest without the slice keys.
fn without_slice(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("shard-index");
        o.remove("num-shards");
    }
    v
}

fn merge_body(run: &mut StageRun, slices: &[PathBuf]) -> Result<()> {
    let want = without_slice(&run.params);
    let n = slices.len();
    let mut seen_index = vec![false; n];
    let mut outputs: Vec<(usize, String, PathBuf, Option<u64>, String)> = Vec::new();
    let (mut seen, mut ok, mut rejected) = (0u64, 0u64, 0u64);
    let mut classes = 0u64;
    let mut kept = std::collections::BTreeMap::new();
    for dir in slices {
        let m = Manifest::read_complete(dir, NAME)?;
        if m.stage != NAME {
            return Err(Error::file(
                dir,
                format!("is a `{}` stage, not `prepare`", m.stage),
            ));
        }
        if without_slice(&m.params) != want {
            return Err(Error::file(
                dir,
                "was prepared with other parameters than these; merge slices of one command only",
            ));
        }
        if m.input_fingerprint != run.input_fingerprint {
            return Err(Error::file(
                dir,
                "was prepared from a different input (names, sizes or times differ)",
            ));
        }
        let idx = m.params["shard-index"].as_u64().unwrap_or(0) as usize;
        let of = m.params["num-shards"].as_u64().unwrap_or(1) as usize;
        if of != n || idx >= n || seen_index[idx] {
            return Err(Error::file(
                dir,
                format!("is slice {idx} of {of}; give each of the {n} slices exactly once"),
            ));
        }
        seen_index[idx] = true;
        seen += m.count("seen");
        ok += m.count("written");
        rejected += m.count("rejected");
        classes = m.count("classes");
        for key in ["input_kind", "empty_classes"] {
            if let Some(v) = m.counts.get(key) {
                kept.insert(key, v.clone());
            }
        }
        for o in &m.outputs {
            let k: usize = o
                .path
                .rsplit('-')
                .next()
                .and_then(|s| s.trim_end_matches(".arrow").parse().ok())
                .ok_or_else(|| Error::file(dir.join(&o.path), "unexpected output name"))?;
            outputs.push((
                k,
                o.path.clone(),
                dir.join(&o.path),
                o.rows,
                o.checksum.clone(),
            ));
        }
    }
    // The single run's order: by chunk, images before rejects.
    outputs.sort_by_key(|a| (a.0, !a.1.starts_with("images")));
    for (_, rel, src, rows, checksum) in outputs {
        let dst = run.dir.join(&rel);
        let tmp = crate::fsutil::temp_path(&dst);
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp).at(&src)?;
        }
        std::fs::rename(&tmp, &dst).at(&dst)?;
        run.add_output(&rel, rows)?;
        let got = crate::fsutil::checksum_file(&dst)?;
        if got != checksum {
            return Err(Error::file(
                &src,
                "changed since its slice finished (checksum differs); re-run that slice",
            ));
        }
    }
    for (k, v) in kept {
        run.count(k, v);
    }
    run.count("seen", seen);
    run.count("written", ok);
    run.count("rejected", rejected);
    run.count("classes", classes);
    run.count("merged_slices", n as u64);
    Ok(())
}
