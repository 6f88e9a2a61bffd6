import torch
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
