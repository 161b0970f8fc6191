//! The cost of averaging BigGAN's gradients over the ranks of a job (issue
//! 17; benches/distributed/run.sh launches it with torchrun): builds G and
//! D (`RES CH`, BigGAN-128: 128 96, 158M parameters), gives every trainable
//! variable a gradient, then times `Dist::average_gradients` on both
//! networks `REPS` times after one warm-up. Gloo on the CPU, NCCL on a GPU
//! (`DEVICE` cpu or cuda). Rank 0 prints one JSON line; the same buckets
//! and work as benches/distributed/allreduce_torch.py.
use std::time::Instant;

use fewlabels::dist::{Dist, Launch};
use fewlabels::models::biggan::{parameter_count, Config, Discriminator, Generator};
use fewlabels::models::layers::LayerCtx;
use fewlabels::{Error, Result};
use tch::nn::VarStore;
use tch::{Device, Kind};

fn arg<T: std::str::FromStr>(a: &[String], i: usize, name: &str) -> Result<T> {
    a.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::invalid(format!("argument {i} ({name}) missing or bad")))
}

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (res, ch, reps): (i64, i64, usize) =
        (arg(&a, 1, "res")?, arg(&a, 2, "ch")?, arg(&a, 3, "reps")?);
    let device = match a.get(4).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let dist = Dist::init(Launch::from_env()?, device)?;
    let device = dist.local_device(device);
    let cfg = Config {
        resolution: res,
        ch,
        ..Config::biggan_128()
    };
    tch::manual_seed(0);
    let (vs_g, vs_d) = (VarStore::new(device), VarStore::new(device));
    let _g = Generator::new(&vs_g.root(), &cfg, &LayerCtx::new(false));
    let _d = Discriminator::new(&vs_d.root(), &cfg, &LayerCtx::new(false));
    let params = parameter_count(&vs_g) + parameter_count(&vs_d);
    // A gradient on every trainable variable: d(sum of x * (rank + 1)) / dx.
    let scale = dist.rank() as f64 + 1.0;
    for vs in [&vs_g, &vs_d] {
        for t in vs.trainable_variables() {
            (t.sum(Kind::Float) * scale).backward();
        }
    }
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut secs = Vec::new();
    for rep in 0..=reps {
        dist.barrier("the benchmark's barrier")?;
        sync();
        let t0 = Instant::now();
        dist.average_gradients(&vs_g)?;
        dist.average_gradients(&vs_d)?;
        sync();
        if rep > 0 {
            secs.push(t0.elapsed().as_secs_f64());
        }
    }
    // Averaged `reps + 1` times: the mean over ranks of (r + 1) stays put.
    let want = (1..=dist.world()).sum::<usize>() as f64 / dist.world() as f64;
    let got = vs_g.trainable_variables()[0]
        .grad()
        .mean(Kind::Double)
        .double_value(&[]);
    if (got - want).abs() > 1e-5 {
        return Err(Error::Internal(format!(
            "averaged gradient {got}, want {want}"
        )));
    }
    let best = secs.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
    if dist.is_rank0() {
        println!(
            "{}",
            serde_json::json!({
                "tool": "fewlabels", "world": dist.world(), "backend": match dist.backend() {
                    Some(fewlabels::dist::Backend::Nccl { .. }) => "nccl",
                    _ => "gloo",
                },
                "params": params, "mbytes": params as f64 * 4.0 / 1e6,
                "best_s": best, "mean_s": mean, "reps": reps,
            })
        );
    }
    dist.leave();
    dist.wait_for_others(dist.timeout());
    Ok(())
}
