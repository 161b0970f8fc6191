//! IDX files (the MNIST / Fashion-MNIST layout), gzipped or not. `--input`
//! is the images file (`train-images-idx3-ubyte[.gz]`, magic 0x00000803:
//! unsigned bytes, 3 dimensions n x rows x cols); the labels file beside it
//! is found by the standard naming (`images-idx3` -> `labels-idx1`, with or
//! without `.gz`). Without a labels file the images are unlabelled. IDX
//! carries no class names: they are `0..=max` unless `--class-names` names
//! them. The images are held in memory (IDX datasets are small: 47 MB).
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{IdxImages, Item, Listing, Source};
use crate::error::{Error, Result};

/// IDX magic: two zero bytes, type 0x08 (unsigned byte), 1 to 4 dimensions.
pub fn is_idx_magic(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] == 0 && head[1] == 0 && head[2] == 0x08 && (1..=4).contains(&head[3])
}

/// The whole file, gunzipped when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt gzip ({e})")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX header: the dimensions, checked against the data length.
fn parse(path: &Path, bytes: &[u8], want_dims: u8) -> Result<Vec<usize>> {
    if !is_idx_magic(bytes) {
        return Err(Error::file(
            path,
            "not an IDX file (bad magic number); give train-images-idx3-ubyte[.gz] or similar",
        ));
    }
    let dims = bytes[3];
    if dims != want_dims {
        return Err(Error::file(
            path,
            format!("IDX file has {dims} dimensions, expected {want_dims}"),
        ));
    }
    let header = 4 + 4 * dims as usize;
    if bytes.len() < header {
        return Err(Error::file(path, "IDX header is truncated"));
    }
    let shape: Vec<usize> = (0..dims as usize)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize
        })
        .collect();
    let need: usize = shape.iter().product::<usize>() + header;
    if bytes.len() != need {
        return Err(Error::file(
            path,
            format!(
                "IDX data is {} bytes but the header {:?} needs {need}; the file is truncated or corrupt",
                bytes.len(),
                shape
            ),
        ));
    }
    Ok(shape)
}

/// The labels file beside an images file, by the standard naming.
pub fn labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let base = name.replace("images-idx3", "labels-idx1");
    if base == name {
        return None;
    }
    let stem = base.trim_end_matches(".gz");
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| images.with_file_name(n))
        .find(|p| p.is_file())
}

pub fn list(path: &Path) -> Result<Listing> {
    let bytes = read_maybe_gz(path)?;
    let shape = parse(path, &bytes, 3)?;
    let (n, rows, cols) = (shape[0], shape[1], shape[2]);
    let header = 16;
    let labels: Option<Vec<u8>> = match labels_path(path) {
        None => None,
        Some(lp) => {
            let lb = read_maybe_gz(&lp)?;
            let ls = parse(&lp, &lb, 1)?;
            if ls[0] != n {
                return Err(Error::file(
                    &lp,
                    format!("has {} labels but {} has {n} images", ls[0], path.display()),
                ));
            }
            Some(lb[8..].to_vec())
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let width = format!("{}", n.saturating_sub(1)).len().max(5);
    let items = (0..n)
        .map(|i| Item {
            path: format!("{name}#{i:0width$}"),
            label: labels.as_ref().map(|l| l[i] as i64),
            source: Source::Idx(i),
        })
        .collect();
    let class_names = match &labels {
        Some(l) => {
            let max = l.iter().max().copied().unwrap_or(0);
            (0..=max).map(|i| i.to_string()).collect()
        }
        None => Vec::new(),
    };
    let mut pixels = bytes;
    pixels.drain(..header);
    Ok(Listing {
        items,
        class_names,
        kind: "IDX",
        idx: Some(IdxImages {
            pixels,
            width: cols as u32,
            height: rows as u32,
        }),
        ..Listing::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_labels_by_standard_name() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("train-images-idx3-ubyte.gz");
        std::fs::write(&img, b"").unwrap();
        assert_eq!(labels_path(&img), None);
        let lab = dir.path().join("train-labels-idx1-ubyte.gz");
        std::fs::write(&lab, b"").unwrap();
        assert_eq!(labels_path(&img), Some(lab));
    }
}
