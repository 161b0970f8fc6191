//! JSON-lines metrics (`metrics.jsonl`): one object per line, each with a
//! `step`. Reopening for a resumed run drops the lines written after the
//! checkpoint being resumed (and a torn last line of a killed run), so the
//! file reads as if the run had never stopped.
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::write_atomic;

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Creates (truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).at(&path)?;
        Ok(MetricsLog { path, file })
    }

    /// Opens `path` to continue a run resumed from `step`: keeps the complete
    /// lines whose `step` is at most `step` (lines without a step are kept).
    pub fn resume(path: impl AsRef<Path>, step: u64) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut kept = Vec::new();
        if path.exists() {
            let reader = BufReader::new(File::open(&path).at(&path)?);
            for line in reader.lines() {
                let line = line.at(&path)?;
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    // A torn line from a killed run: everything after it is suspect too.
                    break;
                };
                if v.get("step")
                    .and_then(|s| s.as_u64())
                    .is_some_and(|s| s > step)
                {
                    continue;
                }
                kept.extend_from_slice(line.as_bytes());
                kept.push(b'\n');
            }
        }
        write_atomic(&path, &kept)?;
        let file = OpenOptions::new().append(true).open(&path).at(&path)?;
        Ok(MetricsLog { path, file })
    }

    /// Appends one record as a line and flushes it.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).at(&self.path)?;
        line.push(b'\n');
        self.file.write_all(&line).at(&self.path)?;
        self.file.flush().at(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of a metrics file.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<serde_json::Value>> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).at(path)?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| Error::file(path, format!("JSON line: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_drops_later_steps_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&p).unwrap();
        for s in 1..=5u64 {
            log.write(&json!({"step": s, "loss": 1.0 / s as f64}))
                .unwrap();
        }
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"step\": 6, \"lo").unwrap();
        drop(f);
        let mut log = MetricsLog::resume(&p, 3).unwrap();
        log.write(&json!({"step": 4, "loss": 0.0})).unwrap();
        let recs = read(&p).unwrap();
        let steps: Vec<u64> = recs.iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert_eq!(recs[3]["loss"], json!(0.0));
    }
}
