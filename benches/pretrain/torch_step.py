"""The PyTorch peer of `examples/pretrain_bench.rs step`: the same small
ResNet (basic blocks [1,1,1,1] x [32,64,128,256], 3x3 stem, rotation head +
10-class head), the same step (4 rotations of BATCH 32x32 images + LABELLED
unrotated ones, one forward, rotation CE + class CE, backward, SGD momentum
0.9, weight decay 5e-4), synthetic data.

    python torch_step.py THREADS STEPS BATCH LABELLED [resnet50 RES CLASSES]

With `resnet50 RES CLASSES`: torchvision's ResNet-50 (the S2L extractor of
the ImageNet routes, as src/models/resnet.rs builds it) at RES x RES with a
CLASSES-way class head.
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)


class Net(nn.Module):
    def __init__(self, widths=(32, 64, 128, 256), stem=32, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, c = [], stem
        for i, w in enumerate(widths):
            layers.append(Block(c, w, 1 if i == 0 else 2))
            c = w
        self.layers = nn.Sequential(*layers)
        self.rotation_head = nn.Linear(c, 4)
        self.class_head = nn.Linear(c, classes)

    def forward(self, x):
        h = self.layers(F.relu(self.bn1(self.conv1(x)))).mean((2, 3))
        return self.rotation_head(h), self.class_head(h)


class ResNet50(nn.Module):
    def __init__(self, classes):
        super().__init__()
        import torchvision
        self.body = torchvision.models.resnet50()
        self.body.fc = nn.Identity()
        self.rotation_head = nn.Linear(2048, 4)
        self.class_head = nn.Linear(2048, classes)

    def forward(self, x):
        h = self.body(x)
        return self.rotation_head(h), self.class_head(h)


def main():
    threads, steps, batch, labelled = (int(a) for a in sys.argv[1:5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if len(sys.argv) > 5 and sys.argv[5] == "resnet50":
        res, classes = int(sys.argv[6]), int(sys.argv[7])
        net = ResNet50(classes)
    else:
        res, classes = 32, 10
        net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, res, res) * 2 - 1
    xl = torch.rand(labelled, 3, res, res) * 2 - 1
    yl = torch.randint(0, classes, (labelled,))

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            x4 = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
            t = torch.arange(4).repeat_interleave(batch)
            rot, cls = net(torch.cat([x4, xl]))
            loss = F.cross_entropy(rot[: 4 * batch], t) + F.cross_entropy(cls[4 * batch:], yl)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
        return n * (4 * batch + labelled) / (time.perf_counter() - t0)

    run(1 if res > 32 else 3)
    rate = run(steps)
    print(json.dumps({"impl": "pytorch", "threads": threads, "steps": steps, "batch": batch,
                      "labelled": labelled, "resolution": res, "images_per_s": rate}))


if __name__ == "__main__":
    main()
