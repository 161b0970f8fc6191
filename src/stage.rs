//! The stage framework (DESIGN.md "Rules every stage follows"). A stage calls
//! [`begin`] with its parameters and inputs; it either gets back the finished
//! manifest (inputs and parameters unchanged: skip) or a [`StageRun`] that
//! collects outputs and counts and writes the manifest last in
//! [`StageRun::finish`].
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::{checksum_file, remove_temp_files, write_atomic};
use crate::manifest::{Manifest, OutputFile, Timings, MANIFEST_FILE};
use crate::progress::{print_summary, Outcome};

/// Written when a stage starts; lets an interrupted run with the same
/// parameters and inputs resume from its finished files.
pub const ATTEMPT_FILE: &str = "_attempt.json";

pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a stage reads.
#[derive(Debug, Clone)]
pub enum Input {
    /// The directory of an earlier stage: fingerprinted by its outputs' checksums.
    Stage { dir: PathBuf, stage: &'static str },
    /// A raw file or folder from the user: fingerprinted by names, sizes and
    /// modification times (hashing a 140 GB tar would take longer than the stage).
    Path(PathBuf),
}

impl Input {
    pub fn stage(dir: impl Into<PathBuf>, stage: &'static str) -> Self {
        Input::Stage {
            dir: dir.into(),
            stage,
        }
    }
}

/// The fingerprint of a list of inputs.
pub fn fingerprint(inputs: &[Input]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for input in inputs {
        match input {
            Input::Stage { dir, stage } => {
                let m = Manifest::read_complete(dir, stage)?;
                h.update(b"stage\0");
                h.update(m.output_fingerprint().as_bytes());
            }
            Input::Path(path) => {
                h.update(b"path\0");
                fingerprint_path(path, &mut h)?;
            }
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

fn fingerprint_path(path: &Path, h: &mut blake3::Hasher) -> Result<()> {
    let meta = fs::metadata(path).at(path)?;
    h.update(path.as_os_str().as_encoded_bytes());
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .at(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            // Unreadable entries are the stage's business (it rejects them).
            let _ = fingerprint_path(&e, h);
        }
    } else {
        h.update(&meta.len().to_le_bytes());
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(&mtime.to_le_bytes());
    }
    Ok(())
}

#[derive(Serialize, serde::Deserialize, PartialEq)]
struct Attempt {
    tool_version: String,
    params: serde_json::Value,
    input_fingerprint: String,
}

/// The result of [`begin`].
pub enum Begin {
    UpToDate(Manifest),
    Run(StageRun),
}

/// Starts stage `name` writing into `dir`. Returns `UpToDate` when `dir`
/// holds a complete manifest with the same tool version, parameters and
/// input fingerprint; otherwise prepares `dir` and returns a [`StageRun`].
pub fn begin(name: &str, dir: &Path, params: &impl Serialize, inputs: &[Input]) -> Result<Begin> {
    let params = serde_json::to_value(params)
        .map_err(|e| Error::invalid(format!("{name}: parameters: {e}")))?;
    let input_fingerprint = fingerprint(inputs)?;
    if let Some(m) = Manifest::read(dir)? {
        if m.complete
            && m.stage == name
            && m.tool_version == TOOL_VERSION
            && m.params == params
            && m.input_fingerprint == input_fingerprint
            && outputs_present(dir, &m)
        {
            return Ok(Begin::UpToDate(m));
        }
    }
    let attempt = Attempt {
        tool_version: TOOL_VERSION.to_string(),
        params: params.clone(),
        input_fingerprint: input_fingerprint.clone(),
    };
    let resuming = prepare_dir(name, dir, &attempt)?;
    Ok(Begin::Run(StageRun {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        params,
        input_fingerprint,
        resuming,
        started: Instant::now(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        outputs: Vec::new(),
        counts: BTreeMap::new(),
        phases: BTreeMap::new(),
    }))
}

fn outputs_present(dir: &Path, m: &Manifest) -> bool {
    m.outputs.iter().all(|o| {
        fs::metadata(dir.join(&o.path))
            .map(|md| md.len() == o.bytes)
            .unwrap_or(false)
    })
}

/// Makes `dir` ready for a run. Keeps the files of an interrupted attempt
/// with identical parameters and inputs (returns true: resume); otherwise
/// empties it. Refuses to empty a non-empty folder that is not a stage's.
fn prepare_dir(name: &str, dir: &Path, attempt: &Attempt) -> Result<bool> {
    fs::create_dir_all(dir).at(dir)?;
    let attempt_path = dir.join(ATTEMPT_FILE);
    let manifest_path = dir.join(MANIFEST_FILE);
    let previous: Option<Attempt> = fs::read(&attempt_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let ours = previous.is_some() || manifest_path.exists();
    let non_empty = fs::read_dir(dir).at(dir)?.next().is_some();
    if non_empty && !ours {
        return Err(Error::file(dir, format!("not empty and not a fewlabels stage folder; give `{name}` an empty or new --output")));
    }
    // The manifest goes first: from here on the folder does not look finished.
    if manifest_path.exists() {
        fs::remove_file(&manifest_path).at(&manifest_path)?;
    }
    remove_temp_files(dir)?;
    let resuming = previous.as_ref() == Some(attempt);
    if !resuming && non_empty {
        for entry in fs::read_dir(dir).at(dir)? {
            let p = entry.at(dir)?.path();
            if p.is_dir() {
                fs::remove_dir_all(&p).at(&p)?
            } else {
                fs::remove_file(&p).at(&p)?
            }
        }
    }
    write_atomic(
        &attempt_path,
        &serde_json::to_vec_pretty(attempt).at(&attempt_path)?,
    )?;
    Ok(resuming)
}

/// A stage in progress: collects outputs, counts and timings.
pub struct StageRun {
    pub name: String,
    pub dir: PathBuf,
    pub params: serde_json::Value,
    pub input_fingerprint: String,
    /// True when an interrupted attempt with the same parameters left files to reuse.
    pub resuming: bool,
    started: Instant,
    started_unix: f64,
    outputs: Vec<OutputFile>,
    counts: BTreeMap<String, serde_json::Value>,
    phases: BTreeMap<String, f64>,
}

impl StageRun {
    /// Records a finished output file (relative to the stage directory).
    pub fn add_output(&mut self, rel: impl AsRef<Path>, rows: Option<u64>) -> Result<()> {
        let rel = rel.as_ref();
        let path = self.dir.join(rel);
        let bytes = fs::metadata(&path).at(&path)?.len();
        let checksum = checksum_file(&path)?;
        self.outputs.push(OutputFile {
            path: rel.to_string_lossy().replace('\\', "/"),
            rows,
            bytes,
            checksum,
        });
        Ok(())
    }

    /// Sets a count or figure shown in the summary and kept in the manifest.
    pub fn count(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.counts.insert(key.to_string(), value.into());
    }

    pub fn phase(&mut self, key: &str, seconds: f64) {
        *self.phases.entry(key.to_string()).or_insert(0.0) += seconds;
    }

    /// Writes the complete manifest (the stage's last write) and prints the summary.
    pub fn finish(self) -> Result<Manifest> {
        let manifest = Manifest {
            stage: self.name,
            tool_version: TOOL_VERSION.to_string(),
            params: self.params,
            input_fingerprint: self.input_fingerprint,
            outputs: self.outputs,
            counts: self.counts,
            timings: Timings {
                started_unix: self.started_unix,
                seconds: self.started.elapsed().as_secs_f64(),
                phases: self.phases,
            },
            complete: true,
        };
        let path = self.dir.join(MANIFEST_FILE);
        write_atomic(&path, &serde_json::to_vec_pretty(&manifest).at(&path)?)?;
        let attempt = self.dir.join(ATTEMPT_FILE);
        let _ = fs::remove_file(attempt);
        print_summary(&manifest, Outcome::Ran, &self.dir);
        Ok(manifest)
    }
}

/// Runs a stage body unless the stage is up to date; prints the summary either way.
pub fn run_stage(
    name: &str,
    dir: &Path,
    params: &impl Serialize,
    inputs: &[Input],
    body: impl FnOnce(&mut StageRun) -> Result<()>,
) -> Result<(Manifest, Outcome)> {
    match begin(name, dir, params, inputs)? {
        Begin::UpToDate(m) => {
            print_summary(&m, Outcome::UpToDate, dir);
            Ok((m, Outcome::UpToDate))
        }
        Begin::Run(mut run) => {
            body(&mut run)?;
            Ok((run.finish()?, Outcome::Ran))
        }
    }
}
