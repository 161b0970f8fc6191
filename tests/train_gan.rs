//! `train-gan` and `generate` end to end on real Fashion-MNIST images at
//! 32x32 (tiny networks, CPU): every mode trains a few steps, modes refuse
//! shards that lack what they need, a run killed with SIGKILL resumes to the
//! weights of an uninterrupted run, the TensorBoard files open with the
//! `tensorboard` package, and `generate` writes samples of the asked class.
mod common;
use common::s;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::ValueEnum;
use fewlabels::gan::modes::GanMode;
use tch::Tensor;

/// Real training shards of the first `n` images at 32x32: every true
/// label, or (`subset`) the 10% `sample-labels` keeps.
fn shards(dir: &Path, n: usize, subset: bool) -> (PathBuf, u64) {
    if subset {
        common::train_shards(dir, "subset", n, 32, Some("0.1"))
    } else {
        common::train_shards(dir, "all", n, 32, None)
    }
}

const TINY: &[&str] = &[
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
    "--log-every",
    "1",
    "--standing-batches",
    "2",
    "--grid-rows",
    "3",
    "--grid-cols",
    "2",
    "--device",
    "cpu",
    "--threads",
    "1",
];

fn train_args<'a>(data: &'a str, out: &'a str, mode: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "--quiet",
        "train-gan",
        "--data",
        data,
        "--output",
        out,
        "--mode",
        mode,
        "--steps",
        steps,
        "--sample-every",
        "2",
        "--checkpoint-every",
        "2",
    ];
    a.extend_from_slice(TINY);
    a
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn every_mode_trains_a_few_steps_and_checks_its_shards() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (all, _) = shards(tmp.path(), 48, false);
    let (subset, labelled) = shards(tmp.path(), 48, true);
    assert!((10..48).contains(&labelled), "{labelled}");
    // The pseudo-label modes train on labels the real stages inferred.
    let (predicted, given) = common::pseudo_shards(
        tmp.path(),
        "predicted",
        48,
        32,
        common::Inferred::Classifier,
    );
    assert!((1..48).contains(&given), "{given} given labels");
    let (clusters, _) =
        common::pseudo_shards(tmp.path(), "clusters", 48, 32, common::Inferred::Kmeans);
    for mode in GanMode::value_variants() {
        // The shards each mode trains on, and the metrics only it logs.
        let (data, extra): (&Path, &[&str]) = match mode {
            GanMode::Biggan => (&all, &[]),
            GanMode::S2gan => (&predicted, &[]),
            GanMode::S3gan => (&predicted, &["d/rotation_loss", "g/rotation_loss"]),
            GanMode::Clustering => (&clusters, &[]),
            GanMode::S2ganCo => (&subset, &["d/class_loss", "d/class_accuracy"]),
            GanMode::S3ganCo => (
                &subset,
                &["d/class_loss", "d/rotation_loss", "g/rotation_loss"],
            ),
            GanMode::ClusteringSs => (&clusters, &["d/rotation_loss", "g/rotation_accuracy"]),
            GanMode::Ssgan => (&subset, &["d/rotation_loss"]),
            GanMode::Unconditional | GanMode::SingleLabel | GanMode::RandomLabel => (&subset, &[]),
        };
        let mode = mode.name();
        let out = tmp.path().join(format!("gan-{mode}"));
        let o = common::run(&train_args(s(data), s(&out), mode, "2"));
        assert!(o.status.success(), "{mode}: {}", common::text(&o));
        for f in [
            "model.json",
            "ema.safetensors",
            "samples/step-00000002.png",
            "_stage.json",
        ] {
            assert!(out.join(f).exists(), "{mode}: no {f}");
        }
        // The manifest records the fraction of person-given labels the mode
        // used: the kept 10% on the s2gan routes, none on clustering's.
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("_stage.json")).unwrap()).unwrap();
        let want = match mode {
            "s2gan-co" | "s3gan-co" => labelled as f64 / 48.0,
            "s2gan" | "s3gan" => given as f64 / 48.0,
            "biggan" => 1.0,
            _ => 0.0,
        };
        let got = manifest["counts"]["label_fraction"].as_f64();
        assert!(
            got.is_some_and(|f| (f - want).abs() < 1e-9),
            "{mode}: label_fraction {got:?}, want {want}"
        );
        let class_head = ["s2gan-co", "s3gan-co"].contains(&mode);
        if !class_head {
            let m = metrics(&out);
            assert!(
                m[1].get("d/class_loss").is_none(),
                "{mode} has no class head"
            );
        }
        let m = metrics(&out);
        assert_eq!(m.len(), 2, "{mode}: one line per step");
        for key in [
            "d/loss_real",
            "d/loss_fake",
            "g/loss",
            "d/real_logit",
            "speed/images_per_s",
        ]
        .iter()
        .chain(extra)
        {
            let v = m[1][*key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "{mode}: {key} = {v}");
        }
        if mode == "s3gan-co" {
            let frac = m[1]["data/labelled_fraction"].as_f64().expect("fraction");
            assert!(frac < 0.5, "s3gan-co sees mostly unlabelled rows: {frac}");
        }
        if !extra.contains(&"d/rotation_loss") {
            assert!(
                m[1].get("d/rotation_loss").is_none(),
                "{mode} has no rotation head"
            );
        }
        let grid = image::open(out.join("samples/step-00000002.png")).expect("grid");
        let rows = if ["ssgan", "unconditional"].contains(&mode) {
            3
        } else if mode == "single-label" {
            1
        } else {
            3
        };
        assert_eq!(grid.height(), rows * 34 + 2, "{mode}: grid rows");
    }
    // Pseudo-label modes refuse shards with unlabelled rows, and say why.
    let out = tmp.path().join("refused");
    let o = common::run(&train_args(s(&subset), s(&out), "s2gan", "2"));
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "{} of 48 training rows have no label",
            48 - labelled
        )),
        "{err}"
    );
    // ... and shards whose every label a person gave: one line naming the shards.
    for mode in ["s2gan", "s3gan", "clustering", "clustering-ss"] {
        let o = common::run(&train_args(s(&all), s(&out), mode, "2"));
        common::one_line_error(
            &o,
            1,
            &[
                s(&all),
                &format!("mode {mode}"),
                "given by a person",
                "`pseudo-label`",
            ],
        );
    }
}

