"""One training loop for everything planlang learns (Lightning / torchrl in spirit).

A *model* is any `nn.Module`; a *loss* is a callable `loss(model, batch) -> (loss, metrics)` where
`batch` is a dict of tensors sharing their leading (batch) dimension B, `loss` is a scalar tensor
(the mean over the batch) and `metrics` maps names to scalar tensors or floats (batch means).
Cost-learning losses through a planner (`runtime.losses`), VIN cross-entropy, world-model NLL and
continual streams all plug into the same `Trainer`:

    trainer = Trainer(model, loss, TrainConfig(epochs=50, lr=1e-2), callbacks=default_callbacks(cfg))
    history = trainer.fit(train, validation)     # list of per-epoch records (dicts of floats)

Each epoch shuffles the training set with a generator seeded by `config.seed`, steps the optimizer
once per minibatch of `config.batch` examples, evaluates the loss on the validation set (no
optimizer step) and calls every callback's `on_epoch_end(trainer, record)`. Callbacks log
(`JsonLog`, `ProgressBar`), save (`Checkpoint`), stop (`EarlyStopping` on the validation metric)
and plot (`LearningCurves`). `trainer.state_dict()` holds the model, the optimizer, the epoch,
the history, the callbacks' state and both RNG states, so `load_state_dict` resumes a run
exactly where it stopped (the same minibatches, the same weights as an uninterrupted run).

Data parallel: when `torch.distributed` is initialized with W processes (see
`runtime.distributed.launch`), the loss runs inside `DistributedDataParallel`; every process
draws the same permutation, takes the shard idx[rank::W] of each global minibatch and scales its
mean loss by |shard| W / |minibatch|, so DDP's gradient average is exactly the gradient of the
global minibatch mean: W processes give the same weights as one (to rounding). A final minibatch
smaller than W is skipped (by every process). Validation runs on the whole validation set in
every process (identical results, so early-stopping decisions agree without communication);
only rank 0 writes files and shows progress. Every trainable parameter must take part in the
loss (DDP's reducer waits for each one's gradient): freeze the others with `requires_grad_(False)`.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], tuple[Tensor, Mapping[str, object]]]

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD,
              "rmsprop": partial(torch.optim.RMSprop, eps=1e-6)}   # eps of the VIN paper's port


@dataclass
class TrainConfig:
    """Everything a training run needs to be reproducible.

    loss / loss_options: the loss by name and its options (see `runtime.losses.LOSSES`);
    optimizer: `adam`, `sgd` or `rmsprop` (eps 1e-6) with learning rate `lr`; epochs; batch: examples per optimizer step
    (the global batch across processes); validation: the fraction of the data held out (0: none);
    seed; patience: stop after this many epochs without improving the validation metric (None:
    never); checkpoint / log / plot: paths written by the default callbacks (None: not written);
    data: the demonstrations file; dagger_rounds / dagger_steps / teacher: DAgger (0 rounds: off);
    progress: show a progress bar; momentum: SGD's momentum (ignored by adam); stream: data files
    trained one after another as the tasks of a continual stream (`data` is then unused);
    task_free: train the stream without telling the learner where tasks begin and end.
    """

    loss: str = "imitation"
    loss_options: dict = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-2
    epochs: int = 100
    batch: int = 32
    validation: float = 0.2
    seed: int = 0
    patience: Optional[int] = None
    checkpoint: Optional[str] = None
    log: Optional[str] = None
    plot: Optional[str] = None
    data: Optional[str] = None
    dagger_rounds: int = 0
    dagger_steps: int = 10
    teacher: Optional[str] = None
    progress: bool = True
    momentum: float = 0.0
    stream: tuple = ()
    task_free: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer '{self.optimizer}' is not one of: {', '.join(OPTIMIZERS)}")
        checks = [(self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
                  (self.batch >= 1, f"batch must be >= 1, got {self.batch}"),
                  (self.momentum >= 0, f"momentum must be >= 0, got {self.momentum}"),
                  (0 <= self.validation < 1, f"validation must be in [0, 1), got {self.validation}"),
                  (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
                  (self.dagger_rounds >= 0, f"dagger_rounds must be >= 0, got {self.dagger_rounds}"),
                  (self.dagger_steps >= 1, f"dagger_steps must be >= 1, got {self.dagger_steps}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        """A JSON-safe copy (callables in `loss_options` become their repr)."""
        return json.loads(json.dumps(asdict(self), default=repr))


# ------------------------------------------------------------------------- data

def batch_size(data: Batch) -> int:
    """The common leading dimension of every tensor in `data`."""
    sizes = {name: t.shape[0] for name, t in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"tensors disagree on the number of examples: {sizes}")
    return next(iter(sizes.values()))


def take(data: Batch, index: Tensor) -> Batch:
    return {name: t[index] for name, t in data.items()}


def concat(first: Batch, second: Batch) -> Batch:
    if set(first) != set(second):
        raise ValueError(f"cannot concatenate data with keys {sorted(first)} and {sorted(second)}")
    return {name: torch.cat([first[name], second[name]]) for name in first}


def split(data: Batch, fraction: float, seed: int) -> tuple[Batch, Optional[Batch]]:
    """(train, validation): a seeded random `fraction` held out (at least one example if > 0)."""
    n = batch_size(data)
    held = min(n - 1, max(1, round(fraction * n))) if fraction > 0 else 0
    if held <= 0:
        return data, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return take(data, order[held:]), take(data, order[:held])


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (CPU and every CUDA device)."""
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------- callbacks

