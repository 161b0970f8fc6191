//! Stage `shard`: joins `images/` with labels into shuffled training shards
//! `train/train-00000.arrow`, ... (id, image, label, label_source; `label`
//! null = unlabelled), loadable by `datasets` as Image + ClassLabel.
//!
//! Labels come from `pseudo_labels/` (every image), from `labels/` (the
//! labelled subset; the rest unlabelled, for co-training) or from the
//! images' own labels (the fully supervised baseline).
//!
//! With `--duplicates DIR` (a finished `duplicates` stage of these images),
//! the duplicates `--drop-duplicates` names are left out: every row that
//! duplicates a reference image, and of each group of duplicates inside
//! the table all but one (see [`drops`]). They go to `rejects-*.arrow`
//! (schema [`schema::shard_rejects`]) with the reason; seen = images +
//! dropped, always.
//!
//! The shuffle is a seeded permutation of the image ids. Memory stays
//! bounded by writing in two passes: the images are scattered into at most
//! 64 scratch buckets by their output position, then each bucket is sorted
//! and cut into final shards. A re-run of an interrupted attempt keeps the
//! final shards it finished and only rebuilds the rest.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ResultExt};
use crate::manifest::Manifest;
use crate::progress;
use crate::shard::stored::StoredImage;
use crate::shard::{schema, shard_schema, ShardFile, TableReader, TableWriter};
use crate::stage::{StageName, StageRun};
use crate::stages::duplicates::{read_pairs, DuplicateRow};
use crate::stages::{at_least, tables, Exec, ParamError, RunDirs, Slot, Stage, IMAGES};

const NAME: StageName = StageName::Shard;
const MAX_BUCKETS: usize = 64;
const SCRATCH: &str = "_scratch";

/// Where the training labels come from.
#[derive(Debug, Clone, Copy)]
pub enum LabelSource<'a> {
    /// `pseudo_labels/` from `pseudo-label`.
    PseudoLabels(&'a Path),
    /// `labels/` from `sample-labels`: the labelled subset, the rest unlabelled (co-training).
    Labels(&'a Path),
    /// The true labels of `images/` (the fully supervised baseline).
    TrueLabels,
}

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// Seed of the shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows per training shard file.
    #[arg(long, default_value_t = 10_000)]
    pub rows_per_shard: usize,
    /// With --duplicates: which duplicates to leave out of the shards (into
    /// `rejects`). Without --duplicates nothing is dropped.
    #[arg(long, value_enum, default_value_t = DropDuplicates::All)]
    pub drop_duplicates: DropDuplicates,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 0,
            rows_per_shard: 10_000,
            drop_duplicates: DropDuplicates::All,
        }
    }
}

/// Which rows of a `duplicates` table `shard` leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DropDuplicates {
    /// Both of the below.
    All,
    /// Of each group of duplicates inside the images table, all rows but one.
    Within,
    /// Every row that duplicates a reference image (the FID set).
    Reference,
    /// None: the table is only a report.
    None,
}

impl DropDuplicates {
    fn within(self) -> bool {
        matches!(self, DropDuplicates::All | DropDuplicates::Within)
    }
    fn reference(self) -> bool {
        matches!(self, DropDuplicates::All | DropDuplicates::Reference)
    }
}

/// `fewlabels shard`.
pub struct Shard;

pub const PSEUDO_LABELS: Slot = Slot {
    conflicts_with: Some("labels"),
    ..Slot::optional(
        "pseudo-labels",
        StageName::PseudoLabel,
        "Labels from `pseudo-label`.",
    )
};
pub const SUBSET: Slot = Slot::optional(
    "labels",
    StageName::SampleLabels,
    "The labelled subset from `sample-labels` (the rest unlabelled).",
);
pub const DUPLICATES: Slot = Slot::optional(
    "duplicates",
    StageName::Duplicates,
    "A `duplicates` folder of these images: the duplicates --drop-duplicates names are left out, into rejects.",
);

impl Stage for Shard {
    const NAME: StageName = StageName::Shard;
    const ABOUT: &'static str = "Join images and labels into shuffled training shards.";
    const OUTPUT: &'static str = "Where `train/` goes.";
    const SLOTS: &'static [Slot] = &[IMAGES, PSEUDO_LABELS, SUBSET, DUPLICATES];
    const RUNS_NETWORKS: bool = false;
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        at_least("rows-per-shard", p.rows_per_shard as u64, 1)
    }

    fn run(dirs: &RunDirs, params: &Params, _: &Exec, run: &mut StageRun) -> Result<()> {
        body(
            dirs.need(&IMAGES)?,
            label_source(dirs),
            dirs.get(&DUPLICATES),
            params,
            run,
        )
    }
}

