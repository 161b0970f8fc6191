"""k-means peers for benches/kmeans/run.sh: makes the blobs, then times
scikit-learn's KMeans and faiss's Kmeans on them with the same k and number
of Lloyd iterations, printing one JSON line per run.

usage: peers.py make OUT_DIR N D K         (writes X.f32, y.i64)
       peers.py fashion OUT_DIR 60000 784 10      (Fashion-MNIST pixels / 255)
       peers.py sklearn|faiss OUT_DIR N D K ITERS SEED
"""
import json
import os
import sys
import time

import numpy as np


def load(out, n, d):
    x = np.fromfile(os.path.join(out, "X.f32"), dtype=np.float32).reshape(n, d)
    y = np.fromfile(os.path.join(out, "y.i64"), dtype=np.int64)
    return x, y


def main():
    what, out, n, d, k = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    if what == "make":
        from sklearn.datasets import make_blobs

        x, y = make_blobs(n_samples=n, n_features=d, centers=k, random_state=0)
        os.makedirs(out, exist_ok=True)
        x.astype(np.float32).tofile(os.path.join(out, "X.f32"))
        y.astype(np.int64).tofile(os.path.join(out, "y.i64"))
        return
    if what == "fashion":
        import gzip

        src = os.environ.get("FEWLABELS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
        with gzip.open(os.path.join(src, "train-images-idx3-ubyte.gz")) as f:
            x = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(-1, 784)
        with gzip.open(os.path.join(src, "train-labels-idx1-ubyte.gz")) as f:
            y = np.frombuffer(f.read()[8:], dtype=np.uint8)
        os.makedirs(out, exist_ok=True)
        (x.astype(np.float32) / 255).tofile(os.path.join(out, "X.f32"))
        y.astype(np.int64).tofile(os.path.join(out, "y.i64"))
        return
    iters, seed = int(sys.argv[6]), int(sys.argv[7])
    x, y = load(out, n, d)
    from sklearn.metrics import normalized_mutual_info_score as nmi

    if what == "sklearn":
        from sklearn.cluster import KMeans

        # tol=0: stop only at strict convergence, like the other two.
        km = KMeans(n_clusters=k, n_init=1, max_iter=iters, tol=0.0, random_state=seed, algorithm="lloyd")
        t = time.perf_counter()
        km.fit(x)
        secs = time.perf_counter() - t
        labels, it = km.labels_, int(km.n_iter_)
        extra = {"init": "k-means++ (greedy)"}
    elif what == "faiss":
        import faiss

        km = faiss.Kmeans(d, k, niter=iters, seed=seed + 1, verbose=False)
        t = time.perf_counter()
        km.train(x)
        _, a = km.index.search(x, 1)
        secs = time.perf_counter() - t
        labels, it = a.ravel(), iters
        extra = {"init": "random", "max_points_per_centroid": km.cp.max_points_per_centroid,
                 "threads": faiss.omp_get_max_threads()}
    else:
        raise SystemExit(f"unknown peer {what}")
    print(json.dumps({"what": what, "n": n, "d": d, "k": k, "iterations": it,
                      "seconds": secs, "seconds_per_iteration": secs / max(it, 1),
                      "nmi": float(nmi(y, labels)), **extra}))


if __name__ == "__main__":
    main()
