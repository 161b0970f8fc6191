//! Shard images to tensors: reads the `image` column (and `id`, optionally a
//! label column) of an `images/` or `train/` table, decodes the rows in
//! parallel with rayon on a producer thread that stays `prefetch` batches
//! ahead of the trainer, and yields `f32` tensors `[B, 3, H, W]` in [-1, 1].
//!
//! Order is a function of the seed and the epoch only (never of thread
//! timing). `Shuffle` draws each epoch as a seeded permutation of every row
//! of the table: a global shuffle, so a batch's class mix is the data's
//! whatever order the table is in (ImageNet's listing, and so `images/`, is
//! sorted by class: a shuffle inside windows of record batches would give
//! batches of a few classes for hundreds of steps). The files are
//! memory-mapped ([`crate::shard::mapped`]): a row costs a read of its own
//! bytes, and memory is bounded by the page cache, not by the table.
//! `Sequential` reads every row once in table order (for embedding). A run
//! resumed at `Position { epoch, batch }` sees exactly the batches an
//! uninterrupted run would have seen from there; the skipped ones are not
//! decoded. In a data-parallel job each rank takes every `world`-th batch
//! of that one sequence (`rank`, `rank + world`, ... counted across
//! epochs), so the ranks' parts of every epoch are disjoint and together
//! are what a single process with the same batch size reads.
//!
//! Every row is decoded by the table's one decoder ([`crate::shard::stored`]).
//! A table of whole photos (`prepare --resize keep-ratio`) yields each
//! photo's centred square unless augmented. `Augment::Distorted` is
//! compare_gan's ImageNet training crop (`datasets.py`, TensorFlow's
//! `sample_distorted_bounding_box` with aspect ratio 1 and 50-100% of the
//! area): a square whose side is uniform between that of half the image's
//! area and the shorter side, at a uniformly random place, resized to the
//! training size; on an image wider than 2:1, where no such square fits,
//! the whole image, as TensorFlow falls back to. It is drawn afresh every
//! epoch from the seed, the epoch and the image id (so it is the same after
//! a resume and whatever the thread count). Drawn from whole photos, as
//! compare_gan draws it, it reaches the whole photo; the ImageNet pipelines
//! store them with the shorter side at 192 so that even the smallest crop
//! (71% of the shorter side) is not enlarged to 128.
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow::array::{Array, Int64Array, RecordBatch, UInt64Array};
use fast_image_resize as fr;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};
use rayon::prelude::*;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::shard::image_bytes;
use crate::shard::mapped::{map_file, MappedFile};
#[cfg(test)]
use crate::shard::stored::StoredShape;
use crate::shard::stored::{self, StoredImage};

/// Row order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A new permutation of all rows every epoch, from `seed` and the epoch number.
    Shuffle { seed: u64 },
    /// Table order, every row once per epoch (for embedding).
    Sequential,
}

/// What is done to each stored image before it becomes a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Augment {
    /// The stored pixels as they are.
    None,
    /// compare_gan's "distorted" crop (see the module doc), resized to `size`x`size`.
    Distorted { size: usize },
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
    /// Keep only rows whose id is in this set (e.g. the labelled images).
    pub ids: Option<Arc<HashSet<u64>>>,
    /// Also yield this Int64 column (nullable) as `labels`.
    pub label_column: Option<String>,
    /// Batches to skip from the first epoch on, without decoding them: a run
    /// resumed after `n` steps of one batch each passes `n` (every rank's
    /// batches count).
    pub skip_batches: u64,
    pub augment: Augment,
    /// This process's share of the batches: those numbered `rank` modulo
    /// `world` (0 of 1 outside a data-parallel job).
    pub rank: usize,
    pub world: usize,
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
            ids: None,
            label_column: None,
            skip_batches: 0,
            augment: Augment::None,
            rank: 0,
            world: 1,
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

/// A row of the table: file, record batch and row within it.
#[derive(Debug, Clone, Copy)]
struct RowRef {
    file: u32,
    batch: u32,
    row: u32,
}

/// The mapped table and the rows the loader serves.
struct Table {
    files: Vec<MappedFile>,
    rows: Vec<RowRef>,
    format: Option<StoredImage>,
    has_labels: bool,
}

impl Table {
    fn batch(&self, r: RowRef) -> &RecordBatch {
        &self.files[r.file as usize].batches[r.batch as usize]
    }

