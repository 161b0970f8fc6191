//! Verified inputs (docs/design.md "What every stage promises"): a finished stage's files are what
//! its manifest says, byte for byte, before anything is built on them or
//! the stage is called up to date. Each output's size, blake3 checksum and
//! (for Arrow tables) row count are checked against the manifest, and the
//! manifest's counts against each other (`StageName::count_rules`).
//!
//! Every file is hashed in full: a flipped byte in the middle of a shard
//! keeps its size and modification time plausible, so nothing cheaper finds
//! it. A file is hashed at most once per process (the result is kept with
//! its size and modification time), so a pipeline whose stages all read
//! `images/` pays for it once. blake3 is cheap beside the stages that read
//! the files: `--plan` over the demo's 119 MB of finished outputs adds
//! ~0.3 s to start-up (BENCHMARKS.md, "Verified inputs").
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use rayon::prelude::*;

use crate::error::Result;
use crate::fsutil::checksum_file;
use crate::manifest::Manifest;
use crate::shard::count_rows;
use crate::stage::name::CountRule;

/// Why a finished stage's files cannot be trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// The file at fault (the manifest, for inconsistent counts).
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

#[derive(Clone, PartialEq)]
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
    checksum: String,
}

fn cache() -> &'static Mutex<HashMap<PathBuf, Seen>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Seen>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn stat(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let md = fs::metadata(path).ok()?;
    Some((md.len(), md.modified().ok()))
}

/// Records a checksum just computed for `path` (by the stage that wrote it).
pub fn note_checksum(path: &Path, checksum: &str) {
    if let Some((len, modified)) = stat(path) {
        let seen = Seen {
            len,
            modified,
            checksum: checksum.to_string(),
        };
        cache()
            .lock()
            .expect("checksum cache")
            .insert(path.to_path_buf(), seen);
    }
}

/// The checksum of `path`, from the cache when the file is unchanged since it was hashed.
fn checksum_of(path: &Path, len: u64, modified: Option<SystemTime>) -> Result<String> {
    if let Some(s) = cache().lock().expect("checksum cache").get(path) {
        if s.len == len && s.modified == modified {
            return Ok(s.checksum.clone());
        }
    }
    let checksum = checksum_file(path)?;
    note_checksum(path, &checksum);
    Ok(checksum)
}

/// Checks every output of the finished stage in `dir` against its manifest.
pub fn verify_outputs(dir: &Path, m: &Manifest) -> std::result::Result<(), Mismatch> {
    let stage = m.stage;
    let results: Vec<std::result::Result<(), Mismatch>> = m
        .outputs
        .par_iter()
        .map(|o| {
            let path = dir.join(&o.path);
            let bad = |what: String| Mismatch {
                path: path.clone(),
                what,
            };
            let Some((len, modified)) = stat(&path) else {
                return Err(bad(format!(
                    "missing (`{stage}` wrote it); re-run `fewlabels {stage}`"
                )));
            };
            if len != o.bytes {
                return Err(bad(format!(
                    "is {len} bytes but `{stage}` wrote {} (truncated or replaced); re-run `fewlabels {stage}`",
                    o.bytes
                )));
            }
            let checksum = checksum_of(&path, len, modified).map_err(|e| bad(e.to_string()))?;
            if checksum != o.checksum {
                return Err(bad(format!(
                    "content differs from what `{stage}` wrote (checksum mismatch: the file changed or is damaged); re-run `fewlabels {stage}`"
                )));
            }
            if let (Some(rows), true) = (o.rows, o.path.ends_with(".arrow")) {
                let found = count_rows(&path).map_err(|e| bad(e.to_string()))?;
                if found != rows {
                    return Err(bad(format!(
                        "holds {found} rows but the manifest says {rows}; re-run `fewlabels {stage}`"
                    )));
                }
            }
            Ok(())
        })
        .collect();
    // The first failure in manifest order, whatever the thread count.
    results
        .into_iter()
        .collect::<std::result::Result<(), _>>()?;
    check_counts(dir, m)
}

/// Checks a manifest's counts against its outputs' rows and each other.
pub fn check_counts(dir: &Path, m: &Manifest) -> std::result::Result<(), Mismatch> {
    let manifest = dir.join(crate::manifest::MANIFEST_FILE);
    let bad = |what: String| Mismatch {
        path: manifest.clone(),
        what: format!(
            "{what}; the manifest was edited or damaged: re-run `fewlabels {}`",
            m.stage
        ),
    };
    let count = |key: &str| -> std::result::Result<u64, Mismatch> {
        m.counts
            .get(key)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad(format!("count `{key}` is missing or not a whole number")))
    };
    for rule in m.stage.count_rules() {
        match *rule {
            CountRule::Rows(keys, table) => {
                let prefix = format!("{table}-");
                let rows: u64 = m
                    .outputs
                    .iter()
                    .filter(|o| o.path.starts_with(&prefix) && o.path.ends_with(".arrow"))
                    .map(|o| o.rows.unwrap_or(0))
                    .sum();
                let mut total = 0;
                for k in keys {
                    total += count(k)?;
                }
                if total != rows {
                    return Err(bad(format!(
                        "{} = {total} but the `{table}` files hold {rows} rows",
                        keys.join(" + ")
                    )));
                }
            }
            CountRule::Sum(key, parts) => {
                let want = count(key)?;
                let mut total = 0;
                for k in parts {
                    total += count(k)?;
                }
                if want != total {
                    return Err(bad(format!(
                        "{key} = {want} but {} = {total}",
                        parts.join(" + ")
                    )));
                }
            }
        }
    }
    Ok(())
}
