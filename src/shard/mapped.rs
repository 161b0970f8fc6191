//! Arrow IPC files read in place: each file is memory-mapped and the record
//! batches decoded from it point into the mapping, so a column reaches its
//! user (a matrix of feature vectors, a tensor) without being copied. The
//! page cache holds the only copy: `pseudo-label` on 1.28M x 2048 features
//! needs 10.5 GB once, not once for the cache and again for the reader.
//!
//! Stage outputs are written to temporary names and renamed into place and
//! never modified afterwards, which is what makes mapping them sound; a file
//! truncated under a running reader would fault, as it would for any mmap user.
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::convert::try_fb_to_schema;
use arrow::ipc::reader::{read_footer_length, FileDecoder};
use arrow::ipc::root_as_footer;

use crate::error::{Error, Result, ResultExt};

/// The batches of one Arrow IPC file, keeping only `columns` (by name) when
/// given. The batches hold the mapping alive; drop them to unmap the file.
pub fn map_batches(path: &Path, columns: Option<&[&str]>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let bad = |what: String| {
        Error::file(
            path,
            format!("not a readable Arrow IPC file ({what}); re-run the stage that wrote it"),
        )
    };
    let file = std::fs::File::open(path).at(path)?;
    // SAFETY: see the module note: finished stage files are never modified.
    // `populate` maps the whole file at once instead of faulting page by page.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.at(path)?;
    let len = map.len();
    if len < 10 {
        return Err(bad(format!("{len} bytes")));
    }
    let buffer = match NonNull::new(map.as_ptr() as *mut u8) {
        // SAFETY: the pointer is valid for `len` bytes for as long as `map`
        // lives, and the buffer owns `map`. Arrow only reads through it.
        Some(ptr) => unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(map)) },
        None => return Err(bad("empty mapping".into())),
    };
    let trailer: [u8; 10] = buffer[len - 10..].try_into().expect("10 bytes");
    let footer_len = read_footer_length(trailer).map_err(|e| bad(e.to_string()))?;
    if footer_len > len - 10 {
        return Err(bad(format!("footer of {footer_len} bytes")));
    }
    let footer =
        root_as_footer(&buffer[len - 10 - footer_len..len - 10]).map_err(|e| bad(e.to_string()))?;
    let fb_schema = footer.schema().ok_or_else(|| bad("no schema".into()))?;
    let schema = Arc::new(try_fb_to_schema(fb_schema).map_err(|e| bad(e.to_string()))?);
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());
    let mut out_schema = schema.clone();
    if let Some(cols) = columns {
        let mut idx = Vec::with_capacity(cols.len());
        for c in cols {
            idx.push(
                schema
                    .index_of(c)
                    .map_err(|_| Error::file(path, format!("has no column `{c}`")))?,
            );
        }
        out_schema = Arc::new(schema.project(&idx).at(path)?);
        decoder = decoder.with_projection(idx);
    }
    let block_data = |offset: i64, meta: i32, body: i64| -> Result<Buffer> {
        let (start, n) = (offset as usize, meta as usize + body as usize);
        if offset < 0 || meta < 0 || body < 0 || start.saturating_add(n) > len {
            return Err(bad(format!("a block [{offset}, +{n}) outside the file")));
        }
        Ok(buffer.slice_with_length(start, n))
    };
    for block in footer.dictionaries().iter().flatten() {
        let data = block_data(block.offset(), block.metaDataLength(), block.bodyLength())?;
        decoder.read_dictionary(block, &data).at(path)?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        let data = block_data(block.offset(), block.metaDataLength(), block.bodyLength())?;
        if let Some(b) = decoder.read_record_batch(block, &data).at(path)? {
            batches.push(b);
        }
    }
    Ok((out_schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, FixedSizeListArray, Float32Array, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn write(path: &Path, batches: &[RecordBatch]) {
        let mut f = crate::shard::ShardFile::create(path, &batches[0].schema()).unwrap();
        for b in batches {
            f.write(b).unwrap();
        }
        f.finish().unwrap();
    }

    fn batch(first: u64, rows: usize, dim: i32) -> RecordBatch {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values: Vec<f32> = (0..rows * dim as usize)
            .map(|i| first as f32 + i as f32)
            .collect();
        let list = FixedSizeListArray::new(item, dim, Arc::new(Float32Array::from(values)), None);
        let ids = UInt64Array::from_iter_values(first..first + rows as u64);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("feature", list.data_type().clone(), false),
        ]));
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(list)]).unwrap()
    }

    #[test]
    fn mapped_batches_equal_the_written_ones_and_point_into_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.arrow");
        let written = [batch(0, 100, 3), batch(100, 7, 3)];
        write(&path, &written);
        let (schema, got) = map_batches(&path, None).unwrap();
        assert_eq!(schema, written[0].schema());
        assert_eq!(got, written);
        // Zero copy: the values live inside the mapping, in file order.
        let (_, only) = map_batches(&path, Some(&["feature"])).unwrap();
        assert_eq!(only[0].num_columns(), 1);
        let v = only[0].column(0).to_data().child_data()[0].buffers()[0].as_ptr() as usize;
        let w = only[1].column(0).to_data().child_data()[0].buffers()[0].as_ptr() as usize;
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(w > v && w - v < size, "{v:#x} {w:#x}");
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.arrow");
        std::fs::write(&path, b"not an arrow file at all").unwrap();
        let e = map_batches(&path, None).unwrap_err().to_string();
        assert!(
            e.contains("t.arrow") && e.contains("not a readable Arrow IPC file"),
            "{e}"
        );
        write(&path, &[batch(0, 4, 2)]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(map_batches(&path, None).is_err());
        write(&path, &[batch(0, 4, 2)]);
        let e = map_batches(&path, Some(&["nope"])).unwrap_err().to_string();
        assert!(e.contains("no column `nope`"), "{e}");
        assert!(map_batches(&tmp.path().join("missing.arrow"), None).is_err());
    }
}