    fn id(&self, r: RowRef) -> u64 {
        id_column(self.batch(r))
            .map(|c| c.value(r.row as usize))
            .unwrap_or(0)
    }

    fn bytes(&self, r: RowRef) -> Result<&[u8]> {
        image_bytes(self.batch(r).column(1).as_ref(), r.row as usize)
    }

    fn label(&self, r: RowRef) -> Option<i64> {
        let col = self.batch(r).column(2);
        let l = col.as_any().downcast_ref::<Int64Array>()?;
        (!l.is_null(r.row as usize)).then(|| l.value(r.row as usize))
    }

    fn path(&self, r: RowRef) -> &std::path::Path {
        &self.files[r.file as usize].path
    }
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
    /// Maps the shard `files` of a table and starts the producer thread.
    pub fn new(files: Vec<PathBuf>, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch_size == 0 {
            return Err(Error::invalid("batch size must be at least 1"));
        }
        if cfg.rank >= cfg.world {
            return Err(Error::invalid(format!(
                "rank {} of {}: the rank must be below the world size",
                cfg.rank, cfg.world
            )));
        }
        let mut columns = vec!["id", "image"];
        if let Some(l) = &cfg.label_column {
            columns.push(l.as_str());
        }
        let mut mapped = Vec::with_capacity(files.len());
        let mut format: Option<Option<StoredImage>> = None;
        for path in &files {
            let m = map_file(path, Some(&columns)).map_err(|e| match e {
                Error::File { path, msg } if msg.starts_with("has no column") => {
                    Error::file(path, format!("{msg} (not an images/ or train/ table?)"))
                }
                other => other,
            })?;
            let f = StoredImage::from_schema(&m.schema);
            match format {
                None => format = Some(f),
                Some(prev) if prev != f => {
                    return Err(Error::file(
                        path,
                        "stores its images in another format than the table's first file; re-run the stage that wrote it",
                    ))
                }
                Some(_) => {}
            }
            mapped.push(m);
        }
        let format = format.flatten();
        let mut rows = Vec::new();
        for (fi, m) in mapped.iter().enumerate() {
            for (bi, rb) in m.batches.iter().enumerate() {
                let ids = id_column(rb)
                    .ok_or_else(|| Error::file(&m.path, "`id` column is not uint64"))?;
                for r in 0..rb.num_rows() {
                    if cfg.ids.as_ref().is_none_or(|s| s.contains(&ids.value(r))) {
                        rows.push(RowRef {
                            file: fi as u32,
                            batch: bi as u32,
                            row: r as u32,
                        });
                    }
                }
            }
        }
        let table = Table {
            files: mapped,
            rows,
            format,
            has_labels: cfg.label_column.is_some(),
        };
        let Some(&first) = table.rows.first() else {
            return Err(Error::invalid(
                "no images to load (the table is empty, or no row matches the id filter)",
            ));
        };
        let stored =
            stored::dimensions(table.bytes(first)?, table.format.as_ref()).map_err(|e| {
                Error::file(
                    table.path(first),
                    format!("image id {}: {e}", table.id(first)),
                )
            })?;
        let (height, width) = match cfg.augment {
            Augment::None => stored,
            Augment::Distorted { size } => (size, size),
        };
        let n = table.rows.len();
        let batches_per_epoch = if cfg.drop_last {
            n / cfg.batch_size
        } else {
            n.div_ceil(cfg.batch_size)
        } as u64;
        if batches_per_epoch == 0 {
            return Err(Error::invalid(format!(
                "batch size {} is larger than the {n} rows to load; lower it",
                cfg.batch_size
            )));
        }
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let producer = Producer {
            table,
            cfg,
            height,
            width,
            stored,
            batches_per_epoch,
        };
        let handle = std::thread::Builder::new()
            .name("fewlabels-loader".into())
            .spawn(move || producer.run(tx))
            .map_err(|e| Error::invalid(format!("cannot start the loader thread: {e}")))?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
            rows: n,
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
    /// Size (height, width) of the tensors this loader yields.
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
    table: Table,
    cfg: LoaderConfig,
    height: usize,
    width: usize,
    stored: (usize, usize),
    batches_per_epoch: u64,
}

impl Producer {
    fn run(self, tx: SyncSender<Result<Batch>>) {
        if let Err(e) = self.epochs(&tx) {
            let _ = tx.send(Err(e));
        }
    }

