"""The BigGAN of `src/models/biggan.rs` in PyTorch, layer for layer (hierarchical z,
shared embedding, conditional BN, projection D, self-attention, spectral norm with one
power iteration, orthogonal init) in both its variants (`--arch`: BigGAN-PyTorch's
layout, or compare_gan's: cBN gain gamma(c) instead of 1 + gamma(c), zero-insertion
unpool instead of nearest upsampling, D shortcuts only where the channels change, no
attention biases), and the same update as `fewlabels bench-gan`: `--d-steps` D steps
(real batch and fresh fakes through D, hinge loss, backward, Adam), then the G step (z
and labels, G forward in train mode, D on the fakes, backward, Adam, EMA). Prints one
JSON line with the update's seconds and G-step / D-step images/s. Used by
benches/gan/gpu.sh, run.sh and cpu128.sh to compare with our binary.

    python biggan_torch.py --resolution 128 --ch 96 --batch 256 [--bf16] --device cuda
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def normalize(v, eps=1e-12):
    return v / v.norm().clamp_min(eps)


class SN(nn.Module):
    """W / sigma(W), one power-iteration step per training forward (as ours)."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.orthogonal_(self.weight)
        self.register_buffer("u", normalize(torch.randn(shape[0])))

    def normalized(self):
        w = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = normalize(w.t().mv(self.u))
            u = normalize(w.mv(v))
            if self.training:
                self.u.copy_(u)
        sigma = torch.dot(u, w.mv(v))
        return self.weight / sigma


