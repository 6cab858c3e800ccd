#!/usr/bin/env python3
"""The plain PyTorch baseline of bench/quality-vs-pytorch.mjs: trains a PyTorch twin of a Tessera network
(bench/torch_models.py) for a wall-clock budget with a plain recipe, keeps the last weights, and writes a label map
PNG per test image (class values, like `tessera predict`).

The recipe is what a practitioner writes without tuning: random 256 px crops, batches of 4, flips and 90 degree
rotations, Tessera's ce-dice loss, Adam at a constant 1e-3, per-channel standardisation by the training set's mean
and standard deviation, last weights. The budget counts from the start of reading the data.

    /usr/bin/python3 bench/quality_torch.py --model unet --minutes 25 --train train.txt --test test.txt \
        --classes 0,1 --out predictions/ [--channels 3] [--threads 2] [--seed 1]

`--train` and `--test` are text files with one `image<TAB>mask` pair per line (the mask path is ignored for test).
`--classes` lists the mask values in class order. Prints one JSON line: steps, seconds, final training loss.
Needs PyTorch (Debian: apt-get install -y python3-torch).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from torch_models import MODELS, ce_dice


def read_image(path, channels):
    image = Image.open(path)
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image, dtype=np.float32)
    return array[..., None] if channels == 1 else array


def read_labels(path, values):
    mask = np.asarray(Image.open(path))
    if mask.ndim == 3:
        mask = mask[..., 0]
    labels = np.full(mask.shape, -1, dtype=np.int64)
    for index, value in enumerate(values):
        labels[mask == value] = index
    if (labels < 0).any():
        raise SystemExit(f"{path}: mask values {sorted(set(np.unique(mask)) - set(values))} are not in --classes")
    return labels


def pairs(listing):
    with open(listing) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


# Input side multiples of the networks (FCN-8s adds pool4 and pool3 scores: sides must divide by 32).
MULTIPLE = {"unet": 16, "fcn8s": 32, "deeplabv3plus": 32}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=MODELS, default="unet")
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--classes", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    values = [int(v) for v in a.classes.split(",")]

    train = [(read_image(i, a.channels), read_labels(m, values)) for i, m in pairs(a.train)]
    stacked = np.concatenate([image.reshape(-1, a.channels) for image, _ in train])
    mean, std = stacked.mean(0), stacked.std(0) + 1e-6
    train = [((image - mean) / std, labels) for image, labels in train]

    model = MODELS[a.model](cin=a.channels, classes=len(values))
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
    model.train()
    t = a.tile
    steps, loss_value, step_seconds = 0, float("nan"), 0.0
    budget = a.minutes * 60
    while True:
        elapsed = time.perf_counter() - started
        if steps > 0 and elapsed + step_seconds > budget:
            break
        step_started = time.perf_counter()
        images, targets = [], []
        for _ in range(a.batch):
            image, labels = train[rng.integers(len(train))]
            y0 = rng.integers(image.shape[0] - t + 1)
            x0 = rng.integers(image.shape[1] - t + 1)
            crop, target = image[y0 : y0 + t, x0 : x0 + t], labels[y0 : y0 + t, x0 : x0 + t]
            k = int(rng.integers(4))
            crop, target = np.rot90(crop, k), np.rot90(target, k)
            if rng.random() < 0.5:
                crop, target = crop[:, ::-1], target[:, ::-1]
            images.append(np.ascontiguousarray(crop.transpose(2, 0, 1)))
            targets.append(np.ascontiguousarray(target))
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(targets))
        optimizer.zero_grad()
        loss = ce_dice(model(x), y)
        loss.backward()
        optimizer.step()
        loss_value = float(loss)
        steps += 1
        step_seconds = time.perf_counter() - step_started
    train_seconds = time.perf_counter() - started

    model.eval()
    os.makedirs(a.out, exist_ok=True)
    lut = np.array(values, dtype=np.uint8)
    with torch.no_grad():
        for image_path, _ in pairs(a.test):
            image = (read_image(image_path, a.channels) - mean) / std
            h, w = image.shape[:2]
            ph, pw = (-h) % MULTIPLE[a.model], (-w) % MULTIPLE[a.model]
            padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
            x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None]
            labels = model(x)[0].argmax(0).numpy()[:h, :w]
            stem = os.path.splitext(os.path.basename(image_path))[0]
            Image.fromarray(lut[labels]).save(os.path.join(a.out, f"{stem}.png"))
    print(json.dumps({"model": a.model, "steps": steps, "trainSeconds": round(train_seconds, 1),
                      "lastLoss": round(loss_value, 4), "threads": a.threads}))


if __name__ == "__main__":
    main()
