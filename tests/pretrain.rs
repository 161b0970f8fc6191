//! The `pretrain`, `embed --model` and `pseudo-label --method classifier`
//! stages through the real binary, on real Fashion-MNIST images (a small
//! slice, 16x16, the tiny ResNet, CPU), including kill -9 and resume.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `images/` (the first `n` Fashion-MNIST training images at 16x16) and
/// `labels/` (20% of each class: 18% to train on, 2% held out), by the real stages.
fn stages(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let images = common::prepared_fashion(n, 16, None);
    let labels = dir.join("labels");
    common::ok_json(&[
        "sample-labels",
        "--images",
        images.to_str().unwrap(),
        "--fraction",
        "0.18",
        "--holdout",
        "0.02",
        "--output",
        labels.to_str().unwrap(),
    ]);
    (images, labels)
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("_stage.json")).unwrap()).unwrap()
}

const TINY: &[&str] = &[
    "--arch",
    "tiny",
    "--batch-size",
    "16",
    "--labelled-batch-size",
    "16",
    "--device",
    "cpu",
    "--lr",
    "0.05",
    "--warmup-steps",
    "5",
];

fn pretrain_args<'a>(
    images: &'a str,
    labels: Option<&'a str>,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec!["--quiet", "pretrain", "--images", images, "--output", out];
    if let Some(l) = labels {
        a.extend(["--labels", l]);
    }
    // A flag given in `extra` replaces TINY's (clap refuses a flag twice).
    for pair in TINY.chunks(2) {
        if !extra.contains(&pair[0]) {
            a.extend_from_slice(pair);
        }
    }
    a.extend_from_slice(extra);
    a
}

#[test]
fn s2l_pretrain_then_embed_then_classifier_pseudo_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = stages(tmp.path(), 800);
    let out = tmp.path().join("pretrain");
    let (i, l, o) = (
        images.to_str().unwrap(),
        labels.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let r = common::run(&pretrain_args(
        i,
        Some(l),
        o,
        &["--steps", "60", "--threads", "2", "--eval-every", "30"],
    ));
    assert!(r.status.success(), "{}", common::text(&r));
    let m = manifest(&out);
    assert_eq!(m["complete"], true);
    assert_eq!(m["counts"]["objective"], "s2l");
    let paths: Vec<&str> = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["model.safetensors", "model.json", "metrics.jsonl"]);
    // Rotation is learnable on clothes (they have an up); the head beats chance (0.1).
    let rot = m["counts"]["rotation_accuracy"].as_f64().unwrap();
    // Chance is 0.25; over the last 20 steps (1,280 rotated images) 0.3 is ~4 sigma above it.
    assert!(rot > 0.3, "rotation accuracy {rot}");
    let hold = m["counts"]["holdout_accuracy"].as_f64().unwrap();
    assert!(hold > 0.2, "holdout accuracy {hold}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|v| v.get("loss").is_some()).count(),
        3,
        "{metrics}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|v| v.get("holdout_accuracy").is_some())
            .count(),
        2
    );
    let first = lines[0]["loss"].as_f64().unwrap();
    let last = lines.iter().rev().find_map(|v| v["loss"].as_f64()).unwrap();
    assert!(last < first, "loss did not fall: {first} -> {last}");
    // The checkpoint at the end holds weights and optimiser state.
    assert!(out.join("checkpoints/ckpt-00000060.safetensors").exists());
    // Same stage again: up to date.
    let r2 = common::run(&[
        "--json",
        "pretrain",
        "--images",
        i,
        "--labels",
        l,
        "--output",
        o,
        "--arch",
        "tiny",
        "--batch-size",
        "16",
        "--labelled-batch-size",
        "16",
        "--device",
        "cpu",
        "--lr",
        "0.05",
        "--warmup-steps",
        "5",
        "--steps",
        "60",
        "--eval-every",
        "30",
    ]);
    assert!(r2.status.success(), "{}", common::text(&r2));
    let s: Value = serde_json::from_slice(&r2.stdout).unwrap();
    assert_eq!(s["outcome"], "up-to-date", "{s}");

    // embed --model DIR: one feature row (+ logits) per image, in id order.
    let feats = tmp.path().join("features");
    let f = feats.to_str().unwrap();
    let r = common::run(&[
        "--quiet", "embed", "--images", i, "--model", o, "--output", f, "--device", "cpu",
    ]);
    assert!(r.status.success(), "{}", common::text(&r));
    let fm = manifest(&feats);
    assert_eq!(fm["counts"]["images"], 800);
    assert_eq!(fm["counts"]["dim"], 16);
    assert_eq!(fm["counts"]["logits_dim"], 10);
    let check = common::python()
        .arg("-c")
        .arg(
            "import sys, pyarrow as pa, numpy as np\n\
             t = pa.ipc.open_stream(sys.argv[1]).read_all()\n\
             ids = t['id'].to_numpy()\n\
             f = np.stack(t['feature'].to_numpy(zero_copy_only=False))\n\
             g = np.stack(t['logits'].to_numpy(zero_copy_only=False))\n\
             assert (ids == np.arange(800)).all()\n\
             assert f.shape == (800, 16) and g.shape == (800, 10), (f.shape, g.shape)\n\
             assert np.isfinite(f).all() and f.std(0).mean() > 0\n\
             print('ok')",
        )
        .arg(feats.join("features-00000.arrow"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", common::text(&check));

    // pseudo-label --method classifier: given labels kept, the rest predicted.
    let pl = tmp.path().join("pseudo_labels");
    let p = pl.to_str().unwrap();
    let r = common::run(&[
        "--quiet",
        "pseudo-label",
        "--method",
        "classifier",
        "--features",
        f,
        "--labels",
        l,
        "--images",
        i,
        "--output",
        p,
        "--compare-kmeans",
    ]);
    assert!(r.status.success(), "{}", common::text(&r));
    let pm = manifest(&pl);
    // k-means on the same features, scored beside the classifier's labels.
    let nmi = pm["counts"]["kmeans_quality_nmi"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&nmi), "k-means NMI {nmi}");
    assert!(pl.join("kmeans_confusion.png").exists());
    assert!(pl.join("kmeans_quality.json").exists());
    // Both splits of the labels are given labels (the holdout only measures the head).
    let lm = manifest(&labels);
    let labelled =
        lm["counts"]["labelled"].as_u64().unwrap() + lm["counts"]["holdout"].as_u64().unwrap();
    assert_eq!(pm["counts"]["given"].as_u64().unwrap(), labelled);
    assert_eq!(pm["counts"]["predicted"].as_u64().unwrap(), 800 - labelled);
    let q: Value =
        serde_json::from_slice(&std::fs::read(pl.join("quality.json")).unwrap()).unwrap();
    let acc = q["predicted"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.2, "pseudo-label accuracy on hidden images {acc}");
    assert_eq!(q["predicted"]["n"].as_u64().unwrap(), 800 - labelled);
    assert!(pl.join("confusion.png").exists());
    let check = common::python()
        .arg("-c")
        .arg(
            "import sys, pyarrow as pa\n\
             t = pa.ipc.open_stream(sys.argv[1]).read_all()\n\
             s = t['source'].to_pylist(); c = t['confidence'].to_pylist()\n\
             assert t.num_rows == 800\n\
             assert all(x == 1.0 for x, k in zip(c, s) if k == 'given')\n\
             assert all(0.1 <= x <= 1.0 for x, k in zip(c, s) if k == 'predicted')\n\
             print('ok')",
        )
        .arg(pl.join("pseudo_labels-00000.arrow"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", common::text(&check));
}

#[test]
fn killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = stages(tmp.path(), 400);
    let (i, l) = (images.to_str().unwrap(), labels.to_str().unwrap());
    let extra = [
        "--steps",
        "150",
        "--checkpoint-every",
        "10",
        "--threads",
        "1",
        "--eval-every",
        "40",
        "--log-every",
        "5",
    ];
    let a = tmp.path().join("a");
    let r = common::run(&pretrain_args(i, Some(l), a.to_str().unwrap(), &extra));
    assert!(r.status.success(), "{}", common::text(&r));

    let b = tmp.path().join("b");
    let args = pretrain_args(i, Some(l), b.to_str().unwrap(), &extra);
    let mut child = common::bin().args(&args).spawn().unwrap();
    let started = Instant::now();
    let ckpts = b.join("checkpoints");
    let any_checkpoint = || {
        std::fs::read_dir(&ckpts)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with("0.safetensors"))
            })
            .unwrap_or(false)
    };
    while !any_checkpoint() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !b.join("_stage.json").exists(),
        "the killed run must not look finished"
    );

    let r = common::run(
        &["--json"]
            .iter()
            .copied()
            .chain(args[1..].iter().copied())
            .collect::<Vec<_>>(),
    );
    assert!(r.status.success(), "{}", common::text(&r));
    let s: Value = serde_json::from_slice(&r.stdout).unwrap();
    let resumed = s["counts"]["resumed_at_step"].as_u64().unwrap();
    assert!((10..150).contains(&resumed), "resumed at {resumed}");
    let wa = std::fs::read(a.join("model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("model.safetensors")).unwrap();
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run's"
    );
    let ma = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(ma, mb, "metrics differ");
}

