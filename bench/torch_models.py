#!/usr/bin/env python3
"""PyTorch twins of Tessera's U-Net, FCN-8s and DeepLabv3+ (same layers, widths and weight counts), and a timer of
one training step (forward, ce-dice loss, backward, Adam) for bench/train-step.mjs.

    python3 bench/torch_models.py --model unet --batch 4 --tile 256 --warmup 2 --steps 3 \
        --expect-total 7771554 --expect-trainable 7765666

Weight counts follow tfjs's `countParameters` (every weight, batch-norm moving statistics included) and
`trainableWeights`; here that is parameters plus batch-norm running statistics, and parameters that need gradients.
The script exits with status 3 when the counts differ from --expect-*. Prints one JSON line.

Needs PyTorch (Debian: apt-get install -y python3-torch, for /usr/bin/python3; or pip install torch).
"""
import argparse
import json
import time

import torch
from torch import nn
import torch.nn.functional as F

# tfjs-layers BatchNormalization: epsilon 1e-3; Tessera's architectures use momentum 0.9 (PyTorch's 0.1).
BN = dict(eps=1e-3, momentum=0.1)


def cbr(cin, cout, k, stride=1, dilation=1, groups=1, act="relu"):
    """Convolution ('same' padding, no bias) + batch norm + ReLU/ReLU6/none, as Tessera's blocks."""
    layers = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, groups=groups,
                  bias=False),
        nn.BatchNorm2d(cout, **BN),
    ]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """@tessera/arch-unet: two 3x3 conv+BN+ReLU per level, 2x2 max-pool, 2x2/2 up-convolutions, skip concatenation."""

    def __init__(self, cin=3, classes=2, base=32, depth=4):
        super().__init__()
        block = lambda ci, co: nn.Sequential(cbr(ci, co, 3), cbr(co, co, 3))
        self.enc = nn.ModuleList()
        c = cin
        for level in range(depth):
            self.enc.append(block(c, base * 2 ** level))
            c = base * 2 ** level
        self.bottleneck = block(c, base * 2 ** depth)
        c = base * 2 ** depth
        self.ups, self.decs = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(depth)):
            f = base * 2 ** level
            self.ups.append(nn.ConvTranspose2d(c, f, 2, stride=2))
            self.decs.append(block(2 * f, f))
            c = f
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decs, reversed(skips)):
            x = dec(torch.cat([skip, up(x)], 1))
        return torch.softmax(self.head(x), 1)


class FCN8s(nn.Module):
    """@tessera/arch-fcn8s: VGG-16 blocks (2, 2, 3, 3, 3 conv+BN+ReLU), fc6 7x7 and fc7 1x1, pool3/pool4 skips."""

    def __init__(self, cin=3, classes=2, base=16, fc=256, fc6_kernel=7):
        super().__init__()
        self.blocks = nn.ModuleList()
        c = cin
        for convs, width in [(2, 1), (2, 2), (3, 4), (3, 8), (3, 8)]:
            layers = []
            for _ in range(convs):
                layers.append(cbr(c, base * width, 3))
                c = base * width
            self.blocks.append(nn.Sequential(*layers))
        self.fc6 = cbr(c, fc, fc6_kernel)
        self.fc7 = cbr(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, classes, 1)
        self.score_pool4 = nn.Conv2d(base * 8, classes, 1)
        self.score_pool3 = nn.Conv2d(base * 4, classes, 1)
        # 'same' transposed convolutions: padding (k - stride) / 2.
        self.upscore2 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
        self.upscore8 = nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, bias=False)

    def forward(self, x):
        pools = []
        for block in self.blocks:
            x = F.max_pool2d(block(x), 2)
            pools.append(x)
        x = self.score_fr(self.fc7(self.fc6(x)))
        x = self.upscore2(x) + self.score_pool4(pools[3])
        x = self.upscore_pool4(x) + self.score_pool3(pools[2])
        return torch.softmax(self.upscore8(x), 1)


