//! Every shipped `pipelines/imagenet-*.toml` route, end to end, at 128x128
//! on a tiny ImageNet-shaped input made from the 20 real ImageNet photos
//! `make setup` installs: a tar of per-class tars of JPEGs of mixed sizes
//! and aspect ratios (a grey JPEG, a CMYK JPEG and a PNG named `.JPEG`
//! among them, as ImageNet has), and a flat validation folder with its
//! ground truth as a list file. The pipelines run as shipped, shrunk with
//! `--set` (steps, batch, widths, sample counts) to fit the CPU budget;
//! each reaches `eval/` with a FID and a report.
mod common;
use common::s;

use std::fs;
use std::path::{Path, PathBuf};

/// Writes `train.tar`, `val/` and `val.csv` (path,label by synset) in `dir`.
const MAKE_IMAGENET: &str = r#"
import glob, io, os, sys, tarfile
from PIL import Image
photos = sorted(glob.glob(os.path.join(sys.argv[1], "*.jp*g")) + glob.glob(os.path.join(sys.argv[1], "*.png")))
assert len(photos) >= 12, photos
out = sys.argv[2]
wnids = ["n01440764", "n01443537", "n01484850"]
sizes = [(500, 375), (375, 500), (500, 333), (640, 480), (200, 300), (180, 180)]
def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()
def add(tar, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))
with tarfile.open(os.path.join(out, "train.tar"), "w") as outer:
    for c, w in enumerate(wnids):
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w") as t:
            for k in range(12):
                img = Image.open(photos[(c * 12 + k) % len(photos)]).convert("RGB").resize(sizes[k % len(sizes)])
                if k == 3:
                    data = encode(img.convert("L"), "JPEG", quality=90)
                elif k == 5:
                    data = encode(img.convert("CMYK"), "JPEG", quality=90)
                elif k == 7:
                    data = encode(img, "PNG")
                else:
                    data = encode(img, "JPEG", quality=70 + 2 * k)
                add(t, "%s_%d.JPEG" % (w, 1000 + k), data)
        add(outer, w + ".tar", inner.getvalue())
os.makedirs(os.path.join(out, "val"))
rows = ["path,label"]
for i in range(12):
    img = Image.open(photos[(5 * i + 3) % len(photos)]).convert("RGB").resize(sizes[(i + 2) % len(sizes)])
    name = "ILSVRC2012_val_%08d.JPEG" % (i + 1)
    img.save(os.path.join(out, "val", name), "JPEG", quality=90)
    rows.append("val/%s,%s" % (name, wnids[i % 3]))
open(os.path.join(out, "val.csv"), "w").write("\n".join(rows) + "\n")
"#;

fn make_imagenet(dir: &Path) {
    let script = dir.join("make_imagenet.py");
    fs::write(&script, MAKE_IMAGENET).unwrap();
    let o = common::python()
        .arg(&script)
        .arg(common::photos())
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
}

/// The `--set` overrides that shrink a pipeline to this input and a CPU:
/// only for the tables the file has (`--set` never adds a stage).
fn shrink(pipeline: &Path, data: &Path) -> Vec<String> {
    let doc: toml::Table = toml::from_str(&fs::read_to_string(pipeline).unwrap()).unwrap();
    let mut sets = vec![
        format!("prepare.input={:?}", s(&data.join("train.tar"))),
        format!("evaluate.reference={:?}", s(&data.join("val.csv"))),
        "exec.device=\"cpu\"".into(),
        "exec.threads=2".into(),
    ];
    let per_table: [(&str, &[&str]); 6] = [
        (
            "pretrain",
            &[
                "arch=\"tiny\"",
                "steps=2",
                "batch-size=4",
                "labelled-batch-size=2",
                "warmup-steps=0",
                "checkpoint-every=1",
                "eval-every=2",
                "log-every=1",
            ],
        ),
        ("pseudo-label", &["clusters=3"]),
        ("shard", &["rows-per-shard=16"]),
        (
            "train-gan",
            &[
                "steps=2",
                "ch=2",
                "batch-size=16",
                "accumulation=1",
                "ema-start=0",
                "checkpoint-every=1",
                "sample-every=2",
                "log-every=1",
                "standing-batches=1",
                "grid-rows=3",
                "grid-cols=2",
                "bf16=false",
                "eval-every=1",
                "eval-samples=8",
            ],
        ),
        (
            "evaluate",
            &[
                "num-samples=8",
                "repeats=1",
                "standing-samples=16",
                "batch-size=8",
                "kid-subsets=2",
                "kid-subset-size=4",
            ],
        ),
        ("sample-labels", &["fraction=0.1"]),
    ];
    for (table, keys) in per_table {
        if !doc.contains_key(table) {
            continue;
        }
        if table == "pseudo-label"
            && doc[table].get("method").and_then(|m| m.as_str()) != Some("kmeans")
        {
            continue;
        }
        for k in keys {
            sets.push(format!("{table}.{k}"));
        }
    }
    sets
}