class SNConv(nn.Module):
    def __init__(self, cin, cout, k, bias=True):
        super().__init__()
        self.sn = SN((cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.pad = k // 2

    def forward(self, x):
        return F.conv2d(x, self.sn.normalized(), self.bias, padding=self.pad)


class SNLinear(nn.Module):
    def __init__(self, cin, cout, bias=True):
        super().__init__()
        self.sn = SN((cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def forward(self, x):
        return F.linear(x, self.sn.normalized(), self.bias)


ARCH = "biggan-pytorch"


def upsample(x):
    if ARCH == "biggan-pytorch":
        return F.interpolate(x, scale_factor=2)
    # compare_gan's unpool: each value at the top-left of its 2x2 block, zeros elsewhere.
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, 2 * h, 2 * w)
    out[:, :, ::2, ::2] = x
    return out


class CBN(nn.Module):
    def __init__(self, c, cond):
        super().__init__()
        self.offset = 1.0 if ARCH == "biggan-pytorch" else 0.0
        self.gain = SNLinear(cond, c, bias=False)
        self.bias = SNLinear(cond, c, bias=False)
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x, y):
        g = self.offset + self.gain(y).float()
        b = self.bias(y).float()
        out = F.batch_norm(x.float(), self.running_mean, self.running_var, None, None,
                           self.training, 0.1, 1e-5)
        return out * g[:, :, None, None] + b[:, :, None, None]


class BN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        out = F.batch_norm(x.float(), self.running_mean, self.running_var, None, None,
                           self.training, 0.1, 1e-5)
        return out * self.gain[None, :, None, None] + self.bias[None, :, None, None]


class Attention(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.ch = ch
        c8, c2 = max(ch // 8, 1), max(ch // 2, 1)
        bias = ARCH == "biggan-pytorch"
        self.theta, self.phi = SNConv(ch, c8, 1, bias), SNConv(ch, c8, 1, bias)
        self.g, self.o = SNConv(ch, c2, 1, bias), SNConv(c2, ch, 1, bias)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        n, _, h, w = x.shape
        c8, c2 = max(self.ch // 8, 1), max(self.ch // 2, 1)
        theta = self.theta(x).view(n, c8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(n, c8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(n, c2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi).float(), -1).to(theta.dtype)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(n, c2, h, w))
        return x + self.gamma * o


def g_arch(res, ch):
    i, o = {128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]), 64: ([16, 16, 8, 4], [16, 8, 4, 2])}.get(
        res, ([4, 4, 4], [4, 4, 4]))
    return [c * ch for c in i], [c * ch for c in o], [8 << k for k in range(len(i))]


def d_arch(res, ch):
    if res == 128:
        i, o, down = [1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [1, 1, 1, 1, 1, 0]
    elif res == 64 and ARCH == "biggan-pytorch":
        i, o, down = [1, 2, 4, 8], [1, 2, 4, 8, 16], [1, 1, 1, 1, 0]
    elif res == 64:
        i, o, down = [2, 4, 8, 16], [2, 4, 8, 16, 16], [1, 1, 1, 1, 0]
    elif ARCH == "biggan-pytorch":
        i, o, down = [4, 4, 4], [4, 4, 4, 4], [1, 1, 0, 0]
    else:
        i, o, down = [2, 2, 2], [2, 2, 2, 2], [1, 1, 1, 0]
    r, out_res = res, []
    for d in down:
        r = r // 2 if d else r
        out_res.append(r)
    return [3] + [c * ch for c in i], [c * ch for c in o], out_res, [bool(d) for d in down]


class GBlock(nn.Module):
    def __init__(self, cin, cout, cond):
        super().__init__()
        self.bn1, self.conv1 = CBN(cin, cond), SNConv(cin, cout, 3)
        self.bn2, self.conv2 = CBN(cout, cond), SNConv(cout, cout, 3)
        self.conv_sc = SNConv(cin, cout, 1)

    def forward(self, x, y):
        h = upsample(F.relu(self.bn1(x, y)))
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h, y)))
        return h + self.conv_sc(upsample(x)).to(h.dtype)


class Generator(nn.Module):
    def __init__(self, res, ch, n_classes, attention, z_dim=120, shared_dim=128):
        super().__init__()
        ins, outs, resl = g_arch(res, ch)
        self.chunk = z_dim // (len(ins) + 1)
        self.z_used = self.chunk * (len(ins) + 1)
        self.shared = nn.Embedding(n_classes, shared_dim)
        nn.init.orthogonal_(self.shared.weight)
        self.linear = SNLinear(self.chunk, ins[0] * 16)
        self.blocks = nn.ModuleList(GBlock(a, b, self.chunk + shared_dim) for a, b in zip(ins, outs))
        self.attn = nn.ModuleList(Attention(b) if r in attention else nn.Identity()
                                  for b, r in zip(outs, resl))
        self.out_bn, self.out_conv = BN(outs[-1]), SNConv(outs[-1], 3, 3)

    def forward(self, z, y):
        zs = torch.split(z[:, :self.z_used], self.chunk, 1)
        e = self.shared(y)
        h = self.linear(zs[0]).view(z.shape[0], -1, 4, 4)
        for k, (b, a) in enumerate(zip(self.blocks, self.attn)):
            h = a(b(h, torch.cat([e, zs[k + 1]], 1)))
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))).float())


class DBlock(nn.Module):
    def __init__(self, cin, cout, pre, down):
        super().__init__()
        self.conv1, self.conv2 = SNConv(cin, cout, 3), SNConv(cout, cout, 3)
        shortcut = cin != cout or (down and ARCH == "biggan-pytorch")
        self.conv_sc = SNConv(cin, cout, 1) if shortcut else None
        # compare_gan adds nothing back where a block keeps its channels.
        self.residual = shortcut or ARCH == "biggan-pytorch"
        self.pre, self.down = pre, down

    def forward(self, x):
        h = F.relu(x) if self.pre else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if not self.residual:
            return h
        sc = x
        if self.pre:
            sc = self.conv_sc(sc) if self.conv_sc is not None else sc
            sc = F.avg_pool2d(sc, 2) if self.down else sc
        else:
            sc = F.avg_pool2d(sc, 2) if self.down else sc
            sc = self.conv_sc(sc) if self.conv_sc is not None else sc
        return h + sc.to(h.dtype)


