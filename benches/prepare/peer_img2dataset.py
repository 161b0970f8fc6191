"""Peer 2: img2dataset's resizer (rom1504/img2dataset, resizer.py), OpenCV.

img2dataset decodes with `cv2.imdecode(np.frombuffer(bytes), cv2.IMREAD_UNCHANGED)`,
fixes the channels to BGR, and for `resize_mode="center_crop"` resizes the
shorter side to the target with INTER_AREA (downscaling) then takes the
centred square, and re-encodes with `cv2.imencode` (its default output is
JPEG quality 95). One OpenCV thread per process, as img2dataset sets. This
script runs that per-image code in N processes over the same files.

usage: peer_img2dataset.py FOLDER OUT_FILE [--workers 2] [--size 128]
"""
import argparse
import os
import time
from multiprocessing import Pool

import cv2
import numpy as np

SIZE = 128


def resize(path):
    with open(path, "rb") as f:
        buf = f.read()
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return b""
    if len(img.shape) == 2 or img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    h, w = img.shape[:2]
    # smallest_max_size: shorter side -> SIZE; INTER_AREA when shrinking.
    s = SIZE / min(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LANCZOS4
    nh, nw = max(SIZE, round(h * s)), max(SIZE, round(w * s))
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
    img = img[top:top + SIZE, left:left + SIZE]
    ok, enc = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), 95])
    return enc.tobytes() if ok else b""


def init(size):
    global SIZE
    SIZE = size
    cv2.setNumThreads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args()
    classes = sorted(d for d in os.listdir(a.folder) if os.path.isdir(os.path.join(a.folder, d)))
    paths = [os.path.join(a.folder, c, f) for c in classes for f in sorted(os.listdir(os.path.join(a.folder, c)))]
    t = time.perf_counter()
    n = 0
    with open(a.out, "wb") as out, Pool(a.workers, initializer=init, initargs=(a.size,)) as pool:
        for enc in pool.imap(resize, paths, chunksize=16):
            out.write(enc)
            n += 1
    dt = time.perf_counter() - t
    print(f"{n} images in {dt:.2f} s: {n / dt:.0f} images/s")


if __name__ == "__main__":
    main()
