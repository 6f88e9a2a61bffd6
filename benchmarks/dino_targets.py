"""DINO with a ViT: what the teacher's targets look like over the first steps, to see why a
recipe collapses to the uniform distribution (loss ln(out_dim)).

    python benchmarks/dino_targets.py --steps 40 [key=value ...] \\
        [--out benchmarks/results/dino_targets-2core-cpu.json]

configs/dino_vit_images.yaml on the 512 demo images at batch 64 (benchmarks/
loss_curve_vs_lightly.py's settings: rayssl's Loop in one process, one torch thread), with
the overrides given. Each step records, from the loss's own inputs: the loss; the entropy of
the teacher's targets softmax((t - centre) / temp) and of the student's distribution (ln
out_dim is uniform); the spread of the teacher's centred logits across the batch's samples
in units of its temperature (the mean over prototypes of the standard deviation across
samples: below about 1 the targets hardly differ from sample to sample); and the mean top
probability of the targets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loss_curve_vs_lightly  # noqa: E402  (benchmarks/, beside this file)
import torch  # noqa: E402

from rayssl.data import load_splits  # noqa: E402
from rayssl.engine import Loop  # noqa: E402
from rayssl.methods import dino  # noqa: E402
from rayssl.methods.registry import build_method  # noqa: E402
from rayssl.seeds import seed_everything  # noqa: E402


def recording(rows: list[dict]):
    forward = dino.DINOLoss.forward

    def recorded(self, student, teacher, teacher_temp, globals_):
        loss = forward(self, student, teacher, teacher_temp, globals_)
        with torch.no_grad():
            centred = (teacher - self.center) / teacher_temp
            targets = centred.softmax(-1)
            log_student = (student / self.student_temp).log_softmax(-1)
            rows.append({
                "loss": round(float(loss), 4),
                "teacher_entropy": round(float(-(targets * targets.clamp_min(1e-12).log())
                                               .sum(-1).mean()), 4),
                "student_entropy": round(float(-(log_student.exp() * log_student)
                                               .sum(-1).mean()), 4),
                "spread_over_temp": round(float(centred.std(0).mean()), 4),
                "top_target_p": round(float(targets.max(-1).values.mean()), 4),
            })  # fmt: skip
        return loss

    return recorded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = max(10, math.ceil(args.steps / 8))  # the lr schedule's length, as a 10-epoch run
    cfg = loss_curve_vs_lightly.config(64, epochs, args.overrides)
    rows: list[dict] = []
    dino.DINOLoss.forward = recording(rows)
    splits = load_splits(cfg.data, cfg.seed)
    seed_everything(cfg.seed)
    loop = Loop(build_method(cfg, splits.sample_shape, splits.num_classes), splits, cfg)
    while len(rows) < args.steps:
        loop.start_epoch()
        for _ in loop.iterate():
            step = len(rows)
            if step <= 5 or step % 4 == 0:
                print(step, json.dumps(rows[-1]), flush=True)
            if step >= args.steps:
                break
        loop.state.epoch += 1
    result = {
        "command": "python " + " ".join(sys.argv),
        "overrides": args.overrides,
        "ln_out_dim": round(math.log(cfg.dino.out_dim), 4),
        "steps": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
