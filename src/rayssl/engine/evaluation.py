"""Evaluation during training: the loss and method metrics on val / test every epoch, the
kNN and linear probes of the frozen backbone every `eval.every` epochs, and the online
linear probe trained alongside an SSL method."""

from __future__ import annotations

from typing import Any

import torch

from rayssl import seeds
from rayssl.config import TrainConfig
from rayssl.data import Splits
from rayssl.engine.inputs import Inputs, eval_batches
from rayssl.engine.metrics import RunningMean
from rayssl.engine.online_probe import OnlineLinearProbe
from rayssl.engine.probes import features_of, probe_features
from rayssl.engine.step import autocast
from rayssl.methods import Method


class Evaluation:
    """Everything a run measures besides its training loss, on this rank's share of each
    split: the val / test loss and the method's metrics (reduced across ranks), the kNN and
    linear probes (`probe_splits`), and the online linear probe (`eval.online_linear`),
    whose state it owns."""

    def __init__(
        self,
        method: Method,
        cfg: TrainConfig,
        splits: Splits,
        inputs: Inputs,
        *,
        device: torch.device,
        rank: int,
        world_size: int,
    ):
        self.method, self.cfg, self.splits, self.inputs = method, cfg, splits, inputs
        self.device, self.rank, self.world_size = device, rank, world_size
        self.batches = {
            stage: eval_batches(pair, cfg, device, rank, world_size)
            for stage, pair in (("val", splits.val), ("test", splits.test))
        }
        self.generator = torch.Generator(device=device)
        self.loss = RunningMean(device)
        self.online_probe = self._online_probe(world_size)

    @torch.no_grad()
    def evaluate(self, stage: str, cycle: int) -> dict[str, float]:
        """Loss and method metrics over the whole `stage` split, reduced across ranks;
        `cycle` is the 1-based epoch being evaluated."""
        batches = self.batches[stage]
        if batches is None:
            return {}
        if stage == "val":
            self.method.on_validation_start(cycle)
        else:
            self.method.on_testing_start()
        self.method.eval()
        step = self.method.validation_step if stage == "val" else self.method.test_step
        # SSL losses need their views: seeded the same every epoch (per rank, so an SSL
        # val_loss depends on num_workers; documented). Predictions see clean inputs.
        self.generator.manual_seed(seeds.eval_views(self.cfg.seed, self.rank))
        for x, y in batches:
            with autocast(self.cfg, self.device):
                loss = step((self.inputs.evaluation(x, self.generator), y))["loss"]
            self.loss.update(loss, weight=len(x))
        metrics = {f"{stage}_loss": self.loss.compute()}
        metrics.update(self.method.epoch_metrics(stage))
        self.loss.reset()
        self.method.train()
        if stage == "val":
            self.method.on_validation_end(cycle)
        else:
            self.method.on_testing_end()
        return metrics

    @torch.no_grad()
    def probe(self) -> dict[str, float]:
        """kNN and linear-probe accuracy of the frozen backbone's features, fitted on the
        train split (at most `eval.probe_train_limit` rows), scored on test (or val).
        Every rank embeds its own share of both; the probes run across the ranks, so the
        result is the same on every rank and for any number of workers."""
        if self.splits.probe_sets(self.cfg.seed, self.cfg.eval.probe_train_limit) is None:
            return {}
        self.method.eval()
        metrics = probe_splits(
            self.inputs, self.cfg, self.splits, self.device, self.rank, self.world_size
        )
        self.method.train()
        return metrics

    def online_probe_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One step of the online probe (if any) on the clean features of a training batch."""
        if self.online_probe is not None:
            self.online_probe.step(self.inputs.clean_features(x), y)

    def end_of_epoch(self) -> None:
        """Every rank: the online probe's weights made equal across ranks."""
        if self.online_probe is not None:
            self.online_probe.sync()

    def state_dict(self) -> dict[str, Any]:
        """The online probe's state (checkpoint key `online_probe`), if the run has one."""
        return {} if self.online_probe is None else {"online_probe": self.online_probe.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.online_probe is not None and "online_probe" in state:
            self.online_probe.load_state_dict(state["online_probe"])

    def online_accuracy(self) -> dict[str, float]:
        """The online probe's accuracy on the probes' scoring split (after syncing it)."""
        if self.online_probe is None:
            return {}
        return {
            "online_linear_acc": self.online_probe.accuracy(
                self._scored_batches(), self.inputs.clean_features
            )
        }

    def _scored_batches(self):
        """The split the probes score on: test, else val (this rank's shard of it)."""
        return self.batches["test"] if self.batches["test"] is not None else self.batches["val"]

    def _online_probe(self, world_size: int) -> OnlineLinearProbe | None:
        """`eval.online_linear` on a self-supervised run with labeled data to score on."""
        wanted = self.cfg.eval.online_linear and self.cfg.method != "supervised"
        if not (wanted and self.splits.labeled and self._scored_batches() is not None):
            return None
        sample = torch.zeros(2, *self.splits.sample_shape, device=self.device)
        return OnlineLinearProbe(
            self.inputs.clean_features(sample).shape[1],
            self.splits.num_classes,
            self.cfg.eval.online_linear_lr,
            device=self.device,
            seed=seeds.online_probe(self.cfg.seed),
            world_size=world_size,
        )


@torch.no_grad()
def probe_splits(
    inputs: Inputs, cfg: TrainConfig, splits: Splits, device, rank: int, world_size: int,
    knn_k: int | None = None, progress=None,
) -> dict[str, float]:  # fmt: skip
    """The probes of `inputs`' frozen features: this rank embeds its share of the fit and
    scored splits (`Splits.probe_sets`), then kNN and the linear probe run across the ranks.
    A run's evaluation and `rayssl eval` (in-process or on workers) both come here.
    `progress(batches, label)`: wraps each split's batches (`rayssl eval`'s bar)."""
    sets = splits.probe_sets(cfg.seed, cfg.eval.probe_train_limit)
    sample = torch.zeros(1, *splits.sample_shape, device=device)  # an empty share's width
    show = progress or (lambda batches, label: batches)
    fit, scored = (
        features_of(
            inputs.frozen_embed,
            show(eval_batches(split, cfg, device, rank, world_size), f"embedding {name}"),
            sample,
        )
        for split, name in zip(sets, ("the fit split", "the scored split"), strict=True)
    )
    return probe_features(
        *fit,
        *scored,
        k=knn_k or cfg.eval.knn_k,
        linear=cfg.eval.linear_probe,
        num_classes=splits.num_classes,
    )
