//! The command line as a newcomer meets it: a bare `fewlabels` shows every
//! command, and each stage's `--help` opens with what the stage does, its
//! execution options under their own heading.
mod common;

#[test]
fn bare_command_lists_every_command_and_exits_2() {
    let o = common::run(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for command in [
        "prepare",
        "train-gan",
        "evaluate",
        "run",
        "generate",
        "doctor",
    ] {
        assert!(
            err.contains(&format!("  {command} ")),
            "no {command} in:\n{err}"
        );
    }
}

#[test]
fn each_stage_help_opens_with_its_own_description() {
    let o = common::run(&["--help"]);
    assert!(o.status.success(), "{}", common::text(&o));
    let top = String::from_utf8_lossy(&o.stdout);
    assert!(!top.contains("Execution options"), "{top}");
    for (stage, about) in [
        ("prepare", "Images (folder, tar, list file, IDX)"),
        ("train-gan", "Train the BigGAN"),
        ("evaluate", "Score a GAN"),
        ("pseudo-label", "Label every image"),
    ] {
        assert!(
            top.contains(about),
            "{stage}: `{about}` not in the command list:\n{top}"
        );
        let o = common::run(&[stage, "--help"]);
        assert!(o.status.success(), "{}", common::text(&o));
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.starts_with(about),
            "{stage} --help opens with:\n{help}"
        );
        let heading = help.find("Execution (").expect("an execution heading");
        assert!(help[heading..].contains("--threads"), "{help}");
        // --device only where a network runs (prepare decodes and writes).
        assert_eq!(
            help[heading..].contains("--device"),
            stage != "prepare",
            "{stage}: {help}"
        );
    }
    for stage in ["duplicates", "sample-labels", "shard"] {
        let o = common::run(&[stage, "--help"]);
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(!help.contains("--device"), "{stage}: {help}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = common::run(&[
        "prepare",
        "--input",
        tmp.path().to_str().unwrap(),
        "--output",
        tmp.path().join("o").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    common::one_line_error(&o, 2, &["--device", "runs no network"]);
}

/// A negative number is a value to refuse with its reason, not a flag clap
/// does not know (README's example error).
#[test]
fn negative_values_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gan");
    let o = common::run(&[
        "train-gan",
        "--data",
        tmp.path().to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--lr-g",
        "-1",
    ]);
    common::one_line_error(&o, 2, &["--lr-g -1: must be a positive number"]);
}

/// `make install`'s copy: the binary runs from PREFIX/bin, found on PATH,
/// libtorch found by its rpath without any environment.
#[test]
fn installed_binary_runs_from_path() {
    let tmp = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    let o = std::process::Command::new(&script)
        .arg(env!("CARGO_BIN_EXE_fewlabels"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not on PATH"));
    let o = std::process::Command::new("fewlabels")
        .arg("--version")
        .env_clear()
        .env("PATH", tmp.path().join("bin"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("fewlabels "));
    // Not a binary: exit 2 and the fix.
    let o = std::process::Command::new(&script)
        .arg(tmp.path().join("nothing"))
        .arg(tmp.path())
        .output()
        .unwrap();
    common::one_line_error(&o, 2, &["not a built binary"]);
}

/// Every flag of every command says in a sentence what it does.
#[test]
fn every_flag_has_a_sentence() {
    let commands = [
        "prepare",
        "duplicates",
        "sample-labels",
        "pretrain",
        "embed",
        "pseudo-label",
        "shard",
        "train-gan",
        "evaluate",
        "generate",
        "bench-gan",
        "run",
    ];
    let mut bare = Vec::new();
    for command in commands {
        let o = common::run(&[command, "--help"]);
        assert!(o.status.success(), "{}", common::text(&o));
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let is_flag = t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "));
            if !is_flag || !line.starts_with("  ") {
                continue;
            }
            // Short help: the sentence beside the flag; long help: on the
            // next line, before `[default: ...]`.
            let beside = t
                .split_once("  ")
                .is_some_and(|(_, rest)| !rest.trim().is_empty());
            let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
            let below = !next.is_empty() && !next.starts_with('[') && !next.starts_with('-');
            let described = beside || below;
            if !described {
                bare.push(format!("{command} {t}"));
            }
        }
    }
    assert!(bare.is_empty(), "flags without a sentence: {bare:#?}");
}
