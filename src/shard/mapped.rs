//! Memory-mapped Arrow IPC tables (stream or file layout), read without
//! copies: every record batch is a view into the file's pages. This is what lets the training loader
//! draw each batch from the whole table in a random order (a global
//! shuffle) with memory bounded by the page cache, not by the table: a row
//! costs one random read of its own bytes, never a whole record batch
//! (`datasets` reads Arrow the same way).
//!
//! The files are mapped read-only. A file changed by another process while
//! it is mapped is outside this reader's contract, as for every mmap
//! reader; the stage framework verifies the files' checksums before a
//! stage opens them, and stages never write into another stage's folder.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::convert::try_fb_to_schema;
use arrow::ipc::reader::{read_footer_length, FileDecoder, StreamDecoder};
use arrow::ipc::root_as_footer;

use super::{ipc_format, unreadable, IpcFormat};
use crate::error::{Error, Result, ResultExt};

/// One mapped file: its schema (with metadata) and its record batches,
/// projected to the columns asked for.
pub struct MappedFile {
    pub path: PathBuf,
    /// The file's full schema, metadata included (not projected).
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Maps `path` and decodes its record batches as views, keeping only
/// `columns` (by name; all when None).
pub fn map_file(path: &Path, columns: Option<&[&str]>) -> Result<MappedFile> {
    let file = File::open(path).at(path)?;
    // SAFETY: read-only map of a finished stage output (see the module doc).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
    let len = mmap.len();
    if len < 8 {
        return Err(unreadable(path, "too short"));
    }
    let format = ipc_format(&mmap);
    let ptr =
        NonNull::new(mmap.as_ptr() as *mut u8).ok_or_else(|| unreadable(path, "empty map"))?;
    // SAFETY: `ptr` points at `len` bytes owned by `mmap`, which the buffer keeps alive.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(mmap)) };
    let (schema, batches) = match format {
        IpcFormat::Stream => decode_stream(path, buffer)?,
        IpcFormat::File => decode_file(path, &buffer)?,
    };
    let batches = match columns {
        None => batches,
        Some(cols) => {
            let mut projection = Vec::new();
            for c in cols {
                projection.push(
                    schema
                        .index_of(c)
                        .map_err(|_| Error::file(path, format!("has no column `{c}`")))?,
                );
            }
            batches
                .iter()
                .map(|b| b.project(&projection))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| unreadable(path, e))?
        }
    };
    Ok(MappedFile {
        path: path.to_path_buf(),
        schema,
        batches,
    })
}

/// The stream layout: the decoder slices each body out of the map (the
/// writer aligns every buffer, so nothing is copied to realign it).
fn decode_stream(path: &Path, mut buffer: Buffer) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while let Some(rb) = decoder
        .decode(&mut buffer)
        .map_err(|e| unreadable(path, e))?
    {
        batches.push(rb);
    }
    decoder.finish().map_err(|e| unreadable(path, e))?;
    let schema = decoder
        .schema()
        .ok_or_else(|| unreadable(path, "no schema"))?;
    Ok((schema, batches))
}

/// The file layout: batches located through the footer.
fn decode_file(path: &Path, buffer: &Buffer) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let bad = |what: String| unreadable(path, what);
    let len = buffer.len();
    if len < 18 {
        return Err(bad("too short".into()));
    }
    let tail: [u8; 10] = buffer[len - 10..].try_into().expect("ten bytes");
    let footer_len = read_footer_length(tail).map_err(|e| bad(e.to_string()))?;
    if footer_len + 10 > len {
        return Err(bad("footer longer than the file".into()));
    }
    let footer = root_as_footer(&buffer[len - 10 - footer_len..len - 10])
        .map_err(|e| bad(format!("footer: {e}")))?;
    let schema = Arc::new(
        try_fb_to_schema(footer.schema().ok_or_else(|| bad("no schema".into()))?)
            .map_err(|e| bad(format!("schema: {e}")))?,
    );
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());
    for block in footer.dictionaries().into_iter().flatten() {
        let data = block_data(buffer, block, len).ok_or_else(|| bad("dictionary".into()))?;
        decoder
            .read_dictionary(block, &data)
            .map_err(|e| bad(e.to_string()))?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().into_iter().flatten() {
        let data = block_data(buffer, block, len).ok_or_else(|| bad("record batch".into()))?;
        match decoder
            .read_record_batch(block, &data)
            .map_err(|e| bad(e.to_string()))?
        {
            Some(rb) => batches.push(rb),
            None => return Err(bad("an empty record batch block".into())),
        }
    }
    Ok((schema, batches))
}

