//! The per-stage manifest `_stage.json`. A stage directory is finished when,
//! and only when, its manifest exists with `complete: true`; the manifest is
//! the last file a stage writes.
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ResultExt};
use crate::stage::StageName;

pub const MANIFEST_FILE: &str = "_stage.json";

/// One output file of a stage, relative to the stage directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputFile {
    pub path: String,
    /// Rows, for tables; absent for other files (checkpoints, images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    pub bytes: u64,
    pub checksum: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Start time, seconds since the Unix epoch.
    pub started_unix: f64,
    /// Wall time of the stage.
    pub seconds: f64,
    /// Named phases (decode, train, ...), seconds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phases: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub stage: StageName,
    pub tool_version: String,
    pub params: serde_json::Value,
    pub input_fingerprint: String,
    pub outputs: Vec<OutputFile>,
    #[serde(default)]
    pub counts: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub timings: Timings,
    pub complete: bool,
}

impl Manifest {
    /// Reads the manifest in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).at(&path)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Reads the manifest of a finished `stage`, or says which stage to run.
    /// A manifest that cannot be parsed counts as none: its stage re-runs.
    pub fn read_complete(dir: &Path, stage: StageName) -> Result<Manifest> {
        match Manifest::read(dir).ok().flatten() {
            Some(m) if m.complete && m.stage == stage => Ok(m),
            Some(m) if m.complete => Err(Error::file(
                dir,
                format!(
                    "holds the output of `{}`, not of `{stage}`; give the folder `fewlabels {stage}` wrote",
                    m.stage
                ),
            )),
            _ => Err(Error::file(
                dir,
                format!("no finished stage here (no complete {MANIFEST_FILE}); run `fewlabels {stage}` first"),
            )),
        }
    }

    /// A count as u64 (0 when absent).
    pub fn count(&self, key: &str) -> u64 {
        self.counts.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    /// The fingerprint a downstream stage takes of this one: its outputs' checksums.
    pub fn output_fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.stage.as_str().as_bytes());
        for o in &self.outputs {
            h.update(o.path.as_bytes());
            h.update(o.checksum.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }
}
