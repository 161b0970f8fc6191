//! pytorch-fid's FID Inception from its `torch.save` state dict, against
//! pytorch-fid itself: its own network (`pytorch_fid.inception`, random
//! weights and batch-norm statistics, since the real weights cannot be
//! downloaded here) is saved in both torch.save formats (zip, and the legacy
//! one of the 2019 `pt_inception-2015-12-05-6726825d.pth`), run by
//! `InceptionV3(resize_input=True, normalize_input=True)` on real photos, and
//! our `Inception::load` + `input` + `forward_with_logits` must give its pool
//! features and logits. Also: the state-dict reader on odd tensors (strides,
//! offsets, shared storages, dtypes) in both formats, one-line errors for
//! damaged and foreign files, and the TorchScript network working as before.
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use fewlabels::metrics::fid_inception::FidInception;
use fewlabels::metrics::inception::{self, Inception};
use fewlabels::models::state_dict;
use tch::{Device, Kind, Tensor};

/// Builds pytorch-fid's network with random weights, saves its state dict in
/// both formats, writes reference outputs for two batches of real photos,
/// and a file of odd tensors (both formats) with their expected values.
const SCRIPT: &str = r#"
import json, sys
from unittest import mock
import numpy as np
import torch
from PIL import Image
import pytorch_fid.inception as pfi

out = sys.argv[1]
photos = sys.argv[2:]
torch.manual_seed(0)

# fid_inception_v3() downloads the real weights; build it without them.
with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: None), \
     mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
    model = pfi.fid_inception_v3()

def batch(files, size):
    imgs = [np.asarray(Image.open(f).convert("RGB").resize(size, Image.BILINEAR)) for f in files]
    return np.stack(imgs).astype(np.uint8)  # [N, H, W, 3]

def to_input(u8):
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0  # pytorch-fid's [0, 1]

batches = {"square": batch(photos[:4], (128, 128)), "wide": batch(photos[4:6], (341, 227))}

# Non-trivial batch norm: random positive scales, random shifts, and running
# statistics measured on the photos (so activations stay O(1) through the
# random network), then perturbed.
bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
with torch.no_grad():
    for m in bns:
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.momentum = 1.0
    model.train()
    model(torch.nn.functional.interpolate(to_input(batches["square"]), size=(299, 299),
                                          mode="bilinear", align_corners=False) * 2 - 1)
    model.eval()
    for m in bns:
        m.running_mean.add_(torch.randn_like(m.running_mean) * 0.05)
        m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
    model.fc.bias.normal_(0.0, 1.0)

sd = model.state_dict()
torch.save(sd, f"{out}/zip.pth")
torch.save(sd, f"{out}/legacy.pth", _use_new_zipfile_serialization=False)

# The reference: pytorch-fid's own InceptionV3 wrapper around this network.
with mock.patch.object(pfi, "fid_inception_v3", lambda: model):
    net = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
shapes = {}
with torch.no_grad():
    for name, u8 in batches.items():
        pool = net(to_input(u8))[0].flatten(1)
        logits = model.fc(pool)
        unbiased = pool @ model.fc.weight.T
        u8.tofile(f"{out}/{name}.u8")
        for what, t in [("pool", pool), ("logits", logits), ("unbiased", unbiased)]:
            t.numpy().astype("<f4").tofile(f"{out}/{name}.{what}.f32")
        shapes[name] = list(u8.shape)

# Odd tensors for the reader: transposed, strided with an offset, views
# sharing one storage, and several dtypes.
base = torch.arange(24, dtype=torch.float32).view(4, 6)
odd = {
    "transposed": torch.arange(12, dtype=torch.float32).view(3, 4).t(),
    "strided": torch.arange(10, dtype=torch.float64)[3:9:2],
    "shared_row": base[2],
    "shared_col": base[:, 1],
    "shared_all": base,
    "int64": torch.tensor([-3, 2**40, 7], dtype=torch.int64),
    "int32": torch.tensor([[1, -2], [3, 4]], dtype=torch.int32),
    "half": torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
}
torch.save(odd, f"{out}/odd_zip.pth")
torch.save(odd, f"{out}/odd_legacy.pth", _use_new_zipfile_serialization=False)
expect = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "values": v.flatten().tolist()}
          for k, v in odd.items()}
json.dump({"batches": shapes, "odd": expect}, open(f"{out}/meta.json", "w"))
"#;

