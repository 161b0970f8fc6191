//! Stage `sample-labels`: keeps `--fraction` of the labels of each class
//! (the paper's 2.5/5/10/20%: k% of the images of EACH class, drawn at
//! random; docs/method.md "Data"), optionally plus a disjoint `--holdout`
//! slice for validation, or takes the user's own labelled subset
//! (`--from LIST`). Writes `labels/`: (id, label, split) sorted by id, and a
//! per-class count table `class_counts.csv` (written with polars).
//!
//! Rounding: each class keeps `round(fraction x images)` labels (halves
//! round up), at least one; the holdout likewise (at least one when
//! `--holdout` > 0). The draw for each class uses its own ChaCha stream of
//! `--seed`, so one class's draw does not depend on the others.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::AtomicFile;
use crate::manifest::Manifest;
use crate::progress;
use crate::shard::{schema, TableReader, TableWriter};
use crate::stage::{Input, StageName, StageRun};
use crate::stages::{tables, Exec, ParamError, RunDirs, Slot, Stage, IMAGES};

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// Fraction of each class's images whose label is kept, in (0, 1].
    #[arg(long, default_value_t = 0.1)]
    pub fraction: f64,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of each class held out for validation, disjoint from the kept labels, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub holdout: f64,
    /// Take the labelled subset from this CSV or Parquet list (columns `id`
    /// or `path`, and `label` as class index or name) instead of drawing it;
    /// a `path` may be relative to the folder `prepare` read.
    #[arg(long = "from")]
    pub from: Option<PathBuf>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            fraction: 0.1,
            seed: 0,
            holdout: 0.0,
            from: None,
        }
    }
}

/// `fewlabels sample-labels`.
pub struct SampleLabels;

impl Stage for SampleLabels {
    const NAME: StageName = StageName::SampleLabels;
    const ABOUT: &'static str = "Keep a fraction of the labels of each class.";
    const OUTPUT: &'static str = "Where `labels/` goes.";
    const SLOTS: &'static [Slot] = &[IMAGES];
    const RUNS_NETWORKS: bool = false;
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        if !(p.fraction > 0.0 && p.fraction <= 1.0) {
            return Err(ParamError::new(
                "fraction",
                "must be in (0, 1], e.g. 0.1 for 10% of each class",
            ));
        }
        if !(0.0..1.0).contains(&p.holdout) {
            return Err(ParamError::new("holdout", "must be in [0, 1)"));
        }
        if p.from.is_none() && p.fraction + p.holdout > 1.0 + 1e-12 {
            return Err(ParamError::new(
                "holdout",
                format!("fraction {} + holdout {} exceed 1", p.fraction, p.holdout),
            ));
        }
        Ok(())
    }

    /// The images table and, with `from`, the user's list.
    fn inputs(dirs: &RunDirs, params: &Params) -> Vec<Input> {
        let mut ins = dirs.stage_inputs(Self::SLOTS);
        if let Some(list) = &params.from {
            ins.push(Input::Path(list.clone()));
        }
        ins
    }

    fn run(dirs: &RunDirs, params: &Params, _: &Exec, run: &mut StageRun) -> Result<()> {
        body(dirs.need(&IMAGES)?, params, run)
    }
}

/// Labels kept per class for a fraction: nearest integer (halves up), at least one.
pub fn kept_per_class(fraction: f64, images: usize) -> usize {
    if fraction <= 0.0 || images == 0 {
        return 0;
    }
    ((fraction * images as f64 + 0.5).floor() as usize).clamp(1, images)
}

