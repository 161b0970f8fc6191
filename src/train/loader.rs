//! Shard images to tensors: reads the `image` column (and `id`, optionally a
//! label column) of an `images/` or `train/` table, decodes PNG, JPEG or raw
//! RGB rows in parallel with rayon on a producer thread that stays
//! `prefetch` batches ahead of the trainer, and yields `f32` tensors
//! `[B, 3, H, W]` in [-1, 1].
//!
//! Order is a function of the seed and the epoch only (never of thread
//! timing): each epoch permutes the table's record batches, then shuffles
//! rows inside windows of `shuffle_window` record batches (a shuffle buffer,
//! so memory stays bounded by the window, not the table). `Sequential` reads
//! every row once in table order (for embedding). A run resumed at
//! `Position { epoch, batch }` sees exactly the batches an uninterrupted run
//! would have seen from there; the skipped ones are not decoded.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow::array::{Array, Int64Array, RecordBatch, UInt64Array};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use tch::Tensor;

use crate::error::{Error, Result, ResultExt};
use crate::shard::{image_bytes, open_shard};

/// Row order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A new permutation every epoch, from `seed` and the epoch number.
    Shuffle { seed: u64 },
    /// Table order, every row once per epoch (for embedding).
    Sequential,
}

/// Where a batch sits: epoch and batch index within it (both 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub batch: u64,
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub order: Order,
    /// Drop an epoch's last, smaller batch (training); keep it (embedding).
    pub drop_last: bool,
    /// Number of epochs; `None` = endless (the trainer stops by steps).
    pub epochs: Option<u64>,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// Record batches shuffled together (the shuffle buffer).
    pub shuffle_window: usize,
    /// Keep only rows whose id is in this set (e.g. the labelled images).
    pub ids: Option<Arc<HashSet<u64>>>,
    /// Also yield this Int64 column (nullable) as `labels`.
    pub label_column: Option<String>,
    /// Batches to skip from the first epoch on, without decoding them: a run
    /// resumed after `n` steps of one batch each passes `n`.
    pub skip_batches: u64,
}

impl LoaderConfig {
    /// Endless shuffled batches for training.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            order: Order::Shuffle { seed },
            drop_last: true,
            epochs: None,
            prefetch: 4,
            shuffle_window: 16,
            ids: None,
            label_column: None,
            skip_batches: 0,
        }
    }

    /// Every row once, in table order.
    pub fn sequential(batch_size: usize) -> Self {
        LoaderConfig {
            order: Order::Sequential,
            drop_last: false,
            epochs: Some(1),
            ..Self::train(batch_size, 0)
        }
    }
}

/// A decoded batch.
pub struct Batch {
    /// `[B, 3, H, W]`, float32, in [-1, 1], on the CPU.
    pub images: Tensor,
    pub ids: Vec<u64>,
    /// The label column's values when one was asked for (else empty).
    pub labels: Vec<Option<i64>>,
    /// Where this batch sits: the position of the *next* batch is `batch + 1`.
    pub position: Position,
}

/// One record batch of one file: the loader's unit of shuffling.
#[derive(Debug, Clone, Copy)]
struct Block {
    file: usize,
    index: usize,
}

/// A table opened for loading.
#[derive(Clone)]
struct Source {
    files: Vec<PathBuf>,
    /// Column indices: id, image, label.
    projection: Vec<Vec<usize>>,
    blocks: Vec<Block>,
    /// Rows kept (after the id filter) per block.
    kept: Vec<usize>,
}

/// Batches of decoded images; an iterator of `Result<Batch>`.
pub struct Loader {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    rows: usize,
    height: usize,
    width: usize,
    batches_per_epoch: u64,
}

