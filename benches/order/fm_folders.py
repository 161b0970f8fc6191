# Fashion-MNIST train as class folders of PNGs: a listing sorted by class.
import gzip, os, sys
import numpy as np
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
names = ["T-shirt_top","Trouser","Pullover","Dress","Coat","Sandal","Shirt","Sneaker","Bag","Ankle_boot"]
px = np.frombuffer(gzip.open(f"{src}/train-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(-1, 28, 28)
lab = np.frombuffer(gzip.open(f"{src}/train-labels-idx1-ubyte.gz").read()[8:], np.uint8)
for i, (img, l) in enumerate(zip(px, lab)):
    d = os.path.join(out, f"{l}_{names[l]}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img).save(os.path.join(d, f"{i:05d}.png"))
