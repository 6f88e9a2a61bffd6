"""A user's method written only against rayssl's `Method` contract (no rayssl internals):
VICReg (Bardes et al. 2022). Used as `method: "vicreg:VICReg"` with this folder on the
PYTHONPATH of the driver and of Ray's workers."""

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.methods import Method


class VICReg(Method):
    num_views = 2  # the loop passes (view0, view1) as x

    def __init__(self, backbone, features, proj_dim=32, sim=25.0, var=25.0, cov=1.0):
        super().__init__()
        self.backbone = backbone  # the trained network: probes, export and init_from use it
        self.projector = nn.Sequential(
            nn.Linear(features, proj_dim),
            nn.BatchNorm1d(proj_dim),
            nn.ReLU(),
            nn.Linear(proj_dim, proj_dim),
        )
        self.weights = (sim, var, cov)

    def _loss(self, views):
        z0, z1 = (self.projector(self.backbone(v).flatten(1)) for v in views)
        sim, var, cov = self.weights

        def variance(z):
            return F.relu(1 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()

        def covariance(z):
            z = z - z.mean(dim=0)
            c = (z.T @ z) / (len(z) - 1)
            return (c - torch.diag(torch.diag(c))).pow(2).sum() / z.shape[1]

        return (
            sim * F.mse_loss(z0, z1)
            + var * (variance(z0) + variance(z1))
            + cov * (covariance(z0) + covariance(z1))
        )

    def training_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def validation_step(self, batch):
        return {"loss": self._loss(batch[0])}
