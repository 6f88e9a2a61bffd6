"""NNCLR through the loop's own steps: the support set fills with the first view's unit
projections, the anchors come from it, and it resumes exactly (its loss under DDP and
against its definition: test_losses; its 2-worker restart: test_ssl_ray)."""

import torch
import torch.nn.functional as F
from conftest import assert_states_equal
from conftest import one_process_loop as make_loop

from rayssl.losses import nearest_neighbours
from rayssl.state import load_state, save_state

NNCLR = {
    "method": "nnclr",
    "epochs": 3,
    "backbone": {"name": "mlp", "hidden": [16]},
    "data": {"num_samples": 80, "batch_size": 32},  # 64 for training: 2 steps an epoch
    "nnclr": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "queue_length": 48},
}


def test_support_set_fills_newest_first_feeds_the_anchors_and_resumes_exactly(tmp_path):
    loop = make_loop(NNCLR)
    assert loop.steps_per_epoch == 2 and loop.method.support.filled == 0
    z = torch.randn(4, 8)
    assert torch.equal(loop.method._anchor(z), z)  # an empty support set: itself

    loop.run_epoch()  # 2 pushes of 32: the first 16 of the first push fall out
    support = loop.method.support
    assert support.filled == 48 and support.queue.shape == (1, 48, 8)
    rows = support.rows()[0]
    assert torch.allclose(rows.norm(dim=1), torch.ones(48), atol=1e-5)
    anchors = loop.method._anchor(z)
    assert torch.equal(anchors, nearest_neighbours(z, rows))
    scores = F.normalize(z, dim=1) @ rows.T  # every anchor is a stored row, the closest
    best = scores.max(dim=1).values
    chosen = (F.normalize(z, dim=1) * anchors).sum(1) / anchors.norm(dim=1)
    assert torch.allclose(chosen, best, atol=1e-5)

    save_state(loop.state_dict(), tmp_path)
    saved = support.queue.clone()
    loop.run_epoch(), loop.run_epoch()
    assert not torch.equal(support.queue, saved)
    torch.manual_seed(999)
    resumed = make_loop(NNCLR)
    resumed.load_state_dict(load_state(tmp_path))
    assert torch.equal(resumed.method.support.queue, saved)
    resumed.run_epoch(), resumed.run_epoch()
    assert_states_equal(loop.method.state_dict(), resumed.method.state_dict())
    assert torch.equal(loop.method.support.queue, resumed.method.support.queue)