/// The label source the folders given select.
pub fn label_source(dirs: &RunDirs) -> LabelSource<'_> {
    match (dirs.get(&PSEUDO_LABELS), dirs.get(&SUBSET)) {
        (Some(p), _) => LabelSource::PseudoLabels(p),
        (None, Some(l)) => LabelSource::Labels(l),
        (None, None) => LabelSource::TrueLabels,
    }
}

/// The label of each image id, its source, and the class names.
struct Join {
    labels: HashMap<u64, (Option<i64>, &'static str)>,
    names: Vec<String>,
    /// Label source for images the map does not mention.
    default_source: &'static str,
}

fn label_join(images: &Path, im: &Manifest, source: LabelSource<'_>, ids: &[u64]) -> Result<Join> {
    let known: std::collections::HashSet<u64> = ids.iter().copied().collect();
    let check = |id: u64, dir: &Path| -> Result<()> {
        if known.contains(&id) {
            Ok(())
        } else {
            Err(Error::file(
                dir,
                format!(
                    "labels image {id}, which is not in {}; re-run it on these images",
                    images.display()
                ),
            ))
        }
    };
    match source {
        LabelSource::TrueLabels => {
            let t = tables::read_id_labels(images, im, "images")?;
            let labels = t
                .ids
                .iter()
                .zip(&t.labels)
                .map(|(&id, l)| (id, (*l, if l.is_some() { "true" } else { "unlabelled" })))
                .collect();
            Ok(Join {
                labels,
                names: tables::class_names(images, im, "images")?,
                default_source: "unlabelled",
            })
        }
        LabelSource::PseudoLabels(dir) => {
            let m = Manifest::read_complete(dir, StageName::PseudoLabel)?;
            let names = tables::class_names(dir, &m, "pseudo_labels")?;
            let mut labels = HashMap::new();
            for batch in TableReader::from_manifest(
                dir,
                &m,
                "pseudo_labels",
                Some(&["id", "label", "source"]),
            ) {
                let batch = batch?;
                let id = tables::u64_column(&batch, "id", dir)?;
                let label = tables::i64_column(&batch, "label", dir)?;
                let src = tables::str_column(&batch, "source", dir)?;
                for i in 0..batch.num_rows() {
                    check(id.value(i), dir)?;
                    let s = match src.value(i) {
                        "given" => "given",
                        "cluster" => "cluster",
                        "predicted" => "predicted",
                        other => {
                            return Err(Error::file(
                                dir,
                                format!("unknown label source `{other}`; re-run `pseudo-label`"),
                            ))
                        }
                    };
                    labels.insert(id.value(i), (Some(label.value(i)), s));
                }
            }
            Ok(Join {
                labels,
                names,
                default_source: "unlabelled",
            })
        }
        LabelSource::Labels(dir) => {
            let m = Manifest::read_complete(dir, StageName::SampleLabels)?;
            let names = tables::class_names(dir, &m, "labels")?;
            let mut labels = HashMap::new();
            for batch in
                TableReader::from_manifest(dir, &m, "labels", Some(&["id", "label", "split"]))
            {
                let batch = batch?;
                let id = tables::u64_column(&batch, "id", dir)?;
                let label = tables::i64_column(&batch, "label", dir)?;
                let split = tables::str_column(&batch, "split", dir)?;
                for i in 0..batch.num_rows() {
                    check(id.value(i), dir)?;
                    // Held-out labels are for validation: unlabelled in training.
                    if split.value(i) == "train" {
                        labels.insert(id.value(i), (Some(label.value(i)), "given"));
                    }
                }
            }
            Ok(Join {
                labels,
                names,
                default_source: "unlabelled",
            })
        }
    }
}

/// Scratch rows: output position, id and image.
fn scratch_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pos", DataType::UInt64, false),
        Field::new("id", DataType::UInt64, false),
        Field::new("image", schema::image_type(), false),
    ]))
}

