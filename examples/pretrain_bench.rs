//! Speed figures for the pretrain issue (benches/pretrain/run.sh runs it):
//! `step THREADS STEPS BATCH LABELLED [resnet50 RES CLASSES]`: images/s of
//! the training step alone (the small ResNet at 32x32, or ResNet-50 at RES
//! with a CLASSES-way head; 4 rotations of BATCH images + LABELLED unrotated
//! ones, forward + backward + SGD) on synthetic data, the same model and
//! step as benches/pretrain/torch_step.py;
//! `loader THREADS IMAGES_DIR BATCH BATCHES [SIZE]`: images/s of the shard
//! loader alone (decode + prefetch, no network); with SIZE, compare_gan's
//! distorted crops resized to SIZE (what train-gan's ImageNet routes read).
use std::time::Instant;

use fewlabels::manifest::Manifest;
use fewlabels::models::resnet::{rotate4, Config, RotationNet};
use fewlabels::shard::table_files;
use fewlabels::stage::StageName;
use fewlabels::train::loader::{Augment, Loader, LoaderConfig};
use fewlabels::train::optim::{OptimConfig, Optimizer};
use fewlabels::{Error, Result};
use tch::{Device, Kind, Tensor};

fn arg<T: std::str::FromStr>(a: &[String], i: usize, name: &str) -> Result<T> {
    a.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::invalid(format!("argument {i} ({name}) missing or bad")))
}

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let what = a.get(1).map(String::as_str).unwrap_or("");
    let threads: usize = arg(&a, 2, "threads")?;
    fewlabels::device::set_threads(threads);
    match what {
        "step" => {
            let steps: usize = arg(&a, 3, "steps")?;
            let batch: i64 = arg(&a, 4, "batch")?;
            let labelled: i64 = arg(&a, 5, "labelled")?;
            // Optional: `resnet50 128 1000` (the S2L extractor of the ImageNet routes).
            let (cfg, res, classes) = match a.get(6).map(String::as_str) {
                Some("resnet50") => (
                    Config::resnet50(),
                    arg(&a, 7, "resolution")?,
                    arg(&a, 8, "classes")?,
                ),
                Some(other) => {
                    return Err(Error::invalid(format!("arch {other}: small or resnet50")))
                }
                None => (Config::small(), 32i64, 10i64),
            };
            tch::manual_seed(0);
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let net = RotationNet::new(&vs.root(), &cfg, Some(classes))?;
            let mut opt = Optimizer::new(OptimConfig::sgd(0.9, 5e-4), &vs);
            let x = Tensor::rand([batch, 3, res, res], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let xl = Tensor::rand([labelled, 3, res, res], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let yl = Tensor::randint(classes, [labelled], (Kind::Int64, Device::Cpu));
            let mut run = |n: usize| -> Result<f64> {
                let t0 = Instant::now();
                for _ in 0..n {
                    let (x4, t) = rotate4(&x)?;
                    let n_rot = x4.size()[0];
                    let h = net.forward_t(&Tensor::cat(&[x4, xl.shallow_clone()], 0), true);
                    let rot = h.rotation.narrow(0, 0, n_rot).cross_entropy_for_logits(&t);
                    let cls = h
                        .classes
                        .as_ref()
                        .expect("head")
                        .narrow(0, n_rot, labelled)
                        .cross_entropy_for_logits(&yl);
                    let loss = rot + cls;
                    opt.backward_step(&loss, 0.01)?;
                    let _ = loss.double_value(&[]);
                }
                Ok((n as f64) * (4 * batch + labelled) as f64 / t0.elapsed().as_secs_f64())
            };
            run(if res > 32 { 1 } else { 3 })?; // warm-up
            let rate = run(steps)?;
            println!(
                "{}",
                serde_json::json!({"impl": "tch", "threads": threads, "steps": steps, "batch": batch, "labelled": labelled, "resolution": res, "images_per_s": rate})
            );
        }
        "loader" => {
            let dir =
                std::path::PathBuf::from(a.get(3).ok_or_else(|| Error::invalid("IMAGES_DIR"))?);
            let batch: usize = arg(&a, 4, "batch")?;
            let batches: usize = arg(&a, 5, "batches")?;
            let crop: Option<usize> = a.get(6).map(|_| arg(&a, 6, "size")).transpose()?;
            let m = Manifest::read_complete(&dir, StageName::Prepare)?;
            let mut cfg = LoaderConfig::train(batch, 0);
            if let Some(size) = crop {
                cfg.augment = Augment::Distorted { size };
            }
            let loader = Loader::new(table_files(&dir, &m, "images"), cfg)?;
            let t0 = Instant::now();
            let mut n = 0usize;
            for b in loader.take(batches) {
                n += b?.ids.len();
            }
            let rate = n as f64 / t0.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"impl": "loader", "threads": threads, "batch": batch, "distorted": crop, "images": n, "images_per_s": rate})
            );
        }
        _ => {
            return Err(Error::invalid(
                "usage: pretrain_bench step|loader THREADS ...",
            ))
        }
    }
    Ok(())
}