impl Loader {
    /// Opens the shard `files` of a table and starts the producer thread.
    pub fn new(files: Vec<PathBuf>, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch_size == 0 {
            return Err(Error::invalid("batch size must be at least 1"));
        }
        let mut source = Source {
            files,
            projection: Vec::new(),
            blocks: Vec::new(),
            kept: Vec::new(),
        };
        // The first image seen: its file, id, bytes and (h, w) when raw.
        type FirstImage = (PathBuf, u64, Vec<u8>, Option<(usize, usize)>);
        let mut first_image: Option<FirstImage> = None;
        for (fi, path) in source.files.iter().enumerate() {
            let reader = open_shard(path, None)?;
            let schema = reader.schema();
            let col = |name: &str| {
                schema.index_of(name).map_err(|_| {
                    Error::file(
                        path,
                        format!("has no column `{name}` (not an images/ or train/ table?)"),
                    )
                })
            };
            let mut proj = vec![col("id")?, col("image")?];
            if let Some(l) = &cfg.label_column {
                proj.push(col(l)?);
            }
            let n = reader.num_batches();
            drop(reader);
            // Only the id column, to count the rows each block keeps.
            let id_reader = open_shard(path, Some(vec![proj[0]]))?;
            for (bi, rb) in id_reader.enumerate() {
                let rb = rb.at(path)?;
                let ids = id_column(&rb, path)?;
                let kept = match &cfg.ids {
                    Some(set) => ids.values().iter().filter(|i| set.contains(i)).count(),
                    None => ids.len(),
                };
                if kept > 0 {
                    source.blocks.push(Block {
                        file: fi,
                        index: bi,
                    });
                    source.kept.push(kept);
                    if first_image.is_none() {
                        let full = read_block(path, &proj, bi)?;
                        let ids = id_column(&full, path)?;
                        let img = full.column(1);
                        let row = (0..full.num_rows())
                            .find(|&r| cfg.ids.as_ref().is_none_or(|s| s.contains(&ids.value(r))))
                            .unwrap_or(0);
                        let hint = size_columns(path, &schema, bi, row)?;
                        first_image = Some((
                            path.clone(),
                            ids.value(row),
                            image_bytes(img.as_ref(), row)?.to_vec(),
                            hint,
                        ));
                    }
                }
            }
            debug_assert!(source.blocks.iter().filter(|b| b.file == fi).count() <= n);
            source.projection.push(proj);
        }
        let rows: usize = source.kept.iter().sum();
        let Some((path, id, bytes, hint)) = first_image else {
            return Err(Error::invalid(
                "no images to load (the table is empty, or no row matches the id filter)",
            ));
        };
        let (height, width) = probe_size(&bytes, hint)
            .map_err(|e| Error::file(&path, format!("image id {id}: {e}")))?;
        let batches_per_epoch = if cfg.drop_last {
            rows / cfg.batch_size
        } else {
            rows.div_ceil(cfg.batch_size)
        } as u64;
        if batches_per_epoch == 0 {
            return Err(Error::invalid(format!(
                "batch size {} is larger than the {rows} rows to load; lower it",
                cfg.batch_size
            )));
        }
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let producer = Producer {
            source,
            cfg,
            height,
            width,
            batches_per_epoch,
        };
        let handle = std::thread::Builder::new()
            .name("fewlabels-loader".into())
            .spawn(move || producer.run(tx))
            .map_err(|e| Error::invalid(format!("cannot start the loader thread: {e}")))?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
            rows,
            height,
            width,
            batches_per_epoch,
        })
    }

    /// Rows per epoch (after the id filter).
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }
    /// Image size (height, width), from the first image.
    pub fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail and return.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Producer {
    source: Source,
    cfg: LoaderConfig,
    height: usize,
    width: usize,
    batches_per_epoch: u64,
}

impl Producer {
    fn run(self, tx: std::sync::mpsc::SyncSender<Result<Batch>>) {
        if let Err(e) = self.epochs(&tx) {
            let _ = tx.send(Err(e));
        }
    }

    /// Returns Ok when done or when the consumer hung up.
    fn epochs(&self, tx: &std::sync::mpsc::SyncSender<Result<Batch>>) -> Result<()> {
        let cfg = &self.cfg;
        let start = Position {
            epoch: cfg.skip_batches / self.batches_per_epoch,
            batch: cfg.skip_batches % self.batches_per_epoch,
        };
        let mut epoch = start.epoch;
        loop {
            if cfg.epochs.is_some_and(|n| epoch >= n) {
                return Ok(());
            }
            let mut rng = match cfg.order {
                Order::Shuffle { seed } => {
                    let mut r = ChaCha20Rng::seed_from_u64(seed);
                    r.set_stream(epoch);
                    Some(r)
                }
                Order::Sequential => None,
            };
            let mut order: Vec<usize> = (0..self.source.blocks.len()).collect();
            if let Some(r) = rng.as_mut() {
                order.shuffle(r);
            }
            let skip_to = if epoch == start.epoch { start.batch } else { 0 };
            let mut batch_index = 0u64;
            let mut pending: Vec<(Arc<RecordBatch>, usize, usize)> = Vec::new();
            let window = cfg.shuffle_window.max(1);
            for chunk in order.chunks(window) {
                let mut rows = Vec::new();
                for &b in chunk {
                    let block = self.source.blocks[b];
                    let path = &self.source.files[block.file];
                    let rb = Arc::new(read_block(
                        path,
                        &self.source.projection[block.file],
                        block.index,
                    )?);
                    let ids = id_column(&rb, path)?;
                    for r in 0..rb.num_rows() {
                        if cfg.ids.as_ref().is_none_or(|s| s.contains(&ids.value(r))) {
                            rows.push((rb.clone(), block.file, r));
                        }
                    }
                }
                if let Some(r) = rng.as_mut() {
                    rows.shuffle(r);
                }
                pending.extend(rows);
                while pending.len() >= cfg.batch_size {
                    let rows: Vec<_> = pending.drain(..cfg.batch_size).collect();
                    if batch_index >= skip_to {
                        let b = self.decode(
                            &rows,
                            Position {
                                epoch,
                                batch: batch_index,
                            },
                        )?;
                        if tx.send(Ok(b)).is_err() {
                            return Ok(());
                        }
                    }
                    batch_index += 1;
                }
            }
            if !pending.is_empty() && !cfg.drop_last && batch_index >= skip_to {
                let b = self.decode(
                    &pending,
                    Position {
                        epoch,
                        batch: batch_index,
                    },
                )?;
                if tx.send(Ok(b)).is_err() {
                    return Ok(());
                }
            }
            epoch += 1;
        }
    }

