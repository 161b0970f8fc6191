//! The self-labelling data path on real data: `sample-labels`, `embed
//! --model pixels`, `pseudo-label --method kmeans` and `shard`, run through
//! the real binary on Fashion-MNIST (Debian's IDX files, read by the real
//! `prepare`).
mod common;
use common::s;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, FixedSizeListArray, Float32Array, Int64Array, StringArray, UInt64Array};
use fewlabels::manifest::Manifest;
use fewlabels::shard::{image_bytes, TableReader};
use fewlabels::stage::StageName;

/// The first `limit` Fashion-MNIST training images at 28x28, through the
/// real `prepare` (once per test binary); `drop_class` leaves one class out.
fn fashion_images(limit: usize, drop_class: Option<u8>) -> PathBuf {
    common::prepared_fashion(limit, 28, drop_class)
}

/// All 60,000 training images.
fn full_fashion() -> PathBuf {
    fashion_images(60_000, None)
}

fn fashion_raw(limit: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    common::fashion_raw("train", limit)
}

fn ok(args: &[&str]) -> serde_json::Value {
    let o = common::run(args);
    assert!(o.status.success(), "{}", common::text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no JSON: {}", common::text(&o)));
    serde_json::from_str(last).unwrap()
}

fn fails(args: &[&str], needle: &str) {
    fails_with(1, args, needle)
}

/// A parameter out of range: exit 2, one line.
fn refused(args: &[&str], needle: &str) {
    fails_with(2, args, needle)
}

fn fails_with(code: i32, args: &[&str], needle: &str) {
    let o = common::run(args);
    assert_eq!(o.status.code(), Some(code), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

/// (id, label, split) rows of a `labels/` folder.
fn read_labels(dir: &Path) -> Vec<(u64, i64, String)> {
    let m = Manifest::read_complete(dir, StageName::SampleLabels).unwrap();
    let mut out = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "labels", None) {
        let b = b.unwrap();
        let id = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        let l = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let sp = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            out.push((id.value(i), l.value(i), sp.value(i).to_string()));
        }
    }
    out
}

fn table_bytes(dir: &Path, prefix: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {prefix} files in {}", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn sample_labels_keeps_exactly_600_per_class_of_fashion_mnist() {
    let images = &full_fashion();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("labels");
    let j = ok(&[
        "--json",
        "sample-labels",
        "--images",
        s(images),
        "--fraction",
        "0.1",
        "--seed",
        "3",
        "--output",
        s(&out),
    ]);
    assert_eq!(j["counts"]["labelled"], 6000);
    assert_eq!(j["counts"]["labelled_min_per_class"], 600);
    assert_eq!(j["counts"]["labelled_max_per_class"], 600);
    assert_eq!(j["counts"]["labelled_per_class"]["Ankle boot"], 600);
    let rows = read_labels(&out);
    assert_eq!(rows.len(), 6000);
    let (_, truth) = fashion_raw(60_000);
    let mut per = [0; 10];
    for (id, l, split) in &rows {
        assert_eq!(split, "train");
        assert_eq!(
            *l, truth[*id as usize] as i64,
            "label of {id} is its true label"
        );
        per[*l as usize] += 1;
    }
    assert_eq!(per, [600; 10]);
    assert!(
        rows.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted by id, no duplicates"
    );
    let csv = std::fs::read_to_string(out.join("class_counts.csv")).unwrap();
    assert!(
        csv.starts_with("class,name,images,labelled,holdout"),
        "{csv}"
    );
    assert!(csv.contains("9,Ankle boot,6000,600,0"), "{csv}");

    // Same seed: byte-identical; other seed: another draw, still 600 each.
    let again = tmp.path().join("again");
    ok(&[
        "--json",
        "sample-labels",
        "--images",
        s(images),
        "--fraction",
        "0.1",
        "--seed",
        "3",
        "--output",
        s(&again),
        "--threads",
        "1",
    ]);
    assert_eq!(table_bytes(&out, "labels-"), table_bytes(&again, "labels-"));
    let other = tmp.path().join("other");
    ok(&[
        "--json",
        "sample-labels",
        "--images",
        s(images),
        "--fraction",
        "0.1",
        "--seed",
        "4",
        "--output",
        s(&other),
    ]);
    let a: HashSet<u64> = rows.iter().map(|r| r.0).collect();
    let b: HashSet<u64> = read_labels(&other).iter().map(|r| r.0).collect();
    assert_eq!(b.len(), 6000);
    assert!(
        a.intersection(&b).count() < 1500,
        "seeds give different draws"
    );

    // Holdout: a disjoint seeded slice, 5% of each class.
    let hold = tmp.path().join("hold");
    let j = ok(&[
        "--json",
        "sample-labels",
        "--images",
        s(images),
        "--fraction",
        "0.025",
        "--holdout",
        "0.05",
        "--seed",
        "3",
        "--output",
        s(&hold),
    ]);
    assert_eq!(j["counts"]["labelled"], 1500);
    assert_eq!(j["counts"]["holdout"], 3000);
    let rows = read_labels(&hold);
    let ids: HashSet<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(ids.len(), 4500, "train and holdout are disjoint");

    // Up to date on an identical re-run.
    let j = ok(&[
        "--json",
        "sample-labels",
        "--images",
        s(images),
        "--fraction",
        "0.1",
        "--seed",
        "3",
        "--output",
        s(&out),
    ]);
    assert_eq!(j["outcome"], "up-to-date");
}

#[test]
fn sample_labels_from_a_list_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let images = fashion_images(300, None);
    let (_, truth) = fashion_raw(300);
    let list = tmp.path().join("mine.csv");
    std::fs::write(
        &list,
        "path,label\ntrain-images-idx3-ubyte.gz#00000,Ankle boot\ntrain-images-idx3-ubyte.gz#00001,T-shirt/top\ntrain-images-idx3-ubyte.gz#00007,Shirt\n",
    )
    .unwrap();
    let out = tmp.path().join("labels");
    let j = ok(&[
        "--json",
        "sample-labels",
        "--images",
        s(&images),
        "--from",
        s(&list),
        "--output",
        s(&out),
    ]);
    assert_eq!(j["counts"]["labelled"], 3);
    assert_eq!(
        read_labels(&out),
        vec![
            (0, 9, "train".into()),
            (1, 0, "train".into()),
            (7, 6, "train".into())
        ]
    );
    assert_eq!(truth[0], 9);

    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "id,label\n5,0\n999999,1\n").unwrap();
    let o = tmp.path().join("o1");
    fails(
        &[
            "sample-labels",
            "--images",
            s(&images),
            "--from",
            s(&bad),
            "--output",
            s(&o),
        ],
        "id 999999 is not in the images table",
    );
    std::fs::write(&bad, "id,label\n5,0\n6,Jacket\n").unwrap();
    fails(
        &[
            "sample-labels",
            "--images",
            s(&images),
            "--from",
            s(&bad),
            "--output",
            s(&o),
        ],
        "not a class name",
    );
    for f in ["0", "1.5"] {
        refused(
            &[
                "sample-labels",
                "--images",
                s(&images),
                "--fraction",
                f,
                "--output",
                s(&o),
            ],
            "--fraction",
        );
    }
    // A class with no images at all.
    let holes = fashion_images(300, Some(3));
    fails(
        &[
            "sample-labels",
            "--images",
            s(&holes),
            "--fraction",
            "0.1",
            "--output",
            s(&o),
        ],
        "class 3 (`Dress`) has no images",
    );
    // Not a stage folder.
    fails(
        &[
            "sample-labels",
            "--images",
            s(tmp.path()),
            "--fraction",
            "0.1",
            "--output",
            s(&o),
        ],
        "run `fewlabels prepare` first",
    );
}