fn body(images: &Path, params: &Params, run: &mut StageRun) -> Result<()> {
    let t0 = std::time::Instant::now();
    let m = Manifest::read_complete(images, StageName::Prepare)?;
    let names = tables::class_names(images, &m, "images")?;
    let table = tables::read_id_labels(images, &m, "images")?;
    let n_classes = names.len();
    // Images of each class, in id order.
    let mut by_class: Vec<Vec<u64>> = vec![Vec::new(); n_classes];
    let mut unlabelled = 0u64;
    for (&id, label) in table.ids.iter().zip(&table.labels) {
        match *label {
            None => unlabelled += 1,
            Some(l) if l >= 0 && (l as usize) < n_classes => by_class[l as usize].push(id),
            Some(l) => {
                return Err(Error::file(
                    images,
                    format!(
                        "image {id} has label {l} but the table names {n_classes} classes; re-run `prepare`"
                    ),
                ))
            }
        }
    }
    for c in &mut by_class {
        c.sort_unstable();
    }
    run.phase("read", t0.elapsed().as_secs_f64());

    // (id, class, split) of every kept row.
    let mut rows: Vec<(u64, i64, &'static str)> = Vec::new();
    match &params.from {
        None => {
            if by_class.iter().all(|c| c.is_empty()) {
                return Err(Error::file(
                    images,
                    "no image has a label, so there is nothing to sample; give your labelled subset with --from LIST",
                ));
            }
            if let Some(c) = by_class.iter().position(|c| c.is_empty()) {
                return Err(Error::file(
                    images,
                    format!(
                        "class {c} (`{}`) has no images, so --fraction cannot keep any of its labels; remove the class from the input or give --from LIST",
                        names[c]
                    ),
                ));
            }
            for (c, ids) in by_class.iter().enumerate() {
                let keep = kept_per_class(params.fraction, ids.len());
                let hold = kept_per_class(params.holdout, ids.len());
                draw_class(c, ids, keep, hold, params.seed, &names[c], &mut rows)?;
            }
        }
        Some(list) => {
            let given = read_list(list, images, &table, &names)?;
            let mut given_by_class: Vec<Vec<u64>> = vec![Vec::new(); n_classes];
            for (id, c) in given {
                given_by_class[c].push(id);
            }
            for (c, ids) in given_by_class.iter_mut().enumerate() {
                ids.sort_unstable();
                if ids.is_empty() {
                    continue;
                }
                // All given labels are kept; --holdout moves a seeded slice to validation.
                let hold = kept_per_class(params.holdout, ids.len()).min(ids.len() - 1);
                let keep = ids.len() - hold;
                draw_class(c, ids, keep, hold, params.seed, &names[c], &mut rows)?;
            }
        }
    }
    rows.sort_unstable_by_key(|r| r.0);

    let schema = schema::labels(&names);
    let mut w = TableWriter::new(&run.dir, "labels", schema.clone(), 1 << 22);
    for chunk in rows.chunks(1 << 16) {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(chunk.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| r.2))),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols).at(&run.dir)?)?;
    }
    for (file, n) in w.finish()? {
        run.add_output(file, Some(n))?;
    }

    // Per-class table.
    let mut kept = vec![0u64; n_classes];
    let mut held = vec![0u64; n_classes];
    for r in &rows {
        if r.2 == "train" {
            kept[r.1 as usize] += 1;
        } else {
            held[r.1 as usize] += 1;
        }
    }
    write_class_counts(
        &run.dir.join("class_counts.csv"),
        &names,
        &by_class,
        &kept,
        &held,
    )?;
    run.add_output("class_counts.csv", Some(n_classes as u64))?;
    if n_classes <= 20 {
        progress::note(format!(
            "{:<5} {:<24} {:>9} {:>9} {:>9}",
            "class", "name", "images", "labelled", "holdout"
        ));
        for c in 0..n_classes {
            progress::note(format!(
                "{c:<5} {:<24} {:>9} {:>9} {:>9}",
                names[c],
                by_class[c].len(),
                kept[c],
                held[c]
            ));
        }
    }
    let per_class: BTreeMap<String, u64> =
        names.iter().cloned().zip(kept.iter().copied()).collect();
    run.count("images", table.ids.len() as u64);
    run.count("images_without_label", unlabelled);
    run.count("classes", n_classes as u64);
    run.count("labelled", kept.iter().sum::<u64>());
    run.count("holdout", held.iter().sum::<u64>());
    run.count(
        "labelled_min_per_class",
        kept.iter().copied().min().unwrap_or(0),
    );
    run.count(
        "labelled_max_per_class",
        kept.iter().copied().max().unwrap_or(0),
    );
    run.count(
        "labelled_per_class",
        serde_json::to_value(per_class).unwrap_or_default(),
    );
    run.count(
        "rounding",
        "round(fraction x class images), halves up, at least 1",
    );
    run.count(
        "source",
        if params.from.is_some() {
            "list"
        } else {
            "drawn"
        },
    );
    Ok(())
}

