"""Continual learning as composable plugins on any training loop (Avalanche style).

A learned block trained on a stream of tasks forgets the old ones. Each method here is a
`ContinualPlugin`: an `nn.Module` whose callbacks any loop calls at fixed points,

    before_training_exp(model, task)          a new experience (task) begins
    augment_batch(model, batch) -> batch       replay: add stored examples to the batch
    before_backward(model, batch, loss) -> loss    regularizers add their penalty
    after_backward(model)                      gradients are in p.grad (SI reads them)
    after_step(model)                          the optimizer has stepped (SI path integral)
    after_training_exp(model, task)            the experience ends (Fisher, anchors, snapshot)
    before_eval_exp(model, task)               before evaluating on a task (progressive)

and `a + b` composes them into `Plugins`, which calls each in order (penalties add up,
batch augmentations chain). Everything a method remembers (Fisher, anchors, importances,
buffers, old model) is a buffer of the plugin, so `plugins.state_dict()` and
`load_state_dict()` stop and resume a stream; buffers are created lazily on first use and
on load. `task` and `batch` are `TaskData` (inputs x (N, ...), targets y (N, ...), a
per-example loss and the task index, None when task-free).

Methods: `ewc` (Kirkpatrick 2017; online, Schwarz 2018), `si` (Zenke 2017), `distill`
(Learning without Forgetting, Li & Hoiem 2017), `replay` (Rolnick 2019; reservoir, ring or
class-balanced buffers), `vcl` (Nguyen 2018, with `BayesLinear`/`bayes_mlp`) and
`progressive` (Rusu 2016, with `ProgressiveMLP`). `run_stream` trains a stream with the shared
`runtime.training.Trainer` (the plugins run through `ContinualCallback`) and fills the accuracy
matrix R (see `runtime.continual_metrics`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from runtime.neural import ACTIVATIONS
from runtime.training import Callback, Trainer, TrainConfig, seed_everything

Loss = Callable[[Tensor, Tensor], Tensor]
"""Per-example loss: (outputs (B, ...), targets (B, ...)) -> (B,)."""

Score = Callable[[Tensor, Tensor], float]
"""Evaluation score of outputs (N, ...) against targets (N, ...), e.g. accuracy."""


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy of logits (B, C) against class indices (B,) -> (B,)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example squared error summed over the feature dims (B, ...) -> (B,)."""
    return (outputs - targets).pow(2).flatten(1).sum(1)


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of rows whose arg-max logit (N, C) equals the class index (N,)."""
    return (outputs.argmax(-1) == targets).double().mean().item()


def mean_squared_error(outputs: Tensor, targets: Tensor) -> float:
    """Mean over examples of the per-example squared error (a lower-is-better score)."""
    return squared_error(outputs, targets).double().mean().item()


@dataclass(frozen=True)
class TaskData:
    """Examples of one task, or one batch: x (N, ...), y (N, ...), a per-example loss."""

    x: Tensor
    y: Tensor
    loss: Loss
    task: Optional[int] = None  # index of the experience; None when boundaries are unknown

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def rows(self, index: Tensor) -> "TaskData":
        """The examples at `index` (a long tensor) as a new TaskData."""
        return replace(self, x=self.x[index], y=self.y[index])

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None
                ) -> Iterator["TaskData"]:
        """Mini-batches in a random order (fixed order when `generator` is None)."""
        n = len(self)
        order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield self.rows(order[start:start + batch_size].to(self.x.device))


@dataclass(frozen=True)
class Task:
    """One experience of a stream: its training and test data."""

    train: TaskData
    test: TaskData
    name: str = ""


# ----------------------------------------------------------------------------------------------
# Plugin base and composition


class ContinualPlugin(nn.Module):
    """Base class: every callback is a no-op; state lives in (lazily created) buffers.

    Subclasses create buffers with `_set(name, tensor)`; `load_state_dict` creates or
    resizes any buffer the state_dict names, so a fresh plugin resumes a saved stream.
    `needs_boundaries`: the method cannot run task-free (it acts at task boundaries only).
    """

    needs_boundaries = False

    def before_training_exp(self, model: nn.Module, task: TaskData) -> None:
        """Called when an experience starts, with its whole training data."""

    def augment_batch(self, model: nn.Module, batch: TaskData) -> TaskData:
        """Return the batch to train on (replay adds stored examples)."""
        return batch

    def before_backward(self, model: nn.Module, batch: TaskData, loss: Tensor) -> Tensor:
        """Return the loss to differentiate (regularizers add a penalty)."""
        return loss

    def after_backward(self, model: nn.Module) -> None:
        """Called after `loss.backward()`, before the optimizer step."""

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimizer step."""

    def after_training_exp(self, model: nn.Module, task: TaskData) -> None:
        """Called when an experience ends, with its whole training data."""

    def before_eval_exp(self, model: nn.Module, task: TaskData) -> None:
        """Called before evaluating the model on one task's data."""

    def __add__(self, other: "ContinualPlugin") -> "Plugins":
        return Plugins([self, other])

    def _set(self, name: str, value: Tensor) -> None:
        """Create or replace the buffer `name` (state that goes into the state_dict)."""
        if name in self._buffers:
            self._buffers[name] = value
        else:
            self.register_buffer(name, value)

    def _get(self, name: str) -> Optional[Tensor]:
        return self._buffers.get(name)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and "." not in name:
                self._set(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class Plugins(ContinualPlugin):
    """An ordered composition of plugins: `ewc(...) + replay(...)`."""

    def __init__(self, plugins: Sequence[ContinualPlugin] = ()):
        super().__init__()
        flat: List[ContinualPlugin] = []
        for plugin in plugins:
            flat.extend(plugin.plugins if isinstance(plugin, Plugins) else [plugin])
        self.plugins = nn.ModuleList(flat)

    def __add__(self, other: ContinualPlugin) -> "Plugins":
        return Plugins([self, other])

    @property
    def needs_boundaries(self) -> bool:
        return any(plugin.needs_boundaries for plugin in self.plugins)

    def before_training_exp(self, model, task):
        for plugin in self.plugins:
            plugin.before_training_exp(model, task)

    def augment_batch(self, model, batch):
        for plugin in self.plugins:
            batch = plugin.augment_batch(model, batch)
        return batch

    def before_backward(self, model, batch, loss):
        for plugin in self.plugins:
            loss = plugin.before_backward(model, batch, loss)
        return loss

    def after_backward(self, model):
        for plugin in self.plugins:
            plugin.after_backward(model)

    def after_step(self, model):
        for plugin in self.plugins:
            plugin.after_step(model)

    def after_training_exp(self, model, task):
        for plugin in self.plugins:
            plugin.after_training_exp(model, task)

    def before_eval_exp(self, model, task):
        for plugin in self.plugins:
            plugin.before_eval_exp(model, task)


def _trainable(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _key(prefix: str, parameter_name: str) -> str:
    return f"{prefix}__{parameter_name.replace('.', '__')}"


# ----------------------------------------------------------------------------------------------
# EWC


def empirical_fisher(model: nn.Module, data: TaskData, batch_size: int = 256
                     ) -> Dict[str, Tensor]:
    """Diagonal empirical Fisher of the block's own loss, per trainable parameter.

        F_i = 1/N sum_n (d loss(f(x_n), y_n) / d theta_i)^2

    Per-example gradients come from `torch.func.vmap(grad(...))` (no loop over examples),
    with the model in eval mode (dropout off, Bayesian layers at their mean).
    """
    named = _trainable(model)
    params = {name: p.detach() for name, p in named}
    buffers = dict(model.named_buffers())

    def example_loss(theta: Dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**buffers, **theta}, (x.unsqueeze(0),))
        return data.loss(out, y.unsqueeze(0)).sum()

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0), randomness="different")
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for batch in data.batches(batch_size):
            grads = per_example(params, batch.x, batch.y)
            for name in fisher:
                fisher[name] += grads[name].pow(2).sum(0)
    finally:
        model.train(was_training)
    return {name: f / max(len(data), 1) for name, f in fisher.items()}


