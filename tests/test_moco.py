"""MoCo v3's heads as its reference code builds them for a ResNet (its loss under DDP and
against its definition: test_losses; its 2-worker restart: test_ssl_ray)."""

import torch
from conftest import one_process_loop as make_loop
from torch import nn

from rayssl.runs.state import STATE_FILE, load_state, save_state

MOCO = {
    "method": "moco",
    "epochs": 1,
    "backbone": {"name": "mlp", "hidden": [16]},
    "data": {"num_samples": 80, "batch_size": 32},
    "moco": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16},
}


def _kinds(head: nn.Module) -> list[str]:
    return [type(m).__name__ for m in head]


def test_the_heads_are_the_reference_resnet_heads(write_config, tmp_path):
    """Audit 35.22: the projector had 3 layers and no final BatchNorm; the reference's
    ResNet projector has 2 and ends in BatchNorm1d(affine=False); its predictor ends in a
    Linear. A run written with the old heads still resumes."""
    from click.testing import CliRunner

    from rayssl.cli import main
    from rayssl.methods.moco import MoCo

    for method in (make_loop(MOCO).method, MoCo(nn.Linear(4, 4))):
        projector, predictor = method.projection_head, method.prediction_head
        assert _kinds(projector) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
        assert projector[-1].affine is False and projector[1].affine is True
        assert all(m.bias is None for m in projector if isinstance(m, nn.Linear))
        assert _kinds(predictor) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
        out = method.projection_head.train()(torch.randn(64, projector[0].in_features))
        assert torch.allclose(out.mean(0), torch.zeros(out.shape[1]), atol=1e-5)

    old = {**MOCO, "num_workers": 0, "name": "old"}
    old["moco"] = {**MOCO["moco"], "proj_layers": 3, "proj_output_batch_norm": False}
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(write_config(old))]).exit_code == 0
    (state_file,) = (tmp_path / "runs").glob(f"old-*/checkpoint_*/{STATE_FILE}")
    state = load_state(state_file.parent)
    for key in ("proj_layers", "proj_output_batch_norm"):  # as rayssl wrote it before
        del state["config"]["moco"][key]
    save_state(state, state_file.parent)
    same = write_config({**MOCO, "num_workers": 0, "epochs": 2, "name": "old"}, name="same")
    result = runner.invoke(main, ["train", str(same), "--resume"])
    assert result.exit_code == 0, result.output
