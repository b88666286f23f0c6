#!/usr/bin/python3
"""Writes the small TorchScript models the partitioner tests use into OUT_DIR.

    /usr/bin/python3 tests/partitioner/make_test_models.py OUT_DIR

tiny_cnn.pt / tiny_cnn_traced.pt: conv-bn-relu stem, a residual block, a ReLU6 layer, pooling and
a linear classifier (input 1x3x32x32). branchy.pt: an inception-like block whose inside can only
be cut where 2 or 3 tensors cross. loop.pt: layers inside a data-dependent loop (no cut inside).
tuple_out.pt: returns two tensors. upconv.pt: a transposed convolution and a 1-d pooling-free
tail (ops the optimized engine leaves on LibTorch's default path; input 1x3x16x16).
tiny_cnn_without_block.pt: tiny_cnn.pt with its residual block replaced by the identity (the same
weights otherwise): what skipping that block must give.
padded.pt: explicit zero padding before a strided depthwise convolution, as in MobileNetV1 with
TensorFlow padding (LibTorch 1.13's oneDNN path computes it wrong; input 1x3x32x32).
"""

import copy
import os
import sys

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + x)


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Residual(8)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.down(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                nn.ReLU())
        self.b3 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(8, 4, 1),
                                nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(12, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)
        return self.head(x)


class Loop(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        for _ in range(x.size(0)):
            x = torch.relu(self.conv(x))
            x = self.conv(x) + 1.0
        return x


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y, torch.relu(y)


class UpConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 4, 2, stride=2), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(4, 6, 1), nn.Sigmoid())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.mix(self.up(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6())
        self.b = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 8, 3, stride=2, groups=8),
                               nn.ReLU6())
        self.c = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.c(self.b(self.a(x)))
        return self.fc(x.mean(dim=(2, 3)))


def randomize_bn(model):
    """Non-trivial batch-norm statistics, so that folding them changes the weights."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def save(module, path):
    tmp = path + ".tmp%d" % os.getpid()
    module.save(tmp)
    os.replace(tmp, path)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    tiny = TinyCnn()
    randomize_bn(tiny)
    tiny.eval()
    save(torch.jit.script(tiny), os.path.join(out, "tiny_cnn.pt"))
    with torch.no_grad():
        save(torch.jit.trace(tiny, torch.rand(1, 3, 32, 32)), os.path.join(out, "tiny_cnn_traced.pt"))
    without = copy.deepcopy(tiny)
    without.block = nn.Identity()
    save(torch.jit.script(without.eval()), os.path.join(out, "tiny_cnn_without_block.pt"))
    save(torch.jit.script(Branchy().eval()), os.path.join(out, "branchy.pt"))
    save(torch.jit.script(Loop().eval()), os.path.join(out, "loop.pt"))
    save(torch.jit.script(TupleOut().eval()), os.path.join(out, "tuple_out.pt"))
    save(torch.jit.script(UpConv().eval()), os.path.join(out, "upconv.pt"))
    save(torch.jit.script(Padded().eval()), os.path.join(out, "padded.pt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