class EWC(ContinualPlugin):
    """Elastic Weight Consolidation: penalty lambda/2 sum_t sum_i F_t,i (theta_i - theta_t,i)^2.

    Separate (Kirkpatrick 2017): one quadratic per past task, kept exactly as one quadratic
    with summed Fisher F = sum_t F_t, anchor a = sum_t F_t theta_t / F and the constant
    c = sum_t F_t theta_t^2 - F a^2, so the state does not grow with the number of tasks.
    Online (Schwarz 2018): F <- gamma F + F_new, anchor <- theta.

    Task-free (`every=k`): no boundaries are needed; the plugin keeps the last `window`
    examples it has seen and consolidates on them every k optimizer steps (use online=True).
    """

    def __init__(self, lambda_: float, online: bool = False, gamma: float = 1.0,
                 every: Optional[int] = None, window: int = 256, fisher_batch_size: int = 256):
        super().__init__()
        if lambda_ < 0 or not 0 <= gamma <= 1:
            raise ValueError(f"ewc needs lambda >= 0 and 0 <= gamma <= 1, got {lambda_}, {gamma}")
        if every is not None and every < 1:
            raise ValueError(f"ewc(every=) must be a positive number of steps, got {every}")
        self.lambda_, self.online, self.gamma = lambda_, online, gamma
        self.every, self.fisher_batch_size = every, fisher_batch_size
        self.recent = ExampleBuffer(window, "ring") if every is not None else None
        self._loss: Optional[Loss] = None
        self._set("steps", torch.zeros((), dtype=torch.long))

    def penalty(self, model: nn.Module) -> Tensor:
        """lambda/2 sum_i F_i (theta_i - a_i)^2 + lambda/2 c (zero before any consolidation)."""
        total = None
        for name, p in _trainable(model):
            fisher = self._get(_key("fisher", name))
            if fisher is None:
                continue
            term = (fisher * (p - self._get(_key("anchor", name))).pow(2)).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=self.steps.device)
        return 0.5 * self.lambda_ * (total + self._get("constant"))

    def consolidate(self, model: nn.Module, data: TaskData) -> None:
        """Add the Fisher of `data` at the current parameters to the penalty."""
        new = empirical_fisher(model, data, self.fisher_batch_size)
        constant = torch.zeros((), dtype=torch.float64)
        for name, p in _trainable(model):
            theta = p.detach().clone()
            fisher, anchor = self._get(_key("fisher", name)), self._get(_key("anchor", name))
            if fisher is None or self.online:
                fisher = new[name] if fisher is None else self.gamma * fisher + new[name]
                anchor = theta
            else:
                total = fisher + new[name]
                weighted = fisher * anchor + new[name] * theta
                second = fisher * anchor.pow(2) + new[name] * theta.pow(2)
                anchor = torch.where(total > 0, weighted / total.clamp_min(1e-300), theta)
                constant = constant + (second - total * anchor.pow(2)).sum().double()
                fisher = total
            self._set(_key("fisher", name), fisher)
            self._set(_key("anchor", name), anchor)
        previous = self._get("constant")
        if self.online or previous is None:
            self._set("constant", torch.zeros((), dtype=torch.float64))
        else:
            self._set("constant", previous + constant)

    def before_backward(self, model, batch, loss):
        if self.recent is not None:
            self.recent.add(batch.x.detach(), batch.y.detach())
            self._loss = batch.loss
        return loss + self.penalty(model).to(loss.dtype)

    def after_step(self, model):
        if self.every is None:
            return
        self.steps += 1
        if int(self.steps) % self.every == 0 and self._loss is not None:
            self.consolidate(model, TaskData(*self.recent.sample(len(self.recent)), self._loss))

    def after_training_exp(self, model, task):
        if self.every is None:
            self.consolidate(model, task)


