//! Arrow IPC shard I/O: streaming writers that finish each file atomically
//! and readers that iterate record batches across a stage's shard files.
pub mod mapped;
pub mod schema;
pub mod stored;

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, BinaryBuilder, RecordBatch, StringBuilder, StructArray};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::AtomicFile;
use crate::manifest::Manifest;

/// Writes one Arrow IPC file to any `W: Write`. `finish` writes the footer:
/// a file without it cannot be opened, so every writer must be finished.
pub struct ShardWriter<W: Write> {
    inner: FileWriter<W>,
    rows: u64,
}

impl<W: Write> ShardWriter<W> {
    pub fn new(writer: W, schema: &SchemaRef) -> Result<Self, arrow::error::ArrowError> {
        Ok(ShardWriter {
            inner: FileWriter::try_new(writer, schema)?,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), arrow::error::ArrowError> {
        self.rows += batch.num_rows() as u64;
        self.inner.write(batch)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, arrow::error::ArrowError> {
        self.inner.finish()?;
        self.inner.into_inner()
    }
}

/// A shard file written atomically: invisible under its final name until `finish`.
pub struct ShardFile {
    writer: ShardWriter<AtomicFile>,
    path: PathBuf,
}

impl ShardFile {
    pub fn create(path: impl AsRef<Path>, schema: &SchemaRef) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = AtomicFile::create(&path)?;
        Ok(ShardFile {
            writer: ShardWriter::new(file, schema).at(&path)?,
            path,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).at(&self.path)
    }

    pub fn rows(&self) -> u64 {
        self.writer.rows()
    }

    /// Finishes the file and renames it into place; returns its row count.
    pub fn finish(self) -> Result<u64> {
        let rows = self.writer.rows();
        let file = self.writer.finish().at(&self.path)?;
        file.commit()?;
        Ok(rows)
    }
}

/// Writes a table as `DIR/NAME-00000.arrow`, `NAME-00001.arrow`, ... with at
/// most `rows_per_shard` rows each. Returns the (relative path, rows) of each file.
pub struct TableWriter {
    dir: PathBuf,
    name: String,
    schema: SchemaRef,
    rows_per_shard: usize,
    current: Option<ShardFile>,
    index: usize,
    written: Vec<(String, u64)>,
}

impl TableWriter {
    pub fn new(
        dir: impl AsRef<Path>,
        name: &str,
        schema: SchemaRef,
        rows_per_shard: usize,
    ) -> Self {
        TableWriter {
            dir: dir.as_ref().to_path_buf(),
            name: name.to_string(),
            schema,
            rows_per_shard: rows_per_shard.max(1),
            current: None,
            index: 0,
            written: Vec::new(),
        }
    }

    pub fn shard_name(name: &str, index: usize) -> String {
        format!("{name}-{index:05}.arrow")
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                let path = self.dir.join(Self::shard_name(&self.name, self.index));
                self.current = Some(ShardFile::create(path, &self.schema)?);
            }
            let cur = self.current.as_mut().expect("current shard");
            let room = self.rows_per_shard - cur.rows() as usize;
            let take = room.min(batch.num_rows() - offset);
            cur.write(&batch.slice(offset, take))?;
            offset += take;
            if cur.rows() as usize == self.rows_per_shard {
                self.close_current()?;
            }
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(cur) = self.current.take() {
            let rows = cur.finish()?;
            self.written
                .push((Self::shard_name(&self.name, self.index), rows));
            self.index += 1;
        }
        Ok(())
    }

    /// Finishes the last file. A table with no rows still gets one (empty) file,
    /// so readers always find the schema.
    pub fn finish(mut self) -> Result<Vec<(String, u64)>> {
        if self.current.is_none() && self.written.is_empty() {
            let path = self.dir.join(Self::shard_name(&self.name, 0));
            self.current = Some(ShardFile::create(path, &self.schema)?);
        }
        self.close_current()?;
        Ok(self.written)
    }
}

/// Opens one Arrow IPC file; `projection` selects columns by index.
pub fn open_shard(
    path: &Path,
    projection: Option<Vec<usize>>,
) -> Result<FileReader<BufReader<File>>> {
    let file = File::open(path).at(path)?;
    FileReader::try_new(BufReader::with_capacity(1 << 20, file), projection).map_err(|e| {
        Error::file(
            path,
            format!("not a readable Arrow IPC file ({e}); re-run the stage that wrote it"),
        )
    })
}

/// The rows of an Arrow IPC file, from its footer and the record batches'
/// headers: no column data is read (verification counts the rows of every
/// shard it checks).
pub fn count_rows(path: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |what: &str| {
        Error::file(
            path,
            format!("not a complete Arrow IPC file ({what}); re-run the stage that wrote it"),
        )
    };
    let mut f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    if len < 18 {
        return Err(bad("too short"));
    }
    let mut tail = [0u8; 10];
    f.seek(SeekFrom::End(-10)).at(path)?;
    f.read_exact(&mut tail).at(path)?;
    let footer_len = arrow::ipc::reader::read_footer_length(tail).map_err(|_| bad("no footer"))?;
    if footer_len as u64 + 10 > len {
        return Err(bad("footer longer than the file"));
    }
    let mut footer = vec![0u8; footer_len];
    f.seek(SeekFrom::End(-10 - footer_len as i64)).at(path)?;
    f.read_exact(&mut footer).at(path)?;
    let footer = arrow::ipc::root_as_footer(&footer).map_err(|_| bad("unreadable footer"))?;
    let mut rows = 0u64;
    for block in footer.recordBatches().into_iter().flatten() {
        let meta_len = usize::try_from(block.metaDataLength()).map_err(|_| bad("bad block"))?;
        let offset = u64::try_from(block.offset()).map_err(|_| bad("bad block"))?;
        if meta_len < 8 || offset + meta_len as u64 > len {
            return Err(bad("record batch outside the file"));
        }
        let mut meta = vec![0u8; meta_len];
        f.seek(SeekFrom::Start(offset)).at(path)?;
        f.read_exact(&mut meta).at(path)?;
        // An encapsulated message: [continuation marker] length, then the flatbuffer.
        let start = if meta[..4] == [0xff; 4] { 8 } else { 4 };
        let message = arrow::ipc::root_as_message(&meta[start..])
            .map_err(|_| bad("unreadable batch header"))?;
        let batch = message
            .header_as_record_batch()
            .ok_or_else(|| bad("a block that is not a record batch"))?;
        rows += u64::try_from(batch.length()).map_err(|_| bad("negative row count"))?;
    }
    Ok(rows)
}

/// The schema of an Arrow IPC file.
pub fn shard_schema(path: &Path) -> Result<SchemaRef> {
    Ok(open_shard(path, None)?.schema())
}

/// Reads every batch of the given shard files in order.
pub struct TableReader {
    files: std::vec::IntoIter<PathBuf>,
    columns: Option<Vec<String>>,
    current: Option<(PathBuf, FileReader<BufReader<File>>)>,
}

impl TableReader {
    /// Reads `files`, keeping only `columns` (by name) when given.
    pub fn new(files: Vec<PathBuf>, columns: Option<&[&str]>) -> Self {
        TableReader {
            files: files.into_iter(),
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            current: None,
        }
    }

    /// Reads the table files `NAME-*.arrow` a stage's manifest lists.
    pub fn from_manifest(
        dir: &Path,
        manifest: &Manifest,
        name: &str,
        columns: Option<&[&str]>,
    ) -> Self {
        Self::new(table_files(dir, manifest, name), columns)
    }

    fn open_next(&mut self) -> Option<Result<()>> {
        let path = self.files.next()?;
        let projection = match &self.columns {
            None => None,
            Some(cols) => match shard_schema(&path) {
                Ok(schema) => {
                    let mut idx = Vec::new();
                    for c in cols {
                        match schema.index_of(c) {
                            Ok(i) => idx.push(i),
                            Err(_) => {
                                return Some(Err(Error::file(
                                    &path,
                                    format!("has no column `{c}`"),
                                )))
                            }
                        }
                    }
                    Some(idx)
                }
                Err(e) => return Some(Err(e)),
            },
        };
        Some(open_shard(&path, projection).map(|r| {
            self.current = Some((path, r));
        }))
    }
}

impl Iterator for TableReader {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                match self.open_next()? {
                    Ok(()) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            let (path, reader) = self.current.as_mut().expect("open reader");
            match reader.next() {
                Some(Ok(b)) => return Some(Ok(b)),
                Some(Err(e)) => return Some(Err(Error::file(path.clone(), format!("Arrow: {e}")))),
                None => self.current = None,
            }
        }
    }
}

/// The files of table `name` listed in a manifest, in order.
pub fn table_files(dir: &Path, manifest: &Manifest, name: &str) -> Vec<PathBuf> {
    let prefix = format!("{name}-");
    manifest
        .outputs
        .iter()
        .filter(|o| o.path.starts_with(&prefix) && o.path.ends_with(".arrow"))
        .map(|o| dir.join(&o.path))
        .collect()
}

/// Builds an `image` column (`struct<bytes, path>`) from encoded images.
pub fn image_column<'a>(items: impl IntoIterator<Item = (&'a [u8], Option<&'a str>)>) -> ArrayRef {
    let mut bytes = BinaryBuilder::new();
    let mut paths = StringBuilder::new();
    for (b, p) in items {
        bytes.append_value(b);
        paths.append_option(p);
    }
    let arrays: Vec<ArrayRef> = vec![
        std::sync::Arc::new(bytes.finish()),
        std::sync::Arc::new(paths.finish()),
    ];
    std::sync::Arc::new(StructArray::new(schema::image_fields(), arrays, None))
}

/// The encoded bytes of row `i` of an `image` column.
pub fn image_bytes(column: &dyn Array, i: usize) -> Result<&[u8]> {
    let s = column
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| Error::invalid("`image` column is not struct<bytes, path>"))?;
    let b = s
        .column_by_name("bytes")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::BinaryArray>())
        .ok_or_else(|| Error::invalid("`image` column has no binary `bytes` field"))?;
    Ok(b.value(i))
}
