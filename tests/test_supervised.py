import torch
import torch.multiprocessing as mp
from conftest import gloo_group, leave_gloo_group
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from rayssl.methods import SimpleSupervisedModel


def _model(**kwargs):
    return SimpleSupervisedModel(
        backbone=nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
        fc=nn.Linear(8, 3),
        loss_fn=nn.CrossEntropyLoss(),
        val_metrics={"accuracy": MulticlassAccuracy(num_classes=3, average="micro")},
        **kwargs,
    )


def test_steps_return_loss_and_metrics_are_prefixed():
    model = _model()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    assert model.training_step((x, y))["loss"].requires_grad
    model.validation_step((x, y))
    metrics = model.epoch_metrics("val")
    assert set(metrics) == {"val_accuracy"} and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert model.epoch_metrics("train") == {}


def test_freeze_backbone_keeps_backbone_out_of_the_optimizer():
    model = _model(freeze_backbone=True)
    stepped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert stepped == {id(p) for p in model.fc.parameters()}
    optimizer, scheduler = model.configure_optimizers(total_steps=10, steps_per_epoch=5)
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None


def test_adapter_and_predict():
    model = _model(adapter=lambda f: f * 0)
    out = model.predict(torch.randn(5, 4))
    assert out.shape == (5, 3)
    assert torch.allclose(out, model.fc.bias.expand(5, 3))  # adapter zeroed the features


def test_scheduler_class_gets_total_steps():
    model = _model(
        lr_scheduler=torch.optim.lr_scheduler.OneCycleLR, lr_scheduler_kwargs={"max_lr": 0.1}
    )
    _, scheduler = model.configure_optimizers(total_steps=7, steps_per_epoch=7)
    assert scheduler.total_steps == 7


def test_a_frozen_backbone_linear_eval_reaches_the_standardised_probe():
    """Linear evaluation (frozen random MLP features of scikit-learn digits, 10 epochs):
    with the features standardised before the head (the default for a frozen backbone) the
    head comes within 1 point of the standardised logistic-regression probe on the same
    features; without, it stays further off (measured: 0.969 and 0.931 vs the probe's 0.975)."""
    from rayssl.config import validate_train_config
    from rayssl.data import load_splits
    from rayssl.engine import Loop
    from rayssl.engine.probes import extract_features, linear_probe_accuracy
    from rayssl.methods.registry import build_method
    from rayssl.seeds import seed_everything

    def linear_eval(standardize):
        cfg = validate_train_config(
            {
                "num_workers": 1,
                "epochs": 10,
                "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
                "backbone": {"name": "mlp", "hidden": [128]},
                "supervised": {"freeze_backbone": True, "standardize_features": standardize},
                "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
                "lr_scheduler": {"name": "warmup_cosine", "warmup_epochs": 1},
            }
        )
        splits = load_splits(cfg.data, cfg.seed)
        seed_everything(cfg.seed)
        method = build_method(cfg, splits.sample_shape, splits.num_classes)
        accuracy = list(Loop(method, splits, cfg).epochs())[-1]["test_accuracy"]
        method.eval()
        train, test = (
            extract_features(lambda x: method.backbone(x).flatten(1), s[0])
            for s in (splits.train, splits.test)
        )
        return accuracy, linear_probe_accuracy(train, splits.train[1], test, splits.test[1])

    standardised, probe = linear_eval(None)
    raw, same_probe = linear_eval(False)
    assert same_probe == probe  # the same frozen features
    assert abs(standardised - probe) <= 0.01
    assert probe - raw > 0.02


def _scored_batches(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and targets of 5 classes: class 3 is predicted but never a target, class 4
    neither a target nor a prediction (the cases where macro averages differ)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (200,), generator=g)
    scores = torch.randn(200, 5, generator=g)
    scores[:, 4] -= 100.0  # never the argmax
    scores[target == 1, 1] += 1.0  # better than chance on class 1
    scores[:10, 3] += 100.0  # ten predictions of the class no sample has
    return scores, target


def test_class_scores_equal_torchmetrics_macro_scores_and_accuracy():
    """torchmetrics is the reference here (rayssl's own counting skips its 1.7-s import):
    accuracy (micro) and macro F1, precision, recall with an absent and an unseen class."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    from rayssl.methods.supervised import CLASS_SCORES, ClassScores

    scores, target = _scored_batches()
    ours = ClassScores(list(CLASS_SCORES), num_classes=5, prefix="val_")
    for part in range(4):  # in four updates: counts add up
        ours.update(scores[part * 50 : (part + 1) * 50], target[part * 50 : (part + 1) * 50])
    got = ours.compute()
    reference = {
        "val_accuracy": multiclass_accuracy(scores, target, 5, average="micro"),
        "val_f1": multiclass_f1_score(scores, target, 5, average="macro"),
        "val_precision": multiclass_precision(scores, target, 5, average="macro"),
        "val_recall": multiclass_recall(scores, target, 5, average="macro"),
    }
    assert got.keys() == reference.keys()
    for name, value in reference.items():
        assert abs(got[name] - float(value)) < 1e-6, (name, got[name], float(value))
    assert len({round(v, 6) for v in got.values()}) == 4  # four different numbers
    ours.reset()
    ours.update(scores[:1], target[:1])
    assert ours.compute()["val_accuracy"] in (0.0, 1.0)  # reset forgot the 200


def _scores_worker(rank, world, rendezvous, scores, target, out):
    from rayssl.methods.supervised import CLASS_SCORES, ClassScores

    gloo_group(rank, world, rendezvous)
    metric = ClassScores(list(CLASS_SCORES), num_classes=5)
    metric.update(scores[rank::world], target[rank::world])
    result = metric.compute()
    if rank == 0:
        torch.save(result, out)
    leave_gloo_group()


def test_class_scores_on_two_gloo_processes_are_those_of_the_whole_set(tmp_path):
    """Each rank counts half the samples; both report the scores of all of them."""
    from rayssl.methods.supervised import CLASS_SCORES, ClassScores

    scores, target = _scored_batches(seed=1)
    out = tmp_path / "scores.pt"
    rendezvous = str(tmp_path / "rendezvous")
    mp.spawn(_scores_worker, args=(2, rendezvous, scores, target, str(out)), nprocs=2, join=True)
    whole = ClassScores(list(CLASS_SCORES), num_classes=5)
    whole.update(scores, target)
    half = ClassScores(list(CLASS_SCORES), num_classes=5)
    half.update(scores[::2], target[::2])
    got = torch.load(out)
    assert got == whole.compute()
    assert got != half.compute()  # rank 0's half alone would read otherwise


def test_the_built_supervised_method_counts_its_scores_per_stage():
    from rayssl.config import validate_train_config
    from rayssl.methods.registry import build_method

    cfg = validate_train_config(
        {
            "num_workers": 1,
            "data": {"name": "digits"},
            "backbone": {"name": "mlp", "hidden": [16]},
            "supervised": {"metrics": ["accuracy", "recall"]},
        }
    )
    method = build_method(cfg, (64,), 10)
    x, y = torch.randn(20, 64), torch.arange(20) % 10
    method.validation_step((x, y))
    with torch.no_grad():
        hits = (method(x).argmax(1) == y).float().mean().item()
    val = method.epoch_metrics("val")
    assert val.keys() == {"val_accuracy", "val_recall"}
    assert abs(val["val_accuracy"] - hits) < 1e-6
    assert method.epoch_metrics("test") == {"test_accuracy": 0.0, "test_recall": 0.0}