/// Why a row is left out, and whether for the reference.
struct Dropped {
    reference: bool,
    reason: String,
}

/// The rows to leave out, by id, from the pairs of a `duplicates` table
/// (sorted by id, as it is written):
/// - `reference`: every row with a pair in the reference, named by its
///   closest reference row;
/// - `within`: greedily in id order, a row is kept unless it duplicates a
///   row already kept. So the kept rows hold no two duplicates of each
///   other, and every dropped row names a row it duplicates. A row sharing
///   its pHash with an earlier row (a distance-0 pair: the table pairs
///   such copies with their group's first row only) is always dropped:
///   its group keeps that first row, or nothing when that row went for
///   duplicating a kept one (then so does this copy, at the same distance).
fn drops(pairs: &[DuplicateRow], policy: DropDuplicates) -> BTreeMap<u64, Dropped> {
    let mut out: BTreeMap<u64, Dropped> = BTreeMap::new();
    let closest = |rows: &[&DuplicateRow]| -> Option<DuplicateRow> {
        rows.iter()
            .min_by_key(|r| (r.distance, r.other_id))
            .map(|r| (*r).clone())
    };
    let describe = |r: &DuplicateRow, table: &str| {
        let what = if r.exact {
            "exact duplicate"
        } else {
            "near-duplicate"
        };
        format!(
            "{what} of {table}row {} (distance {})",
            r.other_id, r.distance
        )
    };
    let by_id = |reference: bool| -> Vec<Vec<&DuplicateRow>> {
        let rows: Vec<&DuplicateRow> = pairs.iter().filter(|r| r.reference == reference).collect();
        rows.chunk_by(|a, b| a.id == b.id)
            .map(|c| c.to_vec())
            .collect()
    };
    if policy.reference() {
        for rows in by_id(true) {
            if let Some(r) = closest(&rows) {
                let reason = describe(&r, "reference ");
                out.insert(
                    r.id,
                    Dropped {
                        reference: true,
                        reason,
                    },
                );
            }
        }
    }
    if policy.within() {
        for rows in by_id(false) {
            let id = rows[0].id;
            if out.contains_key(&id) {
                continue;
            }
            let against: Vec<&DuplicateRow> = rows
                .into_iter()
                .filter(|r| r.distance == 0 || !out.contains_key(&r.other_id))
                .collect();
            if let Some(r) = closest(&against) {
                let reason = describe(&r, "");
                out.insert(
                    id,
                    Dropped {
                        reference: false,
                        reason,
                    },
                );
            }
        }
    }
    out
}

/// Writes `train/rejects-00000.arrow`: the dropped rows with their images
/// path and reason, by id.
fn write_rejects(
    images: &Path,
    im: &Manifest,
    dropped: &BTreeMap<u64, Dropped>,
    run: &mut StageRun,
) -> Result<()> {
    let mut paths: HashMap<u64, String> = HashMap::new();
    for batch in TableReader::from_manifest(images, im, "images", Some(&["id", "path"])) {
        let batch = batch?;
        let id = tables::u64_column(&batch, "id", images)?;
        let path = tables::str_column(&batch, "path", images)?;
        for i in 0..batch.num_rows() {
            if dropped.contains_key(&id.value(i)) {
                paths.insert(id.value(i), path.value(i).to_string());
            }
        }
    }
    let ids: Vec<u64> = dropped.keys().copied().collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(ids.clone())),
        Arc::new(StringArray::from_iter_values(
            ids.iter()
                .map(|id| paths.get(id).map(String::as_str).unwrap_or("")),
        )),
        Arc::new(StringArray::from_iter_values(
            dropped.values().map(|d| d.reason.as_str()),
        )),
    ];
    let schema = schema::shard_rejects();
    let batch = RecordBatch::try_new(schema.clone(), cols).at(&run.dir)?;
    let name = TableWriter::shard_name("rejects", 0);
    let mut f = ShardFile::create(run.dir.join(&name), &schema)?;
    f.write(&batch)?;
    let rows = f.finish()?;
    run.add_output(name, Some(rows))
}

