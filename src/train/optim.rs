//! SGD with momentum and Adam, written over named tensors so that their state
//! (momentum buffers, moment estimates, step count) goes into a checkpoint
//! beside the weights and a resumed run continues exactly. The update rules
//! are PyTorch's (`torch.optim.SGD` without dampening, `torch.optim.Adam` /
//! `AdamW`), so a run compares step for step with a PyTorch peer. Learning
//! rates come from a [`Schedule`].
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::train::checkpoint::Checkpoint;

/// The optimiser and its hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimConfig {
    Sgd {
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    },
    /// `decoupled_weight_decay` = AdamW; otherwise L2 added to the gradient.
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled_weight_decay: bool,
    },
}

impl OptimConfig {
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        OptimConfig::Sgd {
            momentum,
            weight_decay,
            nesterov: false,
        }
    }
    pub fn adam(beta1: f64, beta2: f64) -> Self {
        OptimConfig::Adam {
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
        }
    }
}

/// Learning rate as a function of the step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// Linear warm-up, then cosine decay to zero at the last step.
    #[default]
    Cosine,
    /// Linear warm-up, then x0.1 at 50% and 75% of the steps.
    Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The rate for step `step` (0-based: the first update is step 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let total = self.total_steps.max(1);
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
            ScheduleKind::Step => {
                let f = step as f64 / total as f64;
                let drops = (f >= 0.5) as i32 + (f >= 0.75) as i32;
                self.base_lr * 0.1f64.powi(drops)
            }
        }
    }
}

/// An optimiser over the trainable variables of a `VarStore`, in name order.
pub struct Optimizer {
    cfg: OptimConfig,
    params: Vec<(String, Tensor)>,
    /// Per parameter: SGD [momentum]; Adam [exp_avg, exp_avg_sq].
    state: Vec<Vec<Tensor>>,
    step: u64,
}

impl Optimizer {
    pub fn new(cfg: OptimConfig, vs: &VarStore) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        // Zero-initialised state gives PyTorch's first step exactly (its SGD
        // buffer starts as the gradient itself: 0 * m + g = g).
        let state = params
            .iter()
            .map(|(_, p)| {
                let n = match cfg {
                    OptimConfig::Sgd { momentum: 0.0, .. } => 0,
                    OptimConfig::Sgd { .. } => 1,
                    OptimConfig::Adam { .. } => 2,
                };
                (0..n).map(|_| p.zeros_like().detach()).collect()
            })
            .collect();
        Optimizer {
            cfg,
            params,
            state,
            step: 0,
        }
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Sets the update count (a rank taking rank 0's state: Adam's bias
    /// correction depends on it).
    pub fn set_steps(&mut self, steps: u64) {
        self.step = steps;
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Zeroes the gradients, back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        self.zero_grad();
        loss.f_backward()?;
        self.step(lr);
        Ok(())
    }

    /// One update with learning rate `lr` from the current gradients.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step as f64;
        tch::no_grad(|| {
            for ((_, p), st) in self.params.iter().zip(self.state.iter_mut()) {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                match self.cfg {
                    OptimConfig::Sgd {
                        momentum,
                        weight_decay,
                        nesterov,
                    } => {
                        if weight_decay != 0.0 {
                            g = &g + &p * weight_decay;
                        }
                        let upd = if momentum != 0.0 {
                            let buf = &mut st[0];
                            *buf *= momentum;
                            *buf += &g;
                            if nesterov {
                                &g + &*buf * momentum
                            } else {
                                buf.shallow_clone()
                            }
                        } else {
                            g
                        };
                        p += upd * (-lr);
                    }
                    OptimConfig::Adam {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                        decoupled_weight_decay,
                    } => {
                        if weight_decay != 0.0 {
                            if decoupled_weight_decay {
                                p *= 1.0 - lr * weight_decay;
                            } else {
                                g = &g + &p * weight_decay;
                            }
                        }
                        let (m, v) = st.split_at_mut(1);
                        let (m, v) = (&mut m[0], &mut v[0]);
                        *m *= beta1;
                        *m += &g * (1.0 - beta1);
                        *v *= beta2;
                        *v += (&g * &g) * (1.0 - beta2);
                        let bc1 = 1.0 - beta1.powf(t);
                        let bc2 = 1.0 - beta2.powf(t);
                        let denom = v.sqrt() / bc2.sqrt() + eps;
                        p += (&*m / denom) * (-lr / bc1);
                    }
                }
            }
        });
    }

