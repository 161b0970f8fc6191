//! The run report: `report.html` and `report.md` in the run directory, made
//! from what the stages left there (manifests, tables, metrics JSON lines,
//! PNGs). It reads only files, so it can be rebuilt at any time, and every
//! picture is a PNG drawn by the tool itself (src/plot.rs).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray};

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::write_atomic;
use crate::manifest::Manifest;
use image::RgbImage;

use crate::plot::svg::{line_plot_svg, xml_escape as escape};
use crate::plot::{save_png, LinePlot, Series};
use crate::shard::TableReader;
use crate::stage::StageName;

/// Rejects listed in the report at most (the table holds them all).
const MAX_REJECTS_SHOWN: usize = 50;
/// Duplicate pairs shown side by side.
const DUPLICATE_EXAMPLES: usize = 8;
/// Metric series plotted per stage at most.
const MAX_PLOTS_PER_STAGE: usize = 8;

/// One stage folder found in the run directory.
struct StageDir {
    folder: String,
    dir: PathBuf,
    manifest: Manifest,
}

/// A block of the report, rendered both as HTML and as Markdown.
enum Block {
    Heading(String),
    Text(String),
    /// Header row, then rows.
    Table(Vec<String>, Vec<Vec<String>>),
    /// Path relative to the run directory, and a caption.
    Image(String, String),
}

/// `fewlabels report RUN_DIR`: the report of a run directory however its
/// stages were run (`fewlabels run`, stage commands one by one, torchrun).
#[derive(clap::Args, Debug)]
pub struct ReportCli {
    /// A run directory: the folder holding the stages' folders (images/, gan/, eval/, ...).
    pub run_dir: PathBuf,
    /// The report's title (default: the run directory's name).
    #[arg(long)]
    pub title: Option<String>,
}

pub fn report_main(cli: ReportCli) -> Result<()> {
    let found = StageName::ALL.iter().any(|s| {
        cli.run_dir
            .join(s.folder())
            .join(crate::manifest::MANIFEST_FILE)
            .exists()
    });
    if !found {
        return Err(Error::usage(format!(
            "{}: no finished stage folder in it (images/, train/, gan/, eval/, ...); give the run directory, the folder above them",
            cli.run_dir.display()
        )));
    }
    let title = cli
        .title
        .unwrap_or_else(|| format!("fewlabels run: {}", cli.run_dir.display()));
    let (html, md) = write_report(&cli.run_dir, &title)?;
    crate::progress::note(format!("report: {} ({})", html.display(), md.display()));
    Ok(())
}

/// Writes `report.html` and `report.md` into `run_dir`; returns their paths.
pub fn write_report(run_dir: &Path, title: &str) -> Result<(PathBuf, PathBuf)> {
    let plots_dir = run_dir.join("report");
    fs::create_dir_all(&plots_dir).at(&plots_dir)?;
    let mut stages = Vec::new();
    for stage in StageName::ALL {
        let folder = stage.folder();
        let dir = run_dir.join(folder);
        if let Some(m) = Manifest::read(&dir)?.filter(|m| m.complete) {
            stages.push(StageDir {
                folder: folder.to_string(),
                dir,
                manifest: m,
            });
        }
    }
    let mut blocks = vec![Block::Heading(title.to_string())];
    blocks.push(Block::Text(format!(
        "Run directory `{}`; fewlabels {}.",
        run_dir.display(),
        env!("CARGO_PKG_VERSION")
    )));
    headline_blocks(&stages, run_dir, &mut blocks);
    blocks.push(Block::Heading("Stages".into()));
    blocks.push(Block::Table(
        vec![
            "stage".into(),
            "folder".into(),
            "rows written".into(),
            "files".into(),
            "seconds".into(),
        ],
        stages
            .iter()
            .map(|s| {
                let rows: u64 = s.manifest.outputs.iter().filter_map(|o| o.rows).sum();
                vec![
                    s.manifest.stage.to_string(),
                    s.folder.clone(),
                    rows.to_string(),
                    s.manifest.outputs.len().to_string(),
                    format!("{:.1}", s.manifest.timings.seconds),
                ]
            })
            .collect(),
    ));
    for s in &stages {
        blocks.push(Block::Heading(format!(
            "{} ({}/)",
            s.manifest.stage, s.folder
        )));
        stage_blocks(s, run_dir, &plots_dir, &mut blocks)?;
    }
    let html = render_html(title, &blocks);
    let md = render_markdown(&blocks);
    let html_path = run_dir.join("report.html");
    let md_path = run_dir.join("report.md");
    write_atomic(&html_path, html.as_bytes())?;
    write_atomic(&md_path, md.as_bytes())?;
    Ok((html_path, md_path))
}

