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
