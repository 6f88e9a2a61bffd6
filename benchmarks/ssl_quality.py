"""Representation quality at equal settings: rayssl against a plain lightly loop.

    python benchmarks/ssl_quality.py [--epochs 10] [--sets demo hard] [--methods simclr byol]
        [--out benchmarks/results/ssl_quality-2core-cpu.json] [--set KEY=VALUE ...]
    python benchmarks/ssl_quality.py --markdown      # BENCHMARKS.md's table from the result file

`--methods` takes any method with a configs/<method>_images.yaml; SimCLR and BYOL are also
trained by a lightly loop, and so are MAE and DINO with a ViT (`mae`, `dino_vit`: lightly's
examples, benchmarks/lightly_vit.py), the others (MoCo v3, Barlow Twins, VICReg, DINO, SwAV)
by rayssl only, each against random init through the same evaluator. `--rayssl-runs DIR`
evaluates rayssl's finished runs of the same configs instead of training them again.

For each image set and method, the same small CNN (rayssl's `cnn2d`, width 32, depth 4, the
same initial weights), batch 256, AdamW (lr 2e-3, weight decay 1e-4), linear warmup (2
epochs) then cosine, temperature 0.2 (SimCLR) / base momentum 0.99 rising to 1 on a cosine
(BYOL), heads 256 -> 64 (predictor 256), crop scale [0.25, 1], no flips, the papers' colour
jitter / grayscale / blur / solarize probabilities, inputs normalised as the config says
(the training set's channel statistics, or each image by its own: `normalize: sample`, which
the lightly loop applies as torch's instance norm), and the same number of epochs
(configs/<method>_images.yaml), trained

  (a) by rayssl: `fit` with 2 Ray Train workers (1 CPU each), views made on the workers;
  (b) by lightly (benchmarks/lightly_loop.py): `SimCLRTransform` / `BYOLTransform` on PIL
      images in a torch DataLoader
      with 2 worker processes, lightly's heads, losses, `update_momentum` and
      `cosine_schedule`, as lightly's own examples write the loop (BYOL: one forward per
      view, the target updated before each step), 2 torch threads in the training process.

Then ONE evaluator for every backbone, random init included: features of the clean train
and test images (eval mode), cosine kNN (k = 20) and a standardised logistic-regression
probe (`rayssl.engine.probes.probe`, the same function `rayssl eval` uses). Pretraining
wall time: rayssl from `fit`'s call to its return (Ray start-up, worker start-up and the
end-of-run evaluation included), lightly from building the DataLoader to the last step.

Sets (offline, `rayssl demo-images`): "demo" (fair preset, 5000 train / 1000 test) and
"hard" (`--hard`: more colour and placement nuisance). Needs lightly and torchvision
(`pip install -e '.[bench]'`; on this machine a separate venv with torch 2.14.1 +
torchvision 0.29.1, see BENCHMARKS.md). Everything runs on the CPU by default; `--gpu` trains
both on one GPU: rayssl with 1 Ray Train worker over NCCL (views on the device), the lightly
loop with its model on the GPU and `--loader-workers` DataLoader processes making its views.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightly_loop import _loader, pretrain_lightly  # noqa: E402  (benchmarks/, beside this file)
from lightly_vit import LIGHTLY_VIT_LOOPS, pretrain_lightly_vit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LIGHTLY_LOOPS = ("simclr", "byol", *LIGHTLY_VIT_LOOPS)  # also trained by a lightly loop
SETS = {"demo": ("data/digits32", []), "hard": ("data/digits32hard", ["--hard"])}


def config(method: str, data: Path, epochs: int, storage: Path, overrides=(), gpu=False):
    """configs/<method>_images.yaml (with `--set` overrides) on `data`, without evaluation
    during training; `gpu`: one worker on one GPU."""
    from rayssl.config import load_train_config, validate_train_config

    path = ROOT / "configs" / f"{method}_images.yaml"
    raw = load_train_config(path, overrides).model_dump(mode="json")
    raw.update(epochs=epochs, storage_path=str(storage), name=f"{method}-{data.name}")
    if gpu:
        raw.update(use_gpu=True, num_workers=1)
    raw["data"].update(path=str(data / "train"), test_path=str(data / "test"))
    raw["eval"] = {"every": 0, "knn_k": 20, "linear_probe": False, "online_linear": False}
    return validate_train_config(raw)


def clean_sets(cfg):
    """(train, test) clean image tensors in [0, 1] with labels, and the normaliser."""
    from rayssl.data import input_normalizer, load_splits

    plain = cfg.model_copy(deep=True)
    plain.data.in_memory = True
    splits = load_splits(plain.data, cfg.seed)
    return splits.train, splits.test, input_normalizer(cfg.data, splits)


def backbone_of(cfg, state: dict | None = None) -> nn.Module:
    """A fresh `cnn2d` with the seed's initial weights (rayssl's), or `state`'s weights."""
    from rayssl.methods.registry import build_method
    from rayssl.seeds import seed_everything

    seed_everything(cfg.seed)
    method = build_method(cfg, (3, 32, 32), 10)
    if state is not None:
        method.load_state_dict(state)
    return method.backbone