/// (id, label, source, confidence) of a `pseudo_labels/` folder.
fn read_pseudo(dir: &Path) -> Vec<(u64, i64, String, f32)> {
    let m = Manifest::read_complete(dir, StageName::PseudoLabel).unwrap();
    let mut out = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "pseudo_labels", None) {
        let b = b.unwrap();
        let id = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        let l = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let src = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        let c = b.column(3).as_any().downcast_ref::<Float32Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((
                id.value(i),
                l.value(i),
                src.value(i).to_string(),
                c.value(i),
            ));
        }
    }
    out
}

#[test]
fn pixels_kmeans_reproduces_the_fashion_mnist_baseline() {
    let images = &full_fashion();
    let tmp = tempfile::tempdir().unwrap();
    let feats = tmp.path().join("features");
    let j = ok(&[
        "--json",
        "embed",
        "--images",
        s(images),
        "--model",
        "pixels",
        "--pixels-size",
        "28",
        "--pixels-color",
        "gray",
        "--output",
        s(&feats),
    ]);
    assert_eq!(j["counts"]["images"], 60_000);
    assert_eq!(j["counts"]["dim"], 784);
    // The features are the raw pixels / 255, in image order.
    let (raw, truth) = fashion_raw(3);
    let m = Manifest::read_complete(&feats, StageName::Embed).unwrap();
    let first = TableReader::from_manifest(&feats, &m, "features", None)
        .next()
        .unwrap()
        .unwrap();
    let list = first
        .column(1)
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .unwrap();
    assert_eq!(list.value_length(), 784);
    for (i, pixels) in raw.iter().enumerate() {
        let v = list.value(i);
        let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
        let want: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
        assert_eq!(v.values().to_vec(), want, "image {i}");
    }

    let out = tmp.path().join("pseudo");
    let j = ok(&[
        "--json",
        "pseudo-label",
        "--method",
        "kmeans",
        "--features",
        s(&feats),
        "--images",
        s(images),
        "--clusters",
        "10",
        "--seed",
        "0",
        "--output",
        s(&out),
    ]);
    let c = &j["counts"];
    let acc = c["quality_accuracy"].as_f64().unwrap();
    let nmi = c["quality_nmi"].as_f64().unwrap();
    eprintln!("Fashion-MNIST 28x28 pixels, k-means k=10 seed 0: {c}");
    // Published baseline (scikit-learn here): accuracy 0.45-0.50 by seed, NMI 0.51.
    assert!((0.44..=0.56).contains(&acc), "accuracy {acc}");
    assert!((0.48..=0.54).contains(&nmi), "nmi {nmi}");
    assert_eq!(c["quality_scored"], 60_000);
    let rows = read_pseudo(&out);
    assert_eq!(rows.len(), 60_000);
    assert!(rows
        .iter()
        .all(|r| r.2 == "cluster" && (0..10).contains(&r.1)));
    assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r.3)));
    assert_eq!(truth.len(), 3);
    let png = image::open(out.join("confusion.png")).unwrap();
    assert!(png.width() > 200 && png.height() > 200);
    let q: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("quality.json")).unwrap()).unwrap();
    let total: u64 = q["contingency"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(total, 60_000);
    assert!((q["clustering"]["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);

    // Thread count never changes the output (torch back-end forced: its matmul is threaded).
    let t1 = tmp.path().join("t1");
    let t2 = tmp.path().join("t2");
    for (dir, threads) in [(&t1, "1"), (&t2, "2")] {
        ok(&[
            "--json",
            "pseudo-label",
            "--features",
            s(&feats),
            "--images",
            s(images),
            "--clusters",
            "10",
            "--backend",
            "torch",
            "--seed",
            "1",
            "--threads",
            threads,
            "--output",
            s(dir),
        ]);
    }
    assert_eq!(
        table_bytes(&t1, "pseudo_labels-"),
        table_bytes(&t2, "pseudo_labels-")
    );
}

#[test]
fn shard_joins_shuffles_and_loads_in_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let images = fashion_images(1000, None);
    let (_, truth) = fashion_raw(1000);
    let feats = tmp.path().join("features");
    ok(&[
        "--json",
        "embed",
        "--images",
        s(&images),
        "--pixels-size",
        "8",
        "--output",
        s(&feats),
    ]);
    let pseudo = tmp.path().join("pseudo");
    let j = ok(&[
        "--json",
        "pseudo-label",
        "--features",
        s(&feats),
        "--images",
        s(&images),
        "--backend",
        "linfa",
        "--output",
        s(&pseudo),
    ]);
    assert_eq!(j["counts"]["kmeans_backend"], "linfa");
    let plabels: HashMap<u64, i64> = read_pseudo(&pseudo).iter().map(|r| (r.0, r.1)).collect();

    let train = tmp.path().join("train");
    let j = ok(&[
        "--json",
        "shard",
        "--images",
        s(&images),
        "--pseudo-labels",
        s(&pseudo),
        "--rows-per-shard",
        "300",
        "--seed",
        "5",
        "--output",
        s(&train),
    ]);
    assert_eq!(j["counts"]["shards"], 4);
    assert_eq!(j["counts"]["source_cluster"], 1000);
    let read = |dir: &Path| -> Vec<(u64, Option<i64>, String, Vec<u8>)> {
        let m = Manifest::read_complete(dir, StageName::Shard).unwrap();
        let mut out = Vec::new();
        for b in TableReader::from_manifest(dir, &m, "train", None) {
            let b = b.unwrap();
            let id = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
            let l = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
            let src = b.column(3).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                out.push((
                    id.value(i),
                    l.is_valid(i).then(|| l.value(i)),
                    src.value(i).to_string(),
                    image_bytes(b.column(1).as_ref(), i).unwrap().to_vec(),
                ));
            }
        }
        out
    };
    let rows = read(&train);
    let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..1000).collect::<Vec<u64>>(),
        "every image exactly once"
    );
    assert_ne!(ids, sorted, "shuffled");
    let (raw, _) = fashion_raw(1000);
    for (id, label, src, png) in &rows {
        assert_eq!(*label, Some(plabels[id]));
        assert_eq!(src, "cluster");
        let img = image::load_from_memory(png).unwrap().to_luma8();
        assert_eq!(img.into_raw(), raw[*id as usize], "image of {id}");
    }
    // Deterministic for the seed; another seed, another order.
    let again = tmp.path().join("again");
    ok(&[
        "--json",
        "shard",
        "--images",
        s(&images),
        "--pseudo-labels",
        s(&pseudo),
        "--rows-per-shard",
        "300",
        "--seed",
        "5",
        "--threads",
        "1",
        "--output",
        s(&again),
    ]);
    assert_eq!(table_bytes(&train, "train-"), table_bytes(&again, "train-"));

    // The labelled subset for co-training: the rest are unlabelled (null).
    let labels = tmp.path().join("labels");
    ok(&[
        "--json",
        "sample-labels",
        "--images",
        s(&images),
        "--fraction",
        "0.1",
        "--output",
        s(&labels),
    ]);
    let co = tmp.path().join("co");
    let j = ok(&[
        "--json",
        "shard",
        "--images",
        s(&images),
        "--labels",
        s(&labels),
        "--rows-per-shard",
        "256",
        "--output",
        s(&co),
    ]);
    assert_eq!(j["counts"]["labelled"], j["counts"]["source_given"]);
    assert_eq!(j["counts"]["images"], 1000);
    let co_rows = read(&co);
    let given: Vec<_> = co_rows.iter().filter(|r| r.1.is_some()).collect();
    assert_eq!(
        given.len() as u64,
        j["counts"]["labelled"].as_u64().unwrap()
    );
    assert!(given.len() >= 95 && given.len() <= 105, "{}", given.len());
    for r in &co_rows {
        match r.1 {
            Some(l) => assert!(r.2 == "given" && l == truth[r.0 as usize] as i64),
            None => assert_eq!(r.2, "unlabelled"),
        }
    }

    // Hugging Face `datasets` maps the shards in place (they are IPC
    // streams): `Dataset.from_file` writes nothing to its cache, while
    // `load_dataset("arrow")` copies every byte into it. Image + ClassLabel
    // with the class names either way.
    let script = r#"
