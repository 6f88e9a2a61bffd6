import pytest
import torch
from torch import nn

from rayssl import nets


@pytest.mark.parametrize(
    "factory, shape, features",
    [
        (nets.mlp, (1, 40), 256),
        (nets.cnn1d, (1, 40), 64),
        (nets.cnn1d, (40,), 64),
        (nets.cnn2d, (1, 8, 8), 128),
        (nets.resnet18, (3, 16, 16), 512),
        (nets.resnet50, (3, 32, 32), 2048),
    ],
)
def test_backbones_map_samples_to_features(factory, shape, features):
    net = nets.call_factory(factory, {}, input_shape=shape)
    assert net(torch.randn(4, *shape)).shape == (4, features)
    assert nets.output_features(net, shape) == features


def test_resnet18_has_resnet18_depth():
    net = nets.resnet18((3, 32, 32))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # stem + 8 blocks x 2


@pytest.mark.parametrize(
    "factory, parameters",
    # torchvision's documented totals (11,689,512 and 25,557,032) minus the 1000-class fc
    [(nets.resnet18, 11_689_512 - 513_000), (nets.resnet50, 25_557_032 - 2_049_000)],
)
def test_imagenet_stem_resnets_have_the_published_parameter_counts(factory, parameters):
    net = factory((3, 64, 64), stem="imagenet")
    assert sum(p.numel() for p in net.parameters()) == parameters


def test_stems_set_the_resolution_of_the_first_stage():
    seen = {}
    for stem in ("cifar", "imagenet"):
        net = nets.resnet18((3, 64, 64), stem=stem)
        first_block = next(m for m in net if isinstance(m, nets.builtin._BasicBlock))
        first_block.register_forward_pre_hook(
            lambda m, i, stem=stem: seen.update({stem: i[0].shape})
        )
        net(torch.randn(2, 3, 64, 64))
    assert seen["cifar"][-2:] == (64, 64) and seen["imagenet"][-2:] == (16, 16)
    with pytest.raises(ValueError, match="stem must be 'cifar' or 'imagenet'"):
        nets.resnet18((3, 32, 32), stem="tiny")


def test_user_factory_gets_only_the_inferred_args_it_accepts():
    def factory(in_features, hidden=4):
        return nn.Linear(in_features, hidden)

    net = nets.call_factory(factory, {"hidden": 3}, in_features=5, num_classes=10)
    assert net.out_features == 3


def test_factory_must_return_a_module():
    with pytest.raises(TypeError, match="not nn.Module"):
        nets.call_factory(lambda: 3, {})


def test_cnn1d_rejects_images():
    with pytest.raises(ValueError, match="cnn1d takes"):
        nets.cnn1d((3, 8, 8))


def test_a_timm_model_is_a_backbone_by_import_path(write_config):
    """timm is an optional extra (`pip install -e '.[timm]'`): skipped where it is not
    installed or cannot import (timm needs a torchvision built for the installed torch)."""
    try:
        import timm  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision's operator error at import
        pytest.skip(f"timm not importable here ({type(exc).__name__})")
    from rayssl.config import load_train_config
    from rayssl.methods.registry import build_method

    config = write_config(
        {
            "method": "simclr",
            "data": {"shape": [3, 32, 32]},
            "backbone": {
                "name": "timm:create_model",
                "model_name": "resnet10t",
                "pretrained": False,  # offline: nothing downloads
                "num_classes": 0,  # features, no classifier
            },
            "simclr": {"proj_hidden": 16, "proj_dim": 8},
        }
    )
    cfg = load_train_config(config)
    method = build_method(cfg, (3, 32, 32), 4)
    x = torch.rand(4, 3, 32, 32)
    loss = method.training_step(((x, x.flip(-1)), torch.zeros(4, dtype=torch.long)))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and method.embed(x).shape == (4, 512)
