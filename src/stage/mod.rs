//! The stage framework's core (docs/design.md "What every stage promises"). A
//! stage calls [`run_stage`] (or [`begin`]) with its name, parameters and
//! inputs; it either finds its folder up to date (same tool version,
//! parameters and input fingerprint, and every output still as the manifest
//! recorded it) or gets a [`StageRun`] that collects outputs and counts and
//! writes the manifest last in [`StageRun::finish`].
//!
//! What the core guarantees besides: the folder is locked while a stage
//! works in it ([`lock`]); every upstream folder is verified before its
//! files are fingerprinted ([`verify`]); a failure inside the body, a
//! libtorch panic included, comes back as one error ([`boundary`]) and
//! leaves no `_attempt.json` unless there is finished work to resume.
//! The stages themselves, their parameters and command lines, are in
//! [`crate::stages`].
//!
//! A data-parallel stage ([`run_stage_on`] with several ranks) has one
//! writer: rank 0 locks the folder, decides (up to date, run, resume) and
//! writes everything; the other ranks never touch the folder. They get rank
//! 0's decision and, at the end, its manifest through the job's store, and
//! run the body with a [`StageRun`] that records nothing.
pub mod boundary;
pub mod lock;
pub mod name;
pub mod verify;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::dist::Dist;
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::{checksum_file, remove_temp_files, write_atomic};
use crate::manifest::{Manifest, OutputFile, Timings, MANIFEST_FILE};
use crate::progress::{self, print_summary, Outcome};

pub use lock::{lock_dir, DirLock, LOCK_FILE};
pub use name::StageName;
pub use verify::{verify_outputs, Mismatch};

/// Written when a stage starts; lets an interrupted run with the same
/// parameters and inputs resume from its finished files.
pub const ATTEMPT_FILE: &str = "_attempt.json";

pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a stage reads.
#[derive(Debug, Clone)]
pub enum Input {
    /// The folder of an earlier stage: verified, then fingerprinted by its outputs' checksums.
    Stage { dir: PathBuf, stage: StageName },
    /// A raw file or folder from the user: fingerprinted by names, sizes and
    /// modification times (hashing a 140 GB tar would take longer than the stage).
    Path(PathBuf),
}

impl Input {
    pub fn stage(dir: impl Into<PathBuf>, stage: StageName) -> Self {
        Input::Stage {
            dir: dir.into(),
            stage,
        }
    }
}

