//! The stage framework: skip when unchanged, re-run on a changed parameter
//! and downstream of it, and an interrupted write never looks finished.
use std::fs;
use std::io::Write;
use std::path::Path;

use fewlabels::fsutil::{temp_path, AtomicFile};
use fewlabels::manifest::{Manifest, MANIFEST_FILE};
use fewlabels::progress::{set_output_mode, Outcome};
use fewlabels::stage::{lock_dir, run_stage, Input, StageName, ATTEMPT_FILE};

/// A toy stage: writes `out.txt` = upstream text (if any) + its parameter.
/// It goes by the names of stages without count rules: `pretrain` alone,
/// `train-gan` when it reads an upstream `pretrain`.
fn toy(dir: &Path, upstream: Option<&Path>, param: u32, runs: &mut u32) -> Outcome {
    let inputs: Vec<Input> = upstream
        .map(|u| vec![Input::stage(u, StageName::Pretrain)])
        .unwrap_or_default();
    let name = if upstream.is_some() {
        StageName::TrainGan
    } else {
        StageName::Pretrain
    };
    let (_, outcome) = run_stage(
        name,
        dir,
        &serde_json::json!({"param": param}),
        &inputs,
        |run| {
            *runs += 1;
            let prev = upstream
                .map(|u| fs::read_to_string(u.join("out.txt")).unwrap())
                .unwrap_or_default();
            let mut f = AtomicFile::create(run.dir.join("out.txt"))?;
            write!(f, "{prev}{param};").unwrap();
            f.commit()?;
            run.add_output("out.txt", None)?;
            run.count("param", param);
            Ok(())
        },
    )
    .unwrap();
    outcome
}

#[test]
fn unchanged_stage_is_skipped_and_changed_parameter_reruns_downstream() {
    set_output_mode(true, false);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (mut ra, mut rb) = (0, 0);
    assert_eq!(toy(&a, None, 1, &mut ra), Outcome::Ran);
    assert_eq!(toy(&b, Some(&a), 7, &mut rb), Outcome::Ran);
    // Unchanged: both skipped, nothing re-done.
    assert_eq!(toy(&a, None, 1, &mut ra), Outcome::UpToDate);
    assert_eq!(toy(&b, Some(&a), 7, &mut rb), Outcome::UpToDate);
    assert_eq!((ra, rb), (1, 1));
    // A changed parameter upstream re-runs it, and its new output re-runs downstream.
    assert_eq!(toy(&a, None, 2, &mut ra), Outcome::Ran);
    assert_eq!(toy(&b, Some(&a), 7, &mut rb), Outcome::Ran);
    assert_eq!((ra, rb), (2, 2));
    assert_eq!(fs::read_to_string(b.join("out.txt")).unwrap(), "2;7;");
    let m = Manifest::read(&b).unwrap().unwrap();
    assert!(m.complete);
    assert_eq!(m.outputs.len(), 1);
    assert_eq!(m.outputs[0].bytes, 4);
    assert!(m.outputs[0].checksum.starts_with("blake3:"));
    assert_eq!(m.params["param"], 7);
}

#[test]
fn interrupted_stage_leaves_nothing_finished_and_is_redone() {
    set_output_mode(true, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut runs = 0;
    toy(&dir, None, 1, &mut runs);
    // A second run with new parameters fails half way through writing its output.
    let err = run_stage(
        StageName::Pretrain,
        &dir,
        &serde_json::json!({"param": 2}),
        &[],
        |run| {
            let mut f = AtomicFile::create(run.dir.join("out.txt"))?;
            f.write_all(b"half").unwrap();
            std::mem::forget(f); // no commit, no cleanup of its own
            Err(fewlabels::Error::invalid("failed"))
        },
    );
    assert!(err.is_err());
    // Nothing looks finished: no manifest, no half-written file under its
    // name, and nothing to resume, so no attempt record either.
    assert!(!dir.join(MANIFEST_FILE).exists());
    assert!(!dir.join("out.txt").exists());
    assert!(!dir.join(ATTEMPT_FILE).exists());
    assert!(Manifest::read(&dir).unwrap().is_none());
    assert!(!temp_path(&dir.join("out.txt")).exists());
    assert_eq!(toy(&dir, None, 2, &mut runs), Outcome::Ran);
    assert!(!temp_path(&dir.join("out.txt")).exists());
    assert_eq!(fs::read_to_string(dir.join("out.txt")).unwrap(), "2;");
}

#[test]
fn a_panic_in_a_stage_is_an_error_and_cleans_up() {
    set_output_mode(true, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let err = run_stage(
        StageName::Pretrain,
        &dir,
        &serde_json::json!({}),
        &[],
        |_| {
            // A real libtorch failure: tch's tensor methods panic on it.
            let _ = tch::Tensor::zeros([1 << 50], (tch::Kind::Float, tch::Device::Cpu));
            Ok(())
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("libtorch: ") && msg.contains("allocate") && !msg.contains("frame #"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1, "{msg}");
    // The folder this run made is gone: no attempt record, no lock file.
    assert!(
        !dir.exists(),
        "left {:?}",
        fs::read_dir(&dir).map(|d| d.count())
    );
}

#[test]
fn a_failure_after_finished_files_keeps_them_for_the_resume() {
    set_output_mode(true, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let params = serde_json::json!({"n": 2});
    let err = run_stage(StageName::Pretrain, &dir, &params, &[], |run| {
        fs::write(run.dir.join("part-0"), "done").unwrap();
        Err(fewlabels::Error::invalid("disk full"))
    });
    assert!(err.is_err());
    assert!(dir.join(ATTEMPT_FILE).exists() && dir.join("part-0").exists());
    let (_, outcome) = run_stage(StageName::Pretrain, &dir, &params, &[], |run| {
        assert!(run.resuming, "the same command resumes");
        run.add_output("part-0", None)
    })
    .unwrap();
    assert_eq!(outcome, Outcome::Ran);
}

#[test]
fn a_locked_folder_names_the_process_that_holds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let held = lock_dir(tmp.path(), "run directory").unwrap();
    let err = lock_dir(tmp.path(), "run directory")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is in use by process") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    drop(held);
    lock_dir(tmp.path(), "run directory").expect("free again once dropped");
}

#[test]
fn refuses_to_empty_a_foreign_folder() {
    set_output_mode(true, false);
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
    let err = run_stage(
        StageName::Pretrain,
        tmp.path(),
        &serde_json::json!({}),
        &[],
        |_| Ok(()),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not a fewlabels stage folder"),
        "{err}"
    );
    assert!(tmp.path().join("precious.txt").exists());
}

#[test]
fn missing_upstream_names_the_stage_to_run() {
    set_output_mode(true, false);
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = 0;
    let err = run_stage(
        StageName::TrainGan,
        &tmp.path().join("b"),
        &serde_json::json!({}),
        &[Input::stage(tmp.path().join("a"), StageName::Prepare)],
        |_| {
            runs += 1;
            Ok(())
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("run `fewlabels prepare` first"),
        "{err}"
    );
    assert_eq!(runs, 0);
}
