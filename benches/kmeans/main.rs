//! k-means benchmark driver (run by `benches/kmeans/run.sh`, issue 15). Modes:
//! - `stage-folders`: writes a raw f32 matrix and its i64 labels as the
//!   `features/` and `images/` stage folders that `embed` and `prepare`
//!   would write, so that the real `pseudo-label` command and every peer
//!   read the same Arrow files.
//! - `fit`: `fewlabels::kmeans` as a library user calls it, timed from
//!   reading the features folder (the stage's own reader) to every point's
//!   label; one JSON line with the phases and, when `--images` is given, the NMI.
//! - `project`: times seeding, Lloyd iterations and the final assignment on
//!   random data of ImageNet's width and scales them to 1.28M x 2048, k = 1000.
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int32Array, Int64Array};
use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field};
use fewlabels::kmeans::{self, Backend, Config, Init};
use fewlabels::manifest::Manifest;
use fewlabels::metrics::clustering;
use fewlabels::shard::{image_column, schema, TableWriter};
use fewlabels::stage::StageName;
use fewlabels::stages::{pseudo_label, tables};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn init_of(s: &str) -> Init {
    match s {
        "kmeans++" => Init::KmeansPlusPlus,
        "kmeans-parallel" => Init::KmeansParallel,
        "random" => Init::Random,
        _ => Init::Auto,
    }
}

fn backend_of(s: &str) -> Backend {
    match s {
        "linfa" => Backend::Linfa,
        "torch" => Backend::Torch,
        _ => Backend::Auto,
    }
}

/// The k-means settings given on the command line (the stage's defaults otherwise).
fn config(args: &[String]) -> Config {
    let mut cfg = Config::new(num(args, "--k", 1000), num(args, "--seed", 0) as u64);
    cfg.max_iter = num(args, "--iters", cfg.max_iter);
    cfg.tol = arg(args, "--tol").map_or(0.0, |v| v.parse().expect("--tol: a number"));
    cfg.init = init_of(&arg(args, "--init").unwrap_or_default());
    cfg.backend = backend_of(&arg(args, "--backend").unwrap_or_default());
    cfg.sample_per_centroid = num(args, "--sample", cfg.sample_per_centroid);
    cfg.n_init = num(args, "--n-init", 1);
    if arg(args, "--device").as_deref() == Some("cuda") {
        cfg.device = tch::Device::Cuda(0);
    }
    cfg
}

fn read_raw<const W: usize>(path: &str) -> Vec<[u8; W]> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    b.chunks_exact(W)
        .map(|c| c.try_into().expect("W bytes"))
        .collect()
}

/// `features/` (id, feature) and `images/` (id, label, a 1x1 PNG) stage folders under `out`.
fn stage_folders(args: &[String]) {
    let (n, d) = (num(args, "--n", 0), num(args, "--d", 0));
    let x: Vec<f32> = read_raw::<4>(&arg(args, "--data").expect("--data"))
        .into_iter()
        .map(f32::from_le_bytes)
        .collect();
    let y: Vec<i64> = read_raw::<8>(&arg(args, "--labels").expect("--labels"))
        .into_iter()
        .map(i64::from_le_bytes)
        .collect();
    assert_eq!(
        (x.len(), y.len()),
        (n * d, n),
        "not {n} x {d} with {n} labels"
    );
    let out = std::path::PathBuf::from(arg(args, "--out").expect("--out"));
    let classes = tables::numbered_names("class", y.iter().max().map_or(0, |m| *m as usize + 1));
    let mut png = std::io::Cursor::new(Vec::new());
    image::GrayImage::new(1, 1)
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("png");
    let png = png.into_inner();
    let step = 10_000;
    let params = serde_json::json!({"bench": "kmeans", "n": n, "d": d});
    fewlabels::stage::run_stage(
        StageName::Prepare,
        &out.join("images"),
        &params,
        &[],
        |run| {
            let sch = schema::images(&classes);
            let mut w = TableWriter::new(&run.dir, "images", sch.clone(), 50_000);
            for s in (0..n).step_by(step) {
                let e = (s + step).min(n);
                let paths: Vec<String> = (s..e).map(|i| format!("{i:06}.png")).collect();
                let cols: Vec<ArrayRef> = vec![
                    Arc::new(UInt64Array::from_iter_values(s as u64..e as u64)),
                    Arc::new(StringArray::from(paths.clone())),
                    Arc::new(Int64Array::from(y[s..e].to_vec())),
                    Arc::new(Int32Array::from(vec![1; e - s])),
                    Arc::new(Int32Array::from(vec![1; e - s])),
                    image_column(paths.iter().map(|p| (png.as_slice(), Some(p.as_str())))),
                ];
                w.write(&RecordBatch::try_new(sch.clone(), cols).expect("batch"))?;
            }
            for (f, rows) in w.finish()? {
                run.add_output(f, Some(rows))?;
            }
            // The counts a finished prepare's manifest must agree with (verify.rs).
            for (key, v) in [("seen", n), ("written", n), ("rejected", 0), ("images", n)] {
                run.count(key, v as u64);
            }
            Ok(())
        },
    )
    .expect("images/");
    fewlabels::stage::run_stage(
        StageName::Embed,
        &out.join("features"),
        &params,
        &[],
        |run| {
            let sch = schema::features(d, 0);
            let item = Arc::new(Field::new("item", DataType::Float32, false));
            let mut w = TableWriter::new(&run.dir, "features", sch.clone(), 50_000);
            for s in (0..n).step_by(step) {
                let e = (s + step).min(n);
                let values = Float32Array::from(x[s * d..e * d].to_vec());
                let list = FixedSizeListArray::new(item.clone(), d as i32, Arc::new(values), None);
                let cols: Vec<ArrayRef> = vec![
                    Arc::new(UInt64Array::from_iter_values(s as u64..e as u64)),
                    Arc::new(list),
                ];
                w.write(&RecordBatch::try_new(sch.clone(), cols).expect("batch"))?;
            }
            for (f, rows) in w.finish()? {
                run.add_output(f, Some(rows))?;
            }
            run.count("images", n as u64);
            run.count("dim", d as u64);
            Ok(())
        },
    )
    .expect("features/");
}

