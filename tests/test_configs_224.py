"""The 224-px cluster configs (ImageNet-size recipes: ViT-B/16 MAE, ViT-S/16 DINO and iBOT
with 10 local crops of 96 px, ViT fine-tuning with mixup and cutmix, SimCLR on ResNet-50)
run end to end as written, scaled down only where a CPU must: one Ray Train worker on the
CPU (their bf16 autocast kept), 4 images a batch, one epoch over a folder of 224-px JPEGs,
the probes on its labeled val split. Slow (about 1.5 minutes each on 2 cores); a smoke run
of this kind found the CPU-bf16 views failure `tests/test_image_views.py` now pins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rayssl.data.demo import write_digit_images

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs224")
    write_digit_images(root, train=40, test=60, seed=0, size=224, image_format="jpeg")
    return root


@pytest.mark.parametrize(
    "config",
    [
        "mae_imagenet_vit_base",
        "dino_vit_small_imagenet",
        "ibot_vit_small_imagenet",
        "finetune_vit_imagenet",
        "simclr_imagenet_resnet50",
    ],
)
def test_a_224_px_config_trains_an_epoch_and_probes_on_the_cpu(config, jpegs, tmp_path):
    pytest.importorskip("timm")
    sets = {
        "num_workers": 1,
        "use_gpu": "false",
        "cpus_per_worker": 2,
        "storage_path": tmp_path / "runs",
        "data.path": jpegs / "train",
        "data.val_path": jpegs / "test",
        "data.batch_size": 4,
        "data.eval_batch_size": 8,
        "data.prefetch_batches": 1,
        "epochs": 1,
    }
    if config == "finetune_vit_imagenet":
        sets["backbone.init_from"] = "null"  # its MAE run lives in a bucket
    command = [sys.executable, "-m", "rayssl.cli", "train", str(CONFIGS / f"{config}.yaml")]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    final = json.loads((run / "summary.json").read_text())["final_metrics"]
    assert final["val_loss"] == final["val_loss"]  # finite: not NaN
    wanted = "val_accuracy" if config == "finetune_vit_imagenet" else "knn_acc"
    assert 0.0 <= final[wanted] <= 1.0
