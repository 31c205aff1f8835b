"""Evaluate a `bnjax materialize --format=safetensors` file in PyTorch, in open_lth's own model
class, loaded with strict=True: bnjax's weights outside bnjax.

The test split is read from an image-folder archive (<split>/<class>/<image>) with PIL and
normalised as open_lth's CIFAR-10 dataset does (ToTensor, then ImageNet's mean and std);
labels follow the class names the file records. Needs torch and safetensors, not jax:

    python launch/pytorch/evaluate_in_open_lth.py --weights=r14.safetensors \
        --open_lth=/path/to/open_lth --data=../shared/data/cifar10-jpeg.tar.gz
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile

import numpy as np
import safetensors
import safetensors.torch
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import open_lth  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # open_lth's datasets/cifar10.py


def test_split(archive: str, class_names: list[str] | None, split: str = "test"):
    """(N x 3 x 32 x 32 float32 normalised images, N labels) of `split` in the archive; labels
    index `class_names`, or (a file made before bnjax recorded them) the sorted class folders,
    as bnjax reads them."""
    images, folders = [], []
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != split:
                continue
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                images.append(np.asarray(image.convert("RGB"), np.float32) / 255)
            folders.append(parts[1])
    class_names = class_names or sorted(set(folders))
    x = (np.stack(images) - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
            torch.tensor([class_names.index(folder) for folder in folders]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="bnjax materialize's safetensors file")
    parser.add_argument("--open_lth", required=True, help="a checkout of "
                        "facebookresearch/open_lth")
    parser.add_argument("--data", required=True, help="the image-folder archive")
    args = parser.parse_args()
    with safetensors.safe_open(args.weights, framework="pt") as f:
        metadata = f.metadata()
    class_names = json.loads(metadata["class_names"])
    model = open_lth.model(metadata["model"], args.open_lth, int(metadata["num_classes"]))
    model.load_state_dict(safetensors.torch.load_file(args.weights), strict=True)
    model.eval()
    images, labels = test_split(args.data, class_names)
    with torch.no_grad():
        predictions = torch.cat([model(batch).argmax(1) for batch in images.split(1000)])
    correct = int((predictions == labels).sum())
    print(json.dumps({"model": metadata["model"], "examples": len(labels), "correct": correct,
                      "test_accuracy": correct / len(labels),
                      "recorded_test_accuracy": json.loads(metadata["recorded_test_accuracy"]),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