/// The library from reading the features folder to every label.
fn fit(args: &[String]) {
    let cfg = config(args);
    let dir = std::path::PathBuf::from(arg(args, "--features").expect("--features"));
    let t = Instant::now();
    let f = pseudo_label::read_features(&dir).expect("features");
    let points = f.points().expect("points");
    let read = t.elapsed().as_secs_f64();
    let c = kmeans::fit_points(&points, &cfg).expect("k-means");
    let seconds = t.elapsed().as_secs_f64();
    let nmi = arg(args, "--images").map(|images| {
        let images = std::path::Path::new(&images);
        let m = Manifest::read_complete(images, StageName::Prepare).expect("images/");
        let truth = tables::read_id_labels(images, &m, "images").expect("labels");
        assert_eq!(truth.ids, f.ids, "images and features in the same order");
        let t: Vec<usize> = truth
            .labels
            .iter()
            .map(|l| l.expect("label") as usize)
            .collect();
        let p: Vec<usize> = c.labels.iter().map(|&l| l as usize).collect();
        let n_true = t.iter().max().map_or(0, |m| m + 1);
        clustering::cluster_quality(&t, &p, n_true, cfg.k)
            .expect("quality")
            .0
            .nmi
    });
    println!(
        "{}",
        serde_json::json!({
            "what": "fewlabels-library", "n": points.n(), "d": points.dim(), "k": cfg.k,
            "backend": format!("{:?}", c.backend), "init": format!("{:?}", c.init),
            "train_points": c.train_points, "n_init": cfg.n_init,
            "iterations": c.iterations, "converged": c.converged, "seconds": seconds,
            "read_seconds": read, "init_seconds": c.init_seconds,
            "iterate_seconds": c.iterate_seconds, "assign_seconds": c.assign_seconds,
            "seconds_per_iteration": c.iterate_seconds / c.iterations.max(1) as f64,
            "inertia": c.inertia, "nmi": nmi,
        })
    );
}

/// Random data of the target width; per-iteration and assignment time scale
/// with points. The k-means|| seeding runs on a sample of 32 points per
/// cluster whatever the data's size, so its time is not scaled.
fn project(args: &[String]) {
    let mut cfg = config(args);
    cfg.max_iter = num(args, "--iters", 3);
    let (n, d) = (num(args, "--n", 64_000), num(args, "--d", 2048));
    let (target_n, target_d) = (1_281_167f64, 2048f64);
    let x: Vec<f32> = {
        let t = tch::Tensor::randn([n as i64, d as i64], (tch::Kind::Float, tch::Device::Cpu));
        Vec::<f32>::try_from(&t.view([-1])).expect("random data")
    };
    let t = Instant::now();
    let c = kmeans::fit(&x, n, d, &cfg).expect("k-means");
    let total = t.elapsed().as_secs_f64();
    let per_iter = c.iterate_seconds / c.iterations.max(1) as f64;
    let train_target = (cfg.sample_per_centroid * cfg.k) as f64;
    let train_target = if train_target == 0.0 {
        target_n
    } else {
        train_target.min(target_n)
    };
    let width = target_d / d as f64;
    let iter_target = per_iter * train_target / c.train_points as f64 * width;
    let assign_target = c.assign_seconds * target_n / n as f64 * width;
    let init_target = c.init_seconds * width;
    println!(
        "{}",
        serde_json::json!({
            "what": "projection", "n": n, "d": d, "k": cfg.k, "train_points": c.train_points,
            "init": format!("{:?}", c.init), "iterations": c.iterations,
            "seconds": total, "init_seconds": c.init_seconds, "seconds_per_iteration": per_iter,
            "assign_seconds": c.assign_seconds,
            "projected_n": target_n, "projected_d": target_d, "projected_train_points": train_target,
            "projected_seconds_per_iteration": iter_target,
            "projected_init_seconds": init_target,
            "projected_assign_seconds": assign_target,
            "projected_seconds_25_iterations": init_target + 25.0 * iter_target + assign_target,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    fewlabels::device::set_threads(num(&args, "--threads", 0));
    match args.get(1).map(String::as_str) {
        Some("stage-folders") => stage_folders(&args),
        Some("fit") => fit(&args),
        Some("project") => project(&args),
        // `cargo bench` passes `--bench`: nothing to do without a mode.
        _ => eprintln!(
            "usage: kmeans stage-folders --data X.f32 --labels Y.i64 --n N --d D --out DIR\n\
             \x20      kmeans fit --features DIR [--images DIR] --k K [--iters 25] [--init I] [--backend B]\n\
             \x20                 [--seed S] [--sample 256] [--n-init 1] [--tol 0] [--threads T] [--device cuda]\n\
             \x20      kmeans project [--n 64000] [--d 2048] [--k 1000] [--iters 3] [--sample 256]"
        ),
    }
}
