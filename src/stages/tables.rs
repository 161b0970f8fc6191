//! Reading the pipeline's tables by column, for the stages that join them
//! (`sample-labels`, `pseudo-label`, `shard`): typed column access with
//! errors that name the file, and the id/label columns of a finished stage.
use std::path::Path;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::shard::stored::StoredImage;
use crate::shard::{schema, shard_schema, table_files, TableReader};

/// Column `name` of `batch` as `T`, or an error naming the table.
pub fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, table: &Path) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            Error::file(
                table,
                format!("column `{name}` is missing or of the wrong type; re-run the stage that wrote it"),
            )
        })
}

pub fn u64_column<'a>(b: &'a RecordBatch, name: &str, table: &Path) -> Result<&'a UInt64Array> {
    column::<UInt64Array>(b, name, table)
}

pub fn i64_column<'a>(b: &'a RecordBatch, name: &str, table: &Path) -> Result<&'a Int64Array> {
    column::<Int64Array>(b, name, table)
}

pub fn str_column<'a>(b: &'a RecordBatch, name: &str, table: &Path) -> Result<&'a StringArray> {
    column::<StringArray>(b, name, table)
}

/// The `image` column of a batch of an images table.
pub fn image_column<'a>(b: &'a RecordBatch, table: &Path) -> Result<&'a ArrayRef> {
    b.column_by_name("image")
        .ok_or_else(|| Error::file(table, "has no `image` column"))
}

/// The rows of table `name` (`NAME-*.arrow`) a finished stage's manifest lists.
pub fn table_rows(manifest: &Manifest, name: &str) -> u64 {
    let prefix = format!("{name}-");
    manifest
        .outputs
        .iter()
        .filter(|o| o.path.starts_with(&prefix))
        .filter_map(|o| o.rows)
        .sum()
}

/// How the images of table `name` of a finished stage are stored (from its
/// first file's metadata; `None` for a table written before it was recorded).
pub fn stored_image(dir: &Path, manifest: &Manifest, name: &str) -> Result<Option<StoredImage>> {
    match first_file(dir, manifest, name) {
        Some(f) => Ok(StoredImage::from_schema(shard_schema(&f)?.as_ref())),
        None => Ok(None),
    }
}

/// The side of a table's images (of their squares; the shorter side of
/// whole photos) from `file`'s recorded format, or for a table written
/// before the format was recorded, from its first image.
pub fn image_side(file: &Path) -> Result<u32> {
    if let Some(f) = StoredImage::from_schema(shard_schema(file)?.as_ref()) {
        return Ok(f.size);
    }
    for batch in TableReader::new(vec![file.to_path_buf()], Some(&["image"])) {
        let batch = batch?;
        if batch.num_rows() > 0 {
            let bytes = crate::shard::image_bytes(batch.column(0).as_ref(), 0)?;
            let (h, w) =
                crate::shard::stored::dimensions(bytes, None).map_err(|e| Error::file(file, e))?;
            if h != w {
                return Err(Error::file(
                    file,
                    format!("holds {w}x{h} images; the GAN trains on squares"),
                ));
            }
            return Ok(h as u32);
        }
    }
    Err(Error::file(
        file,
        "holds no rows; re-run the stage that wrote it",
    ))
}

/// The first file of table `name` of a finished stage.
pub fn first_file(dir: &Path, manifest: &Manifest, name: &str) -> Option<std::path::PathBuf> {
    table_files(dir, manifest, name).into_iter().next()
}

/// The class names stored with table `name` of a finished stage (from its first file).
pub fn class_names(dir: &Path, manifest: &Manifest, name: &str) -> Result<Vec<String>> {
    match table_files(dir, manifest, name).first() {
        Some(f) => Ok(schema::class_names_of(shard_schema(f)?.as_ref())),
        None => Err(Error::file(
            dir,
            format!("the manifest lists no `{name}` table; re-run the stage that wrote it"),
        )),
    }
}

/// One table's `id` and (nullable) `label` columns, in table order.
pub struct IdLabels {
    pub ids: Vec<u64>,
    pub labels: Vec<Option<i64>>,
}

/// Reads `id` and `label` of table `name` in the finished stage at `dir`.
pub fn read_id_labels(dir: &Path, manifest: &Manifest, name: &str) -> Result<IdLabels> {
    let mut out = IdLabels {
        ids: Vec::new(),
        labels: Vec::new(),
    };
    for batch in TableReader::from_manifest(dir, manifest, name, Some(&["id", "label"])) {
        let batch = batch?;
        let id = u64_column(&batch, "id", dir)?;
        let label = i64_column(&batch, "label", dir)?;
        out.ids.extend(id.values().iter().copied());
        out.labels.extend(label.iter());
    }
    Ok(out)
}

/// Reads only the `id` column of table `name`.
pub fn read_ids(dir: &Path, manifest: &Manifest, name: &str) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for batch in TableReader::from_manifest(dir, manifest, name, Some(&["id"])) {
        let batch = batch?;
        ids.extend(u64_column(&batch, "id", dir)?.values().iter().copied());
    }
    Ok(ids)
}

/// Default names for classes without names: `class-0`, `class-1`, ...
pub fn numbered_names(prefix: &str, n: usize) -> Vec<String> {
    let width = n.saturating_sub(1).to_string().len();
    (0..n).map(|i| format!("{prefix}-{i:0width$}")).collect()
}
