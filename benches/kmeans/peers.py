"""k-means side by side for benches/kmeans/run.sh (issue 15). Every contender
is timed from reading the same `features/` Arrow files to having every
point's label, in its own process, and prints one JSON line:

  peers.py make OUT N D K                      blobs as X.f32 / y.i64 (sklearn make_blobs)
  peers.py faiss FEATURES IMAGES K SEED        faiss.Kmeans(d, k, niter=25), then assign all
  peers.py sklearn FEATURES IMAGES K SEED      sklearn KMeans(k) with its defaults
  peers.py stage BIN FEATURES IMAGES K SEED OUT [ARGS...]
                                               the real `fewlabels pseudo-label` command,
                                               wall clock of the whole process
  peers.py compare LINES.jsonl                 the better of each contender's runs, and ratios
  peers.py cache warm|cold FEATURES            before a contender: read the features files into
                                               the page cache, or drop them from it

FEATURES and IMAGES are stage folders (`embed` and `prepare` outputs); the
true labels for the NMI come from IMAGES, read after the clock stops.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def read_features(features):
    """The feature matrix as a user would read it: pyarrow, memory-mapped."""
    import pyarrow as pa

    chunks = []
    for f in sorted(glob.glob(os.path.join(features, "features-*.arrow"))):
        table = pa.ipc.open_stream(pa.memory_map(f)).read_all()
        col = table.column("feature")
        d = col.type.list_size
        chunks += [c.flatten().to_numpy(zero_copy_only=True).reshape(-1, d) for c in col.chunks]
    # faiss and scikit-learn need one C-contiguous float32 matrix.
    return np.ascontiguousarray(np.concatenate(chunks))


def truth(images):
    import pyarrow as pa

    labels = []
    for f in sorted(glob.glob(os.path.join(images, "images-*.arrow"))):
        labels.append(pa.ipc.open_stream(pa.memory_map(f)).read_all().column("label").to_numpy())
    return np.concatenate(labels)


def nmi(images, labels):
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(truth(images), labels))


def main():
    what = sys.argv[1]
    if what == "make":
        from sklearn.datasets import make_blobs

        out, n, d, k = sys.argv[2], *map(int, sys.argv[3:6])
        x, y = make_blobs(n_samples=n, n_features=d, centers=k, random_state=0)
        os.makedirs(out, exist_ok=True)
        x.astype(np.float32).tofile(os.path.join(out, "X.f32"))
        y.astype(np.int64).tofile(os.path.join(out, "y.i64"))
        return
    if what == "compare":
        return compare(sys.argv[2])
    if what == "cache":
        return cache(sys.argv[2], sys.argv[3])
    if what == "stage":
        binary, features, images, k, seed, out = sys.argv[2:8]
        shutil.rmtree(out, ignore_errors=True)
        cmd = [binary, "--json", "pseudo-label", "--method", "kmeans", "--features", features,
               "--images", images, "--output", out, "--clusters", k, "--seed", seed, *sys.argv[8:]]
        t = time.perf_counter()
        p = subprocess.run(cmd, check=True, capture_output=True, text=True)
        secs = time.perf_counter() - t
        j = json.loads(p.stdout.strip().splitlines()[-1])
        c = j["counts"]
        phases = json.load(open(os.path.join(out, "_stage.json")))["timings"]["phases"]
        print(json.dumps({"what": "fewlabels pseudo-label" + ("".join(" " + a for a in sys.argv[8:])),
                          "k": int(k), "seed": int(seed), "seconds": secs,
                          "stage_seconds": j["seconds"], "phases": phases,
                          "iterations": c["kmeans_iterations"], "train_points": c["kmeans_train_points"],
                          "init": c["kmeans_init"], "nmi": c.get("quality_nmi")}))
        return
    features, images, k, seed = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    if what == "faiss":
        import faiss

        t = time.perf_counter()
        x = read_features(features)
        read = time.perf_counter() - t
        km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed + 1)
        km.train(x)
        _, a = km.index.search(x, 1)
        secs = time.perf_counter() - t
        labels = a.ravel()
        extra = {"init": "random", "niter": 25, "max_points_per_centroid": km.cp.max_points_per_centroid,
                 "threads": faiss.omp_get_max_threads()}
    elif what == "sklearn":
        from sklearn.cluster import KMeans

        t = time.perf_counter()
        x = read_features(features)
        read = time.perf_counter() - t
        km = KMeans(n_clusters=k, random_state=seed).fit(x)
        secs = time.perf_counter() - t
        labels = km.labels_
        extra = {"init": "k-means++ (greedy)", "iterations": int(km.n_iter_)}
    else:
        raise SystemExit(f"unknown peer {what}")
    print(json.dumps({"what": what, "n": x.shape[0], "d": x.shape[1], "k": k, "seed": seed,
                      "seconds": secs, "read_seconds": read, "nmi": nmi(images, labels), **extra}))


def cache(how, features):
    """Every contender starts from the same page cache: this machine's
    kernel reclaims idle file pages within minutes, so without this the
    first contender of a round would pay for the disk and the next not."""
    for f in sorted(glob.glob(os.path.join(features, "features-*.arrow"))):
        if how == "warm":
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        elif how == "cold":
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        else:
            raise SystemExit(f"unknown cache state {how}")


def compare(path):
    """The best (lowest) time of each contender, its NMI, and time / faiss's."""
    best = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        j = json.loads(line)
        key = (j.get("set", ""), j["what"])
        if key not in best or j["seconds"] < best[key]["seconds"]:
            best[key] = j
    for (s, what), j in sorted(best.items()):
        base = best.get((s, "faiss"))
        ratio = f"{j['seconds'] / base['seconds']:.2f}x faiss" if base else ""
        nmi = f"NMI {j['nmi']:.4f}" if j.get("nmi") is not None else ""
        print(f"{s:>14} {what:<44} {j['seconds']:8.2f} s  {nmi:<11} {ratio}")


if __name__ == "__main__":
    main()