fn routes() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("imagenet-") && n.ends_with(".toml"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_imagenet_route_runs_end_to_end_on_an_imagenet_shaped_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).unwrap();
    make_imagenet(&data);
    let routes = routes();
    assert_eq!(routes.len(), 8, "{routes:?}");
    for (i, route) in routes.iter().enumerate() {
        let name = route.file_stem().unwrap().to_str().unwrap();
        let run_dir = tmp.path().join(name);
        let mut args = vec![
            "--quiet".to_string(),
            "run".into(),
            s(route).into(),
            "--run-dir".into(),
            s(&run_dir).into(),
        ];
        let mut sets = shrink(route, &data);
        // Two routes store their images another way, through every reader:
        // raw rows are squares (the centred 192 square, distorted crops
        // drawn inside it), JPEG rows whole photos as the pipelines store.
        match i {
            0 => sets.extend([
                "prepare.codec=\"raw\"".into(),
                "prepare.resize=\"crop\"".into(),
            ]),
            1 => sets.push("prepare.codec=\"jpeg\"".into()),
            _ => {}
        }
        for set in sets {
            args.push("--set".into());
            args.push(set);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = common::run(&args);
        assert!(o.status.success(), "{name}: {}", common::text(&o));

        // The training images: 36 from the tar of class tars (the CMYK,
        // grey and PNG-named-JPEG members included), three classes.
        let images: serde_json::Value =
            serde_json::from_slice(&fs::read(run_dir.join("images").join("_stage.json")).unwrap())
                .unwrap();
        assert_eq!(
            images["counts"]["written"], 36,
            "{name}: {}",
            images["counts"]
        );
        assert_eq!(images["counts"]["classes"], 3, "{name}");
        // The training images: whole photos by their shorter side (but the raw route's squares).
        assert_eq!(images["params"]["size"], 192, "{name}");
        let whole = images["params"]["resize"] == "keep-ratio";
        assert_eq!(whole, i != 0, "{name}");
        // The reference: the validation list as the centred square at the
        // samples' size (compare_gan's evaluation crop), and evaluate saw 128 on both sides.
        let reference: serde_json::Value = serde_json::from_slice(
            &fs::read(run_dir.join("reference").join("_stage.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(reference["counts"]["written"], 12, "{name}");
        assert_eq!(reference["params"]["size"], 128, "{name}");
        assert_eq!(reference["params"]["resize"], "crop", "{name}");
        let eval: serde_json::Value =
            serde_json::from_slice(&fs::read(run_dir.join("eval").join("_stage.json")).unwrap())
                .unwrap();
        assert_eq!(eval["counts"]["samples_resolution"], 128, "{name}");
        assert_eq!(eval["counts"]["reference_resolution"], 128, "{name}");
        let scores: serde_json::Value =
            serde_json::from_slice(&fs::read(run_dir.join("eval").join("scores.json")).unwrap())
                .unwrap();
        let fid = scores["sources"][0]["fid_mean"].as_f64().unwrap();
        assert!(fid.is_finite() && fid > 0.0, "{name}: FID {fid}");
        assert_eq!(scores["reference"]["images"], 12, "{name}");
        assert!(
            scores["reference"]["dir"]
                .as_str()
                .unwrap()
                .ends_with("reference"),
            "{name}: FID against the validation images"
        );
        // Class consistency by the route's own pretrain head, where it has one.
        let consistency = scores["sources"][0]["class_consistency"].as_f64();
        if ["imagenet-s2gan", "imagenet-s3gan"].contains(&name) {
            let c = consistency.expect("s2gan/s3gan: the S2L head judges the samples");
            assert!((0.0..=1.0).contains(&c), "{name}: {c}");
            assert!(
                scores["classifier_accuracy"]["accuracy"].is_number(),
                "{name}"
            );
        } else {
            assert_eq!(consistency, None, "{name}: no class head to judge with");
        }
        let gan: serde_json::Value =
            serde_json::from_slice(&fs::read(run_dir.join("gan").join("_stage.json")).unwrap())
                .unwrap();
        assert_eq!(gan["params"]["augment"], "distorted", "{name}");
        assert_eq!(gan["params"]["arch"], "compare-gan", "{name}");
        assert_eq!(gan["params"]["sync-bn"], true, "{name}");
        let grid = run_dir
            .join("gan")
            .join("samples")
            .join("step-00000002.png");
        // 3 rows x 2 columns of 128x128 samples with 2-pixel borders, and
        // a conditional G's rows named by their synsets (9 characters at
        // twice the font) in a margin on the left.
        let (w, h) = image::image_dimensions(&grid).unwrap();
        assert_eq!(h, 3 * 130 + 2, "{name}: 128x128 samples in the grid");
        let margin = if gan["params"]["mode"] == "ssgan" {
            0
        } else {
            9 * 12 + 8
        };
        assert_eq!(w, 2 * 130 + 2 + margin, "{name}: the rows' names");
        assert!(run_dir.join("report.html").exists(), "{name}: no report");
        // Scored while it trained (here every step, as shipped every 5,000):
        // FID at steps 1 and 2, the best counted, the curve in the report.
        assert_eq!(gan["counts"]["eval_points"], 2, "{name}");
        assert!(
            gan["counts"]["best_fid"]
                .as_f64()
                .is_some_and(f64::is_finite),
            "{name}"
        );
        let report = fs::read_to_string(run_dir.join("report.md")).unwrap();
        assert!(report.contains("metrics-eval_fid.svg"), "{name}: {report}");
        // Every kept checkpoint scored by evaluate, the best named.
        let src = &scores["sources"][0];
        assert_eq!(
            src["checkpoints"].as_array().map(Vec::len),
            Some(2),
            "{name}: {src}"
        );
        assert!(src["best_step"].is_u64(), "{name}: {src}");
    }
}