class Discriminator(nn.Module):
    def __init__(self, res, ch, n_classes, attention):
        super().__init__()
        ins, outs, resl, down = d_arch(res, ch)
        self.blocks = nn.ModuleList(DBlock(ins[k], outs[k], k > 0, down[k]) for k in range(len(outs)))
        self.attn = nn.ModuleList(
            Attention(outs[k]) if (down[k] and resl[k] in attention and resl.index(resl[k]) == k)
            else nn.Identity() for k in range(len(outs)))
        self.linear = SNLinear(outs[-1], 1)
        self.embed = SN((n_classes, outs[-1]))

    def forward(self, x, y):
        h = x
        for b, a in zip(self.blocks, self.attn):
            h = a(b(h))
        h = torch.sum(F.relu(h).float(), [2, 3])
        out = self.linear(h).float().squeeze(1)
        return out + (F.embedding(y, self.embed.normalized()).float() * h).sum(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--ch", type=int, default=96)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--arch", choices=["biggan-pytorch", "compare-gan"], default="biggan-pytorch")
    p.add_argument("--d-steps", type=int, default=2)
    a = p.parse_args()
    global ARCH
    ARCH = a.arch
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    attention = [64] if a.resolution >= 64 else []
    G = Generator(a.resolution, a.ch, a.classes, attention).to(dev).train()
    D = Discriminator(a.resolution, a.ch, a.classes, attention).to(dev).train()
    G_ema = Generator(a.resolution, a.ch, a.classes, attention).to(dev)
    G_ema.load_state_dict(G.state_dict())
    # Adam as in BigGAN; PyTorch's default implementation on the device (foreach on CUDA).
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.999), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=5e-4, betas=(0.0, 0.999), eps=1e-8)
    ema_pairs = [(pe, pg) for pe, pg in zip(G_ema.parameters(), G.parameters())]
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.bf16)
    b, r = a.batch, a.resolution

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    tg = td = 0.0
    for step in range(a.warmup + a.steps):
        real = torch.rand(b, 3, r, r, device=dev) * 2 - 1
        yr = torch.arange(b, device=dev) % a.classes
        sync()
        t0 = time.perf_counter()
        for _ in range(a.d_steps):
            opt_d.zero_grad(set_to_none=False)
            z = torch.randn(b, 120, device=dev)
            yf = torch.randint(a.classes, (b,), device=dev)
            with amp:
                with torch.no_grad():
                    fake = G(z, yf)
                out = D(torch.cat([real, fake]), torch.cat([yr, yf]))
                loss = F.relu(1 - out[:b]).mean() + F.relu(1 + out[b:]).mean()
            loss.backward()
            opt_d.step()
        sync()
        t1 = time.perf_counter()
        opt_g.zero_grad(set_to_none=False)
        z = torch.randn(b, 120, device=dev)
        yf = torch.randint(a.classes, (b,), device=dev)
        with amp:
            loss = -D(G(z, yf), yf).mean()
        loss.backward()
        opt_g.step()
        with torch.no_grad():
            for pe, pg in ema_pairs:
                pe.mul_(0.9999).add_(pg, alpha=1 - 0.9999)
        sync()
        t2 = time.perf_counter()
        if step >= a.warmup:
            td += t1 - t0
            tg += t2 - t1
    n = max(a.steps, 1)
    ds = max(a.d_steps, 1)
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "arch": a.arch, "resolution": r,
        "ch": a.ch, "batch_size": b, "bf16": a.bf16, "device": str(dev),
        "threads": torch.get_num_threads(),
        "g_params": sum(p.numel() for p in G.parameters()),
        "d_params": sum(p.numel() for p in D.parameters()),
        "d_steps": a.d_steps, "update_seconds": (td + tg) / n,
        "g_step_seconds": tg / n, "g_step_images_per_s": b * n / tg,
        "d_step_seconds": td / n / ds, "d_step_images_per_s": b * n * ds / td,
    }))


if __name__ == "__main__":
    main()
