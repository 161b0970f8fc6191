//! Stage `duplicates`: the exact and near duplicates among the prepared
//! images (`images/`), and between them and a reference table (the images
//! FID is measured against, e.g. ILSVRC2012 val prepared into `reference/`).
//! ImageNet's train set holds near-copies of its own images and of val
//! images; a FID against val is flattered by that overlap.
//!
//! Each image is decoded from its table and hashed ([`crate::dedup`]:
//! imagehash's pHash and a key of its pixels); the hashes (32 bytes an
//! image: ~45 MB for ImageNet's 1.33M train + val) stay in memory, the
//! images never do beyond one table batch. Pairs at Hamming distance <=
//! `--max-distance` are found by multi-index hashing, never all pairs, and
//! written to `duplicates-*.arrow` (schema [`schema::duplicates`]) sorted
//! by (id, other table, other id): the same bytes whatever the number of
//! threads. `shard --duplicates DIR` drops them from the training shards,
//! with the reason, into `train/rejects`.
//!
//! In a pipeline the stage runs after `prepare` when the file has a
//! `[duplicates]` table; its reference is `[evaluate] reference` when that
//! is given (prepared into `reference/` first), else there is none (the
//! run's own `images/` would match itself).
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array, UInt8Array};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dedup::{self, Entry, Pair, Side};
use crate::error::{Error, Result, ResultExt};
use crate::manifest::Manifest;
use crate::progress;
use crate::shard::stored;
use crate::shard::{image_bytes, schema, TableReader, TableWriter};
use crate::stage::{StageName, StageRun};
use crate::stages::{tables, Exec, ParamError, RunDirs, Slot, Stage, IMAGES};

/// Pairs per `duplicates-*.arrow` file.
const ROWS_PER_SHARD: usize = 100_000;
/// The largest `--max-distance`: a quarter of the 64 bits. Unrelated photos
/// are ~32 apart and the closest of the 20 foolbox ImageNet photos 18; and
/// the search slows as the bands narrow (17 bands of ~4 bits).
pub const MAX_DISTANCE: u32 = 16;

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// Near duplicates: pHashes at most this many bits apart (of 64). Re-encoded
    /// or resized copies are 0-2 apart, a crop of a few percent 2-8. Each
    /// bit more roughly squares the false matches a large set gets by chance.
    #[arg(long, default_value_t = 4)]
    pub max_distance: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params { max_distance: 4 }
    }
}

/// `fewlabels duplicates`.
pub struct Duplicates;

/// The table the images are compared with.
pub const REFERENCE: Slot = Slot {
    in_pipeline: false,
    ..Slot::optional(
        "reference",
        StageName::Prepare,
        "A second images table to find the images' copies in: a finished `prepare` folder (the evaluation reference). In a pipeline: [evaluate] reference.",
    )
};

impl Stage for Duplicates {
    const NAME: StageName = StageName::Duplicates;
    const ABOUT: &'static str =
        "Find exact and near-duplicate images (pHash), within images/ and against a reference.";
    const OUTPUT: &'static str = "Where the duplicates table goes (`duplicates/` of a run).";
    const SLOTS: &'static [Slot] = &[IMAGES, REFERENCE];
    const RUNS_NETWORKS: bool = false;
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        if p.max_distance > MAX_DISTANCE {
            return Err(ParamError::new(
                "max-distance",
                format!(
                    "must be between 0 and {MAX_DISTANCE} (bits of 64; unrelated photos are ~32 apart)"
                ),
            ));
        }
        Ok(())
    }

    fn check(dirs: &RunDirs, _: &Params) -> Result<()> {
        let (Some(images), Some(reference)) = (dirs.get(&IMAGES), dirs.get(&REFERENCE)) else {
            return Ok(());
        };
        let same = match (
            std::fs::canonicalize(images),
            std::fs::canonicalize(reference),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(Error::usage(format!(
                "--reference {} is the --images folder: every image would be its own duplicate; give another table, or no --reference",
                reference.display()
            )));
        }
        Ok(())
    }

    fn run(dirs: &RunDirs, params: &Params, _: &Exec, run: &mut StageRun) -> Result<()> {
        body(
            dirs.need(&IMAGES)?,
            dirs.get(&REFERENCE),
            params.max_distance,
            run,
        )
    }
}

/// The hashes of every row of the images table of the finished `prepare` at
/// `dir`, in table order. Rows are decoded a table batch at a time, in
/// parallel, and collected in order.
pub fn hash_table(dir: &Path, what: &str) -> Result<(Manifest, Vec<Entry>)> {
    let m = Manifest::read_complete(dir, StageName::Prepare)?;
    let total = tables::table_rows(&m, "images");
    let format = tables::stored_image(dir, &m, "images")?;
    let bar = progress::bar(total, what);
    bar.set_prefix(StageName::Duplicates.as_str());
    let mut entries = Vec::with_capacity(total as usize);
    for batch in TableReader::from_manifest(dir, &m, "images", Some(&["id", "image"])) {
        let batch = batch?;
        let ids = tables::u64_column(&batch, "id", dir)?;
        let col = tables::image_column(&batch, dir)?;
        let hashed: Vec<Entry> = (0..batch.num_rows())
            .into_par_iter()
            .map(|i| {
                let id = ids.value(i);
                let img = image_bytes(col.as_ref(), i)
                    .and_then(|b| stored::decode_square(b, format.as_ref()).map_err(Error::invalid))
                    .map_err(|e| {
                        Error::file(dir, format!("image id {id}: {e}; re-run `prepare`"))
                    })?;
                Ok(Entry::of(id, &img))
            })
            .collect::<Result<_>>()?;
        bar.inc(hashed.len() as u64);
        entries.extend(hashed);
    }
    bar.finish_and_clear();
    Ok((m, entries))
}