/// The fingerprint of a list of inputs. Every upstream stage folder is
/// verified first: a damaged file is an error naming it, never a fingerprint.
pub fn fingerprint(inputs: &[Input]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for input in inputs {
        match input {
            Input::Stage { dir, stage } => {
                let m = Manifest::read_complete(dir, *stage)?;
                verify_outputs(dir, &m).map_err(|e| Error::file(&e.path, e.what))?;
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

/// Whether a finished stage in `dir` can be kept as it is: `Ok` when it
/// can, else why not (for the log and for `run --plan`).
pub fn up_to_date(
    dir: &Path,
    name: StageName,
    params: &serde_json::Value,
    input_fingerprint: &str,
) -> std::result::Result<Manifest, String> {
    let m = match Manifest::read(dir) {
        Ok(Some(m)) => m,
        Ok(None) => return Err("not run yet".into()),
        Err(e) => return Err(format!("unreadable manifest ({e}); it runs again")),
    };
    if !m.complete {
        return Err("an earlier run did not finish; it resumes".into());
    }
    if m.stage != name {
        return Err(format!("the folder holds `{}`'s output", m.stage));
    }
    if m.tool_version != TOOL_VERSION {
        return Err(format!("made by fewlabels {}", m.tool_version));
    }
    if &m.params != params {
        return Err(format!(
            "parameters changed: {}",
            diff_params(&m.params, params)
        ));
    }
    if m.input_fingerprint != input_fingerprint {
        return Err("inputs changed".into());
    }
    verify_outputs(dir, &m).map_err(|e| format!("output damaged: {e}"))?;
    Ok(m)
}

/// The parameters that differ between two parameter objects, as `key old -> new`.
pub fn diff_params(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return "all".into();
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let changed: Vec<String> = keys
        .into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
            };
            format!("{k} {} -> {}", show(o.get(k)), show(n.get(k)))
        })
        .collect();
    changed.join(", ")
}

#[derive(Serialize, serde::Deserialize, PartialEq)]
struct Attempt {
    tool_version: String,
    params: serde_json::Value,
    input_fingerprint: String,
}

/// The result of [`begin`].
pub enum Begin {
    UpToDate(Manifest, DirLock),
    Run(StageRun),
}

/// Starts stage `name` writing into `dir`: locks the folder, verifies the
/// inputs, and returns `UpToDate` when the folder's stage can be kept;
/// otherwise prepares `dir` and returns a [`StageRun`].
pub fn begin(
    name: StageName,
    dir: &Path,
    params: &impl Serialize,
    inputs: &[Input],
) -> Result<Begin> {
    let params = serde_json::to_value(params)
        .map_err(|e| Error::invalid(format!("{name}: parameters: {e}")))?;
    let existed = dir.exists();
    let lock = lock_dir(dir, "stage folder")?;
    let input_fingerprint = match fingerprint(inputs) {
        Ok(f) => f,
        Err(e) => {
            // Nothing ran: leave no folder behind that this call made.
            if !existed {
                let _ = fs::remove_file(dir.join(LOCK_FILE));
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    match up_to_date(dir, name, &params, &input_fingerprint) {
        Ok(m) => return Ok(Begin::UpToDate(m, lock)),
        Err(why) if why.starts_with("output damaged") || why.starts_with("unreadable") => {
            progress::note(format!("{name}: {why}; running it again"));
        }
        Err(_) => {}
    }
    let attempt = Attempt {
        tool_version: TOOL_VERSION.to_string(),
        params: params.clone(),
        input_fingerprint: input_fingerprint.clone(),
    };
    let resuming = prepare_dir(name, dir, &attempt)?;
    Ok(Begin::Run(StageRun {
        name,
        dir: dir.to_path_buf(),
        params,
        input_fingerprint,
        resuming,
        created_dir: !existed,
        started: Instant::now(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        outputs: Vec::new(),
        counts: BTreeMap::new(),
        phases: BTreeMap::new(),
        dist: Dist::single(),
        lock: Some(lock),
    }))
}

/// The entries of a stage folder that are the framework's own bookkeeping.
fn is_bookkeeping(name: &str) -> bool {
    name == LOCK_FILE || name == ATTEMPT_FILE
}

/// Makes `dir` ready for a run. Keeps the files of an interrupted attempt
/// with identical parameters and inputs (returns true: resume); otherwise
/// empties it. Refuses to empty a non-empty folder that is not a stage's.
fn prepare_dir(name: StageName, dir: &Path, attempt: &Attempt) -> Result<bool> {
    let attempt_path = dir.join(ATTEMPT_FILE);
    let manifest_path = dir.join(MANIFEST_FILE);
    let previous: Option<Attempt> = fs::read(&attempt_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let ours = attempt_path.exists() || manifest_path.exists();
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if entry.file_name().to_str().is_some_and(is_bookkeeping) {
            continue;
        }
        entries.push(entry.path());
    }
    if !entries.is_empty() && !ours {
        return Err(Error::file(dir, format!("not empty and not a fewlabels stage folder; give `{name}` an empty or new output folder")));
    }
    // The manifest goes first: from here on the folder does not look finished.
    if manifest_path.exists() {
        fs::remove_file(&manifest_path).at(&manifest_path)?;
    }
    remove_temp_files(dir)?;
    let resuming = previous.as_ref() == Some(attempt);
    if !resuming {
        for p in entries.iter().filter(|p| p.exists()) {
            if p.is_dir() {
                fs::remove_dir_all(p).at(p)?
            } else {
                fs::remove_file(p).at(p)?
            }
        }
    }
    write_atomic(
        &attempt_path,
        &serde_json::to_vec_pretty(attempt).at(&attempt_path)?,
    )?;
    Ok(resuming)
}

/// A stage in progress: collects outputs, counts and timings. Holds the
/// folder's lock until it is finished or dropped.
pub struct StageRun {
    pub name: StageName,
    pub dir: PathBuf,
    pub params: serde_json::Value,
    pub input_fingerprint: String,
    /// True when an interrupted attempt with the same parameters left files to reuse.
    pub resuming: bool,
    created_dir: bool,
    started: Instant,
    started_unix: f64,
    outputs: Vec<OutputFile>,
    counts: BTreeMap<String, serde_json::Value>,
    phases: BTreeMap<String, f64>,
    /// The data-parallel job this run is part of (a single process by default).
    pub dist: Dist,
    /// `None` on the ranks that do not write.
    lock: Option<DirLock>,
}

impl StageRun {
    /// The run of a rank other than 0: the same folder, which it reads but
    /// never writes, and rank 0's `resuming`.
    fn follower(name: StageName, dir: &Path, resuming: bool, dist: Dist) -> StageRun {
        StageRun {
            name,
            dir: dir.to_path_buf(),
            params: serde_json::Value::Null,
            input_fingerprint: String::new(),
            resuming,
            created_dir: false,
            started: Instant::now(),
            started_unix: 0.0,
            outputs: Vec::new(),
            counts: BTreeMap::new(),
            phases: BTreeMap::new(),
            dist,
            lock: None,
        }
    }

    /// Whether this process writes the folder (false on ranks other than 0).
    pub fn writes(&self) -> bool {
        self.lock.is_some()
    }

    /// Records a finished output file (relative to the stage directory);
    /// nothing on a rank that does not write.
    pub fn add_output(&mut self, rel: impl AsRef<Path>, rows: Option<u64>) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        let rel = rel.as_ref();
        let path = self.dir.join(rel);
        let bytes = fs::metadata(&path).at(&path)?.len();
        let checksum = checksum_file(&path)?;
        verify::note_checksum(&path, &checksum);
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
            params: self.params.clone(),
            input_fingerprint: self.input_fingerprint.clone(),
            outputs: self.outputs.clone(),
            counts: self.counts.clone(),
            timings: Timings {
                started_unix: self.started_unix,
                seconds: self.started.elapsed().as_secs_f64(),
                phases: self.phases.clone(),
            },
            complete: true,
        };
        // A stage that breaks its own count rules is a bug: never record it as finished.
        verify::check_counts(&self.dir, &manifest)
            .map_err(|e| Error::Internal(format!("{}: {}", self.name, e.what)))?;
        let path = self.dir.join(MANIFEST_FILE);
        write_atomic(&path, &serde_json::to_vec_pretty(&manifest).at(&path)?)?;
        let attempt = self.dir.join(ATTEMPT_FILE);
        let _ = fs::remove_file(attempt);
        print_summary(&manifest, Outcome::Ran, &self.dir);
        Ok(manifest)
    }

    /// Cleans up after a failed body: with no finished file left to resume
    /// from, the attempt record goes (and the folder, when this run made
    /// it); with some, they stay and the same command resumes. Returns the
    /// number of files kept.
    fn abandon(self) -> usize {
        let kept = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        let temp = n.starts_with('.') && n.ends_with(".tmp");
                        !(is_bookkeeping(&n) || temp)
                    })
                    .count()
            })
            .unwrap_or(0);
        if kept == 0 {
            let _ = remove_temp_files(&self.dir);
            let _ = fs::remove_file(self.dir.join(ATTEMPT_FILE));
            if self.created_dir {
                let _ = fs::remove_file(self.dir.join(LOCK_FILE));
                let _ = fs::remove_dir(&self.dir);
            }
        }
        kept
    }
}

