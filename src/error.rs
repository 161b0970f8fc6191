//! The one error type of the library. Every message names the file (or
//! flag) and the problem, so the binary can print it as a single line and
//! exit 1 without a backtrace.
use std::fmt;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem with a specific file: unreadable, malformed, wrong schema.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// An I/O error on a specific file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Invalid parameters or a missing prerequisite; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// A failure inside libtorch (shape mismatch, CUDA error, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// `--strict` met a bad input.
    #[error("{}: rejected ({reason}); stopping because of --strict", path.display())]
    Strict { path: PathBuf, reason: String },
    /// A training run diverged.
    #[error(
        "step {step}: {term} is {value}; stopping (lower the learning rate or check the data)"
    )]
    NonFinite { step: u64, term: String, value: f64 },
}

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.to_string(),
        }
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
}

/// Attaches a path to I/O and format errors: `fs::read(p).at(p)?`.
pub trait ResultExt<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, std::io::Error> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl<T> ResultExt<T> for std::result::Result<T, arrow::error::ArrowError> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, format!("Arrow: {e}")))
    }
}

impl<T> ResultExt<T> for std::result::Result<T, serde_json::Error> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, format!("JSON: {e}")))
    }
}

impl<T> ResultExt<T> for std::result::Result<T, polars::error::PolarsError> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, format!("{e}")))
    }
}

impl<T> ResultExt<T> for std::result::Result<T, tch::TchError> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, format!("libtorch: {e}")))
    }
}