fn body(images: &Path, reference: Option<&Path>, t: u32, run: &mut StageRun) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (im, entries) = hash_table(images, "images")?;
    let refs = match reference {
        Some(dir) => Some((dir, hash_table(dir, "reference images")?.1)),
        None => None,
    };
    run.phase("hash", t0.elapsed().as_secs_f64());

    let t1 = std::time::Instant::now();
    let mut pairs = dedup::within(&entries, t);
    if let Some((_, r)) = &refs {
        pairs.extend(dedup::across(&entries, r, t));
        pairs.sort_unstable();
    }
    run.phase("search", t1.elapsed().as_secs_f64());

    let t2 = std::time::Instant::now();
    let schema = schema::duplicates();
    let mut w = TableWriter::new(&run.dir, "duplicates", schema.clone(), ROWS_PER_SHARD);
    for chunk in pairs.chunks(ROWS_PER_SHARD) {
        w.write(&pairs_batch(chunk, &schema).at(&run.dir)?)?;
    }
    for (file, n) in w.finish()? {
        run.add_output(file, Some(n))?;
    }
    run.phase("write", t2.elapsed().as_secs_f64());

    let count = |side: Side, exact: bool| {
        pairs
            .iter()
            .filter(|p| p.side == side && p.exact == exact)
            .count() as u64
    };
    let rows = |side: Side| {
        pairs
            .iter()
            .filter(|p| p.side == side)
            .map(|p| p.id)
            .collect::<BTreeSet<u64>>()
            .len() as u64
    };
    let (we, wn) = (count(Side::Within, true), count(Side::Within, false));
    let (re, rn) = (count(Side::Reference, true), count(Side::Reference, false));
    run.count("images", entries.len() as u64);
    run.count("max_distance", t as u64);
    run.count("within_exact", we);
    run.count("within_near", wn);
    run.count("within_pairs", we + wn);
    run.count("rows_with_earlier_duplicate", rows(Side::Within));
    run.count("reference_exact", re);
    run.count("reference_near", rn);
    run.count("reference_pairs", re + rn);
    run.count("rows_duplicating_reference", rows(Side::Reference));
    if let Some((dir, r)) = &refs {
        run.count("reference_images", r.len() as u64);
        // For the report's pictures; the fingerprint ties the result to its inputs.
        let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        run.count("reference", abs.to_string_lossy().into_owned());
    } else {
        run.count("reference_images", 0u64);
    }
    // What `shard --duplicates` checks: these pairs are of its images.
    run.count("images_fingerprint", im.output_fingerprint());
    Ok(())
}

fn pairs_batch(
    pairs: &[Pair],
    schema: &arrow::datatypes::SchemaRef,
) -> arrow::error::Result<RecordBatch> {
    let table = |p: &Pair| match p.side {
        Side::Within => "images",
        Side::Reference => "reference",
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(pairs.iter().map(|p| p.id))),
        Arc::new(StringArray::from_iter_values(pairs.iter().map(table))),
        Arc::new(UInt64Array::from_iter_values(
            pairs.iter().map(|p| p.other_id),
        )),
        Arc::new(UInt8Array::from_iter_values(
            pairs.iter().map(|p| p.distance as u8),
        )),
        Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| {
            if p.exact {
                "exact"
            } else {
                "near"
            }
        }))),
    ];
    RecordBatch::try_new(schema.clone(), cols)
}

/// One row of a finished `duplicates` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRow {
    pub id: u64,
    /// True when the other row is in the reference, false for an earlier images row.
    pub reference: bool,
    pub other_id: u64,
    pub distance: u32,
    pub exact: bool,
}

/// Reads the duplicates table of the finished stage at `dir`, which must
/// have been computed from the images whose `prepare` manifest is `images`.
pub fn read_pairs(
    dir: &Path,
    images: Option<(&Path, &Manifest)>,
) -> Result<(Manifest, Vec<DuplicateRow>)> {
    let m = Manifest::read_complete(dir, StageName::Duplicates)?;
    if let Some((images_dir, im)) = images {
        let recorded = m.counts.get("images_fingerprint").and_then(|v| v.as_str());
        if recorded != Some(im.output_fingerprint().as_str()) {
            return Err(Error::file(
                dir,
                format!(
                    "holds the duplicates of other images than {}; re-run `fewlabels duplicates --images {}`",
                    images_dir.display(),
                    images_dir.display()
                ),
            ));
        }
    }
    let mut rows = Vec::new();
    for batch in TableReader::from_manifest(
        dir,
        &m,
        "duplicates",
        Some(&["id", "other_table", "other_id", "distance", "kind"]),
    ) {
        let batch = batch?;
        let id = tables::u64_column(&batch, "id", dir)?;
        let table = tables::str_column(&batch, "other_table", dir)?;
        let other = tables::u64_column(&batch, "other_id", dir)?;
        let distance = tables::column::<UInt8Array>(&batch, "distance", dir)?;
        let kind = tables::str_column(&batch, "kind", dir)?;
        for i in 0..batch.num_rows() {
            let reference = match table.value(i) {
                "images" => false,
                "reference" => true,
                other => {
                    return Err(Error::file(
                        dir,
                        format!("unknown other_table `{other}`; re-run `duplicates`"),
                    ))
                }
            };
            rows.push(DuplicateRow {
                id: id.value(i),
                reference,
                other_id: other.value(i),
                distance: distance.value(i) as u32,
                exact: kind.value(i) == "exact",
            });
        }
    }
    Ok((m, rows))
}
