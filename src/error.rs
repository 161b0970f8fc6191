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
    /// A missing prerequisite or a problem found while running; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// A parameter value out of range, or parameters that contradict each
    /// other: found before anything runs, exit status 2 like a usage error.
    /// The message names the flag, or the pipeline file and line.
    #[error("{0}")]
    Usage(String),
    /// Another process holds the folder's lock.
    #[error("{0}")]
    Busy(String),
    /// libtorch failed inside a stage (its first line; no C++ stack frames).
    #[error("libtorch: {0}")]
    TorchFailure(String),
    /// A bug: a panic outside libtorch, caught at the stage boundary.
    #[error("internal error: {0}; please report it")]
    Internal(String),
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
    pub fn usage(msg: impl fmt::Display) -> Self {
        Error::Usage(msg.to_string())
    }

    /// The process exit status for this error: 2 for usage and parameter
    /// errors, 1 for everything else (docs/design.md "What every stage promises").
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
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