/// The figures a reader looks for first, gathered from the stages' counts,
/// and the last sample grid beside the pseudo-label confusion matrix.
fn headline_blocks(stages: &[StageDir], run_dir: &Path, blocks: &mut Vec<Block>) {
    let count = |stage: StageName, key: &str| -> Option<&serde_json::Value> {
        stages
            .iter()
            .find(|s| s.manifest.stage == stage)
            .and_then(|s| s.manifest.counts.get(key))
    };
    let num = |stage: StageName, key: &str| count(stage, key).and_then(|v| v.as_f64());
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |what: &str, value: String| rows.push(vec![what.to_string(), value]);
    if let (Some(kept), Some(images)) = (
        num(StageName::SampleLabels, "labelled"),
        num(StageName::SampleLabels, "images"),
    ) {
        let holdout = num(StageName::SampleLabels, "holdout").unwrap_or(0.0);
        row(
            "labels kept (train + holdout)",
            format!(
                "{} + {} of {} images ({:.1}%)",
                kept,
                holdout,
                images,
                100.0 * (kept + holdout) / images.max(1.0)
            ),
        );
    }
    if let Some(acc) = num(StageName::Pretrain, "holdout_accuracy") {
        row("pretrain: holdout accuracy", format!("{acc:.3}"));
    }
    if let Some(acc) = num(StageName::PseudoLabel, "quality_predicted_accuracy") {
        row(
            "pseudo-labels: accuracy on the images without a label",
            format!("{acc:.3}"),
        );
    }
    if let (Some(acc), Some(nmi)) = (
        num(StageName::PseudoLabel, "quality_accuracy"),
        num(StageName::PseudoLabel, "quality_nmi"),
    ) {
        let ari = num(StageName::PseudoLabel, "quality_ari").unwrap_or(f64::NAN);
        row(
            "pseudo-labels: accuracy / NMI / ARI, all images",
            format!("{acc:.3} / {nmi:.3} / {ari:.3}"),
        );
    }
    if let (Some(acc), Some(nmi)) = (
        num(StageName::PseudoLabel, "kmeans_quality_accuracy"),
        num(StageName::PseudoLabel, "kmeans_quality_nmi"),
    ) {
        let ari = num(StageName::PseudoLabel, "kmeans_quality_ari").unwrap_or(f64::NAN);
        row(
            "k-means on the same features: accuracy / NMI / ARI",
            format!("{acc:.3} / {nmi:.3} / {ari:.3}"),
        );
    }
    if let (Some(mode), Some(steps)) = (
        count(StageName::TrainGan, "mode"),
        num(StageName::TrainGan, "steps"),
    ) {
        let fraction = num(StageName::TrainGan, "label_fraction")
            .map(|f| format!(", {:.1}% person-given labels", 100.0 * f))
            .unwrap_or_default();
        row(
            "GAN",
            format!(
                "{} mode, {steps} steps{fraction}",
                mode.as_str().unwrap_or("?")
            ),
        );
    }
    if let (Some(best), Some(step)) = (
        num(StageName::TrainGan, "best_fid"),
        num(StageName::TrainGan, "best_fid_step"),
    ) {
        let last = num(StageName::TrainGan, "last/eval/fid").unwrap_or(f64::NAN);
        row(
            "FID during training (train-gan --eval-every, small sample)",
            format!("best {best:.1} at step {step}, last {last:.1}"),
        );
    }
    if let (Some(best), Some(step)) = (
        num(StageName::Evaluate, "best_fid"),
        num(StageName::Evaluate, "best_fid_step"),
    ) {
        let n = num(StageName::Evaluate, "checkpoints_scored").unwrap_or(0.0);
        row(
            "FID of the best checkpoint (evaluate --checkpoints all)",
            format!("{best:.1} at step {step}, of {n} scored"),
        );
    }
    if let Some(fid) = num(StageName::Evaluate, "fid") {
        let kid = num(StageName::Evaluate, "kid").unwrap_or(f64::NAN);
        let n = num(StageName::Evaluate, "samples_per_run").unwrap_or(0.0);
        let refs = num(StageName::Evaluate, "reference_images").unwrap_or(0.0);
        let resize = count(StageName::Evaluate, "resize_mode")
            .and_then(|v| v.as_str())
            .map(|m| format!(", resized to 299 as clean-fid's {m}"))
            .unwrap_or_default();
        row(
            "FID / KID",
            format!("{fid:.1} / {kid:.3} ({n} samples against {refs} real images{resize})"),
        );
    }
    if let Some(is) = num(StageName::Evaluate, "is") {
        row(
            "Inception Score (one split over all samples by default)",
            format!("{is:.2}"),
        );
    }
    if let (Some(p), Some(r)) = (
        num(StageName::Evaluate, "precision"),
        num(StageName::Evaluate, "recall"),
    ) {
        row(
            "precision / recall: samples on the real manifold / real images covered",
            format!("{p:.3} / {r:.3}"),
        );
    }
    if let Some(c) = num(StageName::Evaluate, "class_consistency") {
        let scale = num(StageName::Evaluate, "classifier_accuracy")
            .map(|a| format!(" (the classifier is right on {a:.3} of real images)"))
            .unwrap_or_default();
        row(
            "class consistency: samples of class c classified as c",
            format!("{c:.3}{scale}"),
        );
    }
    let rel = |p: &Path| {
        p.strip_prefix(run_dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    if let Some(gan) = stages
        .iter()
        .find(|s| s.manifest.stage == StageName::TrainGan)
    {
        if let Some(grid) = files_with_ext(&gan.dir.join("samples"), "png").last() {
            // The picture a reader looks at first: does each row hold one class?
            blocks.push(Block::Image(
                rel(grid),
                "last sample grid of the EMA generator: one row per class".into(),
            ));
        }
    }
    if !rows.is_empty() {
        blocks.push(Block::Heading("Headline figures".into()));
        blocks.push(Block::Table(vec!["figure".into(), "value".into()], rows));
    }
    if let Some(pl) = stages
        .iter()
        .find(|s| s.manifest.stage == StageName::PseudoLabel)
    {
        let confusion = pl.dir.join("confusion.png");
        if confusion.exists() {
            blocks.push(Block::Image(
                rel(&confusion),
                "pseudo-labels against the true labels".into(),
            ));
        }
    }
}

fn stage_blocks(
    s: &StageDir,
    run_dir: &Path,
    plots_dir: &Path,
    blocks: &mut Vec<Block>,
) -> Result<()> {
    // Scalar counts and figures in one table; structured ones (per-class tables) each in their own.
    let mut scalars = Vec::new();
    let mut structured = Vec::new();
    for (k, v) in &s.manifest.counts {
        match v {
            serde_json::Value::Object(map) => structured.push(object_table(k, map)),
            serde_json::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_object()) =>
            {
                structured.push(rows_table(k, items))
            }
            // Identifies inputs for the stages that check them; not a figure.
            _ if k.ends_with("_fingerprint") => {}
            other => scalars.push(vec![k.clone(), show_value(other)]),
        }
    }
    if !scalars.is_empty() {
        blocks.push(Block::Table(vec!["figure".into(), "value".into()], scalars));
    }
    blocks.extend(structured);
    if s.manifest.stage == StageName::Prepare {
        rejects_block(s, blocks)?;
    }
    if s.manifest.stage == StageName::Duplicates {
        duplicates_block(s, run_dir, plots_dir, blocks)?;
    }
    if s.manifest.stage == StageName::Shard && s.manifest.count("dropped") > 0 {
        rejects_block(s, blocks)?;
    }
    for jsonl in files_with_ext(&s.dir, "jsonl") {
        metric_plots(s, &jsonl, run_dir, plots_dir, blocks)?;
    }
    if s.manifest.stage == StageName::TrainGan {
        let grids = files_with_ext(&s.dir.join("samples"), "png");
        let file = plots_dir.join(format!("{}-samples-over-training.png", s.folder));
        if let Some(steps) = training_strip(&grids, &file)? {
            let rel = file.strip_prefix(run_dir).unwrap_or(&file);
            blocks.push(Block::Image(
                rel.to_string_lossy().into_owned(),
                format!("the EMA generator's grid over training (steps {steps})"),
            ));
        }
    }
    for png in pngs_to_show(&s.dir) {
        let rel = png
            .strip_prefix(run_dir)
            .unwrap_or(&png)
            .to_string_lossy()
            .into_owned();
        let caption = png
            .file_stem()
            .map(|n| n.to_string_lossy().replace(['_', '-'], " "))
            .unwrap_or_default();
        blocks.push(Block::Image(rel, caption));
    }
    Ok(())
}

fn show_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x.abs() >= 1000.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.4}")
            }
        }
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn object_table(name: &str, map: &serde_json::Map<String, serde_json::Value>) -> Block {
    // {class: {col: v}} -> rows per class; {key: scalar} -> two columns.
    let nested: Vec<&serde_json::Map<String, serde_json::Value>> =
        map.values().filter_map(|v| v.as_object()).collect();
    if nested.len() == map.len() && !nested.is_empty() {
        let mut cols: Vec<String> = Vec::new();
        for n in &nested {
            for k in n.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        let rows = map
            .iter()
            .map(|(k, v)| {
                let o = v.as_object().expect("checked nested");
                std::iter::once(k.clone())
                    .chain(
                        cols.iter()
                            .map(|c| o.get(c).map(show_value).unwrap_or_default()),
                    )
                    .collect()
            })
            .collect();
        return Block::Table(
            std::iter::once(name.to_string()).chain(cols).collect(),
            rows,
        );
    }
    Block::Table(
        vec![name.to_string(), "value".into()],
        map.iter()
            .map(|(k, v)| vec![k.clone(), show_value(v)])
            .collect(),
    )
}

fn rows_table(name: &str, items: &[serde_json::Value]) -> Block {
    let mut cols: Vec<String> = Vec::new();
    for i in items {
        for k in i.as_object().into_iter().flat_map(|o| o.keys()) {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let rows = items
        .iter()
        .map(|i| {
            cols.iter()
                .map(|c| i.get(c).map(show_value).unwrap_or_default())
                .collect()
        })
        .collect();
    let header = if cols.is_empty() {
        vec![name.to_string()]
    } else {
        cols
    };
    Block::Table(header, rows)
}

fn rejects_block(s: &StageDir, blocks: &mut Vec<Block>) -> Result<()> {
    let mut rows = Vec::new();
    let mut total = 0usize;
    for batch in
        TableReader::from_manifest(&s.dir, &s.manifest, "rejects", Some(&["path", "reason"]))
    {
        let batch = batch?;
        let path = batch.column(0).as_any().downcast_ref::<StringArray>();
        let reason = batch.column(1).as_any().downcast_ref::<StringArray>();
        let (Some(path), Some(reason)) = (path, reason) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            total += 1;
            if rows.len() < MAX_REJECTS_SHOWN {
                rows.push(vec![path.value(i).to_string(), reason.value(i).to_string()]);
            }
        }
    }
    let shown = rows.len();
    blocks.push(Block::Text(match (total, s.manifest.stage) {
        (0, _) => "Rejects: none; every input became an image.".to_string(),
        (_, StageName::Shard) => format!(
            "Rejects: {total} duplicate image(s) left out of the training shards (first {shown} below; all in the rejects table)."
        ),
        _ => format!("Rejects: {total} input(s) did not become images (first {shown} below; all in the rejects table)."),
    }));
    if total > 0 {
        blocks.push(Block::Table(vec!["path".into(), "reason".into()], rows));
    }
    Ok(())
}

/// The duplicates stage in words, and a few of its pairs side by side: the
/// reference overlaps first (they flatter FID), then the near duplicates
/// inside the table (the exact ones look alike by definition), closest first.
fn duplicates_block(
    s: &StageDir,
    run_dir: &Path,
    plots_dir: &Path,
    blocks: &mut Vec<Block>,
) -> Result<()> {
    use crate::stages::duplicates::read_pairs;
    let m = &s.manifest;
    let c = |k: &str| m.count(k);
    let mut text = format!(
        "Duplicates (pHash within {} bits of 64): {} pair(s) inside images/ ({} exact, {} near); {} of {} images duplicate an earlier one.",
        c("max_distance"),
        c("within_pairs"),
        c("within_exact"),
        c("within_near"),
        c("rows_with_earlier_duplicate"),
        c("images"),
    );
    let reference = m
        .counts
        .get("reference")
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    if reference.is_some() {
        let n = c("rows_duplicating_reference");
        let _ = write!(
            text,
            " Against the {} reference images: {} pair(s) ({} exact, {} near); {} training images ({:.2}%) duplicate a reference image.",
            c("reference_images"),
            c("reference_pairs"),
            c("reference_exact"),
            c("reference_near"),
            n,
            100.0 * n as f64 / c("images").max(1) as f64
        );
    } else {
        text.push_str(" No reference table was compared.");
    }
    blocks.push(Block::Text(text));
    let (_, mut pairs) = read_pairs(&s.dir, None)?;
    pairs.sort_by_key(|p| (!p.reference, p.exact, p.distance, p.id, p.other_id));
    pairs.truncate(DUPLICATE_EXAMPLES);
    if pairs.is_empty() {
        return Ok(());
    }
    let images_dir = run_dir.join(StageName::Prepare.folder());
    let mine = pictures(&images_dir, pairs.iter().map(|p| p.id), false);
    let theirs_in = |reference_row: bool| {
        pairs
            .iter()
            .filter(move |p| p.reference == reference_row)
            .map(|p| p.other_id)
    };
    let mut others = pictures(&images_dir, theirs_in(false), false);
    if let Some(dir) = &reference {
        others.extend(pictures(dir, theirs_in(true), true));
    }
    let mut rows = Vec::new();
    let mut tiles = Vec::new();
    for p in &pairs {
        let left = mine.get(&(false, p.id));
        let right = others.get(&(p.reference, p.other_id));
        let name = |x: Option<&(String, RgbImage)>| x.map(|x| x.0.clone()).unwrap_or_default();
        rows.push(vec![
            p.id.to_string(),
            name(left),
            format!(
                "{} {}",
                if p.reference { "reference" } else { "images" },
                p.other_id
            ),
            name(right),
            p.distance.to_string(),
            if p.exact { "exact" } else { "near" }.to_string(),
        ]);
        if let (Some(l), Some(r)) = (left, right) {
            tiles.push(side_by_side(&l.1, &r.1));
        }
    }
    blocks.push(Block::Table(
        ["id", "path", "duplicates", "its path", "distance", "kind"]
            .map(String::from)
            .to_vec(),
        rows,
    ));
    if !tiles.is_empty() {
        let grid = crate::plot::image_grid(&tiles, 2, 12, image::Rgb([255, 255, 255]));
        let file = plots_dir.join("duplicates-examples.png");
        save_png(&grid, &file)?;
        let rel = file
            .strip_prefix(run_dir)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        blocks.push(Block::Image(
            rel,
            "each pair side by side: the training image, then the image it duplicates".into(),
        ));
    }
    Ok(())
}

/// The path and decoded image of the rows `ids` of the images table in
/// `dir`, keyed by (`reference`, id). Rows that cannot be read are left
/// out: the report shows what it can.
fn pictures(
    dir: &Path,
    ids: impl Iterator<Item = u64>,
    reference: bool,
) -> BTreeMap<(bool, u64), (String, RgbImage)> {
    use crate::stages::tables;
    let want: std::collections::BTreeSet<u64> = ids.collect();
    let mut out = BTreeMap::new();
    let Ok(m) = Manifest::read_complete(dir, StageName::Prepare) else {
        return out;
    };
    let format = tables::stored_image(dir, &m, "images").ok().flatten();
    for batch in
        TableReader::from_manifest(dir, &m, "images", Some(&["id", "path", "image"])).flatten()
    {
        let (Some(id), Some(path)) = (
            batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>(),
            batch.column(1).as_any().downcast_ref::<StringArray>(),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            if !want.contains(&id.value(i)) {
                continue;
            }
            let img = crate::shard::image_bytes(batch.column(2).as_ref(), i)
                .ok()
                .and_then(|b| crate::shard::stored::decode_square(b, format.as_ref()).ok());
            if let Some(img) = img {
                out.insert((reference, id.value(i)), (path.value(i).to_string(), img));
            }
        }
    }
    out
}

/// Two images next to each other, each scaled up to at least 96 pixels
/// (nearest neighbour: 32x32 images stay sharp).
fn side_by_side(a: &RgbImage, b: &RgbImage) -> RgbImage {
    let up = |img: &RgbImage| {
        let k = 96u32.div_ceil(img.width().max(1)).max(1);
        image::imageops::resize(
            img,
            img.width() * k,
            img.height() * k,
            image::imageops::FilterType::Nearest,
        )
    };
    let (a, b) = (up(a), up(b));
    crate::plot::image_grid(&[a, b], 2, 2, image::Rgb([255, 255, 255]))
}

/// Plots the numeric fields of a JSON-lines metrics file against `step`:
/// losses together, accuracies together, every other field alone.
fn metric_plots(
    s: &StageDir,
    jsonl: &Path,
    run_dir: &Path,
    plots_dir: &Path,
    blocks: &mut Vec<Block>,
) -> Result<()> {
    let text = fs::read_to_string(jsonl).at(jsonl)?;
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let Ok(serde_json::Value::Object(row)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        let x = row.get("step").and_then(|v| v.as_f64()).unwrap_or(i as f64);
        for (k, v) in &row {
            if k == "step" || k.ends_with("time") || k == "epoch" {
                continue;
            }
            if let Some(y) = v.as_f64().filter(|y| y.is_finite()) {
                series.entry(k.clone()).or_default().push((x, y));
            }
        }
    }
    let mut groups: BTreeMap<String, Vec<Series>> = BTreeMap::new();
    for (k, points) in series {
        if points.len() < 2 {
            continue;
        }
        let group = if k.contains("loss") {
            "losses".to_string()
        } else if k.contains("acc") {
            "accuracy".to_string()
        } else {
            k.clone()
        };
        groups
            .entry(group)
            .or_default()
            .push(Series { name: k, points });
    }
    let stem = jsonl
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The scores during training first: the curve a reader looks for.
    let mut groups: Vec<(String, Vec<Series>)> = groups.into_iter().collect();
    groups.sort_by_key(|(g, _)| !g.starts_with("eval/"));
    for (group, series) in groups.into_iter().take(MAX_PLOTS_PER_STAGE) {
        let file = plots_dir.join(format!(
            "{}-{stem}-{}.svg",
            s.folder,
            group.replace(['/', ' '], "_")
        ));
        let title = format!("{} {stem}: {group}", s.manifest.stage);
        let svg = line_plot_svg(
            &series,
            &LinePlot {
                title: &title,
                x_axis: "step",
                y_axis: &group,
                ..Default::default()
            },
        );
        write_atomic(&file, svg.as_bytes())?;
        let rel = file
            .strip_prefix(run_dir)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        blocks.push(Block::Image(rel, title));
    }
    Ok(())
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == ext)
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    out
}

/// Grids shown in the strip of samples over training.
const STRIP_GRIDS: usize = 6;
/// Height of each grid in the strip, in pixels.
const STRIP_HEIGHT: u32 = 240;

/// Up to [`STRIP_GRIDS`] of train-gan's sample grids (`step-N.png`), evenly
/// spaced from the first to the last, scaled to one height and set side by
/// side under their step: how the samples changed. Written to `out`;
/// returns the steps shown, or None when there are fewer than two grids.
fn training_strip(grids: &[PathBuf], out: &Path) -> Result<Option<String>> {
    if grids.len() < 2 {
        return Ok(None);
    }
    let n = grids.len().min(STRIP_GRIDS);
    let picked: Vec<&PathBuf> = (0..n)
        .map(|i| &grids[i * (grids.len() - 1) / (n - 1)])
        .collect();
    let mut tiles = Vec::new();
    let mut steps = Vec::new();
    for path in picked {
        let img = image::open(path)
            .map_err(|e| Error::file(path, format!("not a readable PNG: {e}")))?
            .to_rgb8();
        let w = (img.width() as u64 * STRIP_HEIGHT as u64 / img.height().max(1) as u64).max(1);
        tiles.push(image::imageops::resize(
            &img,
            w as u32,
            STRIP_HEIGHT,
            image::imageops::FilterType::Triangle,
        ));
        let step = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("step-"))
            .and_then(|s| s.parse::<u64>().ok());
        steps.push(step.map(|s| s.to_string()).unwrap_or_else(|| "?".into()));
    }
    let (pad, label_h) = (12u32, 2 * crate::plot::GLYPH_H + 8);
    let width = pad + tiles.iter().map(|t| t.width() + pad).sum::<u32>();
    let mut c = crate::plot::Canvas::new(width, label_h + STRIP_HEIGHT + pad, crate::plot::WHITE);
    let mut x = pad;
    for (tile, step) in tiles.iter().zip(&steps) {
        c.text(x as i64, 6, &format!("step {step}"), crate::plot::BLACK, 2);
        image::imageops::replace(&mut c.img, tile, x as i64, label_h as i64);
        x += tile.width() + pad;
    }
    save_png(&c.into_image(), out)?;
    Ok(Some(steps.join(", ")))
}

