"""NetworkWorldModel: the world model's features, normalization and residual around a given
network, checked against the formula and with gradcheck (float64)."""
import torch

from runtime.continual import ProgressiveMLP, bayes_mlp
from runtime.continual_world_model import NetworkWorldModel, feature_size
from runtime.world_model import wrap_angle


def model_with(network, state=2, others=3, angles=(0,)):
    torch.manual_seed(0)
    model = NetworkWorldModel(state, others, network, residual=True, angles=angles).double()
    s, c, s_next = torch.randn(40, state, dtype=torch.float64), torch.randn(40, others, dtype=torch.float64), \
        torch.randn(40, state, dtype=torch.float64)
    model.fit_normalization(s, c, s_next)
    return model


def test_the_network_replaces_the_layers_in_the_formula():
    F = feature_size(2, 3, (0,))
    assert F == 6
    torch.manual_seed(1)
    network = torch.nn.Linear(F, 2).double()
    model = model_with(network)
    assert set(dict(model.named_children())) == {"layers", "act", "network"} and len(model.layers) == 0
    s, c = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    phi = torch.cat([s[:, 1:], torch.sin(s[:, :1]), torch.cos(s[:, :1]), c], 1)
    expected = s + model.out_mean + model.out_std * network((phi - model.in_mean) / model.in_std)
    torch.testing.assert_close(model(s, c), expected)
    loss, sq = model.member_losses(s, c, expected)
    assert loss.shape == (1, 7) and float(loss.detach().abs().max()) < 1e-20
    target = torch.cat([wrap_angle(expected[:, :1] - s[:, :1]), expected[:, 1:] - s[:, 1:]], 1)
    torch.testing.assert_close(model.target(s, expected), target)


def test_gradients_through_bayesian_and_progressive_networks():
    F = feature_size(2, 3, (0,))
    for network in (bayes_mlp((F, 8, 2), act="tanh"), ProgressiveMLP(F, (8,), 2, act="tanh")):
        if isinstance(network, ProgressiveMLP):
            network.add_column()
        model = model_with(network.double())
        model.eval()                           # Bayesian layers: the mean (no sampled noise)
        s = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
        c = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: model(a, b), (s, c))
