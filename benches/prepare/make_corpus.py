"""Builds the prepare benchmark corpus: the 20 ImageNet JPEGs that PyPI
foolbox==3.3.4 carries, each re-encoded as many ImageNet-like files.

Each output is a random crop of a photo (so no two files are identical),
resized to one of ImageNet's common sizes and saved as a baseline JPEG at a
quality between 75 and 95, in class folders `nXXXXXXXX/` (one per photo).

usage: make_corpus.py PHOTOS_DIR OUT_DIR [COUNT]   (COUNT default 6000)
"""
import os
import random
import sys

from PIL import Image

SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (640, 480), (800, 600), (500, 500)]


def args():
    """PHOTOS_DIR OUT_DIR [COUNT]: the 20 photos (RGB, sorted by name), the
    output folder, the count, and the temporary folder to fill."""
    photos_dir, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 6000
    photos = sorted(p for p in os.listdir(photos_dir) if p.startswith("imagenet_") and p.endswith(".jpg"))
    assert len(photos) >= 20, f"expected the 20 foolbox photos in {photos_dir}"
    sources = [Image.open(os.path.join(photos_dir, p)).convert("RGB") for p in photos]
    tmp = out + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    return sources, out, count, tmp


def main():
    sources, out, count, tmp = args()
    rng = random.Random(0)
    total = 0
    for i in range(count):
        c = i % len(sources)
        src = sources[c]
        w, h = rng.choice(SIZES)
        # A random crop with the target's aspect ratio, 70-100% of the photo.
        scale = rng.uniform(0.7, 1.0)
        aspect = w / h
        cw = min(src.width, int(src.height * aspect)) * scale
        ch = cw / aspect
        x = rng.uniform(0, src.width - cw)
        y = rng.uniform(0, src.height - ch)
        img = src.resize((w, h), Image.BICUBIC, box=(x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        d = os.path.join(tmp, f"n{c:08d}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"n{c:08d}_{i:06d}.JPEG")
        img.save(p, quality=rng.randint(75, 95))
        total += os.path.getsize(p)
    os.rename(tmp, out)
    print(f"{count} files, {total / count / 1024:.1f} KB average -> {out}")


if __name__ == "__main__":
    main()