/// Runs a stage body unless the stage is up to date; prints the summary
/// either way. A failure in the body (a panic included) is returned as an
/// error after the folder is cleaned up.
pub fn run_stage(
    name: StageName,
    dir: &Path,
    params: &impl Serialize,
    inputs: &[Input],
    body: impl FnOnce(&mut StageRun) -> Result<()>,
) -> Result<(Manifest, Outcome)> {
    run_stage_on(Dist::single(), name, dir, params, inputs, body)
}

/// [`run_stage`] as one rank of a data-parallel job: rank 0 does what a
/// single process does and tells the others; they run the body with a
/// run that writes nothing, and return rank 0's manifest.
pub fn run_stage_on(
    dist: Dist,
    name: StageName,
    dir: &Path,
    params: &impl Serialize,
    inputs: &[Input],
    body: impl FnOnce(&mut StageRun) -> Result<()>,
) -> Result<(Manifest, Outcome)> {
    if dist.world() > 1 && !dist.is_rank0() {
        return follow(dist, name, dir, body);
    }
    let tell = |key: &str, msg: &Decision| {
        if dist.world() > 1 {
            let bytes = serde_json::to_vec(msg).unwrap_or_default();
            dist.publish(&format!("stage/{name}/{key}"), &bytes)
        } else {
            Ok(())
        }
    };
    let begun = boundary::catch(|| begin(name, dir, params, inputs));
    tell(
        "begin",
        &match &begun {
            Ok(Begin::UpToDate(m, _)) => Decision::UpToDate(m.clone()),
            Ok(Begin::Run(r)) => Decision::Run {
                resuming: r.resuming,
            },
            Err(e) => Decision::failed(e),
        },
    )?;
    let result = match begun {
        Err(e) => Err(e),
        Ok(Begin::UpToDate(m, _lock)) => {
            print_summary(&m, Outcome::UpToDate, dir);
            Ok((m, Outcome::UpToDate))
        }
        Ok(Begin::Run(mut run)) => {
            run.dist = dist;
            match boundary::catch(|| body(&mut run)) {
                Ok(()) => {
                    let finished = run.finish();
                    tell(
                        "end",
                        &match &finished {
                            Ok(m) => Decision::Done(m.clone()),
                            Err(e) => Decision::failed(e),
                        },
                    )?;
                    finished.map(|m| (m, Outcome::Ran))
                }
                Err(e) => {
                    let kept = run.abandon();
                    if kept > 0 {
                        progress::note(format!(
                            "{name}: {kept} finished file(s) kept in {}; the same command resumes from them",
                            dir.display()
                        ));
                    }
                    dist.announce_failure(&e);
                    return Err(e);
                }
            }
        }
    };
    // The store rank 0 serves must outlive the others' last read of it.
    dist.wait_for_others(dist.timeout());
    result
}

