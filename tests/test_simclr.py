import pytest
from torch import nn

from rayssl.methods.simclr import SimCLR


def test_minervas_lr_is_an_alias_of_learning_rate():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(8, 16))
    head = nn.Linear(16, 4)
    assert SimCLR(backbone, head, lr=0.02).learning_rate == 0.02  # Minerva's signature
    assert SimCLR(backbone, head, learning_rate=0.03).learning_rate == 0.03
    with pytest.raises(ValueError, match=r"give lr \(0.02\) or learning_rate \(0.03\)"):
        SimCLR(backbone, head, lr=0.02, learning_rate=0.03)


def test_the_projector_can_end_in_batchnorm_as_simclrs_code():
    """simclr.output_batch_norm: the projector's output is batch-normalised (each output
    feature mean 0, std 1 over the batch in training mode), the last Linear without a bias;
    off by default (the head rayssl's published SimCLR numbers used)."""
    import torch

    from rayssl.config import validate_train_config
    from rayssl.methods.registry import build_method

    def head(**simclr):
        cfg = validate_train_config({"method": "simclr", "simclr": simclr})
        return build_method(cfg, (1, 40), 10).projection_head

    plain, normed = head(), head(output_batch_norm=True)
    assert isinstance(plain[-1], nn.Linear) and plain[-1].bias is not None
    assert isinstance(normed[-1], nn.BatchNorm1d) and normed[-2].bias is None
    z = normed.train()(torch.randn(64, normed[0].in_features) * 3 + 1)
    assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(z.shape[1]), atol=1e-2)
