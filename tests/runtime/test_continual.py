"""Continual-learning plugins: each reduces forgetting on a tiny stream where naive training
forgets; EWC's Fisher against a direct computation; reservoir sampling is uniform; state_dict
round trip mid-stream; gradients of every penalty and of the Bayesian layer."""
import io
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from runtime.continual import (BayesLinear, EWC, ExampleBuffer, Plugins, ProgressiveMLP,
                               TaskData, bayes_mlp, cross_entropy, distill,
                               empirical_fisher, evaluate, ewc, progressive, replay, run_stream,
                               si, squared_error, accuracy, stream_config, vcl)
from runtime.continual_metrics import backward_transfer
from runtime.streams import permuted_gaussian

CONFIG = stream_config(epochs=5, batch=32, lr=0.1, seed=0)


@pytest.fixture(scope="module")
def stream():
    return permuted_gaussian(n_tasks=3, n_classes=5, dim=12, n_train=300, n_test=200, noise=0.5,
                             seed=3)


def mlp(dim=12, classes=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, classes))


def final_scores(stream, plugins, model=None, task_free=False):
    R = run_stream(model or mlp(), stream, plugins, CONFIG, task_free=task_free)
    return R, R[-1].mean().item(), backward_transfer(R)


@pytest.fixture(scope="module")
def naive(stream):
    R, acc, bwt = final_scores(stream, Plugins())
    assert bwt < -0.2, f"the test stream must make naive training forget (BWT {bwt:.3f})"
    return acc, bwt


@pytest.mark.parametrize("name, make", [
    ("ewc", lambda: ewc(30.0)),
    ("online ewc", lambda: ewc(30.0, online=True, gamma=0.9)),
    ("si", lambda: si(0.3, xi=1e-3)),
    ("distill", lambda: distill(2.0, 3.0)),
    ("replay reservoir", lambda: replay(100)),
    ("replay class_balanced", lambda: replay(100, policy="class_balanced")),
    ("replay experience_balanced", lambda: replay(100, policy="experience_balanced")),
    ("replay + distill", lambda: replay(100) + distill(2.0, 3.0)),
])
def test_method_reduces_forgetting(stream, naive, name, make):
    _, acc, bwt = final_scores(stream, make())
    naive_acc, naive_bwt = naive
    assert bwt > naive_bwt + 0.05, f"{name}: BWT {bwt:.3f} vs naive {naive_bwt:.3f}"
    assert acc > naive_acc + 0.03, f"{name}: ACC {acc:.3f} vs naive {naive_acc:.3f}"


@pytest.mark.parametrize("name, make", [
    ("task-free replay", lambda: replay(100)),
    ("task-free online ewc", lambda: ewc(10.0, online=True, gamma=0.9, every=20, window=128)),
])
def test_task_free_methods_reduce_forgetting(stream, naive, name, make):
    _, acc, bwt = final_scores(stream, make(), task_free=True)
    assert bwt > naive[1] + 0.05, f"{name}: BWT {bwt:.3f} vs naive {naive[1]:.3f}"


def test_vcl_reduces_forgetting_of_a_bayesian_mlp(stream):
    def run(plugins):
        torch.manual_seed(0)
        return final_scores(stream, plugins, model=bayes_mlp((12, 32, 5), init_sigma=0.1))

    _, naive_acc, naive_bwt = run(Plugins())
    _, vcl_acc, vcl_bwt = run(vcl(beta=1.0))
    assert naive_bwt < -0.2 and vcl_bwt > naive_bwt + 0.05 and vcl_acc > naive_acc + 0.03


def test_progressive_never_forgets(stream):
    model = ProgressiveMLP(12, (32,), 5)
    plugins = progressive()
    R = run_stream(model, stream, plugins, CONFIG)
    assert len(model.columns) == 3
    assert torch.allclose(R[-1], R.diagonal())  # old columns are frozen: no forgetting at all
    assert R.diagonal().min() > 0.8
    # the frozen column-0 weights are those learned on task 0; only the new column trains
    assert [p.requires_grad for p in model.columns[0].parameters()] == [False] * 4
    assert all(p.requires_grad for p in model.columns[2].parameters())


def test_ewc_fisher_matches_a_direct_computation():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(37, 4, dtype=torch.float64), torch.randint(3, (37,))
    fisher = empirical_fisher(model, TaskData(x, y, cross_entropy), batch_size=10)
    direct = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for n in range(37):  # one example at a time, by plain autograd
        loss = cross_entropy(model(x[n:n + 1]), y[n:n + 1]).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for (name, _), g in zip(model.named_parameters(), grads):
            direct[name] += g.pow(2) / 37
    for name in direct:
        torch.testing.assert_close(fisher[name], direct[name], rtol=1e-10, atol=1e-14)


