//! List files: a CSV (with a header) or Parquet table read with polars, with
//! a `path` column and an optional `label` column. Relative paths are
//! relative to the list file's folder. The list's own row order is the
//! listing order (ids follow it), since a list is an ordering the user chose.
//!
//! `label` may hold class names (strings: classes are the sorted distinct
//! names) or class indices (integers: classes `0..=max`, named by their
//! number unless `--class-names` names them). Null labels are unlabelled.
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
        ParquetReader::new(f).finish().at(path)?
    } else {
        CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .at(path)?
            .finish()
            .at(path)?
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