/// Asks the kernel to read all of `path` into the page cache now, in large
/// sequential requests, and returns at once. For readers that will touch
/// every page of a mapped file (k-means): faulting in a cold 737 MB
/// features file page by page took 18.7 s on this project's machine; with
/// this hint the whole cold `pseudo-label` command took 1.7 s (BENCHMARKS.md).
/// A hint only: a file that cannot be advised is read the slow way.
pub fn prefetch(path: &Path) -> Result<()> {
    let file = File::open(path).at(path)?;
    // SAFETY: a read-only map that is dropped at once; no page is read through it.
    let map = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
    let _ = map.advise(memmap2::Advice::WillNeed);
    Ok(())
}

fn block_data(buffer: &Buffer, block: &arrow::ipc::Block, len: usize) -> Option<Buffer> {
    let offset = usize::try_from(block.offset()).ok()?;
    let n =
        usize::try_from(block.metaDataLength()).ok()? + usize::try_from(block.bodyLength()).ok()?;
    (offset.checked_add(n)? <= len).then(|| buffer.slice_with_length(offset, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{image_bytes, image_column, schema, ShardFile, TableReader};
    use arrow::array::{Array, Int64Array, StringArray, UInt64Array};

    #[test]
    fn mapped_batches_equal_the_streaming_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let sch = schema::train(&["a".into(), "b".into()]);
        let path = tmp.path().join("train-00000.arrow");
        let mut f = ShardFile::create(&path, &sch).unwrap();
        for start in [0u64, 3] {
            let ids: Vec<u64> = (start..start + 3).collect();
            let imgs: Vec<Vec<u8>> = ids.iter().map(|i| vec![*i as u8; 5]).collect();
            let rb = RecordBatch::try_new(
                sch.clone(),
                vec![
                    Arc::new(UInt64Array::from(ids.clone())),
                    image_column(imgs.iter().map(|b| (b.as_slice(), None))),
                    Arc::new(Int64Array::from(vec![Some(1), None, Some(0)])),
                    Arc::new(StringArray::from(vec!["true"; 3])),
                ],
            )
            .unwrap();
            f.write(&rb).unwrap();
        }
        f.finish().unwrap();
        let m = map_file(&path, Some(&["id", "image"])).unwrap();
        assert_eq!(m.batches.len(), 2);
        assert_eq!(m.schema.fields().len(), 4, "the full schema");
        let streamed: Vec<RecordBatch> =
            TableReader::new(vec![path.clone()], Some(&["id", "image"]))
                .collect::<Result<_>>()
                .unwrap();
        for (a, b) in m.batches.iter().zip(&streamed) {
            assert_eq!(a, b);
            assert_eq!(image_bytes(a.column(1).as_ref(), 2).unwrap().len(), 5);
        }
        assert!(map_file(&path, Some(&["nope"])).is_err());
        std::fs::write(tmp.path().join("bad.arrow"), b"not arrow at all, too").unwrap();
        let e = map_file(&tmp.path().join("bad.arrow"), None).err().unwrap();
        assert!(
            e.to_string().contains("not a readable Arrow IPC table"),
            "{e}"
        );
        let _ = m.batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .len();
    }
}
