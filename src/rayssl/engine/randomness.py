"""This rank's randomness in training, as one part with its own state: the process RNGs
(Python's, NumPy's, torch's: dropout and anything else a method draws) and the generator of
the training views. A checkpoint carries one entry per rank (`rank_state`), so a restart on
the same number of workers draws what an uninterrupted run would; a restart on another
number derives fresh per-rank streams (`seeds.resized_rank`), reproducibly."""

from __future__ import annotations

from typing import Any

import torch

from rayssl import seeds
from rayssl.engine.checkpoint import LoopState
from rayssl.runs.state import capture_rng, restore_rng


class TrainingRandomness:
    """The view generator and the process RNGs of one rank.

    Views depend only on (seed, epoch, rank): `start_epoch` reseeds the generator, so a run
    resumed at an epoch boundary draws the same views as one that never stopped. A run
    resumed mid-epoch (a preemption checkpoint) continues from the generator's saved state;
    resumed mid-epoch on another number of workers, each rank draws a stream of its own for
    the rest of the epoch (the saved states belong to the old ranks)."""

    def __init__(self, seed: int, rank: int, world_size: int, device: torch.device):
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.views = torch.Generator(device=device)
        self._saved_views: torch.Tensor | None = None  # a mid-epoch checkpoint's, until used

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        """Seed the views of `epoch`, of which `step_in_epoch` steps are already done."""
        self.views.manual_seed(seeds.epoch_views(self.seed, epoch, self.rank))
        if step_in_epoch:
            if self._saved_views is not None:  # this rank's generator where it was
                self.views.set_state(self._saved_views)
            else:  # another world size: a stream of its own for the rest of the epoch
                stream = seeds.resized_views(self.seed, epoch, self.rank, step_in_epoch)
                self.views.manual_seed(stream)
        self._saved_views = None

    def rank_state(self) -> dict[str, Any]:
        """This rank's state: its RNGs and the view generator. The caller gathers one per
        rank and hands the list to `state_dict`."""
        return {**capture_rng(), "views": self.views.get_state()}

    def state_dict(self, rank_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Checkpoint key `rng`: one entry per rank; without `rank_states`, this process's
        own, stored as rank 0's."""
        return {"rng": rank_states if rank_states is not None else [self.rank_state()]}

    def load_state_dict(self, state: dict[str, Any], progress: LoopState) -> None:
        """Restore this rank's entry, where the checkpoint has one per rank of this run;
        else (an elastic resize) derive fresh per-rank streams and record the resize in
        `progress`, the restored counters."""
        entries = state["rng"]
        if len(entries) == self.world_size:
            restore_rng(entries[self.rank])
            self._saved_views = entries[self.rank].get("views") if progress.step_in_epoch else None
            return
        seeds.seed_everything(
            seeds.resized_rank(self.seed, progress.global_step, self.rank, self.world_size)
        )
        progress.resizes.append(
            {
                "epoch": progress.epoch,
                "step": progress.global_step,
                "from": len(entries),
                "to": self.world_size,
            }
        )
        if self.rank == 0:
            print(
                f"[rayssl] resized from {len(entries)} to {self.world_size} workers at epoch "
                f"{progress.epoch + 1}, step {progress.global_step}: the global batch, the "
                "schedules and the counters carry on; per-rank random streams are derived "
                "afresh for the new size (reproducible, not bitwise equal to a fixed size)",
                flush=True,
            )
