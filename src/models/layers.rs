//! The BigGAN building blocks (Brock et al. 2019; BigGAN-PyTorch `layers.py`):
//! spectrally normalised convolution / linear / embedding (Miyato et al.
//! 2018), conditional batch norm whose gain and bias are linear in a
//! conditioning vector, and the non-local self-attention block (Zhang et al.,
//! SAGAN). Every variable has an explicit name in the VarStore, including the
//! power-iteration vector `sn_u` and the batch-norm running statistics, so a
//! checkpoint carries the whole state and loads by name.
//!
//! Layers share a [`LayerCtx`]: whether spectral norm may update its vector
//! (off while recomputing standing statistics), the batch-norm momentum
//! (changed for standing statistics), the compute precision (bf16 runs
//! convolutions and matrix products in bfloat16 with fp32 master weights and
//! fp32 batch norm, which is what `torch.autocast(dtype=bfloat16)` does),
//! and, for data-parallel training, the job whose ranks' images batch norm
//! takes its moments over (compare_gan's cross-replica batch norm).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::dist::Dist;
use crate::error::Error;

/// Settings every layer of one network reads at forward time.
#[derive(Debug)]
pub struct LayerCtx {
    sn_update: AtomicBool,
    bn_momentum: AtomicU64,
    bf16: AtomicBool,
    /// Training batch norm over every rank of this job.
    sync_bn: Mutex<Option<Dist>>,
    /// The first failure of a cross-replica batch norm (forwards return
    /// tensors, not results: the training loop asks after each one).
    failure: Mutex<Option<Error>>,
}

impl LayerCtx {
    pub fn new(bf16: bool) -> Arc<Self> {
        Arc::new(LayerCtx {
            sn_update: AtomicBool::new(true),
            bn_momentum: AtomicU64::new(0.1f64.to_bits()),
            bf16: AtomicBool::new(bf16),
            sync_bn: Mutex::new(None),
            failure: Mutex::new(None),
        })
    }
    /// Training-mode batch norm takes its moments over every rank of
    /// `dist` (every rank must then run the same forwards and backwards).
    pub fn set_sync_bn(&self, dist: Dist) {
        *self.sync_bn.lock().unwrap_or_else(|e| e.into_inner()) = Some(dist);
    }
    fn sync_bn(&self) -> Option<Dist> {
        *self.sync_bn.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The first cross-replica batch-norm failure since the last call.
    pub fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
    fn fail(&self, e: Error) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(e);
    }
    pub fn set_sn_update(&self, on: bool) {
        self.sn_update.store(on, Ordering::Relaxed)
    }
    pub fn sn_update(&self) -> bool {
        self.sn_update.load(Ordering::Relaxed)
    }
    pub fn set_bn_momentum(&self, m: f64) {
        self.bn_momentum.store(m.to_bits(), Ordering::Relaxed)
    }
    pub fn bn_momentum(&self) -> f64 {
        f64::from_bits(self.bn_momentum.load(Ordering::Relaxed))
    }
    /// The kind matrix products run in.
    pub fn compute_kind(&self) -> Kind {
        if self.bf16.load(Ordering::Relaxed) {
            Kind::BFloat16
        } else {
            Kind::Float
        }
    }
}

/// Orthogonal init (Saxe et al. 2014), as BigGAN-PyTorch's `init='ortho'`
/// for every layer: the weight viewed as `[dims[0], prod(rest)]` has
/// orthonormal rows (or columns). Written here because tch's
/// `Init::Orthogonal` returns the flattened 2-D matrix for conv weights.
pub fn orthogonal(p: &Path, name: &str, dims: &[i64]) -> Tensor {
    let rows = dims[0];
    let cols: i64 = dims[1..].iter().product();
    let a = Tensor::randn([rows.max(cols), rows.min(cols)], (Kind::Float, p.device()));
    let (q, r) = Tensor::linalg_qr(&a, "reduced");
    // Sign fix so the distribution is uniform (Mezzadri 2007), as PyTorch does.
    let q = q * r.diag(0).sign();
    let q = if rows < cols { q.tr() } else { q };
    let w = p.var(name, dims, Init::Const(0.0));
    tch::no_grad(|| w.shallow_clone().copy_(&q.contiguous().view(dims)));
    w
}

/// `v / max(||v||, eps)`.
fn normalize(v: &Tensor, eps: f64) -> Tensor {
    v / v.norm().clamp_min(eps)
}

/// Spectral norm's epsilon (BigGAN-PyTorch's).
const SN_EPS: f64 = 1e-12;