    fn decode(
        &self,
        rows: &[(Arc<RecordBatch>, usize, usize)],
        position: Position,
    ) -> Result<Batch> {
        let (h, w) = (self.height, self.width);
        let per = 3 * h * w;
        let mut buf = vec![0f32; rows.len() * per];
        let files = &self.source.files;
        buf.par_chunks_mut(per).zip(rows.par_iter()).try_for_each(
            |(out, (rb, file, r))| -> Result<()> {
                let bytes = image_bytes(rb.column(1).as_ref(), *r)?;
                decode_into(bytes, h, w, out).map_err(|e| {
                    let id = rb
                        .column(0)
                        .as_any()
                        .downcast_ref::<UInt64Array>()
                        .map(|a| a.value(*r))
                        .unwrap_or(0);
                    Error::file(&files[*file], format!("image id {id}: {e}"))
                })
            },
        )?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut labels = Vec::new();
        for (rb, file, r) in rows {
            ids.push(id_column(rb, &files[*file])?.value(*r));
            if self.cfg.label_column.is_some() {
                let col = rb.column(2);
                let l = col
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| Error::file(&files[*file], "label column is not int64"))?;
                labels.push(if l.is_null(*r) {
                    None
                } else {
                    Some(l.value(*r))
                });
            }
        }
        let images = Tensor::from_slice(&buf).view([rows.len() as i64, 3, h as i64, w as i64]);
        Ok(Batch {
            images,
            ids,
            labels,
            position,
        })
    }
}

fn read_block(path: &Path, projection: &[usize], index: usize) -> Result<RecordBatch> {
    let mut reader = open_shard(path, Some(projection.to_vec()))?;
    reader.set_index(index).at(path)?;
    match reader.next() {
        Some(rb) => rb.at(path),
        None => Err(Error::file(
            path,
            format!("record batch {index} is missing"),
        )),
    }
}

fn id_column<'a>(rb: &'a RecordBatch, path: &Path) -> Result<&'a UInt64Array> {
    rb.column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| Error::file(path, "`id` column is not uint64"))
}

const PNG_MAGIC: &[u8] = b"\x89PNG";
const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8];

/// The `height` and `width` columns of one row, when the table has them
/// (raw pixel rows carry no header of their own).
fn size_columns(
    path: &Path,
    schema: &arrow::datatypes::Schema,
    block: usize,
    row: usize,
) -> Result<Option<(usize, usize)>> {
    let (Ok(h), Ok(w)) = (schema.index_of("height"), schema.index_of("width")) else {
        return Ok(None);
    };
    let rb = read_block(path, &[h, w], block)?;
    let get = |c: usize| {
        rb.column(c)
            .as_any()
            .downcast_ref::<arrow::array::Int32Array>()
            .map(|a| a.value(row) as usize)
    };
    Ok(get(0).zip(get(1)))
}

/// (height, width) of an encoded image; raw RGB rows take `hint` (the
/// table's height and width columns) when their length fits it, else are
/// taken as square.
pub fn probe_size(
    bytes: &[u8],
    hint: Option<(usize, usize)>,
) -> std::result::Result<(usize, usize), String> {
    if bytes.starts_with(PNG_MAGIC) || bytes.starts_with(JPEG_MAGIC) {
        let r = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let (w, h) = r
            .into_dimensions()
            .map_err(|e| format!("cannot read the image header: {e}"))?;
        Ok((h as usize, w as usize))
    } else if let Some((h, w)) = hint.filter(|(h, w)| h * w * 3 == bytes.len()) {
        Ok((h, w))
    } else {
        let side = ((bytes.len() / 3) as f64).sqrt().round() as usize;
        if side * side * 3 == bytes.len() && side > 0 {
            Ok((side, side))
        } else {
            Err(format!(
                "{} bytes: neither PNG, JPEG nor square raw RGB",
                bytes.len()
            ))
        }
    }
}