def test_separate_ewc_penalty_is_the_sum_of_per_task_quadratics():
    torch.manual_seed(2)
    model = nn.Linear(3, 2).double()
    plugin = EWC(lambda_=4.0)
    tasks, snapshots = [], []
    for t in range(3):
        data = TaskData(torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 2,
                        dtype=torch.float64), squared_error)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        plugin.consolidate(model, data)
        tasks.append(empirical_fisher(model, data))
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    direct = sum(0.5 * 4.0 * (f[n] * (p - s[n]).pow(2)).sum()
                 for f, s in zip(tasks, snapshots) for n, p in model.named_parameters())
    torch.testing.assert_close(plugin.penalty(model), direct, rtol=1e-9, atol=1e-12)


def test_reservoir_sampling_is_uniform():
    """Each of N = 400 stream items should be kept with probability k / N (chi-square test)."""
    n_items, capacity, trials = 400, 40, 200
    counts = torch.zeros(n_items)
    for trial in range(trials):
        buffer = ExampleBuffer(capacity, "reservoir", seed=trial)
        for start in range(0, n_items, 25):
            items = torch.arange(start, start + 25)
            buffer.add(items.unsqueeze(1).float(), items)
        counts += torch.bincount(buffer.sample(capacity)[1], minlength=n_items)
    expected = trials * capacity / n_items
    chi2 = ((counts - expected).pow(2) / expected).sum().item()
    # chi-square with N - 1 = 399 dof: mean 399, sd sqrt(798) ~ 28; 99.9% quantile ~ 493
    assert chi2 < 493, chi2
    # and reservoir is not biased to recent items: the first and last halves are kept equally
    assert abs(counts[:200].sum() - counts[200:].sum()) < 0.05 * counts.sum()


def test_ring_keeps_the_newest_and_class_balanced_splits_the_capacity():
    ring = ExampleBuffer(10, "ring")
    balanced = ExampleBuffer(12, "class_balanced")
    for start in range(0, 100, 7):
        items = torch.arange(start, min(start + 7, 100))
        ring.add(items.unsqueeze(1).float(), items)
        balanced.add(items.unsqueeze(1).float(), items // 50)  # class 0 then class 1
    assert sorted(ring.sample(10)[1].tolist()) == list(range(90, 100))
    assert torch.bincount(balanced.sample(12)[1]).tolist() == [6, 6]
    with pytest.raises(ValueError, match="policy"):
        ExampleBuffer(5, "fifo")


def test_experience_balanced_replay_holds_only_past_experiences_split_evenly():
    plugin = replay(30, policy="experience_balanced")
    model = nn.Linear(1, 1)
    batch = TaskData(torch.zeros(8, 1), torch.full((8,), 99), cross_entropy, task=0)
    assert len(plugin.augment_batch(model, batch)) == 8 and len(plugin.buffer) == 0   # nothing past yet
    for k in range(3):
        x = torch.full((40, 1), float(k))
        plugin.after_training_exp(model, TaskData(x, torch.full((40,), k), cross_entropy, task=k))
        held = torch.bincount(plugin.buffer.sample(30)[1], minlength=3)[:k + 1].tolist()
        assert held == [30 // (k + 1)] * (k + 1)
    augmented = plugin.augment_batch(model, replace(batch, task=3))
    assert len(augmented) == 16 and 99 not in augmented.y[8:].tolist()   # the current batch is not stored
    with pytest.raises(ValueError, match="needs task boundaries"):
        plugin.augment_batch(model, replace(batch, task=None))


def make_combo():
    return ewc(10.0) + si(0.3, xi=1e-3) + distill(2.0, 1.0) + replay(64, ratio=0.5)


def test_state_dict_round_trip_mid_stream(stream):
    """Stopping after task 1 and resuming from saved model + plugin state gives the same run."""
    full = run_stream(mlp(), stream, make_combo(), CONFIG)

    model, plugins = mlp(), make_combo()
    first = run_stream(model, stream, plugins, CONFIG, stop=2)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "plugins": plugins.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved)

    resumed_model, resumed_plugins = mlp(seed=9), make_combo()  # fresh: no lazily built state
    resumed_model.load_state_dict(state["model"])
    resumed_plugins.load_state_dict(state["plugins"])
    keys = set(state["plugins"])
    assert any("fisher" in k for k in keys) and any("importance" in k for k in keys)
    assert any("teacher" in k for k in keys) and any(k.endswith("buffer.x") for k in keys)
    rest = run_stream(resumed_model, stream, resumed_plugins, CONFIG, start=2)
    torch.testing.assert_close(torch.cat([first, rest]), full, rtol=0, atol=0)


def test_progressive_state_dict_round_trip(stream):
    model = ProgressiveMLP(12, (16,), 5)
    run_stream(model, stream, progressive(), CONFIG, stop=2)
    fresh = ProgressiveMLP(12, (16,), 5)
    fresh.load_state_dict(model.state_dict())
    assert len(fresh.columns) == 2
    scores = evaluate(fresh, stream[:2], progressive(), accuracy)
    torch.testing.assert_close(scores, evaluate(model, stream[:2], progressive(), accuracy))


def test_penalty_gradients_gradcheck():
    torch.manual_seed(4)
    model = nn.Linear(3, 2).double()
    data = TaskData(torch.randn(8, 3, dtype=torch.float64), torch.randint(2, (8,)), cross_entropy)
    ewc_plugin, si_plugin, lwf = EWC(2.0), si(0.5, xi=0.1), distill(1.5, 2.0)
    ewc_plugin.consolidate(model, data)
    loss = cross_entropy(model(data.x), data.y).mean()
    loss.backward()
    si_plugin.after_backward(model)
    with torch.no_grad():
        model.weight.add_(0.1)
    si_plugin.after_step(model)
    si_plugin.after_training_exp(model, data)
    lwf.after_training_exp(model, data)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(
        lambda *theta: ewc_plugin.penalty(_ParamView(names, theta))
        + si_plugin.penalty(_ParamView(names, theta)), params)
    student = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: lwf.distillation(s, teacher), (student,))
    assert lwf.distillation(teacher, teacher).abs().item() < 1e-12