#[test]
fn supervised_baseline_and_bad_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = stages(tmp.path(), 400);
    let (i, l) = (images.to_str().unwrap(), labels.to_str().unwrap());
    let out = tmp.path().join("sup");
    let r = common::run(&pretrain_args(
        i,
        Some(l),
        out.to_str().unwrap(),
        &[
            "--objective",
            "supervised",
            "--steps",
            "20",
            "--threads",
            "2",
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
        ],
    ));
    assert!(r.status.success(), "{}", common::text(&r));
    let m = manifest(&out);
    assert_eq!(m["counts"]["objective"], "supervised");
    assert!(m["counts"]["rotation_accuracy"].is_null());
    assert!(m["counts"]["class_train_accuracy"].as_f64().unwrap() > 0.0);

    // supervised without labels: a usage error, one line, before anything runs.
    let r = common::run(&pretrain_args(
        i,
        None,
        tmp.path().join("x").to_str().unwrap(),
        &["--objective", "supervised"],
    ));
    assert_eq!(r.status.code(), Some(2), "{}", common::text(&r));
    assert!(!tmp.path().join("x").exists());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--labels") && err.lines().count() == 1,
        "{err}"
    );
    // Not a stage folder.
    let r = common::run(&pretrain_args(
        tmp.path().to_str().unwrap(),
        None,
        tmp.path().join("y").to_str().unwrap(),
        &[],
    ));
    assert_eq!(r.status.code(), Some(1), "{}", common::text(&r));
    assert!(String::from_utf8_lossy(&r.stderr).contains("run `fewlabels prepare` first"));
    // Unknown choice: usage error.
    let r = common::run(&pretrain_args(
        i,
        None,
        tmp.path().join("z").to_str().unwrap(),
        &["--objective", "magic"],
    ));
    assert_eq!(r.status.code(), Some(2));
    // embed with a model trained on another image size.
    let img32 = common::prepared_fashion(50, 32, None);
    let r = common::run(&[
        "--quiet",
        "embed",
        "--images",
        img32.to_str().unwrap(),
        "--model",
        out.to_str().unwrap(),
        "--output",
        tmp.path().join("f").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", common::text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("trained on"),
        "{}",
        common::text(&r)
    );
}