/// Decodes one image into `out` (`3 * h * w` floats, channel-major, in [-1, 1]).
pub fn decode_into(
    bytes: &[u8],
    h: usize,
    w: usize,
    out: &mut [f32],
) -> std::result::Result<(), String> {
    let hw = h * w;
    let scale = |v: u8| v as f32 * (2.0 / 255.0) - 1.0;
    if bytes.starts_with(PNG_MAGIC) || bytes.starts_with(JPEG_MAGIC) {
        let img = image::load_from_memory(bytes).map_err(|e| format!("cannot decode: {e}"))?;
        if (img.height() as usize, img.width() as usize) != (h, w) {
            return Err(format!(
                "is {}x{}, the table's first image is {w}x{h}; images in one table must share a size",
                img.width(),
                img.height()
            ));
        }
        match img {
            image::DynamicImage::ImageLuma8(g) => {
                let px = g.as_raw();
                for i in 0..hw {
                    let v = scale(px[i]);
                    out[i] = v;
                    out[hw + i] = v;
                    out[2 * hw + i] = v;
                }
            }
            other => {
                let rgb = other.into_rgb8();
                let px = rgb.as_raw();
                for i in 0..hw {
                    out[i] = scale(px[3 * i]);
                    out[hw + i] = scale(px[3 * i + 1]);
                    out[2 * hw + i] = scale(px[3 * i + 2]);
                }
            }
        }
        Ok(())
    } else if bytes.len() == 3 * hw {
        for i in 0..hw {
            out[i] = scale(bytes[3 * i]);
            out[hw + i] = scale(bytes[3 * i + 1]);
            out[2 * hw + i] = scale(bytes[3 * i + 2]);
        }
        Ok(())
    } else {
        Err(format!(
            "{} bytes: neither PNG, JPEG nor {w}x{h} raw RGB",
            bytes.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{image_column, schema, TableWriter};
    use arrow::array::{Int32Array, StringArray};
    use std::sync::Arc as StdArc;

    /// Writes an images table of `n` 4x6 images whose pixels encode their id;
    /// every third row is raw RGB, the rest PNG (grey for odd ids).
    pub(crate) fn write_table(
        dir: &std::path::Path,
        n: u64,
        rows_per_batch: usize,
    ) -> Vec<PathBuf> {
        let names = vec!["a".to_string(), "b".to_string()];
        let sch = schema::images(&names);
        let mut w = TableWriter::new(dir, "images", sch.clone(), 25);
        let mut start = 0;
        while start < n {
            let end = (start + rows_per_batch as u64).min(n);
            let mut encoded = Vec::new();
            for id in start..end {
                let v = (id % 250) as u8;
                let bytes = if id % 3 == 0 {
                    vec![v; 4 * 6 * 3]
                } else if id % 2 == 1 {
                    let img = image::GrayImage::from_pixel(6, 4, image::Luma([v]));
                    let mut b = Vec::new();
                    img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
                        .unwrap();
                    b
                } else {
                    let img = image::RgbImage::from_pixel(6, 4, image::Rgb([v, v, v]));
                    let mut b = Vec::new();
                    img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
                        .unwrap();
                    b
                };
                encoded.push(bytes);
            }
            let k = (end - start) as usize;
            let ids: Vec<u64> = (start..end).collect();
            let rb = RecordBatch::try_new(
                sch.clone(),
                vec![
                    StdArc::new(UInt64Array::from(ids.clone())),
                    StdArc::new(StringArray::from(vec!["x"; k])),
                    StdArc::new(Int64Array::from(
                        ids.iter().map(|i| Some((i % 2) as i64)).collect::<Vec<_>>(),
                    )),
                    StdArc::new(Int32Array::from(vec![6; k])),
                    StdArc::new(Int32Array::from(vec![4; k])),
                    image_column(encoded.iter().map(|b| (b.as_slice(), None))),
                ],
            )
            .unwrap();
            w.write(&rb).unwrap();
            start = end;
        }
        w.finish()
            .unwrap()
            .into_iter()
            .map(|(p, _)| dir.join(p))
            .collect()
    }

    fn collect(files: &[PathBuf], cfg: LoaderConfig) -> Vec<Batch> {
        Loader::new(files.to_vec(), cfg)
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    #[test]
    fn sequential_reads_every_row_once_with_right_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_table(dir.path(), 103, 10);
        let mut cfg = LoaderConfig::sequential(16);
        cfg.label_column = Some("label".into());
        let loader = Loader::new(files.clone(), cfg).unwrap();
        assert_eq!(loader.rows(), 103);
        assert_eq!(loader.batches_per_epoch(), 7);
        assert_eq!(loader.image_size(), (4, 6));
        let batches: Vec<Batch> = loader.map(|b| b.unwrap()).collect();
        let ids: Vec<u64> = batches.iter().flat_map(|b| b.ids.clone()).collect();
        assert_eq!(ids, (0..103).collect::<Vec<_>>());
        for b in &batches {
            assert_eq!(b.images.size()[1..], [3, 4, 6]);
            for (i, id) in b.ids.iter().enumerate() {
                let want = (id % 250) as f64 * 2.0 / 255.0 - 1.0;
                let got = b.images.get(i as i64);
                let (lo, hi) = (got.min().double_value(&[]), got.max().double_value(&[]));
                assert!(
                    (lo - want).abs() < 1e-6 && (hi - want).abs() < 1e-6,
                    "id {id}: {lo}..{hi} vs {want}"
                );
                assert_eq!(b.labels[i], Some((id % 2) as i64));
            }
        }
    }

    #[test]
    fn shuffle_is_seeded_per_epoch_and_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_table(dir.path(), 100, 10);
        let mut cfg = LoaderConfig::train(8, 42);
        cfg.epochs = Some(3);
        cfg.shuffle_window = 3;
        let all = collect(&files, cfg.clone());
        assert_eq!(all.len(), 3 * 12);
        let epoch_ids = |e: u64| -> Vec<u64> {
            all.iter()
                .filter(|b| b.position.epoch == e)
                .flat_map(|b| b.ids.clone())
                .collect()
        };
        let (e0, e1) = (epoch_ids(0), epoch_ids(1));
        assert_ne!(e0, e1, "epochs must differ");
        let mut s = e0.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 96, "no row twice in an epoch");
        // Same seed, same order; resuming mid-epoch gives the same tail.
        let again = collect(&files, cfg.clone());
        assert_eq!(
            again.iter().flat_map(|b| b.ids.clone()).collect::<Vec<_>>(),
            all.iter().flat_map(|b| b.ids.clone()).collect::<Vec<_>>()
        );
        cfg.skip_batches = 12 + 5;
        let tail = collect(&files, cfg);
        assert_eq!(tail.len(), 36 - 12 - 5);
        for (a, b) in tail.iter().zip(&all[17..]) {
            assert_eq!(a.ids, b.ids);
            assert_eq!(a.position, b.position);
            assert!(a.images.equal(&b.images));
        }
    }

    #[test]
    fn id_filter_keeps_only_those_rows() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_table(dir.path(), 60, 7);
        let keep: HashSet<u64> = [3u64, 17, 18, 40, 59].into_iter().collect();
        let mut cfg = LoaderConfig::sequential(2);
        cfg.ids = Some(Arc::new(keep));
        let ids: Vec<u64> = collect(&files, cfg)
            .into_iter()
            .flat_map(|b| b.ids)
            .collect();
        assert_eq!(ids, vec![3, 17, 18, 40, 59]);
    }

    #[test]
    fn a_bad_image_is_an_error_naming_file_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a".to_string()];
        let sch = schema::images(&names);
        let mut w = TableWriter::new(dir.path(), "images", sch.clone(), 10);
        let good = vec![7u8; 12];
        let bad = b"\x89PNG broken".to_vec();
        let rb = RecordBatch::try_new(
            sch,
            vec![
                StdArc::new(UInt64Array::from(vec![0u64, 1])),
                StdArc::new(StringArray::from(vec!["x"; 2])),
                StdArc::new(Int64Array::from(vec![None::<i64>, None])),
                StdArc::new(Int32Array::from(vec![2; 2])),
                StdArc::new(Int32Array::from(vec![2; 2])),
                image_column([(good.as_slice(), None), (bad.as_slice(), None)]),
            ],
        )
        .unwrap();
        w.write(&rb).unwrap();
        let files: Vec<PathBuf> = w
            .finish()
            .unwrap()
            .into_iter()
            .map(|(p, _)| dir.path().join(p))
            .collect();
        let err = Loader::new(files, LoaderConfig::sequential(2))
            .unwrap()
            .find_map(|b| b.err())
            .expect("an error")
            .to_string();
        assert!(
            err.contains("images-00000.arrow") && err.contains("image id 1"),
            "{err}"
        );
    }
}
