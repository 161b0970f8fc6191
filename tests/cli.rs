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
        assert!(help[heading..].contains("--device"), "{help}");
    }
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