def evaluate(backbone: nn.Module, sets) -> dict[str, float]:
    """The one evaluator: kNN (k=20) and the standardised logistic probe on clean images."""
    from rayssl.engine.probes import probe

    train, test, normalize = sets
    backbone.eval()
    torch.set_num_threads(2)
    with torch.no_grad():
        metrics = probe(lambda x: backbone(normalize(x)).flatten(1), train, test, k=20, linear=True)
        metrics.update(collapse(backbone(normalize(test[0])).flatten(1), test[0]))
    return {k: round(v, 4) for k, v in metrics.items()}


def collapse(features: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    """Two signs of a representation that learned a shortcut instead of the digit, on the
    test images' features: their effective rank (exp of the entropy of the normalised
    squared singular values of the centred features; Roy and Vetterli 2007), and the share
    of their variance a linear map from each image's mean colour (3 numbers) explains (R^2
    of a least-squares fit). Hand-written: a few lines of linear algebra, no library call
    names these two numbers."""
    f = features - features.mean(0)
    energy = torch.linalg.svdvals(f).pow(2)
    p = energy / energy.sum()
    rank = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
    colour = images.mean(dim=(2, 3))
    colour = torch.cat([colour - colour.mean(0), torch.ones(len(colour), 1)], dim=1)
    fit = colour @ torch.linalg.lstsq(colour, f).solution
    r2 = 1 - (f - fit).pow(2).sum() / f.pow(2).sum()
    return {"feature_rank": float(rank), "colour_r2": float(r2)}


# ============================================================================ rayssl


def pretrain_rayssl(cfg, stats=None, runs: str | None = None) -> tuple[nn.Module, dict]:
    """`fit` the config; or, with `runs`, read the newest finished run of the config's own
    name there (a `rayssl train configs/<method>_images.yaml` run, e.g. demo_images.py's):
    its wall is then its summary's (training only, without this process's start)."""
    from rayssl.cluster import fit
    from rayssl.runs.state import load_state

    started = time.perf_counter()
    if runs:
        summary = finished_run(Path(runs), cfg)
        wall = summary["wall_time_s"]
    else:
        summary = fit(cfg)
        wall = time.perf_counter() - started
    state = load_state(summary["checkpoint"])
    return backbone_of(cfg, state["model"]), {
        "wall_s": round(wall, 1),
        "train_loss_last": round(summary["final_metrics"]["train_loss"], 4),
        "epochs": summary["epochs_run"],
        # where the wall goes: the fixed start-up against the epochs themselves
        "start_to_first_step_s": round(summary["start_to_first_step_s"], 1),
        "epoch_time_s": [round(h["epoch_time_s"], 1) for h in summary["history"]],
    }


def finished_run(runs: Path, cfg) -> dict:
    """The summary of the newest finished run in `runs` of configs/<method>_images.yaml, which
    must have trained what `cfg` trains (the same method, backbone, epochs and data)."""
    from rayssl.config import load_train_config

    name = cfg.name.split("-")[0]  # config() renames a run '<method>-<set>'
    method_config = load_train_config(ROOT / "configs" / f"{name}_images.yaml")
    found = sorted(runs.glob(f"{method_config.name}-*/summary.json"))
    if not found:
        raise SystemExit(f"--rayssl-runs {runs}: no finished run named {method_config.name}-*")
    summary = json.loads(found[-1].read_text())
    ran = summary["config"]
    for key in ("method", "epochs", "seed"):
        if ran[key] != getattr(cfg, key):
            raise SystemExit(
                f"{found[-1].parent}: its {key} {ran[key]!r} is not {getattr(cfg, key)!r}"
            )
    if ran["backbone"] != cfg.backbone.model_dump(mode="json"):
        raise SystemExit(f"{found[-1].parent}: another backbone than the config's")
    summary["run_dir"] = str(found[-1].parent)
    return summary


# ============================================================================ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sets", nargs="+", default=["demo", "hard"], choices=list(SETS))
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--out", default="benchmarks/results/ssl_quality-2core-cpu.json")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the rayssl config (as `rayssl train --set`); the row is named after "
        "it, and only rayssl trains it (the lightly loop has no such switches)",
    )
    parser.add_argument(
        "--lightly-views",
        choices=["lightly", "rayssl"],
        default="lightly",
        help="rayssl: the lightly loop trains on rayssl's views of each batch (and only the "
        "lightly loop runs): what is left of a gap is not the views",
    )
    parser.add_argument(
        "--lightly-too",
        action="store_true",
        help="train the lightly loop under the --set overrides as well: for view parameters "
        "(data.augment.image.*), which lightly's transforms read from the same config, and "
        "performance.channels_last and performance.amp, which its loop honours",
    )
    parser.add_argument("--gpu", action="store_true", help="train both on one GPU")
    parser.add_argument(
        "--rayssl-runs",
        metavar="DIR",
        help="take rayssl's backbone from the newest finished run of each method's config in "
        "DIR (e.g. runs/demo_images, from benchmarks/demo_images.py) instead of training it "
        "again: the ViT runs take an hour to three on a CPU",
    )
    parser.add_argument("--loader-workers", type=int, default=2, help="the lightly loop's")
    parser.add_argument(
        "--markdown", action="store_true", help="print BENCHMARKS.md's table; run nothing"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.markdown:
        print(markdown(json.loads((ROOT / args.out).read_text())))
        return
    import lightly
    import torchvision

    out = ROOT / args.out
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(
        machine=f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        + (torch.cuda.get_device_name() if args.gpu else "no GPU"),
        loader_workers=args.loader_workers,
        versions={
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightly": lightly.__version__,
            "python": sys.version.split()[0],
        },
        command="python benchmarks/ssl_quality.py " + " ".join(sys.argv[1:]),
        epochs=args.epochs,
    )
    storage = Path(tempfile.mkdtemp(prefix="rayssl-quality-"))
    for name in args.sets:
        folder, flags = SETS[name]
        data = ROOT / folder
        if not (data / "train").exists():
            from rayssl.data.demo import write_digit_images

            write_digit_images(data, hard="--hard" in flags)
        rows = result.setdefault("sets", {}).setdefault(name, {"data": folder})
        for method in args.methods:
            cfg = config(method, data, args.epochs, storage, args.overrides, args.gpu)
            sets = clean_sets(cfg)
            stats = _stats(cfg, sets)
            # random init through the same evaluator, per input normalisation
            norm = cfg.data.normalize
            baseline = "random init" if norm == "dataset" else f"random init ({norm})"
            if baseline not in rows:
                rows[baseline] = evaluate(backbone_of(cfg), sets)
                print(name, baseline, rows[baseline], flush=True)
            extra = ["views: rayssl"] if args.lightly_views == "rayssl" else []
            row = rows.setdefault(row_name(method, norm, args.overrides + extra), {})
            for tool, pretrain in trainers(args, method):
                backbone, timing = pretrain(cfg, stats)
                row[tool] = {**evaluate(backbone, sets), **timing}
                print(name, method, tool, row[tool], flush=True)
            row["command"] = result["command"]  # rows of earlier invocations keep theirs
            row["normalize"] = cfg.data.normalize if isinstance(cfg.data.normalize, str) else None
            if "lightly" in row and "rayssl" in row:
                row["rayssl_wall_vs_lightly"] = round(
                    row["rayssl"]["wall_s"] / row["lightly"]["wall_s"], 3
                )
            out.write_text(json.dumps(result, indent=2))  # after every method: nothing lost
    print(f"wrote {out}")


def trainers(args: argparse.Namespace, method: str) -> list[tuple[str, Callable]]:
    """(name, pretrain) of each trainer this invocation runs: rayssl unless only the lightly
    loop on rayssl's views is asked for; the lightly loop for SimCLR and BYOL, unless
    `--set` overrides (which it has no switches for) come without `--lightly-too`."""
    on_rayssl_views = args.lightly_views == "rayssl"
    tools = [] if on_rayssl_views else [("rayssl", partial(pretrain_rayssl, runs=args.rayssl_runs))]
    if method in LIGHTLY_VIT_LOOPS and not on_rayssl_views:
        loader = partial(_loader, workers=args.loader_workers, pin_memory=args.gpu)
        loop = partial(
            pretrain_lightly_vit,
            backbone_of=backbone_of,
            loader_of=loader,
            device="cuda" if args.gpu else "cpu",
        )
        tools.append(("lightly", loop))
    elif method in LIGHTLY_LOOPS and (args.lightly_too or on_rayssl_views or not args.overrides):
        loop = partial(
            pretrain_lightly,
            backbone_of=backbone_of,
            views=args.lightly_views,
            device="cuda" if args.gpu else "cpu",
            loader_workers=args.loader_workers,
        )
        tools.append(("lightly", loop))
    return tools


NAMES = {
    "simclr": "SimCLR",
    "byol": "BYOL",
    "moco": "MoCo v3",
    "barlow_twins": "Barlow Twins",
    "vicreg": "VICReg",
    "dino": "DINO (6 local crops)",
    "swav": "SwAV (6 local crops)",
    "simsiam": "SimSiam",
    "nnclr": "NNCLR",
    "mae": "MAE (ViT-tiny)",
    "dino_vit": "DINO (ViT-tiny, 6 local crops)",
}


def markdown(result: dict) -> str:
    """BENCHMARKS.md's table, from the result file."""

    def cell(row: dict, key: str, fmt: str = ".3f") -> str:
        return format(row[key], fmt) if key in row else ""

    lines = [
        "| set | backbone | normalize | kNN | linear probe | feature rank | colour R^2 "
        "| pretraining wall | rayssl / lightly wall |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in result["sets"].items():
        # per normalisation (the data set's first), random init first within it
        keys = [k for k in rows if k != "data"]
        keys.sort(key=lambda k: ("(sample)" in k, not k.startswith("random init")))
        for key in keys:
            row = rows[key]
            method, _, rest = key.partition(" ")
            norm = "sample" if "(sample)" in rest else "dataset"
            extra = rest[rest.index("[") : rest.index("]") + 1] if "[" in rest else ""
            if method == "random":
                trained = [("random init", row)]
            else:
                label = f"{NAMES.get(method, method)} {extra}".strip()
                trained = [(f"{label}, {tool}", row.get(tool)) for tool in ("rayssl", "lightly")]
                trained = [(t, r) for t, r in trained if isinstance(r, dict)]
            for i, (label, r) in enumerate(trained):
                ratio = row.get("rayssl_wall_vs_lightly") if i == 0 else None
                wall = f"{r['wall_s']} s" if "wall_s" in r else ""
                lines.append(
                    f"| {name} | {label} | {norm} | {cell(r, 'knn_acc')} | "
                    f"{cell(r, 'linear_acc')} | {cell(r, 'feature_rank', '.1f')} | "
                    f"{cell(r, 'colour_r2', '.2f')} | {wall} | {ratio or ''} |"
                )
    return "\n".join(lines)


def row_name(method: str, normalize, overrides: list[str]) -> str:
    """'simclr'; 'byol (sample)' under per-image normalisation; overrides in brackets."""
    per_image = isinstance(normalize, str) and normalize != "dataset"
    name = f"{method} ({normalize})" if per_image else method
    return f"{name} [{' '.join(overrides)}]" if overrides else name


def _stats(cfg, sets) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set's channel mean and std, as `data.normalize: dataset` computes them."""
    from rayssl.data.datasets import channel_statistics

    return channel_statistics(sets[0][0])


if __name__ == "__main__":
    main()