/// Tensors of a safetensors file by name, ordered.
fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("safetensors")
        .into_iter()
        .collect()
}

fn assert_same(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "{} vs {}",
        a.display(),
        b.display()
    );
    for (k, x) in &ta {
        if k == "__meta__" {
            continue;
        }
        assert!(
            x.equal(&tb[k]),
            "{k} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn killed_run_resumes_to_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, _) = shards(tmp.path(), 40, true);
    let straight = tmp.path().join("straight");
    let o = common::run(&train_args(s(&data), s(&straight), "s3gan-co", "6"));
    assert!(o.status.success(), "{}", common::text(&o));

    let resumed = tmp.path().join("resumed");
    let mut child = common::bin()
        .args(train_args(s(&data), s(&resumed), "s3gan-co", "6"))
        .env("FEWLABELS_TEST_STEP_DELAY_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let first = resumed.join("checkpoints/ckpt-00000002.safetensors");
    common::wait_for_file(&first, Duration::from_secs(120));
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the run was killed before it finished");
    assert!(!resumed.join("_stage.json").exists());
    assert!(!resumed.join("ema.safetensors").exists());

    let o = common::run(&train_args(s(&data), s(&resumed), "s3gan-co", "6"));
    assert!(o.status.success(), "{}", common::text(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(resumed.join("_stage.json")).expect("manifest"))
            .expect("json");
    let from = manifest["counts"]["resumed_from_step"]
        .as_u64()
        .expect("count");
    assert!(from >= 2, "resumed from step {from}");
    assert_same(
        &straight.join("ema.safetensors"),
        &resumed.join("ema.safetensors"),
    );
    assert_same(
        &straight.join("checkpoints/ckpt-00000006.safetensors"),
        &resumed.join("checkpoints/ckpt-00000006.safetensors"),
    );
    // The metrics read as one run: steps 1..6 once each.
    let steps: Vec<u64> = metrics(&resumed)
        .iter()
        .map(|m| m["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);

    // The same parameters again: up to date, nothing re-run.
    let o = common::run(&train_args(s(&data), s(&resumed), "s3gan-co", "6"));
    assert!(o.status.success(), "{}", common::text(&o));
}

#[test]
fn events_open_in_tensorboard_and_generate_writes_the_asked_class() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, _) = shards(tmp.path(), 40, false);
    let gan = tmp.path().join("gan");
    let o = common::run(&train_args(s(&data), s(&gan), "biggan", "2"));
    assert!(o.status.success(), "{}", common::text(&o));

    let script = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"images": 0, "scalars": 0})
ea.Reload()
tags = ea.Tags()
assert "d/loss_real" in tags["scalars"], tags
assert "g/loss" in tags["scalars"], tags
ev = ea.Scalars("d/loss_real")
assert [e.step for e in ev] == [1, 2], ev
img = ea.Images("samples/ema")
assert len(img) == 1 and img[0].step == 2, img
assert img[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
print("ok", len(tags["scalars"]), img[0].width, img[0].height)
"#;
    let o = common::python()
        .args(["-c", script, s(&gan.join("tensorboard"))])
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok"));

    let out = tmp.path().join("samples");
    let o = common::run(&[
        "--quiet",
        "generate",
        "--gan",
        s(&gan),
        "--count",
        "5",
        "--class",
        "7",
        "--output",
        s(&out),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let csv = std::fs::read_to_string(out.join("labels.csv")).expect("labels.csv");
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        let name = l.split(',').next().expect("file");
        assert!(l.ends_with(",7,Sneaker"), "{l}");
        let img = image::open(out.join(name)).expect("png");
        assert_eq!((img.width(), img.height()), (32, 32));
    }
    // A class the generator does not have is refused with a clear message.
    let o = common::run(&[
        "--quiet",
        "generate",
        "--gan",
        s(&gan),
        "--count",
        "1",
        "--class",
        "10",
        "--output",
        s(&out),
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--class 10"));
    // BigGAN's truncation trick: other images from the same seed, and a
    // threshold that is not positive is a usage error naming the flag.
    let truncated = tmp.path().join("truncated");
    let o = common::run(&[
        "--quiet",
        "generate",
        "--gan",
        s(&gan),
        "--count",
        "5",
        "--class",
        "7",
        "--output",
        s(&truncated),
        "--device",
        "cpu",
        "--truncation",
        "0.3",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let first = |dir: &Path| {
        image::open(dir.join("000000-class-7.png"))
            .unwrap()
            .into_rgb8()
    };
    assert_ne!(first(&truncated), first(&out));
    let o = common::run(&[
        "generate",
        "--gan",
        s(&gan),
        "--count",
        "1",
        "--output",
        s(&truncated),
        "--truncation",
        "-1",
    ]);
    common::one_line_error(&o, 2, &["--truncation -1"]);
    // The generator outside the tool: TorchScript that torch.jit.load runs
    // at any batch size, equal to our own forward for the same z and classes.
    let exported = tmp.path().join("export/G.pt");
    let o = common::run(&[
        "--quiet",
        "export",
        "--gan",
        s(&gan),
        "--output",
        s(&exported),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let script = r#"
import sys, torch
g = torch.jit.load(sys.argv[1])
torch.manual_seed(3)
z = torch.randn(5, int(sys.argv[2]))
y = torch.tensor([0, 7, 9, 3, 7])
with torch.no_grad():
    x = g(z, y)
assert x.shape == (5, 3, 32, 32) and float(x.abs().max()) <= 1.0, x.shape
z.numpy().astype("<f4").tofile(sys.argv[3] + ".z")
x.numpy().astype("<f4").tofile(sys.argv[3] + ".x")
"#;
    let info = fewlabels::gan::sample::model_info(&gan).unwrap();
    let z_dim = info.model.z_dim;
    let dump = tmp.path().join("export/out");
    let o = common::python()
        .args(["-c", script, s(&exported), &z_dim.to_string(), s(&dump)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let read = |ext: &str| -> Tensor {
        let b = std::fs::read(dump.with_extension(ext)).unwrap();
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Tensor::from_slice(&v)
    };
    let ours = fewlabels::gan::sample::load_generator(&gan, 0, tch::Device::Cpu).unwrap();
    let y = Tensor::from_slice(&[0i64, 7, 9, 3, 7]);
    let x = tch::no_grad(|| ours.g.forward_t(&read("z").view([5, z_dim]), &y, false));
    let d = (x.flatten(0, -1) - read("x")).abs().max().double_value(&[]);
    assert!(d < 1e-5, "exported generator differs from ours by {d}");
    // The library call the evaluate stage uses.
    let (x, labels) =
        fewlabels::gan::sample::sample_images(&gan, 6, None, 1, tch::Device::Cpu).expect("sample");
    assert_eq!(x.size(), vec![6, 3, 32, 32]);
    assert!(labels.iter().all(|l| (0..10).contains(l)));
    assert!(x.abs().max().double_value(&[]) <= 1.0);
}

/// Under a batch scheduler stderr is a file, the bars are hidden: plain
/// lines say the step, the losses, the speed and the time left.
#[test]
fn a_log_file_gets_plain_progress_lines() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, _) = shards(tmp.path(), 16, false);
    let out = tmp.path().join("gan");
    let mut args = train_args(s(&data), s(&out), "biggan", "3");
    args.retain(|a| *a != "--quiet");
    let o = common::bin()
        .args(&args)
        .env("FEWLABELS_LOG_SECONDS", "0")
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("train-gan: step "))
        .collect();
    assert_eq!(lines.len(), 3, "{err}");
    for (k, l) in lines.iter().enumerate() {
        assert!(
            l.starts_with(&format!("train-gan: step {}/3 (", k + 1)),
            "{l}"
        );
        for part in [", D ", ", G ", " images/s, ETA "] {
            assert!(l.contains(part), "{l}");
        }
    }
    assert!(lines[2].ends_with("ETA 0s"), "{}", lines[2]);

    // A run made stage by stage gets its report too: the folder above the stages.
    let o = common::run(&["--quiet", "report", s(tmp.path())]);
    assert!(o.status.success(), "{}", common::text(&o));
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(md.contains("biggan mode, 3 steps"), "{md}");
    assert!(md.contains("gan/samples/step-00000003.png"), "{md}");
    let o = common::run(&["report", s(&out)]);
    common::one_line_error(&o, 2, &["no finished stage folder", "run directory"]);
}

#[test]
fn a_diverging_run_names_the_step_and_the_term() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, _) = shards(tmp.path(), 16, false);
    let out = tmp.path().join("gan");
    let mut args = train_args(s(&data), s(&out), "biggan", "4");
    args.extend_from_slice(&["--lr-d", "1e38", "--lr-g", "1e38"]);
    let o = common::run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    // "step N: <term> is inf|NaN; stopping (...)"
    assert!(err.contains("error: step "), "{err}");
    assert!(
        err.contains(" loss") && (err.contains(" is inf") || err.contains(" is NaN")),
        "{err}"
    );
}
