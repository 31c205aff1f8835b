"""Images/s per host core of the streamed ImageNet path's host work (docs/PERFORMANCE.md, "Cost
model"): Pillow's JPEG decode, then the training transform (RandomResizedCrop to 224 and a flip,
bnjax.data.streamed.train_transform) or the evaluation one, on one thread.

The JPEGs are made here, ImageNet-like: 500x375 (about ImageNet's mean size), quality 90, from
CIFAR-10 images upscaled with a little noise so that they hold texture, not flat colour.

    python launch/performance/input_pipeline_timing.py --cifar=../shared/data/cifar10-jpeg.tar.gz
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import time

import numpy as np
from PIL import Image

from bnjax.data.streamed import eval_transform, train_transform

SIZE = (500, 375)


def make_jpegs(cifar_archive: str, count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sources = []
    with tarfile.open(cifar_archive) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                sources.append(np.asarray(Image.open(tar.extractfile(member)).convert("RGB")))
                if len(sources) == count:
                    break
    jpegs = []
    for pixels in sources:
        big = np.asarray(Image.fromarray(pixels).resize(SIZE, Image.BICUBIC), np.float32)
        big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(big).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def rate(jpegs: list[bytes], work) -> float:
    start = time.perf_counter()
    for index, jpeg in enumerate(jpegs):
        work(index, jpeg)
    return len(jpegs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", required=True, help="the CIFAR-10 JPEG archive")
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    jpegs = make_jpegs(args.cifar, args.count)

    def rng(index):
        return np.random.default_rng((0, 0, index))

    rows = {
        "decode only": lambda i, j: decode(j),
        "decode + train transform": lambda i, j: train_transform(decode(j), rng(i), 224),
        "decode + eval transform": lambda i, j: eval_transform(decode(j), 224),
    }
    rate(jpegs[:20], rows["decode + train transform"])  # warm caches
    results = {name: rate(jpegs, work) for name, work in rows.items()}
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:,.0f} images/s on one core")
    print(json.dumps({"images": len(jpegs), "size": SIZE, "quality": 90,
                      "cpu": platform.processor() or platform.machine(),
                      "cores": os.cpu_count(), **results}))


if __name__ == "__main__":
    main()