    /// The order of the rows in `epoch`: indices into `table.rows`.
    fn order(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.table.rows.len() as u32).collect();
        if let Order::Shuffle { seed } = self.cfg.order {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            rng.set_stream(epoch);
            order.shuffle(&mut rng);
        }
        order
    }

    /// Returns Ok when done or when the consumer hung up.
    fn epochs(&self, tx: &SyncSender<Result<Batch>>) -> Result<()> {
        let cfg = &self.cfg;
        let b = cfg.batch_size;
        let mut epoch = cfg.skip_batches / self.batches_per_epoch;
        let mut first = cfg.skip_batches % self.batches_per_epoch;
        loop {
            if cfg.epochs.is_some_and(|n| epoch >= n) {
                return Ok(());
            }
            let order = self.order(epoch);
            for batch in first..self.batches_per_epoch {
                let number = epoch * self.batches_per_epoch + batch;
                if number % cfg.world as u64 != cfg.rank as u64 {
                    continue;
                }
                let start = batch as usize * b;
                let end = (start + b).min(order.len());
                let rows: Vec<RowRef> = order[start..end]
                    .iter()
                    .map(|&i| self.table.rows[i as usize])
                    .collect();
                let decoded = self.decode(&rows, Position { epoch, batch })?;
                if tx.send(Ok(decoded)).is_err() {
                    return Ok(());
                }
            }
            first = 0;
            epoch += 1;
        }
    }

    fn decode(&self, rows: &[RowRef], position: Position) -> Result<Batch> {
        let (h, w) = (self.height, self.width);
        let per = 3 * h * w;
        let mut buf = vec![0f32; rows.len() * per];
        let t = &self.table;
        buf.par_chunks_mut(per)
            .zip(rows.par_iter())
            .try_for_each(|(out, &r)| -> Result<()> {
                let fail = |e: String| Error::file(t.path(r), format!("image id {}: {e}", t.id(r)));
                let pixels = match self.cfg.augment {
                    Augment::None => {
                        let img = stored::decode_square(t.bytes(r)?, t.format.as_ref())
                            .map_err(fail)?;
                        let (ih, iw) = (img.height() as usize, img.width() as usize);
                        if (ih, iw) != self.stored {
                            return Err(fail(format!(
                                "is {iw}x{ih}, the table's first image is {}x{}; images in one table must share a size",
                                self.stored.1, self.stored.0
                            )));
                        }
                        img.into_raw()
                    }
                    Augment::Distorted { size } => {
                        // The whole stored image: the crop may reach all of it.
                        let img = stored::decode(t.bytes(r)?, t.format.as_ref()).map_err(fail)?;
                        let seed = match self.cfg.order {
                            Order::Shuffle { seed } => seed,
                            Order::Sequential => 0,
                        };
                        distorted_crop(&img, size, crop_seed(seed, position.epoch, t.id(r)))
                            .map_err(fail)?
                    }
                };
                to_chw(&pixels, h * w, out);
                Ok(())
            })?;
        let ids = rows.iter().map(|&r| t.id(r)).collect();
        let labels = if t.has_labels {
            rows.iter().map(|&r| t.label(r)).collect()
        } else {
            Vec::new()
        };
        let images = Tensor::from_slice(&buf).view([rows.len() as i64, 3, h as i64, w as i64]);
        Ok(Batch {
            images,
            ids,
            labels,
            position,
        })
    }
}

fn id_column(rb: &RecordBatch) -> Option<&UInt64Array> {
    rb.column(0).as_any().downcast_ref::<UInt64Array>()
}

/// Interleaved RGB bytes to channel-major floats in [-1, 1].
fn to_chw(rgb: &[u8], hw: usize, out: &mut [f32]) {
    let scale = |v: u8| v as f32 * (2.0 / 255.0) - 1.0;
    for i in 0..hw {
        out[i] = scale(rgb[3 * i]);
        out[hw + i] = scale(rgb[3 * i + 1]);
        out[2 * hw + i] = scale(rgb[3 * i + 2]);
    }
}

