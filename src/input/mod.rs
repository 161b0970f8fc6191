//! Input readers for `prepare`: an image folder, a tar (including a tar of
//! per-class tars), a list file (CSV/Parquet) or IDX files. Each produces a
//! [`Listing`]: every input in its final order (an image's `id` is its
//! position here), with its label and where its bytes live. Listing reads
//! names and headers only; the bytes of each input are fetched later, in
//! parallel, with [`Listing::fetch`].
//!
//! The listing holds one small entry per input (its path and location, about
//! 100 bytes), which is what makes ids the position in a sorted order; the
//! images themselves are never held beyond the chunk being processed.
//!
//! Hostile inputs cost a reject, not the machine: a folder's symbolic links
//! that leave it are not followed unless asked ([`Options::follow_links`]),
//! and a file's size and first bytes are checked before it is read whole, so
//! a 1 GB file that is no image is refused after 64 bytes.
pub mod folder;
pub mod idx;
pub mod list;
pub mod tar;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How inputs are listed and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Follow symbolic links in a folder input that point outside it.
    pub follow_links: bool,
    /// Files (and tar members) above this many bytes are refused unread.
    pub max_file_bytes: u64,
}

/// Bytes read before the rest of a file: enough for every magic number
/// `image::guess_format` knows.
const SNIFF_BYTES: usize = 64;

/// Where one input's bytes live.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on disk.
    File(PathBuf),
    /// A member of the tar file [`Listing::tar`]: its data's byte range.
    Tar { offset: u64, size: u64 },
    /// Image `index` of the IDX file held in [`Listing::idx`].
    Idx(usize),
    /// Nothing to read: the listing already knows the input is bad.
    Bad(String),
}

/// One input: its display path (UTF-8, undecodable bytes escaped as `\xNN`),
/// its class index when known, and where its bytes are.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: String,
    pub label: Option<i64>,
    pub source: Source,
}

/// The raw bytes of an input, ready for the codec.
pub enum Bytes<'a> {
    /// An encoded image file (any format; sniffed by content).
    Encoded(Vec<u8>),
    /// 8-bit grayscale pixels (IDX).
    Gray {
        pixels: &'a [u8],
        width: u32,
        height: u32,
    },
}

/// IDX images held in memory (the files are small by nature: 47 MB for
/// Fashion-MNIST's training set).
#[derive(Debug)]
pub struct IdxImages {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Every input of a run, in id order.
#[derive(Debug, Default)]
pub struct Listing {
    pub items: Vec<Item>,
    /// Class names in index order (empty for unlabelled inputs).
    pub class_names: Vec<String>,
    /// Class folders (or inner tars) that hold no file.
    pub empty_classes: Vec<String>,
    /// What kind of input this was, for the summary.
    pub kind: &'static str,
    /// The tar file, for `Source::Tar` members.
    pub tar: Option<(PathBuf, File)>,
    pub idx: Option<IdxImages>,
}

impl Listing {
    /// Reads one input's bytes, refusing a file above `max_bytes` or one whose
    /// first bytes are no image format before reading the rest. `Err` is a
    /// reject reason.
    pub fn fetch(&self, item: &Item, max_bytes: u64) -> std::result::Result<Bytes<'_>, String> {
        match &item.source {
            Source::Bad(reason) => Err(reason.clone()),
            Source::File(path) => read_regular(path, max_bytes).map(Bytes::Encoded),
            Source::Tar { offset, size } => {
                use std::os::unix::fs::FileExt;
                let (_, file) = self.tar.as_ref().ok_or("internal: tar not open")?;
                check_size(*size, max_bytes)?;
                let mut buf = vec![0u8; *size as usize];
                let head = buf.len().min(SNIFF_BYTES);
                file.read_exact_at(&mut buf[..head], *offset)
                    .map_err(|e| format!("cannot read from the tar: {e}"))?;
                sniff(&buf[..head])?;
                file.read_exact_at(&mut buf[head..], *offset + head as u64)
                    .map_err(|e| format!("cannot read from the tar: {e}"))?;
                Ok(Bytes::Encoded(buf))
            }
            Source::Idx(i) => {
                let idx = self.idx.as_ref().ok_or("internal: IDX not loaded")?;
                let n = (idx.width * idx.height) as usize;
                Ok(Bytes::Gray {
                    pixels: &idx.pixels[i * n..(i + 1) * n],
                    width: idx.width,
                    height: idx.height,
                })
            }
        }
    }

