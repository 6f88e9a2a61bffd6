from pathlib import Path

import pytest

from rayssl.config import (
    ConfigError,
    TrainConfig,
    load_train_config,
    parse_overrides,
    validate_train_config,
)


def test_empty_config_is_a_valid_supervised_mnist1d_run():
    cfg = validate_train_config({})
    assert cfg.method == "supervised" and cfg.data.name == "mnist1d"


def test_overrides_are_yaml_typed_and_nested(write_config):
    path = write_config()
    cfg = load_train_config(path, ["optimizer.lr=0.5", "data.augment.shift=3", "use_gpu=false"])
    assert cfg.optimizer.lr == 0.5 and cfg.data.augment.shift == 3 and cfg.use_gpu is False
    assert cfg.name == "tiny"  # defaults to the file stem


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"optimzer": {}}, "optimzer: unknown key; accepted keys here: method,"),
        ({"optimizer": {"lr": 0}}, "optimizer.lr: Input should be greater than 0 (got 0)"),
        (
            {"optimizer": {"name": "lamb"}},
            "optimizer.name: Input should be 'adam', 'adamw', 'sgd' or 'lars'",
        ),
        ({"epochs": "ten"}, "epochs: Input should be a valid integer"),
        ({"data": {"batch_size": 33}, "num_workers": 2}, "must be divisible by num_workers"),
        ({"backbone": {"name": "nope.module:fn"}}, "backbone.name 'nope.module:fn': cannot import"),
        ({"backbone": {"name": "cnn1d", "widht": 3}}, "unknown option 'widht'; accepted: width"),
        ({"data": {"name": "npz"}}, "data.path is required"),
        ({"data": {"augment": {"scale": 1.5}}}, "data.augment.scale: Input should be less than 1"),
        ({"simclr": {"temperature": 0}}, "simclr.temperature: Input should be greater than 0"),
        (
            {"byol": {"base_momentum": 1.5}},
            "byol.base_momentum: Input should be less than or equal to 1",
        ),
        ({"lfr": {"num_projectors": 4, "num_targets": 8}}, "lfr.num_targets (8) cannot exceed"),
        (
            {"method": "beit"},
            "method: 'beit' is neither one of supervised, byol, simclr, lfr, barlow_twins, "
            "vicreg, moco, dino, swav, simsiam, nnclr, mae, ibot nor",
        ),
    ],
)
def test_bad_values_name_the_field(raw, expected):
    with pytest.raises(ConfigError) as info:
        validate_train_config(raw)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "missing.yaml")


def test_override_needs_key_value():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["optimizer.lr"])


def test_user_factory_kwargs_are_checked():
    cfg = TrainConfig(backbone={"name": "torch.nn:Identity"})
    assert cfg.backbone.name == "torch.nn:Identity"  # Identity(*args, **kwargs) takes anything
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        validate_train_config({"backbone": {"name": "torch.nn:Nope"}})


def test_every_shipped_config_is_valid():
    """configs/*.yaml are what users start from: each validates as it stands."""
    shipped = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(shipped) >= 11
    for path in shipped:
        cfg = load_train_config(path)
        stem = path.stem.replace("linear_eval", "supervised").replace("finetune", "supervised")
        assert cfg.method in stem, path.name


def test_ibot_configs_evaluate_in_batches_no_larger_than_training():
    """iBOT's val / test loss is its training loss (every patch of 2 views through a head of
    thousands of logits), so its memory grows with the batch as training's: the demo config's
    test split in the default eval batch of 1,024 a worker (500 on 2) drove each of its 2
    workers past 10 GB and the 24-GB node ran out of memory at the end of the run."""
    shipped = sorted((Path(__file__).parents[1] / "configs").glob("ibot*.yaml"))
    assert len(shipped) >= 2
    for path in shipped:
        cfg = load_train_config(path)
        per_worker = cfg.data.batch_size // max(cfg.num_workers, 1)
        assert cfg.data.eval_batch_size <= per_worker, path.name


def test_the_configuration_page_is_current():
    """docs/configuration.md is generated from the schema's Field descriptions; after a
    change to the schema, regenerate it: python -m rayssl.config.reference > docs/..."""
    from rayssl.config.reference import render

    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert page == render(), "run: python -m rayssl.config.reference > docs/configuration.md"
    for section in ("barlow_twins", "moco", "model", "eval", "data.augment.image"):
        assert f"## `{section}`" in page
    assert "| `trust_coefficient` | float | `0.001` | > 0.0, <= 1.0 |" in page


def test_the_schema_accepts_local_crops_exactly_for_the_classes_that_take_them():
    """The config accepts local crops for a built-in whose class sets `multi_crop` (the loop
    adds them for those classes) and refuses them for every other built-in; every built-in
    is a section of the schema and a Method subclass of its own module."""
    from rayssl.config import BUILTIN_METHODS, TrainConfig
    from rayssl.methods import Method
    from rayssl.methods.registry import BUILTINS

    assert BUILTIN_METHODS == tuple(BUILTINS) and len(BUILTINS) == 13
    crops = {"shape": [3, 16, 16], "num_samples": 64, "batch_size": 16}
    image = {"local_crops": {"number": 2, "size": 8}}
    taking = set()
    for name, builtin in BUILTINS.items():
        assert issubclass(builtin.cls, Method) and name in TrainConfig.model_fields
        assert builtin.cls.__module__ == f"rayssl.methods.{name}"
        raw = {"method": name, "data": {"name": "synthetic", **crops, "augment": {"image": image}}}
        try:
            validate_train_config(raw)
            taking.add(name)
        except ConfigError as exc:
            assert "local_crops" in str(exc)
    assert taking == {"dino", "swav", "ibot"}
    assert taking == {n for n, b in BUILTINS.items() if getattr(b.cls, "multi_crop", False)}
