"""The Inception's forward pass alone, from Python: the same TorchScript
file, the same threads and batch size as `fewlabels evaluate`, on fixed
preprocessed input. Prints images/s as JSON."""
import json
import sys
import time

import torch

path, threads, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
net = torch.jit.load(path, map_location="cpu").eval()
x = torch.rand(32, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 1.99 - 1
with torch.inference_mode():
    net(x)  # warm-up (TorchScript profiling run)
    t0 = time.perf_counter()
    for _ in range(batches):
        net(x)
    secs = time.perf_counter() - t0
print(json.dumps({"threads": threads, "images": 32 * batches, "seconds": secs,
                  "images_per_s": 32 * batches / secs}))
