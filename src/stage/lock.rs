//! One writer per folder: an advisory lock (`flock`) on `_lock` in a run
//! directory (held by `fewlabels run`) and in each stage folder (held while
//! the stage checks, runs and writes its manifest). Two commands on the same
//! folder would otherwise write the same temporary names and rename each
//! other's half-written files into place. The lock goes with the process,
//! so a killed run never leaves a folder locked.
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, ResultExt};

/// The lock file's name; stages never list, move or delete it.
pub const LOCK_FILE: &str = "_lock";

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub dir: PathBuf,
}

/// Locks `dir` (created if missing) or fails at once with the holder's pid.
/// `what` names the folder for the message ("run directory", "stage folder").
pub fn lock_dir(dir: &Path, what: &str) -> Result<DirLock> {
    fs::create_dir_all(dir).at(dir)?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's pid, for the message a second writer gets.
            file.set_len(0).at(&path)?;
            file.seek(SeekFrom::Start(0)).at(&path)?;
            write!(file, "{}", std::process::id()).at(&path)?;
            Ok(DirLock {
                _file: file,
                dir: dir.to_path_buf(),
            })
        }
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() {
                "another process".to_string()
            } else {
                format!("process {pid}")
            };
            Err(Error::Busy(format!(
                "{what} {} is in use by {holder}; wait for it to finish, or stop it",
                dir.display()
            )))
        }
        Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}