def divisible(v):
    r = max(8, int((v + 4) // 8) * 8)
    return r + 8 if r < 0.9 * v else r


class MobileBlock(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand + ReLU6, depthwise 3x3 (stride or atrous rate) + ReLU6, 1x1 project."""

    def __init__(self, cin, expand, cout, stride, rate):
        super().__init__()
        layers = [] if expand == 1 else [cbr(cin, cin * expand, 1, act="relu6")]
        mid = cin * expand
        layers += [cbr(mid, mid, 3, stride=stride, dilation=rate, groups=mid, act="relu6"), cbr(mid, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class DeepLabV3Plus(nn.Module):
    """@tessera/arch-deeplab defaults: MobileNetV2 x0.5 at output stride 16, ASPP (1x1, rates 6/12/18, image pooling
    through a frozen 1x1 'ones' convolution as in the tfjs model), 1/4-resolution decoder, bilinear upsampling."""

    STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, cin=3, classes=2, width=0.5, output_stride=16, aspp=64, low_level=24, rates=(6, 12, 18)):
        super().__init__()
        c = divisible(32 * width)
        self.stem = cbr(cin, c, 3, stride=2, act="relu6")
        stride, rate = 2, 1
        low_blocks, high_blocks = [], []
        for i, (t, ch, n, s) in enumerate(self.STAGES):
            for j in range(n):
                st, r = 1, rate
                if j == 0 and s != 1:
                    if stride * s > output_stride:
                        rate *= s  # the stage's first block keeps the previous rate
                    else:
                        stride *= s
                        st = s
                out = divisible(ch * width)
                (low_blocks if i <= 1 else high_blocks).append(MobileBlock(c, t, out, st, r))
                c = out
            if i == 1:
                low_channels = c
        self.low = nn.Sequential(*low_blocks)
        self.high = nn.Sequential(*high_blocks)
        self.aspp_1x1 = cbr(c, aspp, 1)
        self.aspp_rates = nn.ModuleList([cbr(c, aspp, 3, dilation=r) for r in rates])
        self.aspp_pool_conv = nn.Conv2d(c, aspp, 1)
        self.aspp_pool_ones = nn.Conv2d(c, 1, 1)
        nn.init.zeros_(self.aspp_pool_ones.weight)
        nn.init.ones_(self.aspp_pool_ones.bias)
        self.aspp_pool_ones.requires_grad_(False)
        self.aspp_project = cbr(5 * aspp, aspp, 1)
        self.up = output_stride // 4
        self.decoder_low_level = cbr(low_channels, low_level, 1)
        self.decoder = nn.Sequential(cbr(aspp + low_level, aspp, 3), cbr(aspp, aspp, 3))
        self.classifier = nn.Conv2d(aspp, classes, 1)

    def forward(self, x):
        low = self.low(self.stem(x))
        x = self.high(low)
        pooled = F.relu(self.aspp_pool_conv(F.adaptive_avg_pool2d(x, 1)))
        branches = [self.aspp_1x1(x)] + [b(x) for b in self.aspp_rates] + [self.aspp_pool_ones(x) * pooled]
        y = self.aspp_project(torch.cat(branches, 1))
        y = F.interpolate(y, scale_factor=self.up, mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.decoder_low_level(low)], 1))
        y = F.interpolate(self.classifier(y), scale_factor=4, mode="bilinear", align_corners=False)
        return torch.softmax(y, 1)


MODELS = {"unet": UNet, "fcn8s": FCN8s, "deeplabv3plus": DeepLabV3Plus}


def count(model):
    """(all weights as tfjs counts them: parameters + batch-norm running statistics, trainable weights)."""
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return params + stats, trainable


def ce_dice(p, y, eps=1e-7, smooth=1.0):
    """Tessera's default loss on probabilities: pixel-mean cross-entropy plus (1 - mean soft Dice over classes)."""
    onehot = F.one_hot(y, p.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    ce = -(torch.log(p.clamp(eps, 1 - eps)) * onehot).sum(1).mean()
    inter = (p * onehot).sum((0, 2, 3))
    dice = (2 * inter + smooth) / (p.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + smooth)
    return ce + (1 - dice.mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--expect-total", type=int)
    ap.add_argument("--expect-trainable", type=int)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = MODELS[a.model](cin=3, classes=a.classes)
    total, trainable = count(model)
    if (a.expect_total is not None and total != a.expect_total) or (
        a.expect_trainable is not None and trainable != a.expect_trainable
    ):
        print(json.dumps({"model": a.model, "error": "weight counts differ from the tfjs model", "total": total,
                          "trainable": trainable, "expectTotal": a.expect_total,
                          "expectTrainable": a.expect_trainable}))
        raise SystemExit(3)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, eps=1e-7)
    x = torch.randn(a.batch, 3, a.tile, a.tile)
    y = torch.randint(0, a.classes, (a.batch, a.tile, a.tile))
    times = []
    for i in range(a.warmup + a.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = ce_dice(model(x), y)
        loss.backward()
        optimizer.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"model": a.model, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "total": total, "trainable": trainable, "seconds": times, "loss": float(loss)}))


if __name__ == "__main__":
    main()