fn body(
    images: &Path,
    source: LabelSource<'_>,
    duplicates: Option<&Path>,
    params: &Params,
    run: &mut StageRun,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let im = Manifest::read_complete(images, StageName::Prepare)?;
    let mut ids = tables::read_ids(images, &im, "images")?;
    let join = label_join(images, &im, source, &ids)?;
    let dropped = match duplicates {
        Some(dir) => drops(
            &read_pairs(dir, Some((images, &im)))?.1,
            params.drop_duplicates,
        ),
        None => BTreeMap::new(),
    };
    // The permutation: sorted ids shuffled by the seed.
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::file(
            images,
            "image ids are not unique; re-run `prepare`",
        ));
    }
    let seen = ids.len() as u64;
    let mut order = ids;
    order.retain(|id| !dropped.contains_key(id));
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(params.seed));
    let n = order.len();
    let pos: HashMap<u64, u64> = order
        .iter()
        .enumerate()
        .map(|(p, &id)| (id, p as u64))
        .collect();
    let rps = params.rows_per_shard;
    let n_shards = n.div_ceil(rps).max(1);
    let per_bucket = n_shards.div_ceil(MAX_BUCKETS);
    let n_buckets = n_shards.div_ceil(per_bucket);
    let shard_name = |s: usize| TableWriter::shard_name("train", s);
    let done: Vec<bool> = (0..n_shards)
        .map(|s| run.resuming && run.dir.join(shard_name(s)).exists())
        .collect();
    run.phase("plan", t0.elapsed().as_secs_f64());
    // The images' stored format travels with them.
    let out_schema = match tables::first_file(images, &im, "images") {
        Some(f) => match StoredImage::from_schema(shard_schema(&f)?.as_ref()) {
            Some(stored) => stored.attach(&schema::train(&join.names)),
            None => schema::train(&join.names),
        },
        None => schema::train(&join.names),
    };
    let n_names = join.names.len() as i64;

    if n == 0 {
        // Still one (empty) file, so readers find the schema.
        let w = TableWriter::new(&run.dir, "train", out_schema, rps);
        for (f, r) in w.finish()? {
            run.add_output(f, Some(r))?;
        }
        run.count("images", 0u64);
        run.count("labelled", 0u64);
        run.count("unlabelled", 0u64);
        drop_counts(images, &im, seen, &dropped, run)?;
        return Ok(());
    }

    // Pass 1: scatter into buckets by output position.
    let t1 = std::time::Instant::now();
    let scratch = run.dir.join(SCRATCH);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).at(&scratch)?;
    }
    fs::create_dir_all(&scratch).at(&scratch)?;
    let sschema = scratch_schema();
    let bucket_path = |b: usize| scratch.join(format!("bucket-{b:05}.arrow"));
    let mut buckets: Vec<Option<ShardFile>> = (0..n_buckets).map(|_| None).collect();
    let bar = progress::bar(n as u64, "images");
    bar.set_prefix(NAME.as_str());
    for batch in TableReader::from_manifest(images, &im, "images", Some(&["id", "image"])) {
        let batch = batch?;
        let idc = tables::u64_column(&batch, "id", images)?;
        let img = batch
            .column_by_name("image")
            .ok_or_else(|| Error::file(images, "has no `image` column"))?;
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); n_buckets];
        let mut ps: Vec<Vec<u64>> = vec![Vec::new(); n_buckets];
        for i in 0..batch.num_rows() {
            let Some(&p) = pos.get(&idc.value(i)) else {
                continue; // a dropped duplicate
            };
            let s = p as usize / rps;
            if done[s] {
                continue;
            }
            let b = s / per_bucket;
            per[b].push(i as u32);
            ps[b].push(p);
        }
        for b in 0..n_buckets {
            if per[b].is_empty() {
                continue;
            }
            let idx = UInt32Array::from(std::mem::take(&mut per[b]));
            let cols: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(std::mem::take(&mut ps[b]))),
                take(idc, &idx, None).at(images)?,
                take(img.as_ref(), &idx, None).at(images)?,
            ];
            let rb = RecordBatch::try_new(sschema.clone(), cols).at(&scratch)?;
            if buckets[b].is_none() {
                buckets[b] = Some(ShardFile::create(bucket_path(b), &sschema)?);
            }
            if let Some(f) = buckets[b].as_mut() {
                f.write(&rb)?;
            }
        }
        bar.inc(batch.num_rows() as u64);
    }
    bar.finish_and_clear();
    for f in buckets.iter_mut() {
        if let Some(f) = f.take() {
            f.finish()?;
        }
    }
    run.phase("scatter", t1.elapsed().as_secs_f64());

    // Pass 2: each bucket sorted by position and cut into final shards.
    let t2 = std::time::Instant::now();
    for b in 0..n_buckets {
        let path = bucket_path(b);
        if !path.exists() {
            continue;
        }
        let batches: Vec<RecordBatch> =
            TableReader::new(vec![path.clone()], None).collect::<Result<_>>()?;
        let all = concat_batches(&sschema, &batches).at(&path)?;
        drop(batches);
        let p = tables::u64_column(&all, "pos", &path)?;
        let mut idx: Vec<u32> = (0..all.num_rows() as u32).collect();
        idx.sort_unstable_by_key(|&i| p.value(i as usize));
        let sorted_pos: Vec<u64> = idx.iter().map(|&i| p.value(i as usize)).collect();
        let mut start = 0;
        while start < idx.len() {
            let s = sorted_pos[start] as usize / rps;
            let mut end = start;
            while end < idx.len() && sorted_pos[end] as usize / rps == s {
                end += 1;
            }
            let sel = UInt32Array::from(idx[start..end].to_vec());
            let id_col = take(all.column(1).as_ref(), &sel, None).at(&path)?;
            let image_col = take(all.column(2).as_ref(), &sel, None).at(&path)?;
            let idv = id_col
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| Error::file(&path, "scratch `id` is not u64"))?;
            let mut labels = Vec::with_capacity(end - start);
            let mut sources = Vec::with_capacity(end - start);
            for i in 0..idv.len() {
                let (l, src) = join
                    .labels
                    .get(&idv.value(i))
                    .copied()
                    .unwrap_or((None, join.default_source));
                if let Some(l) = l {
                    if l < 0 || l >= n_names {
                        return Err(Error::invalid(format!(
                            "image {}: label {l} is outside the {n_names} class names of its labels table",
                            idv.value(i)
                        )));
                    }
                }
                labels.push(l);
                sources.push(src);
            }
            let cols: Vec<ArrayRef> = vec![
                id_col,
                image_col,
                Arc::new(Int64Array::from(labels)),
                Arc::new(StringArray::from(sources)),
            ];
            let rb = RecordBatch::try_new(out_schema.clone(), cols).at(&run.dir)?;
            let mut f = ShardFile::create(run.dir.join(shard_name(s)), &out_schema)?;
            f.write(&rb)?;
            f.finish()?;
            start = end;
        }
        fs::remove_file(&path).at(&path)?;
    }
    fs::remove_dir_all(&scratch).at(&scratch)?;
    run.phase("write", t2.elapsed().as_secs_f64());

    // Every shard is now on disk; record them in order with their rows.
    let mut by_source: std::collections::BTreeMap<&str, u64> = Default::default();
    for id in &order {
        let src = join
            .labels
            .get(id)
            .map(|x| x.1)
            .unwrap_or(join.default_source);
        *by_source.entry(src).or_default() += 1;
    }
    for s in 0..n_shards {
        let rows = rps.min(n - s * rps) as u64;
        run.add_output(shard_name(s), Some(rows))?;
    }
    let labelled: u64 = order
        .iter()
        .filter(|id| join.labels.get(id).is_some_and(|x| x.0.is_some()))
        .count() as u64;
    run.count("images", n as u64);
    run.count("labelled", labelled);
    run.count("unlabelled", n as u64 - labelled);
    for (src, c) in by_source {
        run.count(&format!("source_{src}"), c);
    }
    run.count("shards", n_shards as u64);
    run.count("classes", join.names.len() as u64);
    run.count("resumed_shards", done.iter().filter(|d| **d).count() as u64);
    drop_counts(images, &im, seen, &dropped, run)
}

/// The rejects table (when anything was dropped) and the counts that
/// account for every images row: seen = images + dropped.
fn drop_counts(
    images: &Path,
    im: &Manifest,
    seen: u64,
    dropped: &BTreeMap<u64, Dropped>,
    run: &mut StageRun,
) -> Result<()> {
    if !dropped.is_empty() {
        write_rejects(images, im, dropped, run)?;
    }
    let reference = dropped.values().filter(|d| d.reference).count() as u64;
    run.count("seen", seen);
    run.count("dropped", dropped.len() as u64);
    run.count("dropped_reference", reference);
    run.count("dropped_within", dropped.len() as u64 - reference);
    Ok(())
}