import sys, glob, os, datasets
files = sorted(glob.glob(sys.argv[1] + "/train-*.arrow"))
def cache_bytes():
    root = os.environ["HF_HOME"]
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
ds = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
mapped = cache_bytes()
assert sorted(c["filename"] for c in ds.cache_files) == files, ds.cache_files
f = ds.features
assert type(f["image"]).__name__ == "Image", f
assert type(f["label"]).__name__ == "ClassLabel", f
assert f["label"].names[9] == "Ankle boot", f["label"].names
assert len(ds) == 1000, len(ds)
labels = ds["label"]
copied = datasets.load_dataset("arrow", data_files=files, split="train")
assert copied["id"] == ds["id"]
print("ok", len(ds), sum(l is None for l in labels), ds[0]["image"].size, ds[0]["id"])
print("cache", mapped, cache_bytes(), sum(os.path.getsize(f) for f in files))
"#;
    let o = common::python()
        .args(["-c", script, s(&co)])
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", tmp.path().join("hf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let unlabelled = 1000 - given.len();
    assert!(
        out.contains(&format!("ok 1000 {unlabelled} (28, 28) {}", co_rows[0].0)),
        "{out}"
    );
    let cache: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("cache "))
        .unwrap_or_else(|| panic!("{out}"))
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let (mapped, copied, shards) = (cache[0], cache[1], cache[2]);
    println!("HF cache bytes: {mapped} after Dataset.from_file, {copied} after load_dataset; shards {shards}");
    assert_eq!(mapped, 0, "Dataset.from_file wrote to the HF cache: {out}");
    assert!(
        copied >= shards,
        "load_dataset copied {copied} of {shards} bytes"
    );

    // A PyTorch loop: torch's default collate refuses the unlabelled rows'
    // None, so README's recipe maps them to -1 in a lazy transform (nothing
    // copied) and a real DataLoader takes the batches.
    let script = r#"