def ewc(lambda_: float, online: bool = False, gamma: float = 1.0, every: Optional[int] = None,
        window: int = 256) -> EWC:
    """Elastic Weight Consolidation (see `EWC`); `every=k` for task-free online EWC."""
    return EWC(lambda_, online=online, gamma=gamma, every=every, window=window)


# ----------------------------------------------------------------------------------------------
# Synaptic Intelligence


class SI(ContinualPlugin):
    """Synaptic Intelligence (Zenke 2017): penalty c sum_i Omega_i (theta_i - theta*_i)^2.

    During a task, omega_i += -g_i (theta_i(after step) - theta_i(before step)) with g the
    gradient used by the step (the path integral of the loss decrease); at the task's end
    Omega_i += omega_i / ((theta_i - theta*_i)^2 + xi), theta* <- theta, omega <- 0.
    """

    def __init__(self, c: float, xi: float = 1e-3):
        super().__init__()
        if c < 0 or xi <= 0:
            raise ValueError(f"si needs c >= 0 and xi > 0, got c={c}, xi={xi}")
        self.c, self.xi = c, xi

    def penalty(self, model: nn.Module) -> Tensor:
        """c sum_i Omega_i (theta_i - theta*_i)^2 (zero before the first task ends)."""
        total = None
        for name, p in _trainable(model):
            importance = self._get(_key("importance", name))
            if importance is None:
                continue
            term = (importance * (p - self._get(_key("anchor", name))).pow(2)).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return self.c * total

    def before_backward(self, model, batch, loss):
        return loss + self.penalty(model).to(loss)

    def after_backward(self, model):
        for name, p in _trainable(model):
            if self._get(_key("anchor", name)) is None:  # start of the stream
                self._set(_key("anchor", name), p.detach().clone())
                self._set(_key("omega", name), torch.zeros_like(p))
            self._set(_key("before", name), p.detach().clone())
            gradient = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            self._set(_key("grad", name), gradient)

    def after_step(self, model):
        for name, p in _trainable(model):
            moved = p.detach() - self._get(_key("before", name))
            self._get(_key("omega", name)).sub_(self._get(_key("grad", name)) * moved)

    def after_training_exp(self, model, task):
        for name, p in _trainable(model):
            anchor = self._get(_key("anchor", name))
            if anchor is None:
                continue
            gain = self._get(_key("omega", name)) / ((p.detach() - anchor).pow(2) + self.xi)
            previous = self._get(_key("importance", name))
            self._set(_key("importance", name), gain if previous is None else previous + gain)
            self._set(_key("anchor", name), p.detach().clone())
            self._get(_key("omega", name)).zero_()


