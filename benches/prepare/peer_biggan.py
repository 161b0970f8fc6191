"""Peer 1: BigGAN-PyTorch's `make_hdf5.py` image pipeline, with PIL.

BigGAN-PyTorch (ajbrock/BigGAN-PyTorch, utils.py / make_hdf5.py) loads
ImageNet with an ImageFolder whose loader is `Image.open(f).convert('RGB')`
and the transform `CenterCropLongEdge()` then `transforms.Resize(128)`
(bilinear, anti-aliased on PIL images), then stores uint8 arrays. This
script runs exactly those PIL calls in N worker processes (the DataLoader's
workers) and writes the uint8 arrays to one raw file, as make_hdf5 writes
them to HDF5. `--draft` adds PIL's JPEG draft mode (DCT scaling), the known
speed-up of this pipeline.

usage: peer_biggan.py FOLDER OUT_FILE [--workers 2] [--size 128] [--draft]
"""
import argparse
import os
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image

SIZE = 128
DRAFT = False


def load(path):
    with open(path, "rb") as f:
        img = Image.open(f)
        if DRAFT:
            # Largest DCT reduction that keeps the shorter side >= SIZE.
            s = SIZE / min(img.size)
            img.draft("RGB", (int(img.width * s) + 1, int(img.height * s) + 1))
        img = img.convert("RGB")
    # CenterCropLongEdge: crop the centred square of the shorter side.
    w, h = img.size
    side = min(w, h)
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    img = img.crop((left, top, left + side, top + side))
    # transforms.Resize(SIZE) on a square PIL image: bilinear, anti-aliased.
    img = img.resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).tobytes()


def init(size, draft):
    global SIZE, DRAFT
    SIZE, DRAFT = size, draft


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--draft", action="store_true")
    a = ap.parse_args()
    classes = sorted(d for d in os.listdir(a.folder) if os.path.isdir(os.path.join(a.folder, d)))
    paths = [os.path.join(a.folder, c, f) for c in classes for f in sorted(os.listdir(os.path.join(a.folder, c)))]
    t = time.perf_counter()
    n = 0
    with open(a.out, "wb") as out, Pool(a.workers, initializer=init, initargs=(a.size, a.draft)) as pool:
        for arr in pool.imap(load, paths, chunksize=16):
            out.write(arr)
            n += 1
    dt = time.perf_counter() - t
    print(f"{n} images in {dt:.2f} s: {n / dt:.0f} images/s")


if __name__ == "__main__":
    main()
