//! The stage framework's promises, through the real binary on real data:
//! a damaged file is found before anything is built on it; two runs never
//! write one directory; a libtorch failure is one line; every parameter is
//! checked before anything runs; `--set` changes a pipeline without editing it.
mod common;
use common::s;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// A small pipeline on real Fashion-MNIST test images: prepare (10 shards
/// of 500 images at 16x16), sample-labels, shard.
fn pipeline(dir: &Path, run_dir: &Path) -> PathBuf {
    let (images, labels) = common::fashion_raw("t10k", 5000);
    let refs: Vec<&[u8]> = images.iter().map(|i| i.as_slice()).collect();
    let idx = common::write_idx(&dir.join("idx"), "t10k", &refs, &labels);
    let p = dir.join("p.toml");
    fs::write(
        &p,
        format!(
            "[pipeline]\nrun-dir = {:?}\n\n[prepare]\ninput = {:?}\nsize = 16\nrows-per-shard = 500\nclass-names = {:?}\n\n\
             [sample-labels]\nfraction = 0.1\n\n[shard]\nrows-per-shard = 2000\n",
            s(run_dir),
            s(&idx),
            common::fashion_class_names()
        ),
    )
    .unwrap();
    p
}

/// Every file of a run directory (relative path -> bytes), the framework's
/// bookkeeping and the report aside.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("report") || rel.ends_with("_lock") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if !rel.ends_with("_stage.json") {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Stage -> "ran" / "up-to-date" from `run --json`.
fn outcomes(o: &std::process::Output) -> BTreeMap<String, String> {
    assert!(o.status.success(), "{}", common::text(o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("outcome").is_some())
        .map(|v| {
            (
                v["stage"].as_str().unwrap().to_string(),
                v["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn plan_line(p: &Path, stage: &str, extra: &[&str]) -> String {
    let mut args = vec!["run", s(p), "--plan"];
    args.extend_from_slice(extra);
    let o = common::run(&args);
    assert!(o.status.success(), "{}", common::text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{stage} ")))
        .unwrap_or_else(|| panic!("no {stage} in the plan: {}", common::text(&o)))
        .to_string()
}

#[test]
fn a_flipped_byte_is_found_and_the_run_rebuilds_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let p = pipeline(tmp.path(), &run_dir);
    let first = common::run(&["--json", "run", s(&p)]);
    assert!(outcomes(&first).values().all(|o| o == "ran"));
    let clean = files(&run_dir);

    // One byte in the middle of a finished shard, same size, same modification time.
    let shard = run_dir.join("images").join("images-00005.arrow");
    let mtime = fs::metadata(&shard).unwrap().modified().unwrap();
    let mut bytes = fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&shard, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    // The plan sees it.
    let line = plan_line(&p, "prepare", &[]);
    assert!(
        line.contains("will run: output damaged") && line.contains("images-00005.arrow"),
        "{line}"
    );
    // A stage alone refuses to read it: exit 1, one line naming the file.
    for args in [
        vec!["sample-labels", "--images", s(&run_dir.join("images"))],
        vec![
            "shard",
            "--images",
            s(&run_dir.join("images")),
            "--labels",
            s(&run_dir.join("labels")),
        ],
    ] {
        let out = tmp.path().join("alone");
        let mut a = args.clone();
        a.extend(["--output", s(&out)]);
        let o = common::run(&a);
        assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("images-00005.arrow") && err.contains("checksum"),
            "{err}"
        );
        assert!(!out.exists(), "a refused stage made its folder");
    }
    // `run` re-runs prepare; what it rebuilds is what was there, so the rest stays.
    let second = outcomes(&common::run(&["--json", "run", s(&p)]));
    assert_eq!(second["prepare"], "ran", "{second:?}");
    assert_eq!(second["sample-labels"], "up-to-date", "{second:?}");
    assert_eq!(second["shard"], "up-to-date", "{second:?}");
    assert!(
        files(&run_dir) == clean,
        "not byte-identical to the clean run"
    );

    // A truncated shard is "changed" too, and a damaged training shard re-runs shard.
    let train = run_dir.join("train").join("train-00001.arrow");
    let len = fs::metadata(&train).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&train)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let line = plan_line(&p, "shard", &[]);
    assert!(
        line.contains("output damaged") && line.contains("bytes"),
        "{line}"
    );
    let third = outcomes(&common::run(&["--json", "run", s(&p)]));
    assert_eq!(third["prepare"], "up-to-date");
    assert_eq!(third["shard"], "ran");
    assert!(files(&run_dir) == clean);
}

#[test]
fn edited_counts_and_unreadable_manifests_rerun_the_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let p = pipeline(tmp.path(), &run_dir);
    outcomes(&common::run(&["--json", "run", s(&p)]));
    let clean = files(&run_dir);
    let manifest = run_dir.join("images").join("_stage.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    m["counts"]["seen"] = serde_json::json!(4000);
    fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let line = plan_line(&p, "prepare", &[]);
    assert!(
        line.contains("seen = 4000 but written + rejected = 5000"),
        "{line}"
    );
    // Rows recorded for a file must be the file's rows.
    let labels = run_dir.join("labels").join("_stage.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&labels).unwrap()).unwrap();
    m["outputs"][0]["rows"] = serde_json::json!(1);
    fs::write(&labels, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let line = plan_line(&p, "sample-labels", &[]);
    assert!(
        line.contains("labels-00000.arrow: holds ")
            && line.contains("rows but the manifest says 1"),
        "{line}"
    );
    // Garbage in a manifest: the stage runs again, nothing fails.
    fs::write(run_dir.join("train").join("_stage.json"), "{ not json").unwrap();
    let again = outcomes(&common::run(&["--json", "run", s(&p)]));
    assert_eq!(again["prepare"], "ran");
    assert_eq!(again["sample-labels"], "ran");
    assert_eq!(again["shard"], "ran");
    assert!(files(&run_dir) == clean);
}

#[test]
fn two_runs_on_one_directory_never_write_together() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let p = pipeline(tmp.path(), &run_dir);
    let start = || {
        common::bin()
            .args(["--quiet", "run", s(&p)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let refused: Vec<String> = [&a, &b]
        .iter()
        .filter(|o| !o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert!(refused.len() <= 1, "both failed: {refused:?}");
    for err in &refused {
        assert!(
            err.contains("run directory") && err.contains("is in use by process"),
            "{err}"
        );
    }
    // Every manifest matches its files (the plan verifies them all) and the
    // outputs equal a clean run's.
    let o = common::run(&["run", s(&p), "--plan"]);
    let plan = String::from_utf8_lossy(&o.stdout);
    assert_eq!(plan.matches("up to date").count(), 3, "{plan}");
    let clean_dir = tmp.path().join("clean");
    assert!(
        common::run(&["--quiet", "run", s(&p), "--run-dir", s(&clean_dir)])
            .status
            .success()
    );
    assert!(files(&run_dir) == files(&clean_dir));

    // Stage commands lock their folder too.
    let out = tmp.path().join("images");
    let prepare = || {
        common::bin()
            .args([
                "--quiet",
                "prepare",
                "--input",
                s(&tmp.path().join("idx").join("t10k-images-idx3-ubyte.gz")),
                "--size",
                "16",
                "--output",
                s(&out),
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (prepare(), prepare());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    assert!(outs.iter().any(|o| o.status.success()));
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("stage folder") && err.contains("is in use"),
            "{err}"
        );
    }
}

/// Training shards from real images (true labels), for train-gan's argument checks.
fn shards(dir: &Path) -> PathBuf {
    let images = common::prepared_fashion(200, 32, None);
    let train = dir.join("train");
    common::ok_json(&["shard", "--images", s(&images), "--output", s(&train)]);
    train
}

#[test]
fn a_libtorch_failure_is_one_line_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let train = shards(tmp.path());
    let out = tmp.path().join("gan");
    let o = common::run(&[
        "train-gan",
        "--data",
        s(&train),
        "--output",
        s(&out),
        "--mode",
        "biggan",
        "--resolution",
        "32",
        "--ch",
        "100000",
        "--steps",
        "1",
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: libtorch: ") && err.contains("allocate"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("frame #"),
        "{err}"
    );
    assert!(!out.join("_attempt.json").exists() && !out.exists());
}

#[test]
fn parameters_are_checked_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let p = pipeline(tmp.path(), &run_dir);
    let mut text = fs::read_to_string(&p).unwrap();
    text.push_str("\n[train-gan]\nmode = \"s3gan\"\nsteps = 2\nresolution = 48\n");
    fs::write(&p, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("resolution"))
        .unwrap()
        + 1;
    for extra in [&["--plan"][..], &[]] {
        let mut args = vec!["run", s(&p)];
        args.extend_from_slice(extra);
        let o = common::run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.trim(),
            format!(
                "error: {}:{line}: train-gan.resolution = 48: BigGAN presets exist for 32, 64 and 128",
                s(&p)
            )
        );
        assert!(!run_dir.exists(), "something ran");
    }
    // Across stages: the GAN's resolution must be the images' size.
    let o = common::run(&["run", s(&p), "--plan", "--set", "train-gan.resolution=32"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--set train-gan.resolution=32: the training images are 16x16; prepare them at the resolution (or a multiple of it), or train at their size (prepare.size = 16, line"),
        "{err}"
    );
    // Flags name the flag.
    let train = shards(tmp.path());
    for (flag, value, want) in [
        ("--lr-g", "-1", "--lr-g -1: must be a positive number"),
        ("--ema-decay", "1", "--ema-decay 1: must be in [0, 1)"),
        (
            "--resolution",
            "48",
            "--resolution 48: BigGAN presets exist",
        ),
    ] {
        let arg = format!("{flag}={value}");
        let o = common::run(&[
            "train-gan",
            "--data",
            s(&train),
            "--output",
            s(&tmp.path().join("gan")),
            &arg,
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{}",
            common::text(&o)
        );
    }
    let o = common::run(&[
        "sample-labels",
        "--images",
        s(&train),
        "--output",
        s(&tmp.path().join("l")),
        "--fraction",
        "1.5",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--fraction 1.5: must be in (0, 1]"));
}

#[test]
fn set_changes_a_pipeline_without_editing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let p = pipeline(tmp.path(), &run_dir);
    let o = common::run(&[
        "run",
        s(&p),
        "--plan",
        "--set",
        "shard.seed=7",
        "--set",
        "sample-labels.fraction=0.2",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains("--set shard.seed=7"), "{plan}");
    assert!(
        plan.contains("\"seed\":7") && plan.contains("\"fraction\":0.2"),
        "{plan}"
    );
    // A quoted TOML string, and a bare word taken as a string.
    let other = tmp.path().join("other.gz");
    let o = common::run(&[
        "run",
        s(&p),
        "--set",
        &format!("prepare.input=\"{}\"", s(&other)),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("--set prepare.input=\"{}\"", s(&other)))
            && err.contains("does not exist"),
        "{err}"
    );
    // Bad overrides are usage errors naming the --set.
    for (set, want) in [
        ("shard.seed", "expected TABLE.KEY=VALUE"),
        ("nosuch.key=1", "no table `nosuch`"),
        ("train-gan.steps=2", "has no [train-gan] table"),
        (
            "shard.seed=\"x\"",
            "--set shard.seed=\"x\": [shard] invalid type",
        ),
        ("shard.sede=1", "unknown field `sede`"),
    ] {
        let o = common::run(&["run", s(&p), "--plan", "--set", set]);
        assert_eq!(o.status.code(), Some(2), "{set}: {}", common::text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{set}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