class Callback:
    """Hooks on the loop; `state_dict` is saved with the trainer so a resumed run keeps it.

    Per optimizer step, in order: `on_train_batch` may replace the minibatch (replay adds stored
    examples), `on_loss` may replace the loss (regularizers add a penalty), `on_after_backward`
    sees the gradients, `on_after_step` the stepped parameters (`runtime.continual` uses all four).
    """

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_train_batch(self, trainer: "Trainer", batch: Batch) -> Batch:
        return batch

    def on_loss(self, trainer: "Trainer", batch: Batch, loss: Tensor) -> Tensor:
        return loss

    def on_after_backward(self, trainer: "Trainer") -> None: ...

    def on_after_step(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class EarlyStopping(Callback):
    """Stop when `monitor` (lower is better) has not improved for `patience` epochs; on stopping
    or at the end, restore the best weights seen (`restore_best`)."""

    def __init__(self, patience: Optional[int], monitor: str = "val_loss", restore_best: bool = True):
        self.patience, self.monitor, self.restore_best = patience, monitor, restore_best
        self.best, self.best_epoch, self.wait, self.best_weights = math.inf, 0, 0, None

    def on_epoch_end(self, trainer, record):
        value = record.get(self.monitor, record.get("train_loss"))
        if value is not None and value < self.best:
            self.best, self.best_epoch, self.wait = value, record["epoch"], 0
            self.best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        else:
            self.wait += 1
            if self.patience is not None and self.wait >= self.patience:
                trainer.should_stop = True
        record["best_epoch"] = self.best_epoch

    def on_fit_end(self, trainer):
        if self.restore_best and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_weights = state["best_weights"]


class Checkpoint(Callback):
    """Write `trainer.state_dict()` plus `extra` (e.g. the plan's text and hash) to `path` after
    every epoch and at the end (rank 0 only), through a temporary file so a crash never leaves a
    truncated checkpoint."""

    def __init__(self, path: str | Path, extra: Optional[Mapping] = None):
        self.path, self.extra = Path(path), dict(extra or {})

    def save(self, trainer) -> None:
        if not trainer.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({**trainer.state_dict(), **self.extra}, tmp)
        tmp.replace(self.path)

    def on_epoch_end(self, trainer, record):
        self.save(trainer)

    def on_fit_end(self, trainer):
        self.save(trainer)


class JsonLog(Callback):
    """Rewrite `{"config": ..., "history": [...]}` to `path` after every epoch (rank 0 only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer, record):
        if trainer.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"config": trainer.config.to_dict(), "history": trainer.history},
                                            indent=1, default=str))


class ProgressBar(Callback):
    """A tqdm bar over epochs showing the training loss, the validation loss and throughput."""

    def __init__(self, stream=None):
        self.stream, self.bar = stream, None

    def on_fit_start(self, trainer):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.target_epoch, initial=trainer.epoch, unit="epoch", dynamic_ncols=True,
                        file=self.stream or sys.stderr, disable=not trainer.is_main)

    def on_epoch_end(self, trainer, record):
        shown = {"loss": f"{record['train_loss']:.4g}", "ex/s": f"{record['examples_per_s']:.0f}"}
        if "val_loss" in record:
            shown["val"] = f"{record['val_loss']:.4g}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def on_fit_end(self, trainer):
        self.bar.close()


class LearningCurves(Callback):
    """Plot the training and validation losses against the epoch to `path` at the end (rank 0)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_fit_end(self, trainer):
        if trainer.is_main and trainer.history:
            plot_learning_curves(trainer.history, self.path)


def plot_learning_curves(history: list[dict], path: str | Path) -> None:
    """Losses (log scale when positive) and every other metric by epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    names = [k for k in history[-1] if k.endswith("loss")]
    others = sorted({k for r in history for k in r if k.startswith(("train_", "val_")) and not k.endswith("loss")})
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(10 if others else 5.5, 3.8), squeeze=False)
    for name in names:
        axes[0, 0].plot(epochs, [r.get(name, math.nan) for r in history], label=name)
    if all(r.get(n, 1) > 0 for r in history for n in names):
        axes[0, 0].set_yscale("log")
    axes[0, 0].set(xlabel="epoch", title="loss")
    axes[0, 0].legend()
    for name in others:
        axes[0, 1].plot(epochs, [r.get(name, math.nan) for r in history], label=name)
    if others:
        axes[0, 1].set(xlabel="epoch", title="metrics")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_callbacks(config: TrainConfig, checkpoint_extra: Optional[Mapping] = None) -> list[Callback]:
    """Early stopping (always: it also restores the best weights), then checkpoint, log, plot and
    progress bar as the config asks."""
    out: list[Callback] = [EarlyStopping(config.patience)]
    if config.checkpoint:
        out.append(Checkpoint(config.checkpoint, checkpoint_extra))
    if config.log:
        out.append(JsonLog(config.log))
    if config.plot:
        out.append(LearningCurves(config.plot))
    if config.progress:
        out.append(ProgressBar())
    return out


# ------------------------------------------------------------------------ trainer

class _LossModule(nn.Module):
    """`loss(model, batch)` as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module, loss: LossFn):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: Batch):
        return self.loss(self.model, batch)


