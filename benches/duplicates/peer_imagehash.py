"""The duplicates benchmark's peer: what a user would run instead of
`fewlabels duplicates`: PIL decodes the same stored PNGs (the `image` column
of the images tables `prepare` wrote), `imagehash.phash` hashes them in
`--workers` processes; then the training rows within `--max-distance` bits
of any reference row are counted with numpy (all pairs, vectorised), the
figure `fewlabels duplicates` reports as `rows_duplicating_reference`.

Prints one JSON line: images hashed, seconds hashing (decode + pHash, the
timed part the benchmark compares), seconds of the all-pairs count, and the count.
"""
import argparse
import glob
import io
import json
import os
import time
from multiprocessing import Pool

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image


def cells(folder):
    """The encoded images of a prepare folder, in table order."""
    out = []
    for f in sorted(glob.glob(os.path.join(folder, "images-*.arrow"))):
        table = pa.ipc.open_stream(f).read_all()
        out.extend(c["bytes"] for c in table.column("image").to_pylist())
    return out


def phash_hex(png):
    return int(str(imagehash.phash(Image.open(io.BytesIO(png)))), 16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("reference")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-distance", type=int, default=4)
    a = ap.parse_args()
    train, ref = cells(a.images), cells(a.reference)
    t0 = time.perf_counter()
    with Pool(a.workers) as pool:
        hashes = pool.map(phash_hex, train + ref, chunksize=256)
    hashing = time.perf_counter() - t0
    h = np.array(hashes, dtype=np.uint64)
    th, rh = h[: len(train)], h[len(train):]
    t1 = time.perf_counter()
    hit = np.zeros(len(th), dtype=bool)
    for r in rh:
        hit |= np.bitwise_count(th ^ r) <= a.max_distance
    search = time.perf_counter() - t1
    print(json.dumps({"images": len(hashes), "hash_seconds": hashing,
                      "search_seconds": search, "rows_duplicating_reference": int(hit.sum())}))


if __name__ == "__main__":
    main()
