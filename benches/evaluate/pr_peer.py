"""The peer for the cost of evaluate's precision and recall: the improved
precision/recall of Kynkaanniemi et al. (2019) computed as StyleGAN2-ADA's
`metrics/precision_recall.py` does it (torch.cdist over row and column
batches of 10,000, kthvalue(k + 1) for the radii, `any` for the probes;
radii kept in float32 here, where StyleGAN2-ADA stores them in float16 to
save GPU memory), on the feature rows that fewlabels' evaluate cached for
a table (the `kid_features` tensor of its statistics file).
Usage: pr_peer.py STATS.safetensors [K] [THREADS]; prints JSON."""
import json, struct, sys, time

import numpy as np
import torch


def read_tensor(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header[name]
        start, end = meta["data_offsets"]
        f.seek(8 + n + start)
        data = f.read(end - start)
    dtype = {"F32": np.float32, "F64": np.float64}[meta["dtype"]]
    return torch.from_numpy(np.frombuffer(data, dtype=dtype).reshape(meta["shape"]).copy())


def distances(rows, cols, col_batch=10000):
    return torch.cat([torch.cdist(rows.unsqueeze(0), c.unsqueeze(0))[0] for c in cols.split(col_batch)], 1)


def coverage(manifold, probes, k, row_batch=10000):
    kth = torch.cat([distances(b, manifold).kthvalue(k + 1).values for b in manifold.split(row_batch)])
    inside = torch.cat([(distances(b, manifold) <= kth.unsqueeze(0)).any(1) for b in probes.split(row_batch)])
    return inside.float().mean().item()


def main():
    path = sys.argv[1]
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(threads)
    feats = read_tensor(path, "kid_features").float()
    real = fake = feats
    t0 = time.perf_counter()
    with torch.no_grad():
        precision, recall = coverage(real, fake, k), coverage(fake, real, k)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": feats.shape[0], "dim": feats.shape[1], "k": k, "threads": threads,
                      "precision": precision, "recall": recall, "seconds": seconds}))


if __name__ == "__main__":
    main()