/// Runs [`SCRIPT`] into a fresh folder: the state dicts, reference outputs and `meta.json`.
fn reference() -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let photos = common::imagenet_photos();
    let o = common::python()
        .arg("-c")
        .arg(SCRIPT)
        .arg(dir.path())
        .args(&photos[..6])
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "pytorch-fid reference: {}",
        common::text(&o)
    );
    let meta =
        serde_json::from_str(&fs::read_to_string(dir.path().join("meta.json")).unwrap()).unwrap();
    (dir, meta)
}

fn f32s(path: &Path) -> Vec<f32> {
    fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap()
}

/// Max |a - b| and max |b| over two equally long vectors.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    (d, b.iter().map(|y| y.abs()).fold(0.0, f32::max))
}

/// Asserts `got` matches pytorch-fid's `want` within 1e-4 of its scale; returns the diff.
fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    let (d, scale) = max_diff(got, want);
    eprintln!("{what}: max |ours - pytorch-fid| = {d:.3e} (max |pytorch-fid| = {scale:.3e})");
    assert!(
        scale > 1e-3,
        "{what}: reference is all ~0 (scale {scale}): the test checks nothing"
    );
    assert!(d <= 1e-4 * scale, "{what}: max diff {d} at scale {scale}");
    d
}

/// The photos of batch `name` as [N, 3, H, W] uint8 (values 0..255).
fn images(dir: &Path, meta: &serde_json::Value, name: &str) -> Tensor {
    let s: Vec<i64> = meta["batches"][name]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let bytes = fs::read(dir.join(format!("{name}.u8"))).unwrap();
    Tensor::from_slice(&bytes)
        .view([s[0], s[1], s[2], s[3]])
        .permute([0, 3, 1, 2])
}

/// One run of [`SCRIPT`] (its two state dicts are ~95 MB each, so it runs
/// once) and the checks on what it wrote.
#[test]
fn pytorch_fid_state_dicts() {
    let (dir, meta) = reference();
    matches_pytorch_fid(dir.path(), &meta);
    evaluate_gives_the_is_of_pytorch_fids_logits(dir.path(), &meta);
    reader_keeps_strides_views_and_dtypes(dir.path(), &meta);
    damaged_and_foreign_files_are_one_line_errors(dir.path());
}

