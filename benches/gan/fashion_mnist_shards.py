"""Stand-in `train/` shards of Fashion-MNIST at 32x32 for the s3gan demo run,
written while the real `prepare -> sample-labels -> shard` stages were not
merged into the gan branch. Same table as `fewlabels shard` writes (schema
`train`, class names in the metadata): all 60,000 training images padded
28 -> 32 as RGB PNG; 10% of the labels of EACH class kept (drawn with the
seed), the rest null. The manifest's checksums are sha256 (the real stage
uses blake3); nothing downstream re-hashes them.

    python fashion_mnist_shards.py /usr/share/datasets/fashion-mnist OUT_DIR [--fraction 0.1]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import time

import numpy as np
import pyarrow as pa
from PIL import Image

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("fashion_dir")
    p.add_argument("out")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows-per-shard", type=int, default=10000)
    a = p.parse_args()
    with gzip.open(os.path.join(a.fashion_dir, "train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(a.fashion_dir, "train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    rng = np.random.default_rng(a.seed)
    keep = np.zeros(len(labels), bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        keep[rng.choice(idx, int(round(len(idx) * a.fraction)), replace=False)] = True
    order = rng.permutation(len(labels))  # shuffled, as the shard stage writes
    os.makedirs(a.out, exist_ok=True)
    features = {"id": {"dtype": "uint64", "_type": "Value"}, "image": {"_type": "Image"},
                "label": {"names": CLASSES, "_type": "ClassLabel"},
                "label_source": {"dtype": "string", "_type": "Value"}}
    schema = pa.schema([
        pa.field("id", pa.uint64(), False),
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())]), False),
        pa.field("label", pa.int64(), True),
        pa.field("label_source", pa.string(), False),
    ], metadata={"huggingface": json.dumps({"info": {"features": features}}),
                 "fewlabels.class_names": json.dumps(CLASSES)})
    outputs = []
    t0 = time.time()
    for s, start in enumerate(range(0, len(order), a.rows_per_shard)):
        ids = order[start:start + a.rows_per_shard]
        pngs = []
        for i in ids:
            img = np.zeros((32, 32), np.uint8)
            img[2:30, 2:30] = images[i]
            buf = io.BytesIO()
            Image.fromarray(img).convert("RGB").save(buf, format="PNG")
            pngs.append(buf.getvalue())
        table = pa.table({
            "id": pa.array(ids.astype(np.uint64)),
            "image": pa.array([{"bytes": b, "path": None} for b in pngs], schema.field("image").type),
            "label": pa.array([int(labels[i]) if keep[i] else None for i in ids], pa.int64()),
            "label_source": pa.array(["sample-labels" if keep[i] else "none" for i in ids]),
        }, schema=schema)
        name = f"train-{s:05d}.arrow"
        path = os.path.join(a.out, name)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            w.write_table(table, max_chunksize=1024)
        data = open(path, "rb").read()
        outputs.append({"path": name, "rows": len(ids), "bytes": len(data),
                        "checksum": "sha256:" + hashlib.sha256(data).hexdigest()})
    manifest = {"stage": "shard", "tool_version": "0.1.0",
                "params": {"stand-in": "benches/gan/fashion_mnist_shards.py", "fraction": a.fraction,
                           "seed": a.seed},
                "input_fingerprint": "", "outputs": outputs,
                "counts": {"rows": int(len(order)), "labelled": int(keep.sum())},
                "timings": {"started_unix": t0, "seconds": time.time() - t0}, "complete": True}
    with open(os.path.join(a.out, "_stage.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    print(f"{len(order)} rows, {int(keep.sum())} labelled -> {a.out}")


if __name__ == "__main__":
    main()
