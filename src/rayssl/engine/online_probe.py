"""The online linear probe (`eval.online_linear`): a linear classifier trained alongside a
self-supervised method on detached backbone features, as solo-learn's online evaluation.

It reads the same features as the kNN / linear probes and linear evaluation (the backbone
in eval mode on clean inputs, standardised by a BatchNorm1d(affine=False)), so its accuracy
tracks what a linear evaluation would give without a second run. The features are computed
under no_grad: the probe never changes the method's gradients, weights or buffers, and its
parameters live outside the DDP model, so their gradients are averaged over ranks here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayssl import distributed
from rayssl.optim.setup import load_optimizer_state


class OnlineLinearProbe:
    def __init__(
        self,
        features: int,
        num_classes: int,
        lr: float,
        *,
        device: torch.device,
        seed: int,
        world_size: int = 1,
    ):
        # its own seed, outside the global RNG: turning the probe on draws no random numbers
        # the run would otherwise use
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Sequential(
                nn.BatchNorm1d(features, affine=False), nn.Linear(features, num_classes)
            ).to(device)
        # fused: its step reads nothing back to the host (engine/guard.py)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=lr, fused=True)
        self.world_size = world_size

    def step(self, features: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on this rank's (B, F) detached features and labels; the
        gradients are averaged over ranks, so every rank's probe stays the same."""
        self.head.train()
        loss = F.cross_entropy(self.head(features.detach().float()), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed.active():  # two small tensors: weight and bias
            for p in self.head.parameters():
                distributed.all_reduce_sum(p.grad).div_(self.world_size)
        self.optimizer.step()

    def sync(self) -> None:
        """Rank 0's BatchNorm statistics on every rank (they are rank-local while training);
        called at epoch ends, where checkpoints and evaluation happen."""
        distributed.broadcast_from_rank0(list(self.head.buffers()))

    @torch.no_grad()
    def accuracy(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        embed: Callable[[torch.Tensor], torch.Tensor],
    ) -> float:
        """Share of this split's samples (every rank's shard, summed) the probe labels right."""
        self.head.eval()
        device = next(self.head.parameters()).device
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, total
        for x, y in batches:  # counted on the device: no host sync per batch
            predicted = self.head(embed(x).float()).argmax(1)
            counts[0] += (predicted == y).sum()
            counts[1] += len(y)
        distributed.all_reduce_sum(counts)
        correct, total = counts.tolist()
        return correct / max(total, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        load_optimizer_state(self.optimizer, state["optimizer"])