class Trainer:
    """The loop; see the module docstring. `callbacks` run in order at every hook."""

    def __init__(self, model: nn.Module, loss: LossFn, config: TrainConfig,
                 callbacks: Iterable[Callback] = ()):
        self.model, self.loss, self.config = model, loss, config
        self.callbacks = list(callbacks)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        seed_everything(config.seed + self.rank)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameters to train")
        extra = {"momentum": config.momentum} if config.optimizer == "sgd" else {}
        self.optimizer = OPTIMIZERS[config.optimizer](params, lr=config.lr, **extra)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.epoch, self.target_epoch, self.history, self.should_stop = 0, config.epochs, [], False
        self.record_extra: dict = {}       # merged into every epoch's record (e.g. DAgger's round)
        step = _LossModule(model, loss)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            device_ids = [params[0].device.index] if params[0].is_cuda else None
            step = DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=False)
        self._step = step

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def fit(self, train: Batch, validation: Optional[Batch] = None, epochs: Optional[int] = None) -> list[dict]:
        """Train until `config.epochs` (or `epochs` more than now), or until a callback stops."""
        self.target_epoch = self.config.epochs if epochs is None else self.epoch + epochs
        self.should_stop = False
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < self.target_epoch and not self.should_stop:
            start = time.perf_counter()
            record = {f"train_{k}": v for k, v in self._train_epoch(train).items()}
            seconds = time.perf_counter() - start
            if validation is not None:
                record.update({f"val_{k}": v for k, v in self.evaluate(validation).items()})
            self.epoch += 1
            record.update(epoch=self.epoch, time_s=seconds, examples_per_s=batch_size(train) / max(seconds, 1e-9),
                          **self.record_extra)
            self.history.append(record)
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _train_epoch(self, train: Batch) -> dict[str, float]:
        self.model.train()
        n, size = batch_size(train), self.config.batch
        order = torch.randperm(n, generator=self.shuffle)
        totals: dict[str, Tensor] = {}
        for first in range(0, n, size):
            index = order[first:first + size]
            if len(index) < self.world:
                continue
            shard = index[self.rank::self.world]
            part = take(train, shard)
            for cb in self.callbacks:
                part = cb.on_train_batch(self, part)
            loss, metrics = self._step(part)
            for cb in self.callbacks:
                loss = cb.on_loss(self, part, loss)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * (len(shard) * self.world / len(index))).backward()
            for cb in self.callbacks:
                cb.on_after_backward(self)
            self.optimizer.step()
            for cb in self.callbacks:
                cb.on_after_step(self)
            _accumulate(totals, {"loss": loss, **metrics}, len(shard))
        return self._reduced_means(totals)

    @torch.no_grad()
    def evaluate(self, data: Batch) -> dict[str, float]:
        """The loss and metrics on `data` (means over examples, in minibatches, no optimizer step)."""
        self.model.eval()
        n, size = batch_size(data), self.config.batch
        totals: dict[str, Tensor] = {}
        for first in range(0, n, size):
            part = take(data, torch.arange(first, min(first + size, n)))
            loss, metrics = self.loss(self.model, part)
            _accumulate(totals, {"loss": loss, **metrics}, min(size, n - first))
        return {k: (v[0] / v[1]).item() for k, v in totals.items()}

    def _reduced_means(self, totals: dict[str, Tensor]) -> dict[str, float]:
        if not totals:
            return {}
        names = sorted(totals)
        stacked = torch.stack([totals[k] for k in names])          # (K, 2): weighted sums, counts
        if self.world > 1:
            dist.all_reduce(stacked)
        return {k: (row[0] / row[1]).item() for k, row in zip(names, stacked)}

    # ---------------------------------------------------------------- resumable state
    def state_dict(self) -> dict:
        """Model, optimizer, epoch, history, callbacks and RNG states (loadable with weights_only)."""
        return {"state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "history": self.history, "config": self.config.to_dict(),
                "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
                "callbacks": {name: cb.state_dict() for name, cb in self._named_callbacks()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        saved = state.get("callbacks", {})
        for name, cb in self._named_callbacks():
            if name in saved:
                cb.load_state_dict(saved[name])

    def _named_callbacks(self) -> list[tuple[str, Callback]]:
        """Callbacks keyed by class name (and position among those of the same class)."""
        seen: dict[str, int] = {}
        out = []
        for cb in self.callbacks:
            name = type(cb).__name__
            out.append((f"{name}{seen.get(name, '')}", cb))
            seen[name] = seen.get(name, 0) + 1
        return out


def _accumulate(totals: dict[str, Tensor], values: Mapping[str, object], count: int) -> None:
    """totals[k] += (value * count, count), kept as float64 tensors."""
    for name, value in values.items():
        value = float(value.detach()) if isinstance(value, Tensor) else float(value)
        row = torch.tensor([value * count, count], dtype=torch.float64)
        totals[name] = totals[name] + row if name in totals else row


# -------------------------------------------------------------------------- DAgger

Collector = Callable[[nn.Module, Batch], Batch]


def fit_dagger(trainer: Trainer, data: Batch, collect: Collector, rounds: int,
               validation: Optional[Batch] = None) -> tuple[list[dict], Batch]:
    """DAgger (Ross et al. 2011): train on `data`; then `rounds` times roll the learned model out,
    label the states it visits with the teacher (`collect(model, data) -> new demonstrations`,
    computed from the ORIGINAL data's starts), aggregate and retrain for `config.epochs` more epochs.

    Returns (history with a `round` entry per record, the aggregated data).
    """
    aggregated = data
    for round_ in range(rounds + 1):
        if round_ > 0:
            with torch.no_grad():
                aggregated = concat(aggregated, collect(trainer.model, data))
        trainer.record_extra = {"round": round_, "examples": batch_size(aggregated)}
        trainer.fit(aggregated, validation, epochs=trainer.config.epochs)
    trainer.record_extra = {}
    return trainer.history, aggregated