def si(c: float, xi: float = 1e-3) -> SI:
    """Synaptic Intelligence (see `SI`)."""
    return SI(c, xi)


# ----------------------------------------------------------------------------------------------
# Distillation (Learning without Forgetting)


class Distill(ContinualPlugin):
    """Learning without Forgetting: the previous model's outputs on the current inputs are
    soft targets.

        classification (temperature T): weight * KL(softmax(t/T) || softmax(s/T)), batch mean
        regression (temperature None):   weight * mean_b ||s_b - t_b||^2

    s = model(x), t = old model(x). The old model is stored as a snapshot of the parameters
    and buffers (buffers `teacher__*`) and evaluated with `torch.func.functional_call`.
    """

    def __init__(self, temperature: Optional[float], weight: float):
        super().__init__()
        if temperature is not None and temperature <= 0:
            raise ValueError(f"distill(temperature=) must be positive, got {temperature}")
        self.temperature, self.weight = temperature, weight

    def _teacher_state(self) -> Dict[str, Tensor]:
        start = len("teacher__")
        return {name[start:].replace("__", "."): value for name, value in self._buffers.items()
                if name.startswith("teacher__")}

    def distillation(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The distillation term (scalar) between student and teacher outputs (B, ...)."""
        if self.temperature is None:
            return squared_error(student, teacher).mean()
        log_p = F.log_softmax(student / self.temperature, dim=-1)
        q = F.softmax(teacher / self.temperature, dim=-1)
        return F.kl_div(log_p, q, reduction="batchmean")

    def before_backward(self, model, batch, loss):
        state = self._teacher_state()
        if not state:
            return loss
        with torch.no_grad():
            teacher = functional_call(model, state, (batch.x,))
        return loss + self.weight * self.distillation(model(batch.x), teacher)

    def after_training_exp(self, model, task):
        for name, value in [*model.named_parameters(), *model.named_buffers()]:
            self._set(_key("teacher", name), value.detach().clone())


def distill(temperature: Optional[float] = 2.0, weight: float = 1.0) -> Distill:
    """Learning without Forgetting (see `Distill`); temperature=None for regression."""
    return Distill(temperature, weight)


# ----------------------------------------------------------------------------------------------
# Replay


class ExampleBuffer(ContinualPlugin):
    """A fixed-capacity memory of examples, selected by priority (no loop over examples).

    Each example gets a priority when it arrives and the buffer keeps the `capacity` lowest:

        reservoir       priority ~ U(0, 1): a uniform random subset of everything seen
                        (Vitter's reservoir sampling, in distribution)
        ring            priority = -arrival index: the most recent examples
        class_balanced  priority ~ U(0, 1), at most ceil-split capacity / classes seen per
                        class (a reservoir per class; y must hold class indices)
        experience_balanced  priority ~ U(0, 1), the capacity split evenly over the
                        experiences seen (a reservoir per experience); examples arrive one whole
                        experience at a time (`add(x, y, experience=k)`), as in Avalanche's
                        `ExperienceBalancedBuffer`

    State (buffers): x (n, ...), y (n, ...), priority (n,), experience (n,), seen, and the
    random generator's state, so a resumed stream draws the same numbers.
    """

    POLICIES = ("reservoir", "ring", "class_balanced", "experience_balanced")

    def __init__(self, capacity: int, policy: str = "reservoir", seed: int = 0):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        if policy not in self.POLICIES:
            raise ValueError(f"unknown replay policy {policy!r}; expected one of {self.POLICIES}")
        self.capacity, self.policy = capacity, policy
        self.generator = torch.Generator().manual_seed(seed)
        self._set("seen", torch.zeros((), dtype=torch.long))
        self._set("rng", self.generator.get_state())

    def __len__(self) -> int:
        x = self._get("x")
        return 0 if x is None else x.shape[0]

    def _uniform(self, n: int, device: torch.device) -> Tensor:
        self.generator.set_state(self.rng.cpu())
        draw = torch.rand(n, generator=self.generator, dtype=torch.float64)
        self._set("rng", self.generator.get_state())
        return draw.to(device)

    def add(self, x: Tensor, y: Tensor, experience: int = 0) -> None:
        """Offer a batch x (B, ...), y (B, ...) (all of experience `experience`) to the buffer."""
        b = x.shape[0]
        if self.policy == "ring":
            arrival = self.seen.to(x.device) + torch.arange(b, device=x.device)
            fresh = -arrival.double()
        else:
            fresh = self._uniform(b, x.device)
        self.seen += b
        label = torch.full((b,), experience, dtype=torch.long, device=x.device)
        if len(self) == 0:
            all_x, all_y, priority, experiences = x, y, fresh, label
        else:
            all_x = torch.cat([self._get("x"), x.to(self._get("x"))])
            all_y = torch.cat([self._get("y"), y.to(self._get("y"))])
            priority = torch.cat([self._get("priority"), fresh])
            experiences = torch.cat([self._get("experience"), label])
        keep = self._select(priority, all_y, experiences)
        self._set("x", all_x[keep].clone())
        self._set("y", all_y[keep].clone())
        self._set("priority", priority[keep].clone())
        self._set("experience", experiences[keep].clone())

    def _select(self, priority: Tensor, y: Tensor, experiences: Tensor) -> Tensor:
        if self.policy == "experience_balanced":
            return self._balanced(priority, experiences)
        if self.policy != "class_balanced":
            k = min(self.capacity, priority.shape[0])
            return torch.topk(priority, k, largest=False).indices
        if y.dtype not in (torch.int64, torch.int32) or y.dim() != 1:
            raise ValueError("class_balanced replay needs integer class labels y of shape (N,)")
        return self._balanced(priority, y)

    def _balanced(self, priority: Tensor, y: Tensor) -> Tensor:
        """The lowest-priority examples of each group (label y), capacity split evenly."""
        classes, label = torch.unique(y, return_inverse=True)
        n_classes = classes.numel()
        quota = torch.full((n_classes,), self.capacity // n_classes, device=y.device)
        quota[: self.capacity % n_classes] += 1
        order = torch.argsort(priority)
        order = order[torch.argsort(label[order], stable=True)]  # by class, then priority
        sorted_label = label[order]
        first = torch.searchsorted(sorted_label, torch.arange(n_classes, device=y.device))
        within = torch.arange(order.numel(), device=y.device) - first[sorted_label]
        return order[within < quota[sorted_label]]

    def sample(self, n: int) -> Tuple[Tensor, Tensor]:
        """n stored examples drawn uniformly without replacement (fewer if the buffer is small)."""
        n = min(n, len(self))
        x, y = self._get("x"), self._get("y")
        index = torch.argsort(self._uniform(len(self), x.device))[:n]
        return x[index], y[index]


class Replay(ContinualPlugin):
    """Experience replay: each batch of B new examples is trained together with round(ratio B)
    examples drawn from the buffer.

    Task-free policies (reservoir, ring, class_balanced): the new examples are then offered to
    the buffer, which therefore also holds the current experience. `experience_balanced`
    (Avalanche's default): the buffer is filled at each experience's end with that experience's
    data and holds only past experiences, so every replayed example rehearses an old task;
    it needs task boundaries.
    """

    def __init__(self, capacity: int, policy: str = "reservoir", ratio: float = 1.0,
                 seed: int = 0):
        super().__init__()
        if ratio < 0:
            raise ValueError(f"replay ratio must be >= 0, got {ratio}")
        self.ratio = ratio
        self.buffer = ExampleBuffer(capacity, policy, seed)

    @property
    def past_only(self) -> bool:
        return self.buffer.policy == "experience_balanced"

    def augment_batch(self, model, batch):
        if self.past_only and batch.task is None:
            raise ValueError("replay(policy=experience_balanced) needs task boundaries; "
                             "a task-free stream needs reservoir, ring or class_balanced")
        replayed = None
        if len(self.buffer) > 0 and self.ratio > 0:
            replayed = self.buffer.sample(max(1, round(self.ratio * len(batch))))
        if not self.past_only:
            self.buffer.add(batch.x.detach(), batch.y.detach())
        if replayed is None:
            return batch
        return replace(batch, x=torch.cat([batch.x, replayed[0]]),
                       y=torch.cat([batch.y, replayed[1]]))

    def after_training_exp(self, model, task):
        if self.past_only:
            self.buffer.add(task.x.detach(), task.y.detach(), experience=task.task or 0)


def replay(capacity: int, policy: str = "reservoir", ratio: float = 1.0, seed: int = 0) -> Replay:
    """Experience replay with a `capacity`-example buffer (see `Replay`, `ExampleBuffer`)."""
    return Replay(capacity, policy, ratio, seed)


# ----------------------------------------------------------------------------------------------
# Variational Continual Learning


class BayesLinear(nn.Module):
    """A linear layer with mean-field Gaussian weights q(W) = N(mu, sigma^2), sigma = softplus(rho).

    Training: the local reparametrization trick (Kingma 2015), for x (B, in):
        out = x mu_W^T + mu_b + sqrt(x^2 sigma_W^2^T + sigma_b^2) * eps,  eps ~ N(0, 1) (B, out)
    Eval: the mean, x mu_W^T + mu_b. The prior p = N(prior_mu, prior_sigma^2) is a buffer;
    VCL sets it to the posterior at the end of each task. The posterior's sigma sets the next
    task's penalty curvature 1 / (sigma^2 N): with plain SGD, posteriors much narrower than
    the default init_sigma = 0.1 make that penalty stiff enough to diverge.
    """

    def __init__(self, in_features: int, out_features: int, prior_sigma: float = 1.0,
                 init_sigma: float = 0.1):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        rho = math.log(math.expm1(init_sigma))
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho))
        for name in ("weight", "bias"):
            mu = getattr(self, f"{name}_mu")
            self.register_buffer(f"prior_{name}_mu", torch.zeros_like(mu))
            self.register_buffer(f"prior_{name}_sigma", torch.full_like(mu, prior_sigma))

    def forward(self, x: Tensor) -> Tensor:
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        if not self.training:
            return mean
        variance = F.linear(x.pow(2), F.softplus(self.weight_rho).pow(2),
                            F.softplus(self.bias_rho).pow(2))
        return mean + variance.sqrt() * torch.randn_like(mean)

    def kl(self) -> Tensor:
        """KL(q || p) = sum log(s_p / s_q) + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2."""
        total = None
        for name in ("weight", "bias"):
            mu, sigma = getattr(self, f"{name}_mu"), F.softplus(getattr(self, f"{name}_rho"))
            prior_mu = getattr(self, f"prior_{name}_mu")
            prior_sigma = getattr(self, f"prior_{name}_sigma")
            term = (torch.log(prior_sigma / sigma)
                    + (sigma.pow(2) + (mu - prior_mu).pow(2)) / (2 * prior_sigma.pow(2))
                    - 0.5).sum()
            total = term if total is None else total + term
        return total

    def posterior_to_prior(self) -> None:
        """Set p <- q (detached): the next task's prior is this task's posterior."""
        for name in ("weight", "bias"):
            getattr(self, f"prior_{name}_mu").copy_(getattr(self, f"{name}_mu").detach())
            getattr(self, f"prior_{name}_sigma").copy_(
                F.softplus(getattr(self, f"{name}_rho")).detach())


def bayes_mlp(sizes: Sequence[int], prior_sigma: float = 1.0, init_sigma: float = 0.1,
              act: str = "relu", zero_last: bool = False) -> nn.Sequential:
    """An MLP of `BayesLinear` layers with `act` (a `runtime.neural.ACTIVATIONS` name) between
    them, sizes = (in, hidden..., out); `zero_last` starts the output layer's means at 0."""
    layers: List[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(ACTIVATIONS[act]())
        layers.append(BayesLinear(fan_in, fan_out, prior_sigma, init_sigma))
    if zero_last:
        with torch.no_grad():
            layers[-1].weight_mu.zero_()
            layers[-1].bias_mu.zero_()
    return nn.Sequential(*layers)


class VCL(ContinualPlugin):
    """Variational Continual Learning (Nguyen 2018): loss + beta * sum_layers KL(q || p) / N.

    With the model's mean negative log-likelihood as loss this is the negative ELBO per
    example; N is the current task's size (given by `before_training_exp`, or `n_data` when
    task-free). At each task's end every `BayesLinear` prior becomes its posterior.
    """

    def __init__(self, beta: float = 1.0, n_data: Optional[int] = None):
        super().__init__()
        self.beta = beta
        self._set("n_data", torch.tensor(0 if n_data is None else n_data))

    def before_training_exp(self, model, task):
        self.n_data.fill_(len(task))

    def before_backward(self, model, batch, loss):
        layers = [m for m in model.modules() if isinstance(m, BayesLinear)]
        if not layers:
            raise ValueError("vcl needs a model with BayesLinear layers (see bayes_mlp)")
        if int(self.n_data) <= 0:
            raise ValueError("vcl needs the task size: call before_training_exp or give n_data")
        kl = torch.stack([layer.kl() for layer in layers]).sum()
        return loss + self.beta * kl / int(self.n_data)

    def after_training_exp(self, model, task):
        for layer in model.modules():
            if isinstance(layer, BayesLinear):
                layer.posterior_to_prior()


def vcl(beta: float = 1.0, n_data: Optional[int] = None) -> VCL:
    """Variational Continual Learning (see `VCL`; the model is built with `bayes_mlp`)."""
    return VCL(beta, n_data)


# ----------------------------------------------------------------------------------------------
# Progressive networks


class ProgressiveMLP(nn.Module):
    """Progressive columns (Rusu 2016): column k is an MLP whose layer l also reads, through
    lateral linear maps, layer l-1 of every earlier (frozen) column:

        h^k_l = act(W^k_l h^k_{l-1} + sum_{j<k} U^{k,j}_l h^j_{l-1}),   h^k_0 = x (B, in)

    The output is column `active`'s last layer (B, out). Earlier columns never change, so the
    tasks they learned are not forgotten; inference needs the task index. `act` is a
    `runtime.neural.ACTIVATIONS` name; `zero_last` starts each new column's output at 0.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, act: str = "relu",
                 zero_last: bool = False):
        super().__init__()
        self.sizes = (in_features, *hidden, out_features)
        self.act = ACTIVATIONS[act]()
        self.zero_last = zero_last
        self.columns = nn.ModuleList()
        self.laterals = nn.ModuleList()
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        self.add_column()

    def add_column(self) -> None:
        """Freeze every column, add a new trainable one (on the device and dtype of the first)
        and make it active."""
        like = next(self.parameters(), None)
        for p in self.parameters():
            p.requires_grad_(False)
        k = len(self.columns)
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        column = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        laterals = nn.ModuleList(nn.Linear(a * k, b, bias=False) for a, b in pairs[1:]) if k else nn.ModuleList()
        if self.zero_last:
            for layer in (column[-1], *laterals[-1:]):
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        if like is not None:
            column.to(like)
            laterals.to(like)
        self.columns.append(column)
        self.laterals.append(laterals)
        self.active.fill_(k)

    def select(self, task: int) -> None:
        """Make column `task` the active one (e.g. to plan in an old regime after a stream)."""
        if not 0 <= task < len(self.columns):
            raise ValueError(f"column {task} does not exist: this network has {len(self.columns)} columns")
        self.active.fill_(task)

    def forward(self, x: Tensor) -> Tensor:
        hidden: List[List[Tensor]] = []  # hidden[k][l] = input of layer l in column k
        for k in range(int(self.active) + 1):
            h, inputs = x, [x]
            for l, layer in enumerate(self.columns[k]):
                z = layer(h)
                if l > 0 and k > 0:
                    z = z + self.laterals[k][l - 1](torch.cat([hidden[j][l] for j in range(k)], -1))
                h = self.act(z) if l < len(self.columns[k]) - 1 else z
                inputs.append(h)
            hidden.append(inputs)
        return hidden[-1][-1]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        stored = {int(key[len(prefix):].split(".")[1]) for key in state_dict
                  if key.startswith(prefix + "columns.")}
        while len(self.columns) < len(stored):
            self.add_column()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class Progressive(ContinualPlugin):
    """Adds a column to the model's `ProgressiveMLP` (the model or one of its submodules) for
    every experience after the first, and selects the column of the task being evaluated
    (needs task indices; not task-free)."""

    needs_boundaries = True

    def before_training_exp(self, model, task):
        if task.task is None:
            raise ValueError("progressive needs task indices (it is not task-free)")
        network = _progressive(model)
        while len(network.columns) <= task.task:
            network.add_column()
        network.active.fill_(task.task)

    def before_eval_exp(self, model, task):
        if task.task is None:
            raise ValueError("progressive needs the task index to evaluate")
        network = _progressive(model)
        network.active.fill_(min(task.task, len(network.columns) - 1))


def _progressive(model: nn.Module) -> ProgressiveMLP:
    found = [m for m in model.modules() if isinstance(m, ProgressiveMLP)]
    if len(found) != 1:
        raise ValueError(f"progressive needs a model with one ProgressiveMLP (it has {len(found)})")
    return found[0]


def progressive() -> Progressive:
    """Progressive networks (see `ProgressiveMLP`)."""
    return Progressive()


# ----------------------------------------------------------------------------------------------
# Streams on the shared Trainer


class ContinualCallback(Callback):
    """Runs `plugins` inside `runtime.training.Trainer`'s step: the Trainer's minibatch
    {"x": (B, ...), "y": (B, ...)} becomes a `TaskData` with the per-example `loss`, replay
    augments it, regularizers add their penalty, SI reads the gradients and the step."""

    def __init__(self, plugins: ContinualPlugin, loss: Loss, task: Optional[int] = None):
        self.plugins, self.loss, self.task = plugins, loss, task

    def _data(self, batch: Dict[str, Tensor]) -> TaskData:
        return TaskData(batch["x"], batch["y"], self.loss, self.task)

    def on_train_batch(self, trainer, batch):
        data = self.plugins.augment_batch(trainer.model, self._data(batch))
        return {"x": data.x, "y": data.y}

    def on_loss(self, trainer, batch, loss):
        return self.plugins.before_backward(trainer.model, self._data(batch), loss)

    def on_after_backward(self, trainer):
        self.plugins.after_backward(trainer.model)

    def on_after_step(self, trainer):
        self.plugins.after_step(trainer.model)


def example_loss(loss: Loss) -> Callable:
    """The Trainer's loss(model, batch) -> (mean loss, metrics) of a per-example `loss`."""
    def mean_loss(model: nn.Module, batch: Dict[str, Tensor]):
        value = loss(model(batch["x"]), batch["y"]).mean()
        return value, {}
    return mean_loss


def train_experience(model: nn.Module, data: TaskData, plugins: ContinualPlugin,
                     config: TrainConfig, task_free: bool = False,
                     callbacks: Sequence[Callback] = ()) -> List[dict]:
    """Train on one experience with the shared `Trainer` (a new optimizer per experience,
    `config.epochs` epochs of minibatches of `config.batch`, shuffled with the seed
    `1000 * config.seed + task`; no validation split, no early stopping). Task-free skips the
    boundary callbacks and hides the task index. The global generators are seeded before the
    boundary callbacks too (a stream resumed at this task draws the same). Returns the
    Trainer's per-epoch history."""
    if task_free and plugins.needs_boundaries:
        raise ValueError("a method here needs task boundaries (vcl, progressive): it cannot train task-free")
    task = None if task_free else data.task
    seed = 1000 * config.seed + (data.task or 0)
    seed_everything(seed)               # what a boundary draws (a new column's init) repeats on resume
    if not task_free:
        plugins.before_training_exp(model, data)
    trainer = Trainer(model, example_loss(data.loss), replace(config, seed=seed),
                      [ContinualCallback(plugins, data.loss, task), *callbacks])
    history = trainer.fit({"x": data.x, "y": data.y})
    if not task_free:
        plugins.after_training_exp(model, data)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, tasks: Sequence[Task], plugins: ContinualPlugin,
             score: Score) -> Tensor:
    """Scores (T,) of the model on every task's test data, in eval mode."""
    was_training = model.training
    model.eval()
    scores = []
    for j, task in enumerate(tasks):
        test = replace(task.test, task=j)
        plugins.before_eval_exp(model, test)
        scores.append(score(model(test.x), test.y))
    model.train(was_training)
    return torch.tensor(scores, dtype=torch.float64)


def run_stream(model: nn.Module, stream: Sequence[Task], plugins: ContinualPlugin,
               config: Optional[TrainConfig] = None, score: Score = accuracy,
               task_free: bool = False, start: int = 0, stop: Optional[int] = None,
               callbacks: Sequence[Callback] = ()) -> Tensor:
    """Train through experiences start..stop-1, evaluating on every task after each one.

    `config` is the shared `runtime.training.TrainConfig` (default: plain SGD, lr 0.1, batch 32,
    one epoch per experience). Returns the rows R[start:stop] (stop-start, T) of the accuracy
    matrix, R[i, j] = score on task j after training through task i. Task-free: no boundary
    callbacks are called (the evaluation after each experience is the experimenter's, not the
    learner's).
    """
    config = config or stream_config()
    stop = len(stream) if stop is None else stop
    rows = []
    for i in range(start, stop):
        train = replace(stream[i].train, task=i)
        train_experience(model, train, plugins, config, task_free, callbacks)
        rows.append(evaluate(model, stream, plugins, score))
    return torch.stack(rows) if rows else torch.zeros(0, len(stream), dtype=torch.float64)


def stream_config(epochs: int = 1, batch: int = 32, lr: float = 0.1, momentum: float = 0.0,
                  seed: int = 0, optimizer: str = "sgd") -> TrainConfig:
    """A `TrainConfig` for `run_stream`: no validation split, no progress bar."""
    return TrainConfig(optimizer=optimizer, lr=lr, momentum=momentum, epochs=epochs, batch=batch,
                       validation=0.0, seed=seed, progress=False)