/// Draws one class: shuffles its ids with the class's own stream, keeps the
/// first `keep` as `train` and the next `hold` as `holdout`.
fn draw_class(
    class: usize,
    ids: &[u64],
    keep: usize,
    hold: usize,
    seed: u64,
    name: &str,
    rows: &mut Vec<(u64, i64, &'static str)>,
) -> Result<()> {
    let n = ids.len();
    if keep + hold > n {
        return Err(Error::invalid(format!(
            "class {class} (`{name}`) has {n} images: too few for {keep} labelled plus {hold} held out; lower --fraction or --holdout"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(class as u64);
    let mut order = ids.to_vec();
    order.shuffle(&mut rng);
    rows.extend(order[..keep].iter().map(|&id| (id, class as i64, "train")));
    rows.extend(
        order[keep..keep + hold]
            .iter()
            .map(|&id| (id, class as i64, "holdout")),
    );
    Ok(())
}

/// Reads a CSV or Parquet list of (id or path, label) with polars and
/// returns (id, class) pairs checked against the images table.
fn read_list(
    list: &Path,
    images: &Path,
    table: &tables::IdLabels,
    names: &[String],
) -> Result<Vec<(u64, usize)>> {
    use polars::prelude::{CsvReadOptions, DataType as PlType, ParquetReader, SerReader};
    let ext = list
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let df = match ext.as_str() {
        "csv" => CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(list.to_path_buf()))
            .at(list)?
            .finish()
            .at(list)?,
        "parquet" | "pq" => {
            let f = std::fs::File::open(list).at(list)?;
            ParquetReader::new(f).finish().at(list)?
        }
        _ => {
            return Err(Error::file(
                list,
                "--from takes a .csv or .parquet list with columns `id` or `path`, and `label`",
            ))
        }
    };
    let col_names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let has = |c: &str| col_names.iter().any(|n| n == c);
    if !has("label") || !(has("id") || has("path")) {
        return Err(Error::file(
            list,
            format!(
                "needs a `label` column and an `id` or `path` column; it has {}",
                col_names.join(", ")
            ),
        ));
    }
    let n = df.height();
    // Which image each row names.
    let known: HashMap<u64, usize> = table
        .ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let ids: Vec<u64> = if has("id") {
        let c = df.column("id").at(list)?.cast(&PlType::UInt64).at(list)?;
        let c = c.u64().at(list)?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in c.iter().enumerate() {
            let id =
                v.ok_or_else(|| Error::file(list, format!("row {}: `id` is empty", row + 1)))?;
            if !known.contains_key(&id) {
                return Err(Error::file(
                    list,
                    format!(
                        "row {}: id {id} is not in the images table {}",
                        row + 1,
                        images.display()
                    ),
                ));
            }
            out.push(id);
        }
        out
    } else {
        let paths = image_paths(images)?;
        let c = df.column("path").at(list)?.cast(&PlType::String).at(list)?;
        let c = c.str().at(list)?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in c.iter().enumerate() {
            let p =
                v.ok_or_else(|| Error::file(list, format!("row {}: `path` is empty", row + 1)))?;
            match paths.get(p) {
                Some(&id) => out.push(id),
                None => {
                    return Err(Error::file(
                        list,
                        format!(
                            "row {}: path `{p}` is not in the images table {}",
                            row + 1,
                            images.display()
                        ),
                    ))
                }
            }
        }
        out
    };
    // Labels: class indices, or class names.
    let label = df.column("label").at(list)?;
    let classes: Vec<usize> = if label.dtype().is_integer() {
        let c = label.cast(&PlType::Int64).at(list)?;
        let c = c.i64().at(list)?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in c.iter().enumerate() {
            match v {
                Some(l) if l >= 0 && (l as usize) < names.len() => out.push(l as usize),
                other => {
                    return Err(Error::file(
                        list,
                        format!(
                            "row {}: label {other:?} is not a class of the images table (0..{})",
                            row + 1,
                            names.len()
                        ),
                    ))
                }
            }
        }
        out
    } else {
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let c = label.cast(&PlType::String).at(list)?;
        let c = c.str().at(list)?;
        let mut out = Vec::with_capacity(n);
        for (row, v) in c.iter().enumerate() {
            match v.and_then(|s| index.get(s)) {
                Some(&i) => out.push(i),
                None => {
                    return Err(Error::file(
                        list,
                        format!(
                            "row {}: label {v:?} is not a class name of the images table",
                            row + 1
                        ),
                    ))
                }
            }
        }
        out
    };
    let mut seen = std::collections::HashSet::new();
    for &id in &ids {
        if !seen.insert(id) {
            return Err(Error::file(list, format!("image {id} is listed twice")));
        }
    }
    Ok(ids.into_iter().zip(classes).collect())
}

/// path -> id of every image.
/// Every image's `path` (as prepare recorded it: the full path of a
/// folder's file) -> its id, and also its path relative to the folder
/// `prepare` read, so that a list may name `cats/001.jpg` for
/// `/data/pets/cats/001.jpg`.
fn image_paths(images: &Path) -> Result<HashMap<String, u64>> {
    let m = Manifest::read_complete(images, StageName::Prepare)?;
    let root = m
        .params
        .get("input")
        .and_then(|v| v.as_str())
        .map(|r| format!("{}/", r.trim_end_matches('/')));
    let mut out = HashMap::new();
    for batch in TableReader::from_manifest(images, &m, "images", Some(&["id", "path"])) {
        let batch = batch?;
        let id = tables::u64_column(&batch, "id", images)?;
        let path = tables::str_column(&batch, "path", images)?;
        for i in 0..batch.num_rows() {
            let p = path.value(i);
            if let Some(rel) = root.as_deref().and_then(|r| p.strip_prefix(r)) {
                out.insert(rel.to_string(), id.value(i));
            }
            out.insert(p.to_string(), id.value(i));
        }
    }
    Ok(out)
}

fn write_class_counts(
    path: &Path,
    names: &[String],
    by_class: &[Vec<u64>],
    kept: &[u64],
    held: &[u64],
) -> Result<()> {
    use polars::prelude::{df, CsvWriter, SerWriter};
    let mut df = df!(
        "class" => (0..names.len() as i64).collect::<Vec<_>>(),
        "name" => names.to_vec(),
        "images" => by_class.iter().map(|c| c.len() as u64).collect::<Vec<_>>(),
        "labelled" => kept.to_vec(),
        "holdout" => held.to_vec(),
    )
    .at(path)?;
    let mut f = AtomicFile::create(path)?;
    CsvWriter::new(&mut f).finish(&mut df).at(path)?;
    f.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_with_at_least_one() {
        assert_eq!(kept_per_class(0.1, 6000), 600);
        assert_eq!(kept_per_class(0.025, 6000), 150);
        assert_eq!(kept_per_class(0.1, 15), 2); // 1.5 rounds up
        assert_eq!(kept_per_class(0.1, 14), 1);
        assert_eq!(kept_per_class(0.01, 3), 1); // at least one
        assert_eq!(kept_per_class(1.0, 7), 7);
        assert_eq!(kept_per_class(0.0, 7), 0);
    }

    #[test]
    fn bad_fractions_are_rejected() {
        for (f, h) in [(0.0, 0.0), (1.5, 0.0), (-0.1, 0.0), (0.5, 0.6), (0.1, 1.0)] {
            let p = Params {
                fraction: f,
                holdout: h,
                ..Params::default()
            };
            assert!(SampleLabels::validate(&p).is_err(), "{f} {h}");
        }
        assert!(SampleLabels::validate(&Params::default()).is_ok());
    }
}
