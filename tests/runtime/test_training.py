"""The training loop (runtime.training) on a model that is not a plan: least squares y = W x + b.

Seeded runs repeat exactly; a run stopped and resumed from its checkpoint ends with the same
weights as an uninterrupted one; early stopping stops and restores the best weights; the log,
the plot and the checkpoint (loadable with weights_only=True) are written.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from runtime.training import (Callback, Checkpoint, EarlyStopping, JsonLog, LearningCurves, TrainConfig, Trainer,
                              concat, default_callbacks, fit_dagger, split)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n: int = 40, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    return {"x": x, "y": x @ w.T + 0.3 + 0.01 * torch.randn(n, 1, generator=g, dtype=torch.float64)}


def _mse(model: nn.Module, batch):
    error = model(batch["x"]) - batch["y"]
    return (error ** 2).mean(), {"mae": error.abs().mean()}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1).double()


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 6, "batch": 8, "lr": 0.05, "validation": 0.25, "progress": False, **changes})


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer 'adagrad'"):
        TrainConfig(optimizer="adagrad")
    with pytest.raises(ValueError, match="validation must be in"):
        TrainConfig(validation=1.0)
    with pytest.raises(ValueError, match="batch must be"):
        TrainConfig(batch=0)


def test_training_reduces_the_loss_and_records_train_and_validation_metrics():
    train, val = split(_data(), 0.25, seed=0)
    assert len(train["x"]) == 30 and len(val["x"]) == 10
    trainer = Trainer(_model(), _mse, _config(epochs=20))
    history = trainer.fit(train, val)
    assert len(history) == 20 and trainer.epoch == 20
    assert history[-1]["train_loss"] < 0.2 * history[0]["train_loss"]
    assert {"train_mae", "val_loss", "val_mae", "examples_per_s", "time_s"} <= set(history[-1])


def test_seeded_runs_are_identical_and_other_seeds_differ():
    train, val = split(_data(), 0.25, seed=0)
    weights = []
    for seed in (3, 3, 4):
        model = _model()
        Trainer(model, _mse, _config(seed=seed, optimizer="sgd")).fit(train, val)
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    train, val = split(_data(), 0.25, seed=0)
    whole = _model()
    Trainer(whole, _mse, _config(epochs=6)).fit(train, val)

    path = tmp_path / "run.pt"
    first = _model()
    Trainer(first, _mse, _config(epochs=3), [EarlyStopping(None, restore_best=False), Checkpoint(path)]).fit(train, val)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and len(state["history"]) == 3

    second = nn.Linear(3, 1).double()            # fresh weights: everything comes from the checkpoint
    trainer = Trainer(second, _mse, _config(epochs=6), [EarlyStopping(None, restore_best=False)])
    trainer.load_state_dict(state)
    history = trainer.fit(train, val)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(second.weight, whole.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(second.bias, whole.bias, rtol=0, atol=1e-12)


def test_early_stopping_stops_and_restores_the_best_weights():
    train, val = split(_data(), 0.25, seed=0)
    model = _model()
    stopper = EarlyStopping(patience=2)
    # lr far too large for SGD on this problem: the validation loss grows after the first epoch
    trainer = Trainer(model, _mse, _config(epochs=50, optimizer="sgd", lr=1.5), [stopper])
    history = trainer.fit(train, val)
    assert len(history) < 50
    best = min(r["val_loss"] for r in history)
    assert stopper.best == best
    torch.testing.assert_close(trainer.evaluate(val)["loss"], best)


def test_log_plot_and_checkpoint_files(tmp_path):
    train, val = split(_data(), 0.25, seed=0)
    config = _config(log=str(tmp_path / "log.json"), plot=str(tmp_path / "curves.png"),
                     checkpoint=str(tmp_path / "ckpt.pt"))
    callbacks = default_callbacks(config, checkpoint_extra={"note": "extra"})
    assert [type(c) for c in callbacks] == [EarlyStopping, Checkpoint, JsonLog, LearningCurves]
    Trainer(_model(), _mse, config, callbacks).fit(train, val)
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["config"]["lr"] == 0.05 and len(log["history"]) == 6
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["note"] == "extra" and set(state["state_dict"]) == {"weight", "bias"}


def test_progress_bar_shows_loss_and_throughput(tmp_path):
    import io

    from runtime.training import ProgressBar
    stream = io.StringIO()
    train, val = split(_data(), 0.25, seed=0)
    Trainer(_model(), _mse, _config(epochs=2), [ProgressBar(stream)]).fit(train, val)
    text = stream.getvalue()
    assert "loss=" in text and "ex/s=" in text and "val=" in text and "2/2" in text


def test_dagger_aggregates_collected_data_each_round():
    data = _data(12)
    calls = []

    def collect(model, original):
        calls.append(len(original["x"]))
        return {k: v[:4] for k, v in original.items()}

    class SeenRounds(Callback):          # what callbacks (e.g. the JSON log) see at each epoch's end
        seen: list = []

        def on_epoch_end(self, trainer, record):
            self.seen.append(record.get("round"))

    trainer = Trainer(_model(), _mse, _config(epochs=2, validation=0), [SeenRounds()])
    history, aggregated = fit_dagger(trainer, data, collect, rounds=2)
    assert calls == [12, 12] and SeenRounds.seen == [0, 0, 1, 1, 2, 2]
    assert len(aggregated["x"]) == 20 and len(history) == 6
    assert [r["round"] for r in history] == [0, 0, 1, 1, 2, 2]
    assert [r["examples"] for r in history] == [12, 12, 16, 16, 20, 20]
    with pytest.raises(ValueError, match="cannot concatenate"):
        concat(data, {"x": data["x"]})


def test_step_hooks_see_every_step_and_can_change_the_batch_and_the_loss():
    """on_train_batch -> loss -> on_loss -> backward -> on_after_backward -> step -> on_after_step,
    once per minibatch; a penalty added in on_loss reaches the gradient."""
    from runtime.training import Callback

    class Recorder(Callback):
        def __init__(self):
            self.calls = []

        def on_train_batch(self, trainer, batch):
            self.calls.append("batch")
            return {k: v[:4] for k, v in batch.items()}            # keep half of each minibatch of 8

        def on_loss(self, trainer, batch, loss):
            self.calls.append(("loss", len(batch["x"])))
            return loss + 100.0 * trainer.model.bias.pow(2).sum()  # pull the bias to 0

        def on_after_backward(self, trainer):
            self.calls.append(("grad", trainer.model.bias.grad is not None))

        def on_after_step(self, trainer):
            self.calls.append("step")

    recorder = Recorder()
    data = _data(n=16)
    trainer = Trainer(_model(), _mse, _config(epochs=30, validation=0, optimizer="sgd", lr=0.004, momentum=0.5),
                      [recorder])
    trainer.fit(data)
    assert recorder.calls[:4] == ["batch", ("loss", 4), ("grad", True), "step"]
    assert len(recorder.calls) == 4 * 2 * 30                       # two minibatches of 8 per epoch
    assert abs(trainer.model.bias.item()) < 0.01                   # the data's bias is 0.3
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.5