/// One power-iteration step for the matrix `w` from `u`: the new (u, v).
fn power_step(w: &Tensor, u: &Tensor, eps: f64) -> (Tensor, Tensor) {
    let v = normalize(&w.tr().mv(u), eps);
    let u = normalize(&w.mv(&v), eps);
    (u, v)
}

/// Moves every spectral-norm vector of `vs` (each `P.sn_u`, beside its
/// `P.weight`) `steps` power-iteration steps, as that many training
/// forwards would. A data-parallel rank calls it for the other ranks'
/// forwards, so that its vectors stay where one process accumulating every
/// rank's batches would have them (src/gan/train.rs).
pub fn advance_spectral_norms(vs: &tch::nn::VarStore, steps: u64) {
    if steps == 0 {
        return;
    }
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, u) in &vars {
            let Some(weight) = name
                .strip_suffix(".sn_u")
                .and_then(|p| vars.get(&format!("{p}.weight")))
            else {
                continue;
            };
            let w = weight.view([weight.size()[0], -1]);
            let mut cur = u.shallow_clone();
            for _ in 0..steps {
                cur = power_step(&w, &cur, SN_EPS).0;
            }
            u.shallow_clone().copy_(&cur);
        }
    });
}

/// A weight divided by its largest singular value, estimated by one step of
/// power iteration per training forward (Miyato et al. 2018, as in
/// BigGAN-PyTorch and compare_gan). `u` is a non-trainable VarStore entry
/// (`<path>.sn_u`) so it is checkpointed with the weights.
#[derive(Debug)]
pub struct SpectralNorm {
    pub weight: Tensor,
    pub u: Tensor,
    ctx: Arc<LayerCtx>,
    eps: f64,
}

impl SpectralNorm {
    pub fn new(p: &Path, dims: &[i64], ctx: &Arc<LayerCtx>) -> Self {
        let weight = orthogonal(p, "weight", dims);
        let u = p.zeros_no_train("sn_u", &[dims[0]]);
        let init = normalize(&Tensor::randn([dims[0]], (Kind::Float, p.device())), SN_EPS);
        tch::no_grad(|| u.shallow_clone().copy_(&init));
        SpectralNorm {
            weight,
            u,
            ctx: ctx.clone(),
            eps: SN_EPS,
        }
    }

    fn matrix(&self) -> Tensor {
        let rows = self.weight.size()[0];
        self.weight.view([rows, -1])
    }

    /// The current estimate of the largest singular value (no update).
    pub fn sigma(&self) -> f64 {
        tch::no_grad(|| {
            let w = self.matrix();
            let (u, v) = power_step(&w, &self.u, self.eps);
            u.dot(&w.mv(&v)).double_value(&[])
        })
    }

    /// The normalised weight `W / sigma(W)`; in training the power-iteration
    /// vector moves one step (gradients flow through `W`, not through `u`, `v`).
    pub fn normalized(&self, train: bool) -> Tensor {
        let w = self.matrix();
        let (u, v) = tch::no_grad(|| power_step(&w, &self.u, self.eps));
        if train && self.ctx.sn_update() {
            tch::no_grad(|| self.u.shallow_clone().copy_(&u));
        }
        let sigma = u.dot(&w.mv(&v));
        &self.weight / sigma
    }
}

/// Spectrally normalised 2-D convolution (stride 1, "same" padding).
#[derive(Debug)]
pub struct SnConv2d {
    sn: SpectralNorm,
    bias: Option<Tensor>,
    padding: i64,
    ctx: Arc<LayerCtx>,
}