    /// Asks the kernel to start reading `items` into the page cache now, so
    /// that the reads of [`Listing::fetch`] later find them there instead of
    /// waiting for the disk one file at a time per worker. Only a hint: it
    /// never fails, blocks only to open each file, and costs a few
    /// microseconds per input when the data is already cached.
    pub fn prefetch(&self, items: &[Item]) {
        use std::os::fd::AsRawFd;
        let advise = |f: &File, offset: u64, len: u64| {
            // SAFETY: posix_fadvise only reads its integer arguments; the
            // descriptor is open for the whole call.
            let _ = unsafe {
                libc::posix_fadvise(
                    f.as_raw_fd(),
                    offset as libc::off_t,
                    len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
        };
        for item in items {
            match &item.source {
                Source::File(path) => {
                    // Only regular files: opening a FIFO would block.
                    if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
                        if let Ok(f) = File::open(path) {
                            advise(&f, 0, 0);
                        }
                    }
                }
                Source::Tar { offset, size } => {
                    if let Some((_, f)) = &self.tar {
                        advise(f, *offset, *size);
                    }
                }
                Source::Idx(_) | Source::Bad(_) => {}
            }
        }
    }
}

/// Reads a regular file; anything else (FIFO, device, socket) is refused
/// rather than read, since reading a FIFO would block the run forever. The
/// size is checked from the metadata and the format from the first bytes
/// before the rest is read.
fn read_regular(path: &Path, max_bytes: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read: {}", io_reason(&e));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    check_size(meta.len(), max_bytes)?;
    let mut f = File::open(path).map_err(cannot)?;
    let mut buf = Vec::with_capacity(SNIFF_BYTES);
    (&mut f)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    sniff(&buf)?;
    buf.reserve_exact((meta.len() as usize).saturating_sub(buf.len()));
    // At most one byte past the limit: a file that grew since the metadata
    // was read is still refused, not read without bound.
    (&mut f)
        .take(max_bytes.saturating_add(1).saturating_sub(buf.len() as u64))
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    check_size(buf.len() as u64, max_bytes)?;
    Ok(buf)
}

fn check_size(size: u64, max_bytes: u64) -> std::result::Result<(), String> {
    if size > max_bytes {
        return Err(format!(
            "{size} bytes is above the max-file-bytes limit of {max_bytes} (not read)"
        ));
    }
    Ok(())
}

/// Refuses bytes that start no known image format (the codec's own test,
/// and its words). An empty file passes: the codec names it as such.
fn sniff(head: &[u8]) -> std::result::Result<(), String> {
    if head.is_empty() || image::guess_format(head).is_ok() {
        Ok(())
    } else {
        Err("not an image (content matches no known image format)".to_string())
    }
}

/// An io::Error without the "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A path as UTF-8, with bytes that are not UTF-8 escaped as `\xNN` (so a
/// non-UTF-8 file name stays recognisable and distinct).
pub fn display_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escape_bytes(path.as_os_str().as_bytes())
}

pub fn escape_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    out.push_str(&format!("\\x{b:02X}"));
                }
                bytes = &rest[bad..];
            }
        }
    }
}

/// What kind of input `path` is, by file type and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Folder,
    Tar,
    Csv,
    Parquet,
    Idx,
}

pub fn detect(path: &Path) -> Result<Kind> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot open --input: {}; give an image folder, tar, list file (.csv/.parquet) or IDX file", io_reason(&e)),
        )
    })?;
    if meta.is_dir() {
        return Ok(Kind::Folder);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".csv") {
        return Ok(Kind::Csv);
    }
    if name.ends_with(".parquet") {
        return Ok(Kind::Parquet);
    }
    let mut head = [0u8; 512];
    let n = {
        use std::io::Read;
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        n
    };
    let head = &head[..n];
    if name.contains("idx") || idx::is_idx_magic(head) {
        return Ok(Kind::Idx);
    }
    if n >= 262 && &head[257..262] == b"ustar" {
        return Ok(Kind::Tar);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Err(Error::file(
            path,
            "a gzip-compressed file that is not IDX: prepare reads tars by byte offset, so decompress it first (`gunzip`)",
        ));
    }
    Err(Error::file(
        path,
        "not a folder, tar, .csv/.parquet list file or IDX file; give one of those as --input",
    ))
}

/// Lists `path` of the detected kind.
pub fn list(path: &Path, opts: &Options) -> Result<Listing> {
    match detect(path)? {
        Kind::Folder => folder::list(path, opts.follow_links),
        Kind::Tar => tar::list(path),
        Kind::Csv | Kind::Parquet => list::list(path),
        Kind::Idx => idx::list(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_non_utf8_bytes() {
        assert_eq!(escape_bytes(b"a\xffb.JPEG"), "a\\xFFb.JPEG");
        assert_eq!(escape_bytes("é.png".as_bytes()), "é.png");
    }
}