/// Our network on both files against pytorch-fid's outputs.
fn matches_pytorch_fid(dir: &Path, meta: &serde_json::Value) {
    for file in ["zip.pth", "legacy.pth"] {
        let path = dir.join(file);
        let net = Inception::load(&path, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        assert!(net.has_logits(), "{file}: pytorch-fid's network has logits");
        for batch in ["square", "wide"] {
            let x = net.input(&images(dir, meta, batch)).unwrap();
            assert_eq!(x.size()[1..], [3, 299, 299]);
            let (features, logits) = net.forward_with_logits(&x).unwrap();
            let logits = logits.expect("logits");
            let n = x.size()[0];
            assert_eq!(features.size(), [n, 2048]);
            assert_eq!(logits.size(), [n, 1008]);
            assert_eq!(
                (features.kind(), features.device()),
                (Kind::Float, Device::Cpu)
            );
            let at = |what: &str| dir.join(format!("{batch}.{what}.f32"));
            assert_close(
                &format!("{file} {batch} pool"),
                &to_vec(&features),
                &f32s(&at("pool")),
            );
            assert_close(
                &format!("{file} {batch} unbiased logits"),
                &to_vec(&logits),
                &f32s(&at("unbiased")),
            );
            // `forward` gives the same features.
            let again = net.forward(&x).unwrap();
            assert_eq!(to_vec(&again), to_vec(&features));
        }
    }

    // The network's own (biased) logits, from the model directly; the bias
    // is large here, so unbiased and biased logits differ.
    let path = dir.join("zip.pth");
    let fid = FidInception::from_state_dict(state_dict::read(&path).unwrap(), &path, Device::Cpu)
        .unwrap();
    let x = inception::preprocess_pytorch_fid(&images(dir, meta, "square")).unwrap();
    let out = tch::no_grad(|| fid.forward_t(&x, false)).unwrap();
    let want = f32s(&dir.join("square.logits.f32"));
    assert_close("zip square logits (with bias)", &to_vec(&out.logits), &want);
    let (bias_effect, _) = max_diff(&to_vec(&out.logits_unbiased), &want);
    assert!(
        bias_effect > 0.1,
        "the fc bias must matter in this test: {bias_effect}"
    );
}

/// `evaluate --inception FILE.pth` with no `--classifier`: an Inception
/// Score from the network's own logits, one split over all samples (as
/// compare_gan computes it), equal to the IS of pytorch-fid's unbiased
/// logits for the same photos.
fn evaluate_gives_the_is_of_pytorch_fids_logits(dir: &Path, meta: &serde_json::Value) {
    let x = images(dir, meta, "square");
    let folder = dir.join("square-png");
    fs::create_dir_all(&folder).unwrap();
    for i in 0..x.size()[0] {
        let chw = x.get(i).permute([1, 2, 0]).contiguous();
        let (h, w) = (chw.size()[0] as u32, chw.size()[1] as u32);
        let rgb = image::RgbImage::from_raw(w, h, Vec::<u8>::try_from(chw.flatten(0, -1)).unwrap())
            .unwrap();
        rgb.save(folder.join(format!("{i}.png"))).unwrap();
    }
    let table = dir.join("square-table");
    let o = common::run(&[
        "--quiet",
        "prepare",
        "--input",
        folder.to_str().unwrap(),
        "--size",
        "128",
        "--output",
        table.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let out = dir.join("eval");
    let o = common::bin()
        .args([
            "--quiet",
            "evaluate",
            "--samples",
            table.to_str().unwrap(),
            "--reference",
        ])
        .args([
            table.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--inception",
        ])
        .arg(dir.join("zip.pth"))
        .args(["--device", "cpu", "--threads", "2", "--export-stats"])
        .env("FEWLABELS_STATS_CACHE", dir.join("fid-stats"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let scores: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("scores.json")).unwrap()).unwrap();
    let got = scores["sources"][0]["is_mean"]
        .as_f64()
        .expect("an IS from the network's logits");
    // exp(mean_x KL(p(y|x) || p(y))) over the 4 photos, from pytorch-fid's logits.
    let logits = f32s(&dir.join("square.unbiased.f32"));
    let p: Vec<Vec<f64>> = logits
        .chunks(1008)
        .map(|row| {
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|v| v / z).collect()
        })
        .collect();
    let n = p.len() as f64;
    let marginal: Vec<f64> = (0..1008)
        .map(|c| p.iter().map(|r| r[c]).sum::<f64>() / n)
        .collect();
    let kl: f64 = p
        .iter()
        .map(|r| {
            r.iter()
                .zip(&marginal)
                .map(|(a, b)| if *a > 0.0 { a * (a / b).ln() } else { 0.0 })
                .sum::<f64>()
        })
        .sum::<f64>()
        / n;
    let want = kl.exp();
    eprintln!("IS: evaluate {got}, pytorch-fid's logits {want}");
    assert!((got - want).abs() <= 1e-4 * want, "IS {got} against {want}");

    // The statistics in the format pytorch-fid and clean-fid read: ours for
    // the table equal pytorch-fid's own for the folder of the same PNGs.
    assert_eq!(scores["resize_mode"], "legacy_pytorch");
    let check = r#"
import sys, numpy as np, torch
from unittest import mock
import pytorch_fid.inception as pfi
from pytorch_fid.fid_score import compute_statistics_of_path
ours = np.load(sys.argv[1])
# pytorch-fid's network with the test's weights (it would download the real ones).
with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: None), mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
    net = pfi.fid_inception_v3()
net.load_state_dict(torch.load(sys.argv[3]))
with mock.patch.object(pfi, "fid_inception_v3", lambda: net):
    model = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
mu, sigma = compute_statistics_of_path(sys.argv[2], model, 4, 2048, "cpu", 0)
print(np.abs(ours["mu"] - mu).max(), np.abs(ours["sigma"] - sigma).max(), ours["mu"].dtype, ours["sigma"].shape)
"#;
    let o = common::python()
        .args(["-c", check])
        .arg(out.join("reference-stats.npz"))
        .arg(&folder)
        .arg(dir.join("zip.pth"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let line = String::from_utf8_lossy(&o.stdout);
    eprintln!("reference-stats.npz against pytorch-fid's statistics: {line}");
    let parts: Vec<&str> = line.split_whitespace().collect();
    let (d_mu, d_sigma): (f64, f64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
    assert!(d_mu < 1e-4 && d_sigma < 1e-3, "{line}");
    assert_eq!(&parts[2..], ["float64", "(2048,", "2048)"], "{line}");
}

/// The reader on the odd tensors, in both formats.
fn reader_keeps_strides_views_and_dtypes(dir: &Path, meta: &serde_json::Value) {
    for file in ["odd_zip.pth", "odd_legacy.pth"] {
        let path = dir.join(file);
        let tensors = state_dict::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let odd = meta["odd"].as_object().unwrap();
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        let mut want_names: Vec<&str> = odd.keys().map(String::as_str).collect();
        want_names.sort();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, want_names, "{file}: every tensor");
        assert_eq!(names[0], "transposed", "{file}: the dict's order");
        for (name, t) in &tensors {
            let e = &odd[name];
            let shape: Vec<i64> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(t.size(), shape, "{file} {name}");
            let kind = match e["dtype"].as_str().unwrap() {
                "torch.float32" => Kind::Float,
                "torch.float64" => Kind::Double,
                "torch.float16" => Kind::Half,
                "torch.int64" => Kind::Int64,
                "torch.int32" => Kind::Int,
                "torch.bool" => Kind::Bool,
                d => panic!("dtype {d}"),
            };
            assert_eq!(t.kind(), kind, "{file} {name}");
            let flat = t.contiguous().view([-1]);
            if kind == Kind::Int64 {
                let got = Vec::<i64>::try_from(&flat).unwrap();
                let want: Vec<i64> = e["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                assert_eq!(got, want, "{file} {name}");
            } else {
                let got = Vec::<f64>::try_from(flat.to_kind(Kind::Double)).unwrap();
                let want: Vec<f64> = e["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| {
                        v.as_f64()
                            .or_else(|| v.as_bool().map(|b| b as u8 as f64))
                            .unwrap()
                    })
                    .collect();
                assert_eq!(got, want, "{file} {name}");
            }
        }
        // Views of one storage stay views of one tensor.
        let get = |n: &str| &tensors.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(
            get("shared_row").data_ptr(),
            get("shared_all").get(2).data_ptr(),
            "{file}"
        );
        assert_eq!(get("transposed").stride(), [1, 4], "{file}: strides kept");
    }
}

/// The error of loading `path` as the Inception: one line naming the file.
fn load_error(path: &Path) -> String {
    let err = match Inception::load(path, Device::Cpu) {
        Ok(_) => panic!("{} must not load", path.display()),
        Err(e) => e.to_string(),
    };
    eprintln!("{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(err.contains(name.as_ref()), "names the file: {err}");
    err
}

/// Damaged, foreign and missing files.
fn damaged_and_foreign_files_are_one_line_errors(dir: &Path) {
    let at = |n: &str| dir.join(n);
    let cut = |from: &str, to: &str, keep: f64| -> PathBuf {
        let bytes = fs::read(at(from)).unwrap();
        fs::write(at(to), &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
        at(to)
    };
    // Truncated in the storages (legacy) and without its zip directory (zip).
    for (path, words) in [
        (
            cut("legacy.pth", "cut_legacy.pth", 0.5),
            ["TorchScript", "truncated"],
        ),
        (cut("zip.pth", "cut_zip.pth", 0.5), ["TorchScript", "zip"]),
        (
            cut("legacy.pth", "head_legacy.pth", 0.0001),
            ["TorchScript", "truncated"],
        ),
    ] {
        let err = load_error(&path);
        for w in words {
            assert!(err.contains(w), "`{w}` not in: {err}");
        }
    }
    // Random bytes: both readers were tried.
    let mut x = 0x2545f4914f6cdd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    fs::write(at("noise.pth"), noise).unwrap();
    let err = load_error(&at("noise.pth"));
    assert!(
        err.contains("TorchScript") && err.contains("not a torch.save file"),
        "{err}"
    );
    // A real state dict of some other network: the first key it lacks.
    let err = load_error(&at("odd_zip.pth"));
    assert!(err.contains("no `Conv2d_1a_3x3.conv.weight`"), "{err}");
    // A file that is not there.
    let err = load_error(&at("missing.pth"));
    assert!(err.contains("no such"), "{err}");
}

#[test]
fn torchscript_inception_works_as_before() {
    let path = PathBuf::from(common::setup_var("FEWLABELS_INCEPTION"));
    let net = Inception::load(&path, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert!(!net.has_logits());
    let photos = common::imagenet_photos();
    let imgs: Vec<Tensor> = photos[..2]
        .iter()
        .map(|p| {
            let img = image::open(p).unwrap().to_rgb8();
            let (w, h) = img.dimensions();
            Tensor::from_slice(img.as_raw())
                .view([h as i64, w as i64, 3])
                .permute([2, 0, 1])
        })
        .collect();
    let x = Tensor::stack(&imgs, 0);
    let input = net.input(&x).unwrap();
    let old = inception::preprocess(&x).unwrap();
    assert_eq!(
        to_vec(&input),
        to_vec(&old),
        "input() is preprocess() for TorchScript"
    );
    let (features, logits) = net.forward_with_logits(&input).unwrap();
    assert!(logits.is_none());
    assert_eq!(features.size(), [2, 2048]);
    assert_eq!(to_vec(&features), to_vec(&net.forward(&old).unwrap()));
}