/// The seed of one image's crop in one epoch (splitmix64 of the three).
fn crop_seed(seed: u64, epoch: u64, id: u64) -> u64 {
    let mut z =
        seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The crop box (left, top, width, height) compare_gan's `distorted`
/// method draws for an image of `width`x`height`, as TensorFlow's
/// `sample_distorted_bounding_box` (aspect ratio 1, area 50-100%) does: the
/// side uniform over the integers from the side of half the area to the
/// shorter side, the place uniform; the whole image when no square of half
/// the area fits (wider than 2:1).
pub fn distorted_box(width: u32, height: u32, seed: u64) -> (u32, u32, u32, u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let half = 0.5 * width as f64 * height as f64;
    let mut min_side = half.sqrt().round() as u32;
    // Rounding down may leave just under half the area: one pixel more.
    if (min_side as f64).powi(2) < half {
        min_side += 1;
    }
    let max_side = width.min(height);
    if min_side > max_side {
        return (0, 0, width, height);
    }
    let side = rng.random_range(min_side.max(1)..=max_side);
    let left = rng.random_range(0..=width - side);
    let top = rng.random_range(0..=height - side);
    (left, top, side, side)
}

/// The smallest stored side (the shorter side of whole photos) from which
/// every distorted crop of a square image reaches `resolution` without being
/// enlarged: the crop's side is at least that of half the area.
pub fn distorted_min_side(resolution: u32) -> u32 {
    (resolution as f64 * std::f64::consts::SQRT_2).ceil() as u32
}

/// The distorted crop of `img`, bilinear-resized to `size`x`size` RGB bytes.
fn distorted_crop(
    img: &image::RgbImage,
    size: usize,
    seed: u64,
) -> std::result::Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let (left, top, cw, ch) = distorted_box(w, h, seed);
    let view = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3)
        .map_err(|e| format!("internal: bad pixel buffer ({e})"))?;
    let mut dst = fr::images::Image::new(size as u32, size as u32, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(left as f64, top as f64, cw as f64, ch as f64);
    RESIZER
        .with(|r| r.borrow_mut().resize(&view, &mut dst, &options))
        .map_err(|e| format!("internal: resize failed ({e})"))?;
    Ok(dst.into_vec())
}

