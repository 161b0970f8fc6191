"""The peer of examples/dist_allreduce.rs: PyTorch's own c10d (Gloo on the CPU,
NCCL on a GPU) averaging the gradients of the same BigGAN (benches/gan/biggan_torch.py,
same parameter count) in DDP's way: 25 MB flat buckets of the gradients in name
order, all_reduce, divide by the world size, copy back. Launch with torchrun:

    torchrun --standalone --nproc-per-node 2 allreduce_torch.py RES CH REPS [cpu|cuda]
"""
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gan"))
import biggan_torch as bt  # noqa: E402

BUCKET_BYTES = 25 << 20


def main():
    res, ch, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    cuda = len(sys.argv) > 4 and sys.argv[4] == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    attention = [64] if res >= 64 else []
    g = bt.Generator(res, ch, 1000, attention).to(dev)
    d = bt.Discriminator(res, ch, 1000, attention).to(dev)
    params = sum(p.numel() for m in (g, d) for p in m.parameters())
    for m in (g, d):
        for p in m.parameters():
            (p.sum() * (rank + 1.0)).backward()

    def average(module):
        grads = [p.grad for _, p in sorted(module.named_parameters()) if p.grad is not None]
        buckets, cur, size = [], [], 0
        for t in grads:
            n = t.numel() * t.element_size()
            if cur and size + n > BUCKET_BYTES:
                buckets.append(cur)
                cur, size = [], 0
            cur.append(t)
            size += n
        if cur:
            buckets.append(cur)
        with torch.no_grad():
            for b in buckets:
                flat = torch.cat([t.reshape(-1) for t in b])
                dist.all_reduce(flat)
                flat /= world
                off = 0
                for t in b:
                    t.copy_(flat[off:off + t.numel()].view_as(t))
                    off += t.numel()

    secs = []
    for rep in range(reps + 1):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        average(g)
        average(d)
        if cuda:
            torch.cuda.synchronize()
        if rep > 0:
            secs.append(time.perf_counter() - t0)
    if rank == 0:
        print(json.dumps({"tool": "pytorch", "world": world, "backend": "nccl" if cuda else "gloo",
                          "params": params, "mbytes": params * 4 / 1e6, "best_s": min(secs),
                          "mean_s": sum(secs) / len(secs), "reps": reps}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
