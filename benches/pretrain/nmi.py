"""k-means (k = 10) NMI of features against the true labels, with
scikit-learn (used while the Rust k-means of the datapath branch is not
merged here).

    python nmi.py IMAGES_DIR pixels            # raw pixels of the images table
    python nmi.py IMAGES_DIR FEATURES_DIR      # features-*.arrow of `embed`
"""
import glob
import io
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score


def table(folder, name, columns):
    files = sorted(glob.glob(os.path.join(folder, f"{name}-*.arrow")))
    return pa.concat_tables(pa.ipc.open_file(f).read_all().select(columns) for f in files)


def main():
    images_dir, what = sys.argv[1], sys.argv[2]
    imgs = table(images_dir, "images", ["id", "label", "image"] if what == "pixels" else ["id", "label"])
    truth = dict(zip(imgs["id"].to_pylist(), imgs["label"].to_pylist()))
    if what == "pixels":
        ids = imgs["id"].to_numpy()
        x = np.stack([np.asarray(Image.open(io.BytesIO(r["bytes"])), dtype=np.float32).ravel() / 255.0
                      for r in imgs["image"].to_pylist()])
    else:
        f = table(what, "features", ["id", "feature"])
        ids = f["id"].to_numpy()
        x = np.stack(f["feature"].to_numpy(zero_copy_only=False)).astype(np.float32)
    y = np.array([truth[i] for i in ids])
    t0 = time.perf_counter()
    nmis = []
    for seed in range(3):
        pred = KMeans(10, n_init=1, random_state=seed).fit_predict(x)
        nmis.append(normalized_mutual_info_score(y, pred))
    print(json.dumps({"features": what, "n": int(len(y)), "dim": int(x.shape[1]), "nmi_seeds": nmis,
                      "nmi_mean": float(np.mean(nmis)), "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