import sys, glob, datasets, numpy as np, torch
files = sorted(glob.glob(sys.argv[1] + "/train-*.arrow"))
ds = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
plain = ds.remove_columns(["image"])
try:
    next(iter(torch.utils.data.DataLoader(plain, batch_size=1000)))
    raise SystemExit("the default collate took the None labels")
except (RuntimeError, TypeError):
    pass
# with_format("torch") takes them, but as float labels with NaN: the pitfall README names.
labels = next(iter(torch.utils.data.DataLoader(plain.with_format("torch"), batch_size=1000)))["label"]
assert labels.dtype == torch.float32 and bool(labels.isnan().any()), labels.dtype
def to_torch(batch):
    images = np.stack([np.asarray(im.convert("RGB")) for im in batch["image"]])
    return {
        "image": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
        "label": torch.tensor([-1 if l is None else l for l in batch["label"]]),
    }
ds.set_transform(to_torch)
loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=0)
n = unlabelled = 0
for b in loader:
    assert b["image"].shape[1:] == (3, 28, 28) and b["image"].dtype == torch.float32
    n += len(b["label"])
    unlabelled += int((b["label"] == -1).sum())
print("ok", n, unlabelled)
"#;
    let o = common::python()
        .args(["-c", script, s(&co)])
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", tmp.path().join("hf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("ok 1000 {unlabelled}")
    );

    // Labels naming images that are not in the table: a clear error.
    let other = fashion_images(500, None);
    let o = tmp.path().join("o");
    fails(
        &[
            "shard",
            "--images",
            s(&other),
            "--pseudo-labels",
            s(&pseudo),
            "--output",
            s(&o),
        ],
        "which is not in",
    );
}