/// The PNGs of a stage folder and of its sub-folders (e.g. `samples/`): all
/// top-level ones, and of each sub-folder the first and the last (grids over
/// training time).
fn pngs_to_show(dir: &Path) -> Vec<PathBuf> {
    let mut out = files_with_ext(dir, "png");
    let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let pngs = files_with_ext(&sub, "png");
        if let Some(first) = pngs.first() {
            out.push(first.clone());
        }
        if pngs.len() > 1 {
            out.push(pngs[pngs.len() - 1].clone());
        }
    }
    out
}

fn render_html(title: &str, blocks: &[Block]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
table{{border-collapse:collapse;margin:0.5em 0 1em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
th{{background:#f0f0f0}}td:first-child,th:first-child{{text-align:left}}\
img{{max-width:100%;border:1px solid #ddd;image-rendering:pixelated}}figure{{margin:0.5em 0 1.5em}}\
h2{{border-bottom:1px solid #ddd;margin-top:1.5em}}</style></head><body>\n",
        escape(title)
    );
    let mut first = true;
    for b in blocks {
        match b {
            Block::Heading(t) if first => {
                let _ = writeln!(h, "<h1>{}</h1>", escape(t));
                first = false;
            }
            Block::Heading(t) => {
                let _ = writeln!(h, "<h2>{}</h2>", escape(t));
            }
            Block::Text(t) => {
                let _ = writeln!(h, "<p>{}</p>", escape(t));
            }
            Block::Table(head, rows) => {
                h.push_str("<table><tr>");
                for c in head {
                    let _ = write!(h, "<th>{}</th>", escape(c));
                }
                h.push_str("</tr>\n");
                for r in rows {
                    h.push_str("<tr>");
                    for c in r {
                        let _ = write!(h, "<td>{}</td>", escape(c));
                    }
                    h.push_str("</tr>\n");
                }
                h.push_str("</table>\n");
            }
            Block::Image(src, caption) => {
                let _ = writeln!(
                    h,
                    "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                    escape(src),
                    escape(caption),
                    escape(caption)
                );
            }
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn render_markdown(blocks: &[Block]) -> String {
    let mut m = String::new();
    let mut first = true;
    for b in blocks {
        match b {
            Block::Heading(t) => {
                let _ = writeln!(m, "{} {t}\n", if first { "#" } else { "##" });
                first = false;
            }
            Block::Text(t) => {
                let _ = writeln!(m, "{t}\n");
            }
            Block::Table(head, rows) => {
                let cell = |s: &str| s.replace('|', "\\|");
                let _ = writeln!(
                    m,
                    "| {} |",
                    head.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                );
                let _ = writeln!(m, "|{}", " --- |".repeat(head.len()));
                for r in rows {
                    let _ = writeln!(
                        m,
                        "| {} |",
                        r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                    );
                }
                m.push('\n');
            }
            Block::Image(src, caption) => {
                let _ = writeln!(m, "![{caption}]({src})\n");
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_spans_training_from_first_to_last_grid() {
        let tmp = tempfile::tempdir().unwrap();
        let grids: Vec<PathBuf> = (0..8u8)
            .map(|k| {
                let p = tmp.path().join(format!("step-{:08}.png", k as u64 * 100));
                image::RgbImage::from_pixel(60, 30, image::Rgb([k * 30, 0, 0]))
                    .save(&p)
                    .unwrap();
                p
            })
            .collect();
        let out = tmp.path().join("strip.png");
        assert_eq!(training_strip(&grids[..1], &out).unwrap(), None);
        let steps = training_strip(&grids, &out).unwrap().unwrap();
        assert_eq!(steps, "0, 100, 200, 400, 500, 700");
        let img = image::open(&out).unwrap().to_rgb8();
        // Six grids 2:1 at 240 high, 12 px apart, under their labels.
        assert_eq!(img.width(), 12 + 6 * (480 + 12));
        assert_eq!(img.height(), 2 * crate::plot::GLYPH_H + 8 + 240 + 12);
        let last = 12 + 5 * (480 + 12) + 240;
        assert_eq!(img.get_pixel(last, 150).0, [7 * 30, 0, 0]);
    }
}