thread_local! {
    /// One resizer per decoding thread: it keeps its buffers between images.
    static RESIZER: std::cell::RefCell<fr::Resizer> = std::cell::RefCell::new(fr::Resizer::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::stored::StoredCodec;
    use crate::shard::{image_column, schema, TableWriter};
    use arrow::array::{Int32Array, StringArray};
    use std::collections::BTreeMap;

    const SIDE: u32 = 4;

    fn encode(id: u64, raw: bool) -> Vec<u8> {
        let v = (id % 250) as u8;
        if raw {
            return vec![v; (SIDE * SIDE * 3) as usize];
        }
        let mut b = Vec::new();
        if id % 2 == 1 {
            image::GrayImage::from_pixel(SIDE, SIDE, image::Luma([v]))
                .write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
                .unwrap();
        } else {
            image::RgbImage::from_pixel(SIDE, SIDE, image::Rgb([v, v, v]))
                .write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
                .unwrap();
        }
        b
    }

    /// Writes an images table of `n` 4x4 images whose pixels encode their
    /// id, `rows_per_batch` rows a record batch, labels from `label_of`.
    /// Without `format`, every third row is raw RGB (a table from before
    /// the format was recorded); with it, every row is stored that way.
    fn write_table(
        dir: &std::path::Path,
        n: u64,
        rows_per_batch: usize,
        format: Option<StoredImage>,
        label_of: impl Fn(u64) -> i64,
    ) -> Vec<PathBuf> {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut sch = schema::images(&names);
        if let Some(f) = &format {
            sch = f.attach(&sch);
        }
        let mut w = TableWriter::new(dir, "images", sch.clone(), 25);
        let mut start = 0;
        while start < n {
            let end = (start + rows_per_batch as u64).min(n);
            let ids: Vec<u64> = (start..end).collect();
            let encoded: Vec<Vec<u8>> = ids
                .iter()
                .map(|&id| match format {
                    Some(f) => encode(id, f.codec == StoredCodec::Raw),
                    None => encode(id, id % 3 == 0),
                })
                .collect();
            let k = ids.len();
            let rb = RecordBatch::try_new(
                sch.clone(),
                vec![
                    Arc::new(UInt64Array::from(ids.clone())),
                    Arc::new(StringArray::from(vec!["x"; k])),
                    Arc::new(Int64Array::from(
                        ids.iter().map(|&i| Some(label_of(i))).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int32Array::from(vec![640; k])),
                    Arc::new(Int32Array::from(vec![480; k])),
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

    fn check_pixels(b: &Batch) {
        for (i, id) in b.ids.iter().enumerate() {
            let want = (id % 250) as f64 * 2.0 / 255.0 - 1.0;
            let got = b.images.get(i as i64);
            let (lo, hi) = (got.min().double_value(&[]), got.max().double_value(&[]));
            assert!(
                (lo - want).abs() < 1e-6 && (hi - want).abs() < 1e-6,
                "id {id}: {lo}..{hi} vs {want}"
            );
        }
    }

    #[test]
    fn sequential_reads_every_row_once_with_right_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_table(dir.path(), 103, 10, None, |i| (i % 2) as i64);
        let mut cfg = LoaderConfig::sequential(16);
        cfg.label_column = Some("label".into());
        let loader = Loader::new(files.clone(), cfg).unwrap();
        assert_eq!(loader.rows(), 103);
        assert_eq!(loader.batches_per_epoch(), 7);
        assert_eq!(loader.image_size(), (4, 4));
        let batches: Vec<Batch> = loader.map(|b| b.unwrap()).collect();
        let ids: Vec<u64> = batches.iter().flat_map(|b| b.ids.clone()).collect();
        assert_eq!(ids, (0..103).collect::<Vec<_>>());
        for b in &batches {
            assert_eq!(b.images.size()[1..], [3, 4, 4]);
            check_pixels(b);
            for (i, id) in b.ids.iter().enumerate() {
                assert_eq!(b.labels[i], Some((id % 2) as i64));
            }
        }
    }

    /// Raw rows take their size from the recorded format, never from the
    /// width/height columns (the source's 640x480 here).
    #[test]
    fn every_stored_codec_reads_the_same() {
        for codec in [StoredCodec::Raw, StoredCodec::Png] {
            let dir = tempfile::tempdir().unwrap();
            let f = StoredImage {
                codec,
                size: SIDE,
                shape: StoredShape::Square,
            };
            let files = write_table(dir.path(), 20, 7, Some(f), |_| 0);
            for b in collect(&files, LoaderConfig::sequential(8)) {
                check_pixels(&b);
            }
        }
    }

    #[test]
    fn shuffle_is_seeded_per_epoch_and_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_table(dir.path(), 100, 10, None, |_| 0);
        let mut cfg = LoaderConfig::train(8, 42);
        cfg.epochs = Some(3);
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
        for b in &all {
            check_pixels(b);
        }
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

    /// Ranks of a data-parallel job: disjoint parts of every epoch that
    /// interleave into the single process's batches, also after a resume.
    #[test]
    fn ranks_take_interleaved_disjoint_batches() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_table(dir.path(), 100, 10, None, |_| 0);
        let mut cfg = LoaderConfig::train(8, 5);
        cfg.epochs = Some(2);
        let single = collect(&files, cfg.clone());
        assert_eq!(single.len(), 24);
        let part = |rank: usize, skip: u64| {
            let mut c = cfg.clone();
            (c.rank, c.world, c.skip_batches) = (rank, 3, skip);
            collect(&files, c)
        };
        let parts = [part(0, 0), part(1, 0), part(2, 0)];
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 24);
        for (n, b) in single.iter().enumerate() {
            let mine = &parts[n % 3][n / 3];
            assert_eq!((&mine.ids, mine.position), (&b.ids, b.position));
        }
        // Resumed after 9 of everyone's batches: rank 1 goes on with batch 10.
        let tail = part(1, 9);
        assert_eq!(tail[0].ids, single[10].ids);
        assert_eq!(tail.len(), (24 - 9) / 3);
        let mut c = cfg;
        (c.rank, c.world) = (2, 2);
        assert!(Loader::new(files, c).is_err());
    }

    /// A table sorted by class (as ImageNet's listing is): every batch of
    /// the first epoch holds the classes in the data's proportions.
    #[test]
    fn batches_of_a_class_sorted_table_mix_all_classes() {
        let dir = tempfile::tempdir().unwrap();
        // 20 classes of 50 rows, class by class, 25 rows per record batch.
        let files = write_table(dir.path(), 1000, 25, None, |i| (i / 50) as i64);
        let mut cfg = LoaderConfig::train(100, 7);
        cfg.label_column = Some("label".into());
        cfg.epochs = Some(1);
        let batches = collect(&files, cfg);
        assert_eq!(batches.len(), 10);
        let mut total: BTreeMap<i64, usize> = BTreeMap::new();
        for b in &batches {
            let mut per: BTreeMap<i64, usize> = BTreeMap::new();
            for l in &b.labels {
                *per.entry(l.unwrap()).or_default() += 1;
            }
            // 5 expected of each class per batch of 100: a window shuffle over a
            // few record batches would give 2-4 classes, here nearly all appear.
            assert!(
                per.len() >= 17,
                "only {} classes in a batch: {per:?}",
                per.len()
            );
            assert!(per.values().all(|&c| c <= 13), "{per:?}");
            for (k, v) in per {
                *total.entry(k).or_default() += v;
            }
        }
        assert_eq!(total.len(), 20);
        assert!(
            total.values().all(|&c| c == 50),
            "an epoch is every row once"
        );
    }

    #[test]
    fn distorted_crops_follow_compare_gan_and_are_reproducible() {
        // On whole photos of every shape: squares of 50-100% of the area,
        // anywhere in the photo, the side uniform (mean near the middle).
        for (w, h) in [(160u32, 160u32), (256, 192), (192, 340), (300, 160)] {
            let mut sides = Vec::new();
            let (mut min_left, mut max_right) = (w, 0);
            for seed in 0..400u64 {
                let (l, t, cw, ch) = distorted_box(w, h, seed);
                assert_eq!(cw, ch, "{w}x{h}: a square");
                let area = (cw * ch) as f64 / (w * h) as f64;
                assert!((0.5..=1.0).contains(&area), "{w}x{h}: area {area}");
                assert!(l + cw <= w && t + ch <= h);
                sides.push(cw as f64);
                min_left = min_left.min(l);
                max_right = max_right.max(l + cw);
            }
            let lo = ((0.5 * (w * h) as f64).sqrt()).round();
            let mean = sides.iter().sum::<f64>() / sides.len() as f64;
            let mid = (lo + w.min(h) as f64) / 2.0;
            assert!(
                (mean - mid).abs() < 0.1 * mid,
                "{w}x{h}: mean side {mean}, want ~{mid}"
            );
            assert_eq!(
                (min_left, max_right),
                (0, w),
                "{w}x{h}: crops reach both sides"
            );
        }
        // Wider than 2:1: no square of half the area fits, so the whole image.
        assert_eq!(distorted_box(500, 200, 3), (0, 0, 500, 200));
        assert_eq!(distorted_min_side(128), 182);
        assert_ne!(distorted_box(160, 160, 1), distorted_box(160, 160, 2));
        assert_eq!(crop_seed(1, 2, 3), crop_seed(1, 2, 3));
        assert_ne!(crop_seed(1, 2, 3), crop_seed(1, 3, 3));
        // Through the loader: the training size, redrawn each epoch, identical on resume.
        let dir = tempfile::tempdir().unwrap();
        let big = StoredImage {
            codec: StoredCodec::Png,
            size: SIDE,
            shape: StoredShape::Square,
        };
        let files = write_table(dir.path(), 16, 8, Some(big), |_| 0);
        let mut cfg = LoaderConfig::train(4, 3);
        cfg.augment = Augment::Distorted { size: 2 };
        cfg.epochs = Some(2);
        let all = collect(&files, cfg.clone());
        assert_eq!(all[0].images.size(), vec![4, 3, 2, 2]);
        for b in &all {
            check_pixels(b); // flat images: every crop has the id's value
        }
        cfg.skip_batches = 5;
        let tail = collect(&files, cfg);
        assert!(tail[0].images.equal(&all[5].images));
    }

    #[test]
    fn id_filter_keeps_only_those_rows() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_table(dir.path(), 60, 7, None, |_| 0);
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
                Arc::new(UInt64Array::from(vec![0u64, 1])),
                Arc::new(StringArray::from(vec!["x"; 2])),
                Arc::new(Int64Array::from(vec![None::<i64>, None])),
                Arc::new(Int32Array::from(vec![2; 2])),
                Arc::new(Int32Array::from(vec![2; 2])),
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