class _ParamView(nn.Module):
    """A module whose named_parameters are given tensors (for gradchecking penalties)."""

    def __init__(self, names, values):
        super().__init__()
        self._view = list(zip(names, values))

    def named_parameters(self, *args, **kwargs):
        return iter(self._view)


def test_bayes_linear_kl_and_local_reparametrization():
    torch.manual_seed(5)
    layer = BayesLinear(3, 2, prior_sigma=0.7, init_sigma=0.2).double()
    with torch.no_grad():
        layer.prior_weight_mu.normal_()
    mu, rho = layer.weight_mu.detach().clone(), layer.weight_rho.detach().clone()

    def kl_of(weight_mu, weight_rho):
        return _kl_with(layer, {"weight_mu": weight_mu, "weight_rho": weight_rho})

    # direct: the KL of independent Gaussians, summed, from torch.distributions
    q = torch.distributions.Normal(mu, torch.nn.functional.softplus(rho))
    p = torch.distributions.Normal(layer.prior_weight_mu, layer.prior_weight_sigma)
    qb = torch.distributions.Normal(layer.bias_mu, torch.nn.functional.softplus(layer.bias_rho))
    pb = torch.distributions.Normal(layer.prior_bias_mu, layer.prior_bias_sigma)
    direct = (torch.distributions.kl_divergence(q, p).sum()
              + torch.distributions.kl_divergence(qb, pb).sum())
    torch.testing.assert_close(kl_of(mu, rho), direct.detach())
    assert torch.autograd.gradcheck(kl_of, (mu.clone().requires_grad_(),
                                            rho.clone().requires_grad_()))
    # the output's mean and variance match the weight distribution's (Monte Carlo, 20k draws)
    x = torch.randn(1, 3, dtype=torch.float64).expand(20000, 3)
    layer.requires_grad_(False)
    out = layer.train()(x)
    sigma = torch.nn.functional.softplus(layer.weight_rho)
    mean = x[0] @ layer.weight_mu.T + layer.bias_mu
    var = x[0].pow(2) @ sigma.pow(2).T + torch.nn.functional.softplus(layer.bias_rho).pow(2)
    torch.testing.assert_close(out.mean(0), mean, atol=4 * math.sqrt(var.max() / 20000), rtol=0)
    torch.testing.assert_close(out.var(0), var, rtol=0.05, atol=0)
    torch.testing.assert_close(layer.eval()(x[:1]), mean.unsqueeze(0))


class _KL(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self):
        return self.layer.kl()


def _kl_with(layer, parameters):
    """layer.kl() with some parameters replaced by the given tensors."""
    renamed = {f"layer.{name}": value for name, value in parameters.items()}
    return torch.func.functional_call(_KL(layer), renamed, ())


def test_vcl_moves_the_prior_to_the_posterior_and_needs_bayesian_layers():
    model = bayes_mlp((3, 4, 2))
    plugin = vcl(n_data=10)
    data = TaskData(torch.randn(10, 3), torch.randint(2, (10,)), cross_entropy)
    plugin.after_training_exp(model, data)
    assert model[0].kl().item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="BayesLinear"):
        vcl(n_data=10).before_backward(nn.Linear(3, 2), data, torch.zeros(()))


@pytest.mark.parametrize("act", ["tanh", "silu"])
def test_architectures_with_an_activation_and_zero_init_gradcheck(act):
    """`act` and `zero_last` (the mlp block's options): outputs start at 0, and the input
    gradient through two progressive columns (laterals included) and the Bayesian mean is exact."""
    torch.manual_seed(0)
    progressive = ProgressiveMLP(3, (4, 4), 2, act=act, zero_last=True).double()
    bayes = bayes_mlp((3, 4, 2), act=act, zero_last=True).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(progressive(x), torch.zeros(5, 2, dtype=torch.float64))
    assert torch.equal(bayes(x), torch.zeros(5, 2, dtype=torch.float64))
    progressive.add_column()
    assert progressive.columns[1][0].weight.dtype == torch.float64         # the new column follows the dtype
    for network in (progressive, bayes):
        for p in network.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p.data)
        assert torch.autograd.gradcheck(network, (x,))