impl SnConv2d {
    pub fn new(p: Path, c_in: i64, c_out: i64, k: i64, ctx: &Arc<LayerCtx>) -> Self {
        Self::with_bias(p, c_in, c_out, k, true, ctx)
    }
    pub fn with_bias(
        p: Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        bias: bool,
        ctx: &Arc<LayerCtx>,
    ) -> Self {
        SnConv2d {
            sn: SpectralNorm::new(&p, &[c_out, c_in, k, k], ctx),
            bias: bias.then(|| p.zeros("bias", &[c_out])),
            padding: k / 2,
            ctx: ctx.clone(),
        }
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let kind = self.ctx.compute_kind();
        let w = self.sn.normalized(train).to_kind(kind);
        x.to_kind(kind).conv2d(
            &w,
            self.bias.as_ref().map(|b| b.to_kind(kind)),
            [1, 1],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// Spectrally normalised linear layer.
#[derive(Debug)]
pub struct SnLinear {
    pub sn: SpectralNorm,
    bias: Option<Tensor>,
    ctx: Arc<LayerCtx>,
}

impl SnLinear {
    pub fn new(p: Path, c_in: i64, c_out: i64, bias: bool, ctx: &Arc<LayerCtx>) -> Self {
        SnLinear {
            sn: SpectralNorm::new(&p, &[c_out, c_in], ctx),
            bias: bias.then(|| p.zeros("bias", &[c_out])),
            ctx: ctx.clone(),
        }
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let kind = self.ctx.compute_kind();
        let w = self.sn.normalized(train).to_kind(kind);
        x.to_kind(kind)
            .linear(&w, self.bias.as_ref().map(|b| b.to_kind(kind)))
    }
}

/// Spectrally normalised class embedding (the projection discriminator's).
#[derive(Debug)]
pub struct SnEmbedding {
    sn: SpectralNorm,
}

impl SnEmbedding {
    pub fn new(p: Path, n: i64, dim: i64, ctx: &Arc<LayerCtx>) -> Self {
        SnEmbedding {
            sn: SpectralNorm::new(&p, &[n, dim], ctx),
        }
    }
    /// `[N]` int64 labels -> `[N, dim]`.
    pub fn forward_t(&self, y: &Tensor, train: bool) -> Tensor {
        Tensor::embedding(&self.sn.normalized(train), y, -1, false, false)
    }
}

/// Batch norm without affine parameters, with named running statistics.
#[derive(Debug)]
struct Norm {
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
    ctx: Arc<LayerCtx>,
}

impl Norm {
    fn new(p: &Path, c: i64, ctx: &Arc<LayerCtx>) -> Self {
        Norm {
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            eps: 1e-5,
            ctx: ctx.clone(),
        }
    }
    /// Normalises in fp32 whatever the compute precision (as autocast does).
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = x.to_kind(Kind::Float);
        if let (true, Some(dist)) = (train, self.ctx.sync_bn()) {
            match dist.sync_batch_norm(&x, self.eps) {
                Ok((y, stats)) => {
                    self.update_running(&stats);
                    return y;
                }
                // Reported by the training loop; this forward goes on locally.
                Err(e) => self.ctx.fail(e),
            }
        }
        x.batch_norm::<&Tensor>(
            None,
            None,
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.ctx.bn_momentum(),
            self.eps,
            true,
        )
    }
    /// Moves the running statistics towards (mean, unbiased variance), as
    /// libtorch's training-mode batch norm does with its own.
    fn update_running(&self, stats: &Tensor) {
        let c = self.running_mean.size()[0];
        let m = self.ctx.bn_momentum();
        tch::no_grad(|| {
            for (running, k) in [(&self.running_mean, 0), (&self.running_var, 1)] {
                let new = stats.narrow(0, k * c, c).to_kind(Kind::Float);
                let moved = running * (1.0 - m) + new * m;
                running.shallow_clone().copy_(&moved);
            }
        });
    }
    fn reset(&self) {
        tch::no_grad(|| {
            let _ = self.running_mean.shallow_clone().fill_(0.0);
            let _ = self.running_var.shallow_clone().fill_(1.0);
        });
    }
}

/// Conditional batch norm (de Vries et al. 2017): `BN(x) * (offset +
/// gain(c)) + bias(c)` with gain and bias spectrally normalised linear maps
/// (no bias) of the conditioning vector `c` = [z chunk, class embedding].
/// BigGAN-PyTorch's `ccbn` has `offset` 1 (the gain starts near one);
/// compare_gan's `conditional_batch_norm` has 0 (the gain is the map alone).
#[derive(Debug)]
pub struct ConditionalBatchNorm {
    norm: Norm,
    gain: SnLinear,
    bias: SnLinear,
    gain_offset: f64,
}

impl ConditionalBatchNorm {
    pub fn new(p: Path, c: i64, cond_dim: i64, gain_offset: f64, ctx: &Arc<LayerCtx>) -> Self {
        ConditionalBatchNorm {
            norm: Norm::new(&p, c, ctx),
            gain: SnLinear::new(&p / "gain", cond_dim, c, false, ctx),
            bias: SnLinear::new(&p / "bias", cond_dim, c, false, ctx),
            gain_offset,
        }
    }
    /// `x` [N, C, H, W], `cond` [N, cond_dim] -> [N, C, H, W] (fp32).
    pub fn forward_t(&self, x: &Tensor, cond: &Tensor, train: bool) -> Tensor {
        let g = self.gain.forward_t(cond, train).to_kind(Kind::Float) + self.gain_offset;
        let b = self.bias.forward_t(cond, train).to_kind(Kind::Float);
        // [N, C] -> [N, C, 1, 1], without the batch size as a number (a
        // traced generator takes any batch).
        let per_image = |t: Tensor| t.unsqueeze(-1).unsqueeze(-1);
        self.norm.forward_t(x, train) * per_image(g) + per_image(b)
    }
    pub fn reset_stats(&self) {
        self.norm.reset()
    }
}

/// Plain batch norm with a learned gain and bias (G's output layer).
#[derive(Debug)]
pub struct BatchNorm {
    norm: Norm,
    gain: Tensor,
    bias: Tensor,
}

impl BatchNorm {
    pub fn new(p: Path, c: i64, ctx: &Arc<LayerCtx>) -> Self {
        BatchNorm {
            norm: Norm::new(&p, c, ctx),
            gain: p.ones("gain", &[c]),
            bias: p.zeros("bias", &[c]),
        }
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.norm.forward_t(x, train) * self.gain.view([1, -1, 1, 1])
            + self.bias.view([1, -1, 1, 1])
    }
    pub fn reset_stats(&self) {
        self.norm.reset()
    }
}

/// Self-attention (SAGAN; BigGAN-PyTorch `Attention`, compare_gan
/// `non_local_block`): theta/phi at C/8 channels, g at C/2, phi and g
/// max-pooled 2x2, output scaled by a learned `gamma` that starts at 0 so
/// the block starts as the identity. BigGAN-PyTorch's 1x1 convolutions have
/// biases, compare_gan's none (`bias`).
#[derive(Debug)]
pub struct SelfAttention {
    theta: SnConv2d,
    phi: SnConv2d,
    g: SnConv2d,
    o: SnConv2d,
    gamma: Tensor,
    ch: i64,
}

impl SelfAttention {
    pub fn new(p: Path, ch: i64, bias: bool, ctx: &Arc<LayerCtx>) -> Self {
        let c8 = (ch / 8).max(1);
        let c2 = (ch / 2).max(1);
        SelfAttention {
            theta: SnConv2d::with_bias(&p / "theta", ch, c8, 1, bias, ctx),
            phi: SnConv2d::with_bias(&p / "phi", ch, c8, 1, bias, ctx),
            g: SnConv2d::with_bias(&p / "g", ch, c2, 1, bias, ctx),
            o: SnConv2d::with_bias(&p / "o", c2, ch, 1, bias, ctx),
            gamma: p.zeros("gamma", &[1]),
            ch,
        }
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let s = x.size();
        let (h, w) = (s[2], s[3]);
        let c8 = (self.ch / 8).max(1);
        let c2 = (self.ch / 2).max(1);
        // theta [N, C/8, HW]; phi [N, C/8, HW/4]; g [N, C/2, HW/4]
        let theta = self.theta.forward_t(x, train).view([-1, c8, h * w]);
        let phi = self
            .phi
            .forward_t(x, train)
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
            .view([-1, c8, h * w / 4]);
        let g = self
            .g
            .forward_t(x, train)
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
            .view([-1, c2, h * w / 4]);
        // beta [N, HW, HW/4]: each position's attention over the pooled map.
        let beta = theta
            .transpose(1, 2)
            .bmm(&phi)
            .softmax(-1, Kind::Float)
            .to_kind(theta.kind());
        let attn = g.bmm(&beta.transpose(1, 2)).view([-1, c2, h, w]);
        let o = self.o.forward_t(&attn, train);
        let k = o.kind();
        x + o * self.gamma.to_kind(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    /// The exact largest singular value: sqrt of the largest eigenvalue of
    /// `M^T M`, in double precision (LAPACK `syevd`).
    fn top_singular_value(m: &Tensor) -> f64 {
        let m = m.to_kind(Kind::Double);
        Tensor::linalg_eigvalsh(&m.tr().mm(&m), "L")
            .max()
            .sqrt()
            .double_value(&[])
    }

    /// Power iteration converges to the exact largest singular value of a
    /// random matrix.
    #[test]
    fn spectral_norm_matches_the_exact_top_singular_value() {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let ctx = LayerCtx::new(false);
        let sn = SpectralNorm::new(&(vs.root() / "w"), &[24, 40], &ctx);
        let m = Tensor::randn([24, 40], (Kind::Float, Device::Cpu));
        tch::no_grad(|| sn.weight.shallow_clone().copy_(&m));
        let exact = top_singular_value(&m);
        for _ in 0..200 {
            let _ = sn.normalized(true);
        }
        let est = sn.sigma();
        assert!(
            (est - exact).abs() / exact < 1e-3,
            "power iteration {est} vs exact {exact}"
        );
        // The normalised weight has spectral norm 1.
        let top = top_singular_value(&sn.normalized(false).detach());
        assert!(
            (top - 1.0).abs() < 1e-3,
            "normalised top singular value {top}"
        );
    }

    #[test]
    fn orthogonal_init_keeps_the_shape_and_is_orthonormal() {
        tch::manual_seed(2);
        let vs = VarStore::new(Device::Cpu);
        let w = orthogonal(&vs.root(), "w", &[8, 4, 3, 3]);
        assert_eq!(w.size(), vec![8, 4, 3, 3]);
        let m = w.view([8, -1]);
        let eye = Tensor::eye(8, (Kind::Float, Device::Cpu));
        assert!(m.mm(&m.tr()).allclose(&eye, 1e-5, 1e-5, false));
        let tall = orthogonal(&vs.root(), "t", &[20, 5]);
        let eye5 = Tensor::eye(5, (Kind::Float, Device::Cpu));
        assert!(tall.tr().mm(&tall).allclose(&eye5, 1e-5, 1e-5, false));
    }

    #[test]
    fn eval_forward_leaves_u_alone_and_training_moves_it() {
        tch::manual_seed(4);
        let vs = VarStore::new(Device::Cpu);
        let ctx = LayerCtx::new(false);
        let sn = SpectralNorm::new(&(vs.root() / "w"), &[8, 5], &ctx);
        let u0 = sn.u.copy();
        let _ = sn.normalized(false);
        assert!(sn.u.equal(&u0));
        let _ = sn.normalized(true);
        assert!(!sn.u.equal(&u0));
        // u is a named, non-trainable VarStore entry, so checkpoints carry it.
        let vars = vs.variables();
        assert!(vars.contains_key("w.sn_u"));
        assert_eq!(vs.trainable_variables().len(), 1);
    }

    #[test]
    fn attention_starts_as_identity_and_keeps_shape() {
        tch::manual_seed(5);
        let vs = VarStore::new(Device::Cpu);
        let ctx = LayerCtx::new(false);
        let a = SelfAttention::new(vs.root() / "attn", 16, true, &ctx);
        let x = Tensor::randn([2, 16, 8, 8], (Kind::Float, Device::Cpu));
        let y = a.forward_t(&x, true);
        assert_eq!(y.size(), vec![2, 16, 8, 8]);
        assert!(y.allclose(&x, 1e-6, 1e-6, false));
    }

    /// The cross-replica batch norm's autograd function, over one rank,
    /// is libtorch's batch norm: outputs, input gradients and running
    /// statistics (tests/distributed.rs holds it to one process over the
    /// whole batch on two ranks).
    #[test]
    fn synced_batch_norm_over_one_rank_is_batch_norm() {
        tch::manual_seed(7);
        let x = (Tensor::randn([6, 4, 3, 5], (Kind::Float, Device::Cpu)) * 3.0 + 1.5)
            .set_requires_grad(true);
        let w = Tensor::randn([6, 4, 3, 5], (Kind::Float, Device::Cpu));
        let run = |sync: bool| {
            let vs = VarStore::new(Device::Cpu);
            let ctx = LayerCtx::new(false);
            if sync {
                ctx.set_sync_bn(Dist::single());
            }
            let norm = Norm::new(&vs.root(), 4, &ctx);
            let y = norm.forward_t(&x, true);
            assert!(ctx.take_failure().is_none());
            let g = Tensor::run_backward(&[(&y * &w).sum(Kind::Float)], &[&x], false, false);
            (
                y.detach(),
                g[0].shallow_clone(),
                norm.running_mean.copy(),
                norm.running_var.copy(),
            )
        };
        let (y0, g0, m0, v0) = run(false);
        let (y1, g1, m1, v1) = run(true);
        assert!(y1.allclose(&y0, 1e-5, 1e-5, false), "outputs");
        assert!(g1.allclose(&g0, 1e-4, 1e-5, false), "input gradients");
        assert!(m1.allclose(&m0, 1e-5, 1e-6, false), "running mean");
        assert!(v1.allclose(&v0, 1e-5, 1e-6, false), "running variance");
    }

    #[test]
    fn conditional_bn_is_affine_in_the_condition() {
        tch::manual_seed(6);
        let vs = VarStore::new(Device::Cpu);
        let ctx = LayerCtx::new(false);
        let bn = ConditionalBatchNorm::new(vs.root() / "bn", 4, 3, 1.0, &ctx);
        let x = Tensor::randn([5, 4, 3, 3], (Kind::Float, Device::Cpu));
        // With a zero condition, gain = 1 and bias = 0: plain batch norm.
        let y = bn.forward_t(&x, &Tensor::zeros([5, 3], (Kind::Float, Device::Cpu)), true);
        let mean = y.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        // Running stats moved towards the batch's.
        assert!(
            bn.norm
                .running_mean
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }
}
