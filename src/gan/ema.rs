//! Exponential moving average of G's weights (BigGAN-PyTorch `utils.ema`):
//! `ema = decay * ema + (1 - decay) * g` for every trainable weight, a plain
//! copy before the start step; buffers (spectral-norm vectors, batch-norm
//! statistics) are copied. The EMA generator is what gets sampled, after
//! [`standing_stats`] recomputes its batch-norm statistics.
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::models::biggan::Generator;

/// Pairs each EMA variable with the generator's variable of the same name.
pub struct Ema {
    pairs: Vec<(Tensor, Tensor, bool)>,
    pub decay: f64,
    pub start: u64,
}

impl Ema {
    /// `ema` and `source` must hold the same variables (same config).
    pub fn new(source: &VarStore, ema: &VarStore, decay: f64, start: u64) -> Self {
        let src = source.variables();
        let mut pairs: Vec<(String, Tensor, Tensor, bool)> = ema
            .variables()
            .into_iter()
            .filter_map(|(name, e)| {
                src.get(&name)
                    .map(|s| (name, e, s.shallow_clone(), s.requires_grad()))
            })
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Ema {
            pairs: pairs.into_iter().map(|(_, e, s, t)| (e, s, t)).collect(),
            decay,
            start,
        }
    }

    /// Copies every variable (used at initialisation).
    pub fn copy_all(&self) {
        tch::no_grad(|| {
            for (e, s, _) in &self.pairs {
                e.shallow_clone().copy_(s);
            }
        })
    }

    /// One EMA update after G's step `step` (1-based).
    pub fn update(&self, step: u64) {
        let decay = if step < self.start { 0.0 } else { self.decay };
        tch::no_grad(|| {
            for (e, s, trainable) in &self.pairs {
                let mut e = e.shallow_clone();
                if *trainable && decay > 0.0 {
                    e *= decay;
                    e += s * (1.0 - decay);
                } else {
                    e.copy_(s);
                }
            }
        })
    }
}

/// Recomputes G's batch-norm statistics as the average over `batches`
/// training-mode forwards of random z and labels ("standing statistics",
/// BigGAN-PyTorch `accumulate_standing_stats`): momentum 1/(i+1) makes the
/// running value the plain mean. Spectral-norm vectors are left alone.
pub fn standing_stats(g: &Generator, batches: usize, batch_size: i64, seed: u64, device: Device) {
    let ctx = &g.ctx;
    ctx.set_sn_update(false);
    g.reset_bn_stats();
    tch::no_grad(|| {
        for i in 0..batches {
            crate::gan::seed_all(seed, &[0x57a4d, i as u64]);
            ctx.set_bn_momentum(1.0 / (i as f64 + 1.0));
            let z = Tensor::randn([batch_size, g.cfg.z_dim], (Kind::Float, device));
            let y = Tensor::randint(g.cfg.n_classes, [batch_size], (Kind::Int64, device));
            let _ = g.forward_t(&z, &y, true);
        }
    });
    ctx.set_bn_momentum(0.1);
    ctx.set_sn_update(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::biggan::Config;
    use crate::models::layers::LayerCtx;

    #[test]
    fn ema_blends_weights_after_start_and_copies_before() {
        tch::manual_seed(0);
        let cfg = Config {
            n_classes: 2,
            ..Config::biggan_32(2)
        };
        let (vs, ve) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let _g = Generator::new(&vs.root(), &cfg, &LayerCtx::new(false));
        let _e = Generator::new(&ve.root(), &cfg, &LayerCtx::new(false));
        let ema = Ema::new(&vs, &ve, 0.9, 2);
        ema.update(1);
        let name = "linear.bias";
        let (s, e) = (&vs.variables()[name], &ve.variables()[name]);
        assert!(s.equal(e), "before start: a copy");
        tch::no_grad(|| {
            let _ = s.shallow_clone().fill_(1.0);
        });
        let before = e.copy();
        ema.update(2);
        let want = before * 0.9 + 0.1;
        assert!(e.allclose(&want, 1e-6, 1e-6, false));
    }
}
