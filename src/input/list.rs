//! List files: a CSV (with a header) or Parquet table read with polars, with
//! a `path` column and an optional `label` column. Relative paths are
//! relative to the list file's folder. The list's own row order is the
//! listing order (ids follow it), since a list is an ordering the user chose.
//!
//! `label` may hold class names (strings: classes are the sorted distinct
//! names) or class indices (integers: classes `0..=max`, named by their
//! number unless `--class-names` names them). Null labels are unlabelled.
//!
//! A list that polars cannot read is reported in one line naming the file
//! (and, for an unterminated quote, the line it opens on), not with polars'
//! multi-line message and its advice for Python users.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::{Item, Listing, Source};
use crate::error::{Error, Result, ResultExt};

pub fn list(path: &Path) -> Result<Listing> {
    let is_parquet = path
        .extension()
        .map(|e| e.eq_ignore_ascii_case("parquet"))
        .unwrap_or(false);
    let df = if is_parquet {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        ParquetReader::new(f).finish().map_err(|e| {
            Error::file(
                path,
                format!("not a readable Parquet file ({})", first_line(&e)),
            )
        })?
    } else {
        CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .and_then(|r| r.finish())
            .map_err(|e| Error::file(path, csv_reason(path, &e)))?
    };
    let paths = df.column("path").map_err(|_| {
        Error::file(
            path,
            "list file has no `path` column; give a header row `path[,label]`",
        )
    })?;
    let paths = paths
        .str()
        .map_err(|_| Error::file(path, "the `path` column must hold strings"))?;
    let base: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();

    let mut class_names = Vec::new();
    let labels: Vec<Option<i64>> = match df.column("label") {
        Err(_) => vec![None; df.height()],
        Ok(col) if col.dtype() == &DataType::String => {
            let s = col.str().at(path)?;
            let mut classes: BTreeMap<String, i64> = BTreeMap::new();
            for v in s.iter().flatten() {
                classes.insert(v.to_string(), 0);
            }
            for (i, v) in classes.values_mut().enumerate() {
                *v = i as i64;
            }
            class_names = classes.keys().cloned().collect();
            s.iter().map(|v| v.map(|v| classes[v])).collect()
        }
        Ok(col) if col.dtype().is_integer() => {
            let c = col.cast(&DataType::Int64).at(path)?;
            let v: Vec<Option<i64>> = c.i64().at(path)?.iter().collect();
            if let Some(neg) = v.iter().flatten().find(|l| **l < 0) {
                return Err(Error::file(
                    path,
                    format!("`label` holds {neg}; class indices must be >= 0"),
                ));
            }
            let max = v.iter().flatten().max().copied().unwrap_or(-1);
            class_names = (0..=max).map(|i| i.to_string()).collect();
            v
        }
        Ok(col) => {
            return Err(Error::file(
                path,
                format!(
                    "the `label` column is {}; it must hold class names (strings) or indices (integers)",
                    col.dtype()
                ),
            ))
        }
    };
    let items = paths
        .iter()
        .zip(labels)
        .map(|(p, label)| match p {
            None | Some("") => Item {
                path: String::new(),
                label,
                source: Source::Bad("empty path in the list file".to_string()),
            },
            Some(p) => {
                let full = if Path::new(p).is_absolute() {
                    PathBuf::from(p)
                } else {
                    base.join(p)
                };
                Item {
                    path: p.to_string(),
                    label,
                    source: Source::File(full),
                }
            }
        })
        .collect();
    Ok(Listing {
        items,
        class_names,
        kind: if is_parquet {
            "list file (Parquet)"
        } else {
            "list file (CSV)"
        },
        ..Listing::default()
    })
}

/// The first line of a polars error, without its hints.
fn first_line(e: &PolarsError) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or_default().trim().to_string()
}

/// Why a CSV list did not parse, in one line: an unterminated quote is found
/// by scanning the file (polars does not say where); anything else is
/// polars' first line.
fn csv_reason(path: &Path, e: &PolarsError) -> String {
    if let Some(line) = std::fs::read(path)
        .ok()
        .and_then(|b| unterminated_quote(&b))
    {
        return format!(
            "not a readable CSV list: the quote (\") opened on line {line} is never closed"
        );
    }
    format!("not a readable CSV list ({})", first_line(e))
}

/// The 1-based line on which a quoted field opens and never closes. A quote
/// inside a quoted field is written doubled (`""`), which toggles twice.
fn unterminated_quote(bytes: &[u8]) -> Option<usize> {
    let (mut line, mut open_at, mut quoted) = (1, 0, false);
    for &b in bytes {
        match b {
            b'"' => {
                quoted = !quoted;
                if quoted {
                    open_at = line;
                }
            }
            b'\n' => line += 1,
            _ => {}
        }
    }
    quoted.then_some(open_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_line_of_an_unterminated_quote() {
        assert_eq!(unterminated_quote(b"path\na.jpg\n\"b,\"\"c\"\"\n"), Some(3));
        assert_eq!(unterminated_quote(b"path\n\"a\"\"b.jpg\"\n"), None);
    }
}
