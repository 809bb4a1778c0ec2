#!/usr/bin/env python3
"""PyTorch CPU reference for one pretraining step (forward + cross-entropy + backward + SGD-momentum update).

    bench/.venv/bin/python bench/torch_train_bench.py --threads 2 --repeat 5 --json /tmp/torch-train.json

Cases (keys shared with `cargo bench -p kestrel-host --bench train_step`):
  train_narrow_b32_64   ResNet-18 topology at half width (stem 32, stages 32-64-128-256), 100 classes,
                        batch 32 x 3 x 64 x 64: the `kestrel pretrain --preset tiny` network and batch
  train_r18_b32_64      torchvision resnet18 widths (64-128-256-512), same batch
Both use torchvision's stem (7x7/2 conv, BN, ReLU, 3x3/2/1 max-pool), BatchNorm in train mode, global average
pooling and a linear head; SGD lr 0.1, momentum 0.9, weight decay 1e-4; f32.
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    import torch.nn as nn

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class Net(nn.Module):
        def __init__(self, widths, classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.pool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], widths[0]
            for i, w in enumerate(widths):
                layers += [Basic(cin, w, 1 if i == 0 else 2), Basic(w, w, 1)]
                cin = w
            self.layers = nn.Sequential(*layers)
            self.head = nn.Linear(cin, classes)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            return self.head(self.layers(x).mean((2, 3)))

    results = {}
    for key, widths in (("train_narrow_b32_64", [32, 64, 128, 256]), ("train_r18_b32_64", [64, 128, 256, 512])):
        net = Net(widths, 100).train()
        decay = [p for n, p in net.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in net.named_parameters() if p.ndim < 2]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0}],
                              lr=0.1, momentum=0.9)
        x = torch.randn(32, 3, 64, 64)
        y = torch.randint(0, 100, (32,))
        times = []
        for i in range(a.warmup + a.repeat):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            dt = (time.perf_counter() - t0) * 1000
            if i >= a.warmup:
                times.append(dt)
        results[key] = {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
                        "repeat": a.repeat}
        print(f"{key}: {results[key]['median_ms']:.1f} ms", file=sys.stderr)
    out = {"meta": {"torch": torch.__version__, "threads": a.threads, "loadavg_start": os.getloadavg()[0]},
           "results": results}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        open(a.json, "w").write(text)


if __name__ == "__main__":
    main()
