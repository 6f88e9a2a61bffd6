"""224-px input: rayssl's stream (Ray Data decode, then its views) against a torch
DataLoader with torchvision's transforms, on the same JPEG folder and the same cores.

    python benchmarks/stream224.py [--images 2000] [--source-side 320]
        [--out benchmarks/results/stream224-2core-cpu.json]

Needs torchvision (installed with torch by .ci/run). The folder: `--images`
JPEGs from `rayssl demo-images` at `--source-side` px (larger than 224, so every image is
resized as a real photo is). Both sides make two SimCLR views of 224 px per image (the
`simclr` preset: crops of 8-100 % of the area, flip, colour jitter p 0.8 with
0.8/0.8/0.8/0.2, grayscale p 0.2, blur p 0.5 with sigma 0.1-2), in float32, batch 64.

- rayssl: the training stream as a worker reads it (`data.in_memory: false`, `image_size:
  224`): Ray Data reads and decodes the files in its tasks (PIL, resized to 224 there), the
  batches come through `StreamedBatches` as uint8, and `Augment.views` makes both views of a
  batch at once in the consuming process (2 torch threads; one CPU left for Ray Data).
- torchvision: `DataLoader` (2 loader workers) over the files, each worker decoding with PIL
  and applying `transforms.v2` twice per image (RandomResizedCrop straight from the decoded
  image, as torchvision's SimCLR recipes do), then collating.

Where the time goes, per image, one process, one thread: PIL decode, the resize to 224,
torchvision's two views of one image; rayssl's views of a decoded batch.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BATCH = 64


def simclr_config(folder: Path) -> dict:
    return {
        "method": "simclr",
        "num_workers": 1,
        "data": {
            "name": "images",
            "path": str(folder),
            "in_memory": False,
            "image_size": 224,
            "val_fraction": 0,
            "batch_size": BATCH,
            "normalize": None,
            "augment": {"preset": "simclr", "image": {"size": 224}},
        },
    }


def rayssl_stream(folder: Path, epochs: int) -> dict:
    import ray

    from rayssl.config import validate_train_config
    from rayssl.data import load_splits
    from rayssl.data.augment import Augment
    from rayssl.engine.inputs import train_batches

    torch.set_num_threads(2)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    cfg = validate_train_config(simclr_config(folder))
    splits = load_splits(cfg.data, cfg.seed)
    augment = Augment(cfg.data.augment)
    generator = torch.Generator().manual_seed(0)
    rows = {}
    for views in (False, True):
        shard = splits.stream.dataset(cfg.data.read_concurrency).iterator()
        batches = train_batches(cfg, splits, torch.device("cpu"), 0, 1, shard)
        for _ in range(epochs + 1):  # the first pass warms Ray Data's workers up
            started, images = time.perf_counter(), 0
            for x, _ in batches:
                if views:
                    augment.views(x, generator, 2, False)
                images += len(x)
            took = time.perf_counter() - started
        rows["decode_and_views" if views else "decode_only"] = {
            "images": images,
            "seconds": round(took, 2),
            "images_per_s": round(images / took, 1),
        }
        print(json.dumps(rows), flush=True)
    ray.shutdown()
    return rows


def _torchvision_views():
    from torchvision.transforms import v2

    one = v2.Compose(
        [
            v2.RandomResizedCrop(224, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    return one


class _Views(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]):
        self.files, self.view = files, _torchvision_views()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as image:
            image = image.convert("RGB")
        return self.view(image), self.view(image)


def torchvision_loader(folder: Path, epochs: int, workers: int) -> dict:
    torch.set_num_threads(1)
    files = sorted(folder.rglob("*.jpg"))
    loader = torch.utils.data.DataLoader(
        _Views(files), batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in range(epochs + 1):  # the first pass starts the loader workers
        started, images = time.perf_counter(), 0
        for a, _b in loader:
            images += len(a)
        took = time.perf_counter() - started
    return {
        "loader_workers": workers,
        "images": images,
        "seconds": round(took, 2),
        "images_per_s": round(images / took, 1),
    }


def breakdown(folder: Path, count: int = 300) -> dict:
    """Per image, one thread: decode, resize to 224, torchvision's two views; rayssl's two
    views of a decoded batch of 64."""
    from PIL import Image

    from rayssl.config import validate_train_config
    from rayssl.data.augment import Augment

    torch.set_num_threads(1)
    blobs = [f.read_bytes() for f in sorted(folder.rglob("*.jpg"))[:count]]
    ms = {}
    started = time.perf_counter()
    decoded = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            decoded.append(image.convert("RGB"))
    ms["decode"] = (time.perf_counter() - started) / count * 1e3
    started = time.perf_counter()
    resized = [image.resize((224, 224), Image.Resampling.BILINEAR) for image in decoded]
    ms["resize_to_224"] = (time.perf_counter() - started) / count * 1e3
    view = _torchvision_views()
    started = time.perf_counter()
    for image in decoded:
        view(image), view(image)
    ms["torchvision_two_views"] = (time.perf_counter() - started) / count * 1e3
    cfg = validate_train_config(simclr_config(folder))
    augment = Augment(cfg.data.augment)
    x = torch.from_numpy(np.stack([np.asarray(r).transpose(2, 0, 1) for r in resized]))
    generator = torch.Generator().manual_seed(0)
    augment.views(x[:BATCH].float() / 255, generator, 2, False)  # warm
    started, n = time.perf_counter(), 0
    for i in range(0, len(x) - BATCH + 1, BATCH):
        augment.views(x[i : i + BATCH].float() / 255, generator, 2, False)
        n += BATCH
    ms["rayssl_two_views"] = (time.perf_counter() - started) / n * 1e3
    return {k: round(v, 3) for k, v in ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source-side", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=1, help="timed passes after a warm one")
    parser.add_argument("--out", default="benchmarks/results/stream224-2core-cpu.json")
    args = parser.parse_args()
    import torchvision

    from rayssl.data.demo import write_digit_images

    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": "2-core CPU",
        "torch": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="rayssl-stream224-") as tmp:
        folder = Path(tmp) / "set"
        write_digit_images(folder, train=args.images, test=10, seed=0, size=args.source_side,
                           image_format="jpeg")  # fmt: skip
        train = folder / "train"
        result["breakdown_ms_per_image"] = breakdown(train)
        print(json.dumps(result["breakdown_ms_per_image"]), flush=True)
        result["torchvision"] = torchvision_loader(train, args.epochs, 2)  # the loader row
        print(json.dumps(result["torchvision"]), flush=True)
        result["rayssl"] = rayssl_stream(train, args.epochs)
    ours = result["rayssl"]["decode_and_views"]["images_per_s"]
    result["rayssl_over_torchvision"] = round(ours / result["torchvision"]["images_per_s"], 2)
    print(json.dumps({"rayssl_over_torchvision": result["rayssl_over_torchvision"]}))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