/// What rank 0 tells the other ranks of a data-parallel stage.
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Decision {
    UpToDate(Manifest),
    Run { resuming: bool },
    Done(Manifest),
    Failed { message: String, usage: bool },
}

impl Decision {
    fn failed(e: &Error) -> Decision {
        Decision::Failed {
            message: e.to_string(),
            usage: e.exit_code() == 2,
        }
    }
}

/// A rank other than 0: waits for rank 0's decision, runs the body when
/// it runs, and ends with rank 0's manifest (or its error).
fn follow(
    dist: Dist,
    name: StageName,
    dir: &Path,
    body: impl FnOnce(&mut StageRun) -> Result<()>,
) -> Result<(Manifest, Outcome)> {
    let hear = |key: &str| -> Result<Decision> {
        let bytes = dist.receive(&format!("stage/{name}/{key}"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("{name}: rank 0's `{key}` message: {e}")))
    };
    let from_rank0 = |message: String, usage: bool| {
        let msg = format!("{}: rank 0 stopped: {message}", dist.who());
        if usage {
            Error::usage(msg)
        } else {
            Error::invalid(msg)
        }
    };
    let outcome = match hear("begin") {
        Err(e) => Err(e),
        Ok(Decision::UpToDate(m)) => Ok((m, Outcome::UpToDate)),
        Ok(Decision::Failed { message, usage }) => Err(from_rank0(message, usage)),
        Ok(Decision::Done(_)) => Err(Error::Internal(format!(
            "{name}: rank 0 sent its end before its beginning"
        ))),
        Ok(Decision::Run { resuming }) => {
            let mut run = StageRun::follower(name, dir, resuming, dist);
            if let Err(e) = boundary::catch(|| body(&mut run)) {
                dist.announce_failure(&e);
                return Err(e);
            }
            match hear("end")? {
                Decision::Done(m) => Ok((m, Outcome::Ran)),
                Decision::Failed { message, usage } => Err(from_rank0(message, usage)),
                _ => Err(Error::Internal(format!(
                    "{name}: rank 0 sent an unexpected end"
                ))),
            }
        }
    };
    dist.leave();
    outcome
}
