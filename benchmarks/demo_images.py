"""The image demo, end to end, as a user runs it: render the offline image set, pretrain
each method with its configs/<method>_images.yaml, then linear evaluation (frozen backbone)
from each, from a random init, and a supervised run of the same network from scratch.
Every step is the README's `rayssl` command; accuracies and wall times come from each run's
summary.json.

    python benchmarks/demo_images.py [--methods simclr byol ...] [--linear-only simclr ...]
        [--baselines random random_sample supervised]
        [--labels-per-class 2 10 [--label-seeds 0 1 2] [--few-labels-only]]
        [--out benchmarks/results/demo_images-2core-cpu.json]
    python benchmarks/demo_images.py --markdown     # the docs' table from the result file

Rows of methods not run this time stay in the result file as they were (each row holds its
command). About 17 minutes per method and 6 for the baselines on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = "data/digits32"
METHODS = {
    "simclr": "SimCLR",
    "byol": "BYOL",
    "moco": "MoCo v3",
    "barlow_twins": "Barlow Twins",
    "vicreg": "VICReg",
    "dino": "DINO",
    "swav": "SwAV",
    "simsiam": "SimSiam",
    "nnclr": "NNCLR",
    "lfr": "LFR",
    "mae": "MAE (ViT-tiny)",
    "dino_vit": "DINO (ViT-tiny)",
    "ibot": "iBOT (ViT-tiny)",
}
# a method whose backbone is not the CNN's: its linear evaluation config (ViTs need timm)
LINEAR_CONFIGS = {m: "configs/linear_eval_vit_images.yaml" for m in ("mae", "dino_vit", "ibot")}
RANDOM = "linear eval: random init"  # inputs normalised with the data set's statistics
RANDOM_SAMPLE = "linear eval: random init, per-image normalisation"  # data.normalize: sample
RANDOM_VIT_SAMPLE = "linear eval: random init ViT-tiny, per-image normalisation"
# the kNN and standardised probe of that frozen random ViT, fitted on every training image
# as a ViT method's own probes are (`rayssl eval` of a 1-epoch frozen run: nothing trains it)
RANDOM_VIT_PROBES = "probes: random init ViT-tiny, per-image normalisation"
SUPERVISED = "supervised from scratch (same network, 20 epochs)"
# the random-init baselines name their normalisation (a pretrained backbone brings its own)
BASELINE_RUNS = {
    "random": (RANDOM, "linear_random", ("backbone.init_from=null", "data.normalize=dataset")),
    "random_sample": (
        RANDOM_SAMPLE,
        "linear_random_sample",
        ("backbone.init_from=null", "data.normalize=sample"),
    ),
    "random_vit_sample": (
        RANDOM_VIT_SAMPLE,
        "linear_random_vit_sample",
        ("backbone.init_from=null", "data.normalize=sample"),
    ),
    "supervised": (
        SUPERVISED,
        "supervised",
        (
            "backbone.init_from=null",
            "data.normalize=dataset",
            "supervised.freeze_backbone=false",
            "optimizer.lr=3e-3",
            "data.batch_size=64",
        ),
    ),
}
BASELINES = ("random", "random_sample", "supervised")  # the CNN's; random_vit_sample by name
FEW_EPOCHS = 150  # few labels: batches of half the subset, 2 steps an epoch, 300 in all


def few_label_sets(k: int) -> tuple[str, ...]:
    """Linear evaluation (or a baseline) on `k` labelled images per class, the rest as
    the full-label run: 2 steps an epoch over the 10k images, FEW_EPOCHS epochs."""
    return (f"data.labels_per_class={k}", f"data.batch_size={5 * k}", f"epochs={FEW_EPOCHS}")


def few_label(label: str, k: int | None, seed: int = 0) -> str:
    """'linear eval: SimCLR backbone' -> 'linear eval, 10 labels per class: SimCLR backbone'
    (', seed 1' after 'class' for another draw of the subset); the label itself for every
    label (k None)."""
    if not k:
        return label
    label = label.replace("20 epochs", f"{FEW_EPOCHS} epochs")  # the supervised baseline's
    few = f"{k} labels per class" + (f", seed {seed}" if seed else "")
    head, _, rest = label.partition(":")
    return f"{head}, {few}:{rest}" if rest else f"{label}, {few}"


def random_twin(label: str, norm: str) -> str:
    """The random-init row a pretrained backbone's gain is measured against: the same
    network (a ViT's for a ViT method) under the same normalisation."""
    if "ViT" in label:
        return RANDOM_VIT_SAMPLE
    return RANDOM_SAMPLE if norm == "sample" else RANDOM


def rayssl(*args: str) -> float:
    """Run one `rayssl` command from the repository root; its wall time in seconds."""
    started = time.time()
    subprocess.run([sys.executable, "-m", "rayssl.cli", *args], cwd=ROOT, check=True)
    return time.time() - started


def unfinished(storage: Path, name: str) -> bool:
    """Whether the newest run of this name stopped before its summary (a killed command)."""
    runs = sorted(storage.glob(f"{name}-*"))
    return bool(runs) and not (runs[-1] / "summary.json").exists()


def summary(storage: Path, name: str) -> dict:
    runs = sorted(storage.glob(f"{name}-*/summary.json"))
    return json.loads(runs[-1].read_text())


def side_by_side(rows: list[dict]) -> dict[str, dict]:
    """Per pretraining method: its probes and rayssl's linear evaluation of its backbone."""
    by_run = {r["run"]: r for r in rows}
    table = {}
    for method in METHODS.values():
        if f"{method} pretraining" not in by_run:
            continue
        pre, lin = by_run[f"{method} pretraining"], by_run[f"linear eval: {method} backbone"]
        table[method] = {
            "knn_acc": pre["knn_acc"],
            "linear_probe_acc": pre["linear_acc"],
            "online_linear_acc": pre["online_linear_acc"],
            "linear_eval_acc": lin["test_accuracy"],
        }
    if RANDOM in by_run:
        table["random init"] = {"linear_eval_acc": by_run[RANDOM]["test_accuracy"]}
    if RANDOM_SAMPLE in by_run:
        table["random init, per-image normalisation"] = {
            "linear_eval_acc": by_run[RANDOM_SAMPLE]["test_accuracy"]
        }
    vit = {}
    if RANDOM_VIT_PROBES in by_run:
        probes = by_run[RANDOM_VIT_PROBES]
        vit = {"knn_acc": probes["knn_acc"], "linear_probe_acc": probes["linear_acc"]}
    if RANDOM_VIT_SAMPLE in by_run:
        vit["linear_eval_acc"] = by_run[RANDOM_VIT_SAMPLE]["test_accuracy"]
    if vit:
        table["random init ViT-tiny, per-image normalisation"] = vit
    if SUPERVISED in by_run:
        table["supervised (ceiling)"] = {"test_accuracy": by_run[SUPERVISED]["test_accuracy"]}
    return table


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def markdown(result: dict) -> str:
    """The docs' table, from the result file: per method its probes at the end of
    pretraining and rayssl's linear evaluation, then the baselines."""

    def acc(value) -> str:
        return "" if value is None else f"{value:.3f}"

    by_run = {r["run"]: r for r in result["rows"]}
    lines = [
        "| backbone | kNN | standardised probe | online probe | linear evaluation "
        "| pretraining epochs, wall time | linear evaluation wall time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS.values():
        pre = by_run.get(f"{method} pretraining")
        lin = by_run.get(f"linear eval: {method} backbone")
        if pre is None or lin is None:
            continue
        norm = pre.get("normalize", "?")  # the run's data.normalize
        cells = [pre["knn_acc"], pre["linear_acc"], pre["online_linear_acc"]]
        lines.append(
            f"| {method} (`normalize: {norm}`) | "
            + " | ".join(acc(c) for c in cells)
            + f" | **{acc(lin['test_accuracy'])}** | {pre['epochs']}, "
            f"{_clock(pre['command_wall_s'])} | {_clock(lin['command_wall_s'])} |"
        )
    for label, name in (
        (RANDOM, "random init (`normalize: dataset`)"),
        (RANDOM_SAMPLE, "random init (`normalize: sample`)"),
        (RANDOM_VIT_SAMPLE, "random init ViT-tiny (`normalize: sample`)"),
    ):
        if label in by_run:
            r = by_run[label]
            probes = by_run.get(RANDOM_VIT_PROBES, {}) if label == RANDOM_VIT_SAMPLE else {}
            knn, probe = acc(probes.get("knn_acc")), acc(probes.get("linear_acc"))
            lines.append(
                f"| {name} | {knn} | {probe} | | {acc(r['test_accuracy'])} | | "
                f"{_clock(r['command_wall_s'])} |"
            )
    if SUPERVISED in by_run:
        r = by_run[SUPERVISED]
        lines.append(
            f"| supervised from scratch, same network (ceiling) | | | | "
            f"{acc(r['test_accuracy'])} (not frozen) | | {r['epochs']} epochs, "
            f"{_clock(r['command_wall_s'])} |"
        )
    return "\n".join(lines)


def _few_label_draws(rows: list[dict]) -> tuple[list[int], list[int]]:
    """The K values and the subset seeds (draws) the few-label rows hold."""
    ks, seeds = set(), {0}
    for r in rows:
        words = r["command"].split()
        for w in words:
            if w.startswith("data.labels_per_class="):
                ks.add(int(w.split("=")[1]))
            elif w.startswith("seed=") and any("labels_per_class=" in x for x in words):
                seeds.add(int(w.split("=")[1]))
    return sorted(ks), sorted(seeds)


def _few_label_backbones(by_run: dict[str, dict]) -> list[tuple[str, str, str | None]]:
    """(row label, table name, normalisation of its random-init twin) per backbone."""

    def pretrained(method: str) -> tuple[str, str, str]:
        norm = by_run.get(f"{method} pretraining", {}).get("normalize", "?")
        return f"linear eval: {method} backbone", f"{method} (`normalize: {norm}`)", norm

    return [pretrained(m) for m in METHODS.values()] + [
        (RANDOM, "random init (`normalize: dataset`)", None),
        (RANDOM_SAMPLE, "random init (`normalize: sample`)", None),
        (RANDOM_VIT_SAMPLE, "random init ViT-tiny (`normalize: sample`)", None),
        (SUPERVISED, "supervised from scratch, same network, not frozen", None),
    ]


def few_labels_markdown(result: dict) -> str:
    """The docs' few-label tables: rayssl's linear evaluation with every label and with K
    labels per class (the mean over the subset draws, lowest-highest), then each pretrained
    backbone's gain over the random network with its normalisation, paired draw by draw."""
    by_run = {r["run"]: r for r in result["rows"]}
    ks, seeds = _few_label_draws(result["rows"])

    def accs(label: str, k: int) -> list[float]:
        rows = (by_run.get(few_label(label, k, s)) for s in seeds)
        return [r["test_accuracy"] for r in rows if r is not None]

    def paired_gain(label: str, twin: str, k: int) -> list[float]:
        """`label`'s accuracy minus `twin`'s, per draw both ran (the same labelled images)."""
        pairs = (
            (by_run.get(few_label(label, k, s)), by_run.get(few_label(twin, k, s))) for s in seeds
        )
        return [a["test_accuracy"] - b["test_accuracy"] for a, b in pairs if a and b]

    def cell(values: list[float], scale: float = 1.0, sign: str = "") -> str:
        if not values:
            return ""
        v = [x * scale for x in values]
        digits = 1 if scale != 1.0 else 3
        mean = f"{sum(v) / len(v):{sign}.{digits}f}"
        return (
            mean
            if len(v) == 1
            else f"{mean} ({min(v):{sign}.{digits}f} to {max(v):{sign}.{digits}f})"
        )

    head = " | ".join(f"{k} labels per class" for k in ks)
    lines = [
        f"| backbone | every label (4,500) | {head} | wall time, {ks[-1]} per class, seed 0 |",
        "| --- | --- | " + " | ".join("---" for _ in ks) + " | --- |",
    ]
    gains = ["| pretrained backbone | " + " | ".join(f"{k} per class, gain" for k in ks) + " |"]
    gains.append("| --- | " + " | ".join("---" for _ in ks) + " |")
    for label, name, norm in _few_label_backbones(by_run):
        if not any(accs(label, k) for k in ks):
            continue
        full = by_run.get(label)
        cells = [cell([full["test_accuracy"]]) if full else ""] + [cell(accs(label, k)) for k in ks]
        last = by_run.get(few_label(label, ks[-1]))
        wall = _clock(last["command_wall_s"]) if last else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {wall} |")
        if norm is not None:
            twin = random_twin(label, norm)
            row = " | ".join(cell(paired_gain(label, twin, k), 100.0, "+") for k in ks)
            gains.append(f"| {name} | {row} |")
    draws = f"Seeds (subset draws): {', '.join(map(str, seeds))}; mean (lowest to highest)."
    return "\n".join([*lines, "", draws, "", *gains])


def random_vit_probes(storage: Path) -> dict:
    """The kNN and standardised probe of a random-init ViT-tiny, as a ViT method's own
    probes read its backbone: every training image fits them (data.val_fraction 0, as the
    ViT methods' configs), the test split scores, k as in configs/mae_images.yaml. The
    network is the frozen random init of a 1-epoch linear evaluation (seed 0: the init of
    the random ViT's linear evaluation), probed by `rayssl eval`."""
    import yaml

    k = yaml.safe_load((ROOT / "configs/mae_images.yaml").read_text())["eval"]["knn_k"]
    config, name = LINEAR_CONFIGS["mae"], "probes_random_vit_sample"
    sets = (
        f"storage_path={storage}", f"name={name}", "backbone.init_from=null",
        "data.normalize=sample", "data.val_fraction=0", "epochs=1",
    )  # fmt: skip
    flags = [x for s in sets for x in ("--set", s)]
    started = time.time()
    rayssl("train", config, *flags)
    run_dir = sorted(storage.glob(f"{name}-*/summary.json"))[-1].parent
    probed = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "eval", str(run_dir), "--knn-k", str(k)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    words = probed.stdout.split()  # "knn_acc 0.1234  linear_acc 0.5678"
    metrics = {words[i]: float(words[i + 1]) for i in range(0, len(words) - 1, 2)}
    return {
        "run": RANDOM_VIT_PROBES,
        "command": f"rayssl train {config} {' '.join(flags)} && rayssl eval RUN --knn-k {k}",
        "test_accuracy": None,
        "knn_acc": metrics["knn_acc"],
        "linear_acc": metrics["linear_acc"],
        "online_linear_acc": None,
        "normalize": "sample",
        "epochs": 1,
        "command_wall_s": round(time.time() - started, 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/demo_images-2core-cpu.json")
    parser.add_argument("--storage", default="runs/demo_images")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["simclr", "byol"],
        choices=METHODS,
        help="none (`--methods` alone): only the --baselines",
    )
    parser.add_argument(
        "--linear-only",
        nargs="*",
        default=[],
        choices=METHODS,
        help="methods whose pretraining row is kept: only their linear evaluation runs",
    )
    parser.add_argument(
        "--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINE_RUNS)
    )
    parser.add_argument(
        "--labels-per-class",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="also every linear evaluation and baseline with K labelled images per class",
    )
    parser.add_argument(
        "--label-seeds",
        type=int,
        nargs="*",
        default=[0],
        metavar="SEED",
        help="the --labels-per-class runs once per seed: another subset, head and order",
    )
    parser.add_argument(
        "--few-labels-only",
        action="store_true",
        help="run only the --labels-per-class rows (the pretraining runs must exist)",
    )
    parser.add_argument(
        "--random-vit-probes",
        action="store_true",
        help="also the kNN and standardised probe of a random-init ViT-tiny (rayssl eval)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a run of the plan that a killed command left unfinished (rayssl "
        "train --resume) instead of starting it again: pretraining longer than a session",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the docs' table from --out; run nothing"
    )
    return parser.parse_args()


def planned_runs(args: argparse.Namespace, storage: Path) -> list[tuple[str, ...]]:
    """(row label, config, run name, --set values...) of every run asked for, in order:
    pretraining, then linear evaluations and baselines with every label and with each
    `--labels-per-class` K and `--label-seeds` seed."""
    linear, runs = "configs/linear_eval_images.yaml", []
    for method in [] if args.few_labels_only else args.methods:
        if method not in args.linear_only:
            config, name = f"configs/{method}_images.yaml", f"{method}_images"
            runs.append((f"{METHODS[method]} pretraining", config, name))
    draws = [(None, 0)] if not args.few_labels_only else []
    draws += [(k, seed) for k in args.labels_per_class for seed in args.label_seeds]
    for k, seed in draws:
        few = (*few_label_sets(k), *([f"seed={seed}"] if seed else [])) if k else ()
        tag = (f"_{k}_per_class" if k else "") + (f"_seed{seed}" if seed else "")
        for method in args.methods:
            label = few_label(f"linear eval: {METHODS[method]} backbone", k, seed)
            init = f"backbone.init_from={storage}/{method}_images"
            config = LINEAR_CONFIGS.get(method, linear)
            runs.append((label, config, f"linear_{method}{tag}", init, *few))
        for key in args.baselines:
            label, name, sets = BASELINE_RUNS[key]
            config = LINEAR_CONFIGS["mae"] if "vit" in key else linear
            runs.append((few_label(label, k, seed), config, f"{name}{tag}", *sets, *few))
    return runs


def main() -> None:
    args = parse_args()
    out = ROOT / args.out
    if args.markdown:
        result = json.loads(out.read_text())
        print(markdown(result))
        if any("labels_per_class=" in r["command"] for r in result["rows"]):
            print()
            print(few_labels_markdown(result))
        return
    earlier = json.loads(out.read_text())["rows"] if out.exists() else []
    storage = ROOT / args.storage
    if not (ROOT / DATA).exists():
        rayssl("demo-images", DATA)
    where = f"storage_path={storage}"
    rows: list[dict] = []

    def run(label: str, config: str, name: str, *sets: str) -> dict:
        flags = [x for s in (where, f"name={name}", *sets) for x in ("--set", s)]
        resumed = args.resume and unfinished(storage, name)
        flags += ["--resume"] if resumed else []
        command = f"rayssl train {config} " + " ".join(flags)
        wall = rayssl("train", config, *flags)
        s = summary(storage, name)
        final = s["final_metrics"]
        row = {
            "run": label,
            "command": command,
            "test_accuracy": final.get("test_accuracy"),
            # the pretraining runs' probes at their last epoch: kNN, the standardised
            # logistic probe, and the online linear probe trained alongside
            **{
                key: next((h[key] for h in reversed(s["history"]) if key in h), None)
                for key in ("knn_acc", "linear_acc", "online_linear_acc")
            },
            "normalize": s["config"]["data"]["normalize"],  # a backbone's, where it brings one
            "epochs": s["epochs_run"],
            "command_wall_s": round(wall, 1),  # a resumed run's: its last command only
            "train_wall_s": round(s["wall_time_s"], 1),
            "samples_per_s": round(s["mean_samples_per_s"], 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    for spec in planned_runs(args, storage):
        run(*spec)
    if args.random_vit_probes:
        rows.append(random_vit_probes(storage))
        print(json.dumps(rows[-1]), flush=True)
    fresh = {r["run"] for r in rows}
    rows = [r for r in earlier if r["run"] not in fresh] + rows
    result = {
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
        "data": f"{DATA}: 5000 train / 1000 test 32x32 RGB PNGs (rayssl demo-images, fair preset)",
        "rows": rows,
        "side_by_side": side_by_side(rows),
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
