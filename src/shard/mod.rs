//! Arrow IPC shard I/O: streaming writers that finish each file atomically
//! and readers that iterate record batches across a stage's shard files.
//!
//! Tables are written in the Arrow IPC *stream* format (schema, record
//! batches, end-of-stream marker; no footer): the format Hugging Face
//! `datasets` memory-maps in place (`Dataset.from_file`), so a training
//! table is used from Python without a copy into its cache. pyarrow opens
//! them with `pa.ipc.open_stream`, polars with `pl.read_ipc_stream`. The
//! readers here also take the IPC file format (tables of earlier versions).
pub mod mapped;
pub mod schema;
pub mod stored;

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, BinaryBuilder, RecordBatch, StringBuilder, StructArray};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::ipc::writer::StreamWriter;

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::AtomicFile;
use crate::manifest::Manifest;

/// Writes one Arrow IPC stream to any `W: Write`. `finish` writes the
/// end-of-stream marker: a table without it is incomplete (`count_rows`
/// refuses it), so every writer must be finished.
pub struct ShardWriter<W: Write> {
    inner: StreamWriter<W>,
    rows: u64,
}

impl<W: Write> ShardWriter<W> {
    pub fn new(writer: W, schema: &SchemaRef) -> Result<Self, arrow::error::ArrowError> {
        Ok(ShardWriter {
            inner: StreamWriter::try_new(writer, schema)?,
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

    /// Writes the end-of-stream marker and returns the underlying writer.
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

/// The two layouts of Arrow IPC: the file format starts with `ARROW1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcFormat {
    Stream,
    File,
}

/// Which IPC layout `head` (a file's first bytes) starts.
pub fn ipc_format(head: &[u8]) -> IpcFormat {
    if head.starts_with(b"ARROW1") {
        IpcFormat::File
    } else {
        IpcFormat::Stream
    }
}

pub(crate) fn unreadable(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::file(
        path,
        format!("not a readable Arrow IPC table ({what}); re-run the stage that wrote it"),
    )
}

/// The record batches of one table file, in either IPC layout.
pub enum ShardReader {
    Stream(StreamReader<BufReader<File>>),
    File(FileReader<BufReader<File>>),
}

impl ShardReader {
    pub fn schema(&self) -> SchemaRef {
        match self {
            ShardReader::Stream(r) => r.schema(),
            ShardReader::File(r) => r.schema(),
        }
    }
}

impl Iterator for ShardReader {
    type Item = Result<RecordBatch, arrow::error::ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ShardReader::Stream(r) => r.next(),
            ShardReader::File(r) => r.next(),
        }
    }
}

/// Opens one Arrow IPC table file; `projection` selects columns by index.
pub fn open_shard(path: &Path, projection: Option<Vec<usize>>) -> Result<ShardReader> {
    use std::io::BufRead;
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).at(path)?);
    // Peeks at the first bytes: fill_buf consumes nothing, the reader
    // starts from them.
    let format = ipc_format(reader.fill_buf().at(path)?);
    match format {
        IpcFormat::Stream => StreamReader::try_new(reader, projection).map(ShardReader::Stream),
        IpcFormat::File => FileReader::try_new(reader, projection).map(ShardReader::File),
    }
    .map_err(|e| unreadable(path, e))
}

/// The rows of an Arrow IPC table file, from its record batches' headers:
/// no column data is read (verification counts the rows of every shard it
/// checks). A stream must end with its end-of-stream marker, a file with
/// its footer: anything else was cut short.
pub fn count_rows(path: &Path) -> Result<u64> {
    use std::io::{Read, Seek};
    let mut f = File::open(path).at(path)?;
    let mut head = [0u8; 6];
    let n = f.read(&mut head).at(path)?;
    f.rewind().at(path)?;
    match ipc_format(&head[..n]) {
        IpcFormat::Stream => count_stream_rows(path, f),
        IpcFormat::File => count_file_rows(path, f),
    }
}

fn count_stream_rows(path: &Path, file: File) -> Result<u64> {
    use std::io::Read;
    let bad = |what: &str| {
        Error::file(
            path,
            format!("not a complete Arrow IPC stream ({what}); re-run the stage that wrote it"),
        )
    };
    let len = file.metadata().at(path)?.len();
    let mut r = BufReader::with_capacity(64 << 10, file);
    let mut pos = 0u64;
    let mut rows = 0u64;
    let mut word = [0u8; 4];
    loop {
        // A message: [0xFFFFFFFF] metadata length, flatbuffer, body; a zero
        // length is the end-of-stream marker.
        if r.read_exact(&mut word).is_err() {
            return Err(bad("no end-of-stream marker"));
        }
        pos += 4;
        if word == [0xff; 4] {
            r.read_exact(&mut word)
                .map_err(|_| bad("cut inside a message header"))?;
            pos += 4;
        }
        let meta_len = u32::from_le_bytes(word) as u64;
        if meta_len == 0 {
            return Ok(rows);
        }
        if pos + meta_len > len {
            return Err(bad("a message header runs past the end"));
        }
        let mut meta = vec![0u8; meta_len as usize];
        r.read_exact(&mut meta).at(path)?;
        pos += meta_len;
        let message = arrow::ipc::root_as_message(&meta).map_err(|_| bad("unreadable message"))?;
        if let Some(batch) = message.header_as_record_batch() {
            rows += u64::try_from(batch.length()).map_err(|_| bad("negative row count"))?;
        }
        let body = u64::try_from(message.bodyLength()).map_err(|_| bad("negative body"))?;
        if pos + body > len {
            return Err(bad("a message body runs past the end"));
        }
        r.seek_relative(body as i64).at(path)?;
        pos += body;
    }
}

fn count_file_rows(path: &Path, mut f: File) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |what: &str| {
        Error::file(
            path,
            format!("not a complete Arrow IPC file ({what}); re-run the stage that wrote it"),
        )
    };
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

/// The schema of an Arrow IPC table file.
pub fn shard_schema(path: &Path) -> Result<SchemaRef> {
    Ok(open_shard(path, None)?.schema())
}

/// Reads every batch of the given shard files in order.
pub struct TableReader {
    files: std::vec::IntoIter<PathBuf>,
    columns: Option<Vec<String>>,
    current: Option<(PathBuf, ShardReader)>,
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
