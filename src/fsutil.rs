//! Atomic file writes and content checksums. A file is written under a
//! temporary name in its final directory and renamed into place only once
//! complete, so a killed run never leaves a file that looks finished.
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, ResultExt};

/// The temporary name used while `path` is being written: `.NAME.tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// A file being written atomically. `commit` syncs and renames it into place;
/// dropping it without `commit` removes the temporary file.
pub struct AtomicFile {
    final_path: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let final_path = path.as_ref().to_path_buf();
        if let Some(dir) = final_path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir).at(dir)?;
            }
        }
        let temp = temp_path(&final_path);
        let file = File::create(&temp).at(&temp)?;
        Ok(AtomicFile {
            final_path,
            temp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Flushes, fsyncs and renames the file into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let writer = self.writer.take().expect("AtomicFile committed twice");
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&self.temp, e.into_error()))?;
        file.sync_all().at(&self.temp)?;
        drop(file);
        fs::rename(&self.temp, &self.final_path).at(&self.final_path)?;
        Ok(self.final_path.clone())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("write after commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("flush after commit").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path.as_ref())?;
    f.write_all(bytes).at(path.as_ref())?;
    f.commit()?;
    Ok(())
}

/// The blake3 checksum of a file's content, as `blake3:HEX`.
pub fn checksum_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut file = File::open(path).at(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// Removes leftover temporary files (`.*.tmp`) of an interrupted run in `dir`.
pub fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            fs::remove_file(entry.path()).at(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}
