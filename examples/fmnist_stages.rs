//! Writes Fashion-MNIST as `images/` and `labels/` stage folders (the shapes
//! `prepare` and `sample-labels` produce), for the pretrain tests and
//! benchmarks while those stages are built elsewhere:
//! `cargo run --release --example fmnist_stages -- IDX_DIR OUT_DIR [N] [SIZE] [FRACTION]`
//! writes OUT_DIR/images and OUT_DIR/labels from the first N training images
//! resized (bilinear) to SIZE x SIZE grey PNGs, with FRACTION of each
//! class's labels kept (a tenth of those as the `holdout` split).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use fewlabels::shard::{image_column, schema, TableWriter};
use fewlabels::stage::run_stage;
use fewlabels::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, e))?;
    Ok(out)
}

/// The first `n` training images (28x28 grey) and labels.
pub fn read_idx(dir: &Path, n: usize) -> Result<(Vec<Vec<u8>>, Vec<i64>)> {
    let imgs = read_gz(&dir.join("train-images-idx3-ubyte.gz"))?;
    let labs = read_gz(&dir.join("train-labels-idx1-ubyte.gz"))?;
    let count = u32::from_be_bytes([imgs[4], imgs[5], imgs[6], imgs[7]]) as usize;
    let n = n.min(count);
    let images = (0..n)
        .map(|i| imgs[16 + i * 784..16 + (i + 1) * 784].to_vec())
        .collect();
    let labels = labs[8..8 + n].iter().map(|&l| l as i64).collect();
    Ok((images, labels))
}

/// Writes `out/images` and `out/labels`; returns their paths.
pub fn write_stages(
    idx: &Path,
    out: &Path,
    n: usize,
    size: u32,
    fraction: f64,
) -> Result<(PathBuf, PathBuf)> {
    let (raw, labels) = read_idx(idx, n)?;
    let names: Vec<String> = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let images_dir = out.join("images");
    let params = serde_json::json!({"fixture": "fashion-mnist", "n": n, "size": size});
    run_stage("prepare", &images_dir, &params, &[], |run| {
        let sch = schema::images(&names);
        let mut w = TableWriter::new(&run.dir, "images", sch.clone(), 10_000);
        for start in (0..raw.len()).step_by(1000) {
            let end = (start + 1000).min(raw.len());
            let encoded: Vec<Vec<u8>> = raw[start..end]
                .iter()
                .map(|px| {
                    let img = image::GrayImage::from_raw(28, 28, px.clone()).expect("784 bytes");
                    let img = image::imageops::resize(
                        &img,
                        size,
                        size,
                        image::imageops::FilterType::Triangle,
                    );
                    let mut b = Vec::new();
                    img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
                        .expect("PNG encode");
                    b
                })
                .collect();
            let k = end - start;
            let paths: Vec<String> = (start..end).map(|i| format!("train/{i}")).collect();
            let rb = RecordBatch::try_new(
                sch.clone(),
                vec![
                    Arc::new(UInt64Array::from(
                        (start as u64..end as u64).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(paths)),
                    Arc::new(Int64Array::from(
                        labels[start..end]
                            .iter()
                            .map(|&l| Some(l))
                            .collect::<Vec<_>>(),
                    )),
                    Arc::new(Int32Array::from(vec![size as i32; k])),
                    Arc::new(Int32Array::from(vec![size as i32; k])),
                    image_column(encoded.iter().map(|b| (b.as_slice(), None))),
                ],
            )
            .map_err(|e| Error::invalid(e.to_string()))?;
            w.write(&rb)?;
        }
        for (file, rows) in w.finish()? {
            run.add_output(file, Some(rows))?;
        }
        run.count("images", raw.len() as u64);
        Ok(())
    })?;
    let labels_dir = out.join("labels");
    let params = serde_json::json!({"fixture": "fashion-mnist", "fraction": fraction});
    let inputs = [fewlabels::stage::Input::stage(&images_dir, "prepare")];
    run_stage("sample-labels", &labels_dir, &params, &inputs, |run| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
        let mut rows: Vec<(u64, i64, &str)> = Vec::new();
        for c in 0..10i64 {
            let mut ids: Vec<u64> = (0..labels.len() as u64)
                .filter(|&i| labels[i as usize] == c)
                .collect();
            ids.shuffle(&mut rng);
            let k = ((ids.len() as f64) * fraction).round() as usize;
            let holdout = k / 10;
            for (j, &id) in ids[..k].iter().enumerate() {
                rows.push((id, c, if j < holdout { "holdout" } else { "train" }));
            }
        }
        rows.sort();
        let sch = schema::labels(&names);
        let rb = RecordBatch::try_new(
            sch.clone(),
            vec![
                Arc::new(UInt64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .map_err(|e| Error::invalid(e.to_string()))?;
        let mut w = TableWriter::new(&run.dir, "labels", sch, 1 << 20);
        w.write(&rb)?;
        for (file, n) in w.finish()? {
            run.add_output(file, Some(n))?;
        }
        run.count("labelled", rows.len() as u64);
        Ok(())
    })?;
    Ok((images_dir, labels_dir))
}

#[allow(dead_code)]
fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 3 {
        return Err(Error::invalid(
            "usage: fmnist_stages IDX_DIR OUT_DIR [N] [SIZE] [FRACTION]",
        ));
    }
    let n = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(60_000);
    let size = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(32);
    let fraction = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(0.1);
    write_stages(Path::new(&a[1]), Path::new(&a[2]), n, size, fraction)?;
    Ok(())
}