    fn state_names(&self) -> &'static [&'static str] {
        match self.cfg {
            OptimConfig::Sgd { momentum: 0.0, .. } => &[],
            OptimConfig::Sgd { .. } => &["momentum"],
            OptimConfig::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }

    /// The state as named tensors (`prefix + param + "." + slot`, and
    /// `prefix + "step"`), for [`crate::train::checkpoint::Checkpoints::save`].
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let names = self.state_names();
        let mut out = vec![(
            format!("{prefix}step"),
            Tensor::from_slice(&[self.step as i64]),
        )];
        for ((name, _), st) in self.params.iter().zip(&self.state) {
            for (slot, t) in names.iter().zip(st) {
                out.push((format!("{prefix}{name}.{slot}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Restores the state written by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, ckpt: &Checkpoint, prefix: &str) -> Result<()> {
        let step_t = ckpt.get(&format!("{prefix}step"))?;
        self.step = step_t.f_int64_value(&[0]).at(&ckpt.path)? as u64;
        let names = self.state_names();
        tch::no_grad(|| {
            for ((name, p), st) in self.params.iter().zip(self.state.iter_mut()) {
                for (slot, t) in names.iter().zip(st.iter_mut()) {
                    let src = ckpt.get(&format!("{prefix}{name}.{slot}"))?;
                    if src.size() != p.size() {
                        return Err(Error::file(
                            &ckpt.path,
                            format!("optimiser state `{prefix}{name}.{slot}` has the wrong shape"),
                        ));
                    }
                    t.f_copy_(&src.to_kind(Kind::Float).to_kind(t.kind()))
                        .at(&ckpt.path)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};
    use tch::Device;

    fn quadratic_loss(vs: &VarStore, lin: &nn::Linear) -> Tensor {
        let _ = vs;
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([2, 2]);
        let y = Tensor::from_slice(&[0.5f32, 1.0]).view([2, 1]);
        lin.forward(&x).mse_loss(&y, tch::Reduction::Mean)
    }

    /// Golden values from PyTorch 2.11 (torch.optim.SGD(momentum=0.9,
    /// weight_decay=0.01) and torch.optim.Adam(betas=(0.5, 0.999))) on the
    /// same problem; the snippet is in benches/pretrain/optim_golden.py.
    #[test]
    fn matches_pytorch_golden_values() {
        for (cfg, want) in [
            (
                OptimConfig::sgd(0.9, 0.01),
                [0.32288903f64, 0.11802033, 0.56737918],
            ),
            (
                OptimConfig::adam(0.5, 0.999),
                [0.28087324, 0.13237526, 0.49397236],
            ),
        ] {
            let vs = VarStore::new(Device::Cpu);
            let lin = nn::linear(vs.root() / "l", 2, 1, Default::default());
            tch::no_grad(|| {
                let mut w = lin.ws.shallow_clone();
                w.copy_(&Tensor::from_slice(&[0.1f32, 0.2]).view([1, 2]));
                let mut b = lin.bs.as_ref().unwrap().shallow_clone();
                b.copy_(&Tensor::from_slice(&[0.3f32]));
            });
            let mut opt = Optimizer::new(cfg, &vs);
            for _ in 0..5 {
                let loss = quadratic_loss(&vs, &lin);
                opt.backward_step(&loss, 0.05).unwrap();
            }
            let got: Vec<f64> = Vec::<f32>::try_from(&lin.ws.flatten(0, -1))
                .unwrap()
                .into_iter()
                .chain(Vec::<f32>::try_from(lin.bs.as_ref().unwrap()).unwrap())
                .map(f64::from)
                .collect();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{cfg:?}: got {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn schedules() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
        let st = Schedule {
            kind: ScheduleKind::Step,
            warmup_steps: 0,
            ..s
        };
        assert_eq!(st.lr(54), 1.0);
        assert!((st.lr(55) - 0.1).abs() < 1e-12);
        assert!((st.lr(83) - 0.01).abs() < 1e-12);
    }
}
