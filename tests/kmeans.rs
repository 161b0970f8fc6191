//! k-means at faiss's speed (issue 15) on real data: the training subsample
//! and the final assignment are the same for a seed whatever the thread
//! count, training on the subsample finds the same clusters as training on
//! every point when the clusters are well separated, and the real
//! `pseudo-label` command records the subsample, reads a features table of
//! several files in place and reports bad files in one line.
mod common;

use std::io::Read;
use std::path::Path;

use fewlabels::kmeans::{self, Backend, Clustering, Config, Init, Points};
use rand::{Rng, SeedableRng};

/// The first `n` Fashion-MNIST training images as 784 pixels / 255.
fn fashion_pixels(n: usize) -> Vec<f32> {
    let path = common::fashion_mnist().join("train-images-idx3-ubyte.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes[16..16 + n * 784]
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect()
}

/// `f` with `t` threads for both libtorch and rayon.
fn with_threads<T: Send>(t: usize, f: impl FnOnce() -> T + Send) -> T {
    tch::set_num_threads(t as i32);
    rayon::ThreadPoolBuilder::new()
        .num_threads(t)
        .build()
        .unwrap()
        .install(f)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_same(a: &Clustering, b: &Clustering, what: &str) {
    assert_eq!(a.labels, b.labels, "{what}: labels");
    assert_eq!(bits(&a.centroids), bits(&b.centroids), "{what}: centroids");
    assert_eq!(
        bits(&a.confidence),
        bits(&b.confidence),
        "{what}: confidence"
    );
    assert_eq!(
        a.train_inertia.to_bits(),
        b.train_inertia.to_bits(),
        "{what}"
    );
    assert_eq!(a.iterations, b.iterations, "{what}: iterations");
}

#[test]
fn subsample_and_assignment_are_deterministic_for_a_seed_and_thread_count() {
    let n = 20_000;
    let x = fashion_pixels(n);
    // Feature blocks of uneven sizes, as an Arrow table's batches come.
    let blocks = Points::new(vec![&x[..7_000 * 784], &x[7_000 * 784..]], 784).unwrap();
    for (k, init, sample, n_init) in [
        (10, Init::KmeansPlusPlus, 256, 2),
        (100, Init::KmeansParallel, 64, 1),
        (20, Init::Random, 128, 1),
    ] {
        let mut cfg = Config::new(k, 7);
        cfg.backend = Backend::Torch;
        cfg.init = init;
        cfg.sample_per_centroid = sample;
        cfg.n_init = n_init;
        let one = with_threads(1, || kmeans::fit_points(&blocks, &cfg).unwrap());
        let two = with_threads(2, || kmeans::fit_points(&blocks, &cfg).unwrap());
        let what = format!("k = {k}, {init:?}");
        assert_same(&one, &two, &what);
        assert_eq!(one.train_points, k * sample, "{what}");
        assert_eq!(one.labels.len(), n);
        assert!(one.labels.iter().all(|&l| (l as usize) < k));
        // Every label is the nearest centroid's: the one assignment pass is exact.
        for i in (0..n).step_by(997) {
            let row = blocks.row(i);
            let d = |c: usize| -> f32 {
                row.iter()
                    .zip(&one.centroids[c * 784..(c + 1) * 784])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum()
            };
            let best = (0..k).map(d).fold(f32::INFINITY, f32::min);
            assert!(
                d(one.labels[i] as usize) <= best * (1.0 + 1e-4) + 1e-4,
                "{what} point {i}"
            );
        }
        // One matrix or blocks: the same clustering.
        let whole = with_threads(2, || kmeans::fit(&x, n, 784, &cfg).unwrap());
        assert_same(&one, &whole, &format!("{what}, one block"));
        // Another seed draws another subsample.
        cfg.seed = 8;
        let other = with_threads(2, || kmeans::fit_points(&blocks, &cfg).unwrap());
        assert_ne!(bits(&other.centroids), bits(&one.centroids), "{what}");
    }
}

/// `per` points around each of `k` centres spread far apart in `d` dims.
fn separated_blobs(k: usize, per: usize, d: usize) -> (Vec<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let centres: Vec<f32> = (0..k * d).map(|_| rng.random_range(-40.0..40.0)).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..k * per {
        let c = i % k;
        for j in 0..d {
            x.push(centres[c * d + j] + rng.random_range(-1.0..1.0f32));
        }
        y.push(c);
    }
    (x, y)
}

fn same_partition(labels: &[u32], truth: &[usize]) -> bool {
    let mut map = std::collections::HashMap::new();
    let mut back = std::collections::HashMap::new();
    labels
        .iter()
        .zip(truth)
        .all(|(&l, &t)| *map.entry(l).or_insert(t) == t && *back.entry(t).or_insert(l) == l)
}

#[test]
fn the_subsample_path_and_the_full_path_agree_on_well_separated_data() {
    let (k, per, d) = (40, 250, 48);
    let (x, y) = separated_blobs(k, per, d);
    for backend in [Backend::Torch, Backend::Linfa] {
        let mut cfg = Config::new(k, 3);
        cfg.backend = backend;
        cfg.sample_per_centroid = 0;
        let full = kmeans::fit(&x, k * per, d, &cfg).unwrap();
        cfg.sample_per_centroid = 50;
        let sub = kmeans::fit(&x, k * per, d, &cfg).unwrap();
        assert_eq!((full.train_points, sub.train_points), (k * per, k * 50));
        assert!(same_partition(&full.labels, &y), "{backend:?} full");
        assert!(same_partition(&sub.labels, &y), "{backend:?} subsample");
        // Same clusters, so nearly the same centroids (means of 50 vs 250 points).
        for c in 0..k {
            let j = full.labels.iter().position(|&l| l == c as u32).unwrap();
            let s = sub.labels[j] as usize;
            let gap: f32 = (0..d)
                .map(|t| (full.centroids[c * d + t] - sub.centroids[s * d + t]).powi(2))
                .sum();
            assert!(gap < 0.1 * d as f32, "{backend:?} centroid {c}: {gap}");
        }
        assert!(sub.inertia >= full.inertia * 0.999);
        assert!(
            sub.inertia <= full.inertia * 1.05,
            "{} vs {}",
            sub.inertia,
            full.inertia
        );
    }
}

fn ok(args: &[&str]) -> serde_json::Value {
    let o = common::run(args);
    assert!(o.status.success(), "{}", common::text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// Exit 1 (a failed run) or 2 (a bad parameter), with one line naming `needle`.
fn fails(args: &[&str], code: i32, needle: &str) {
    let o = common::run(args);
    assert_eq!(o.status.code(), Some(code), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

fn files(dir: &Path, prefix: &str) -> Vec<Vec<u8>> {
    let mut f: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    f.sort();
    f.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn the_stage_trains_on_the_recorded_subsample_and_reads_every_feature_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (images, features) = (tmp.path().join("images"), tmp.path().join("features"));
    let idx = common::fashion_mnist().join("train-images-idx3-ubyte.gz");
    ok(&[
        "--json",
        "prepare",
        "--input",
        &s(&idx),
        "--size",
        "8",
        "--output",
        &s(&images),
    ]);
    ok(&[
        "--json",
        "embed",
        "--images",
        &s(&images),
        "--model",
        "pixels",
        "--pixels-size",
        "8",
        "--output",
        &s(&features),
    ]);
    let feature_files = files(&features, "features-");
    assert_eq!(feature_files.len(), 2, "60,000 rows in files of 50,000");
    let run = |out: &Path, threads: &str| {
        ok(&[
            "--json",
            "pseudo-label",
            "--features",
            &s(&features),
            "--images",
            &s(&images),
            "--clusters",
            "10",
            "--sample-per-centroid",
            "100",
            "--n-init",
            "2",
            "--threads",
            threads,
            "--output",
            &s(out),
        ])
    };
    let (t1, t2) = (tmp.path().join("t1"), tmp.path().join("t2"));
    let j = run(&t1, "1");
    run(&t2, "2");
    let c = &j["counts"];
    assert_eq!(c["kmeans_train_points"], 1000);
    assert_eq!(c["kmeans_backend"], "torch");
    assert_eq!(c["images"], 60_000);
    assert!(c["quality_nmi"].as_f64().unwrap() > 0.4, "{c}");
    assert!(c["kmeans_inertia"].as_f64().unwrap() > c["kmeans_train_inertia"].as_f64().unwrap());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t1.join("_stage.json")).unwrap()).unwrap();
    assert_eq!(m["params"]["sample-per-centroid"], 100);
    assert_eq!(m["params"]["n-init"], 2);
    assert!(m["timings"]["phases"]["kmeans_assign"].as_f64().unwrap() >= 0.0);
    assert_eq!(files(&t1, "pseudo_labels-"), files(&t2, "pseudo_labels-"));

    let bad = tmp.path().join("bad");
    let fails_with = |extra: &[&str], code: i32, needle: &str| {
        let (f, i, b) = (s(&features), s(&images), s(&bad));
        let mut args = vec![
            "pseudo-label",
            "--features",
            f.as_str(),
            "--images",
            i.as_str(),
            "--output",
            b.as_str(),
        ];
        args.extend_from_slice(extra);
        fails(&args, code, needle);
    };
    fails_with(&["--n-init", "0"], 2, "--n-init 0");
    // A features file cut short (a disk that filled up, a copy killed halfway).
    let second = features.join("features-00001.arrow");
    std::fs::write(&second, &feature_files[1][..feature_files[1].len() / 2]).unwrap();
    fails_with(&[], 1, "features-00001.arrow");
}
