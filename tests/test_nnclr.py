"""NNCLR through the loop's own steps: the support set keeps the first view's latest unit
projections, the anchors come from it, and it resumes exactly (its loss under DDP and
against its definition: test_losses; its 2-worker restart: test_ssl_ray)."""

import torch
import torch.nn.functional as F
from conftest import assert_states_equal
from conftest import one_process_loop as make_loop

from rayssl.methods.losses import nearest_neighbours
from rayssl.methods.queue import EmbeddingQueue
from rayssl.runs.state import load_state, save_state

NNCLR = {
    "method": "nnclr",
    "epochs": 3,
    "backbone": {"name": "mlp", "hidden": [16]},
    "data": {"num_samples": 80, "batch_size": 32},  # 64 for training: 2 steps an epoch
    "nnclr": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "queue_length": 48},
}


def test_support_set_keeps_the_newest_feeds_the_anchors_and_resumes_exactly(tmp_path):
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


def test_queue_holds_exactly_the_latest_rows_across_wraps_and_long_pushes():
    """A ring buffer of 5: after pushes of 3 and 4 rows it holds the last 5 rows pushed (the
    first 2 dropped), and a push of 7 keeps only its own last 5; a restored copy continues
    where the original writes."""
    queue, pushed = EmbeddingQueue(5), torch.arange(14.0).unsqueeze(-1)

    def held(q):
        return sorted(q.rows()[0, :, 0].tolist())

    queue.push(pushed[:3].unsqueeze(0))
    assert held(queue) == [0.0, 1.0, 2.0] and not queue.full
    queue.push(pushed[3:7].unsqueeze(0))
    assert held(queue) == [2.0, 3.0, 4.0, 5.0, 6.0] and queue.full
    copy = EmbeddingQueue(5)
    copy.load_state_dict(queue.state_dict(), torch.device("cpu"))
    for q in (queue, copy):
        q.push(pushed[7:9].unsqueeze(0))
    assert held(queue) == held(copy) == [4.0, 5.0, 6.0, 7.0, 8.0]
    queue.push(pushed[7:14].unsqueeze(0))
    assert held(queue) == [9.0, 10.0, 11.0, 12.0, 13.0]


def test_a_queue_saved_before_the_ring_buffer_keeps_its_rows_and_evicts_the_oldest():
    """Audit 35.21: a queue saved newest first (each push went in front, no `head`) loaded
    with head 0: a partly filled queue lost its newest rows to the next push and counted
    zero rows as embeddings until it wrapped."""

    def held(q):
        return sorted(q.rows()[0, :, 0].tolist())

    def old_layout(pushes: list[list[float]], length: int) -> dict:
        # the pre-ring-buffer push, written out: queue = cat([batch, queue])[:length]
        queue = torch.zeros(1, length, 1)
        for batch in pushes:
            queue = torch.cat([torch.tensor(batch).view(1, -1, 1), queue], dim=1)[:, :length]
        filled = min(length, sum(len(b) for b in pushes))
        return {"queue": queue, "filled": filled}  # no "head"

    partly = EmbeddingQueue(8)
    partly.load_state_dict(old_layout([[1, 2], [3, 4], [5, 6]], 8), torch.device("cpu"))
    assert held(partly) == [1, 2, 3, 4, 5, 6]
    partly.push(torch.tensor([[7.0], [8.0]]).unsqueeze(0))
    assert held(partly) == [1, 2, 3, 4, 5, 6, 7, 8] and partly.full
    partly.push(torch.tensor([[9.0], [10.0]]).unsqueeze(0))
    assert held(partly) == [3, 4, 5, 6, 7, 8, 9, 10]  # the oldest batch went

    full = EmbeddingQueue(4)
    full.load_state_dict(old_layout([[1, 2], [3, 4], [5, 6]], 4), torch.device("cpu"))
    assert held(full) == [3, 4, 5, 6]
    full.push(torch.tensor([[7.0], [8.0]]).unsqueeze(0))
    assert held(full) == [5, 6, 7, 8]


def test_the_predictor_ends_in_a_plain_linear_layer_as_the_paper(write_config, tmp_path):
    """Audit 35.20: the predictor ended in BatchNorm; the paper's last layer has neither
    BatchNorm nor an activation. A run written with the old predictor still resumes."""
    from click.testing import CliRunner

    from rayssl.cli import main
    from rayssl.methods.nnclr import NNCLR as NNCLRMethod
    from rayssl.runs.state import STATE_FILE

    for predictor in (
        make_loop(NNCLR).method.prediction_head,
        NNCLRMethod(torch.nn.Linear(4, 4)).prediction_head,
    ):
        assert isinstance(predictor[-1], torch.nn.Linear) and predictor[-1].bias is not None
        assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in list(predictor)[-2:])
    projector = make_loop(NNCLR).method.projection_head
    assert isinstance(projector[-1], torch.nn.BatchNorm1d)  # the projector keeps it

    old = write_config(
        {
            **NNCLR,
            "num_workers": 0,
            "epochs": 1,
            "name": "old",
            "nnclr": {**NNCLR["nnclr"], "predictor_output_batch_norm": True},
        }
    )
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(old)]).exit_code == 0
    (state_file,) = (tmp_path / "runs").glob(f"old-*/checkpoint_*/{STATE_FILE}")
    state = load_state(state_file.parent)
    del state["config"]["nnclr"]["predictor_output_batch_norm"]  # as rayssl wrote it before
    save_state(state, state_file.parent)
    same = write_config({**NNCLR, "num_workers": 0, "epochs": 2, "name": "old"})
    result = runner.invoke(main, ["train", str(same), "--resume"])
    assert result.exit_code == 0, result.output
