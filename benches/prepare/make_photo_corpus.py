"""Builds the second prepare benchmark corpus: the 20 foolbox ImageNet photos
(PyPI foolbox==3.3.4), each re-encoded whole at several sizes and qualities,
as the JPEGs of a photo collection come: no crop, the photo resized (aspect
changed) to one of eight sizes between 256x192 and 1024x768 in either
orientation, JPEG quality 65-95, with the encoder settings real collections
mix: 4:2:0 chroma mostly, some 4:4:4 and 4:2:2, about 1 in 8 progressive,
about 1 in 50 grayscale. Unlike make_corpus.py (random crops at ImageNet's
common sizes), the files here span small to large, so the DCT scale libjpeg-
turbo picks varies from 1/2 to 1/8 (and the peers' draft mode likewise).

usage: make_photo_corpus.py PHOTOS_DIR OUT_DIR [COUNT]   (COUNT default 6000)
"""
import os
import random

from PIL import Image

import make_corpus

SIZES = [(256, 192), (320, 240), (400, 300), (500, 375), (500, 400), (640, 480), (800, 600), (1024, 768)]
SUBSAMPLING = [(0.75, 2), (0.15, 0), (0.10, 1)]  # (share, PIL's code: 2 = 4:2:0, 0 = 4:4:4, 1 = 4:2:2)


def pick(rng, table):
    r = rng.random()
    for share, value in table:
        if r < share:
            return value
        r -= share
    return table[-1][1]


def main():
    sources, out, count, tmp = make_corpus.args()
    rng = random.Random(1)
    total = 0
    for i in range(count):
        c = i % len(sources)
        w, h = rng.choice(SIZES)
        if rng.random() < 0.5:
            w, h = h, w
        img = sources[c].resize((w, h), Image.LANCZOS)
        if rng.random() < 0.02:
            img = img.convert("L")
        d = os.path.join(tmp, f"p{c:08d}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"p{c:08d}_{i:06d}.jpg")
        kw = {"quality": rng.randint(65, 95), "progressive": rng.random() < 0.125}
        if img.mode == "RGB":
            kw["subsampling"] = pick(rng, SUBSAMPLING)
        img.save(p, **kw)
        total += os.path.getsize(p)
    os.rename(tmp, out)
    print(f"{count} files, {total / count / 1024:.1f} KB average -> {out}")


if __name__ == "__main__":
    main()
