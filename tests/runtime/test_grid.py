"""Tests of runtime/grid.py: exact value iteration against Dijkstra, greedy rollouts, errors."""
import math

import pytest
import torch

from runtime.grid import (MOVES, bellman_q, greedy_path, move_lengths, move_rewards, neighbours,
                          shortest_path_distances, solve_value_iteration, value_iteration)


def random_maps(B=24, H=9, W=11, density=0.3, seed=0, unit_cost=False):
    """Random occupancy (float64), free goals, positive costs (or unit costs)."""
    g = torch.Generator().manual_seed(seed)
    occupancy = (torch.rand(B, H, W, generator=g) < density).double()
    goal = torch.stack([torch.randint(0, H, (B,), generator=g), torch.randint(0, W, (B,), generator=g)], 1)
    occupancy[torch.arange(B), goal[:, 0], goal[:, 1]] = 0.0
    cost = torch.ones(B, H, W, dtype=torch.float64) if unit_cost else \
        0.5 + torch.rand(B, H, W, generator=g, dtype=torch.float64)
    return cost, occupancy, goal


@pytest.mark.parametrize("actions", [4, 8])
@pytest.mark.parametrize("unit_cost", [False, True])
def test_value_iteration_equals_dijkstra(actions, unit_cost):
    cost, occupancy, goal = random_maps(seed=actions, unit_cost=unit_cost)
    values = value_iteration(cost, occupancy, goal, actions=actions)
    distance = shortest_path_distances(cost, occupancy, goal, actions)
    reachable = torch.isfinite(distance)
    assert torch.equal(torch.isfinite(values), reachable)
    assert (reachable.sum() > 200) and (~reachable & (occupancy < 0.5)).any()   # both kinds of cells occur
    torch.testing.assert_close(values[reachable], -distance[reachable], rtol=0, atol=1e-12)
    # optimal actions: argmax_a Q(s, a) is exactly the set of moves on a shortest path (Dijkstra)
    q = bellman_q(values, move_rewards(cost, occupancy, actions), 1.0)
    step = -q - (-values)[:, None]                            # >= 0, 0 on optimal moves
    lengths = move_lengths(actions, torch.float64)[None, :, None, None]
    dijkstra_gap = lengths * neighbours(cost, actions, 0.0) + neighbours(distance, actions, math.inf) \
        - distance[:, None]
    free = reachable & (values < 0)                           # reachable, not the goal
    mask = free[:, None].expand_as(q)
    assert torch.equal((step[mask].abs() < 1e-9), (dijkstra_gap[mask].abs() < 1e-9))
    assert (step[mask] > -1e-12).all()


def test_discounted_value_iteration_is_a_bellman_fixed_point():
    cost, occupancy, goal = random_maps(seed=3)
    values = value_iteration(cost, occupancy, goal, discount=0.9)
    q = bellman_q(values, move_rewards(cost, occupancy, 8), 0.9)
    free = torch.isfinite(values) & (values < 0)
    torch.testing.assert_close(q.amax(1)[free], values[free], rtol=0, atol=1e-10)
    assert (values[free] > -1 / (1 - 0.9) * 1.5 * math.sqrt(2)).all()    # bounded by the discount


def test_value_iteration_gradcheck_in_cost():
    cost, occupancy, goal = random_maps(B=2, H=4, W=5, density=0.2, seed=5)
    reachable = torch.isfinite(value_iteration(cost, occupancy, goal))
    cost.requires_grad_()
    assert torch.autograd.gradcheck(lambda c: value_iteration(c, occupancy, goal)[reachable], (cost,))


def test_greedy_rollout_of_exact_values_follows_shortest_paths():
    cost, occupancy, goal = random_maps(seed=7)
    B, H, W = occupancy.shape
    g = torch.Generator().manual_seed(1)
    start = torch.stack([torch.randint(0, H, (B,), generator=g), torch.randint(0, W, (B,), generator=g)], 1)
    sol = solve_value_iteration(cost, occupancy, goal, start)
    distance = shortest_path_distances(cost, occupancy, goal)
    batch = torch.arange(B)
    start_distance = distance[batch, start[:, 0], start[:, 1]]
    assert torch.equal(sol.reached, torch.isfinite(start_distance))
    assert sol.reached.any() and not sol.reached.all()
    for b in torch.nonzero(sol.reached)[:, 0].tolist():
        cells = torch.unique_consecutive(sol.path[b], dim=0)
        assert torch.equal(cells[-1], goal[b]) and (occupancy[b, cells[:, 0], cells[:, 1]] == 0).all()
        steps = cells.diff(dim=0)
        assert (steps.abs().max(1).values == 1).all()
        length = (steps.double().norm(dim=1) * cost[b, cells[1:, 0], cells[1:, 1]]).sum()
        assert abs(float(length) - float(start_distance[b])) < 1e-9
    torch.testing.assert_close(sol.logits.amax(1)[sol.reached], sol.values[batch, start[:, 0], start[:, 1]][sol.reached])


def test_greedy_path_failures_and_step_limit():
    occupancy = torch.zeros(3, 4, 4)
    occupancy[1, 1, 2] = 1.0
    goal = torch.tensor([[3, 3], [1, 3], [0, 3]])
    start = torch.tensor([[0, 0], [1, 0], [0, 3]])
    east = torch.zeros(3, 8, 4, 4)
    east[:, 2] = 1.0                                        # always move east (action 2)
    path, reached = greedy_path(east, occupancy, start, goal)
    assert reached.tolist() == [False, False, True]         # leaves the map / hits the obstacle / at goal
    assert torch.equal(path[0, -1], torch.tensor([0, 3])) and torch.equal(path[1, -1], torch.tensor([1, 1]))
    assert torch.equal(path[2], torch.tensor([[0, 3]]).expand(path.shape[1], 2))
    # step limit: exactly max_steps moves (path length max_steps + 1)
    corridor = torch.zeros(1, 8, 1, 9)
    corridor[:, 2] = 1.0
    for limit, success in [(5, False), (8, True)]:
        path, reached = greedy_path(corridor, torch.zeros(1, 1, 9), torch.tensor([[0, 0]]),
                                    torch.tensor([[0, 8]]), limit)
        assert path.shape == (1, limit + 1, 2) and bool(reached) == success


def test_errors_are_clear():
    cost, occupancy, goal = random_maps(B=2, seed=0)
    with pytest.raises(ValueError, match="4 or 8"):
        value_iteration(cost, occupancy, goal, actions=6)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        value_iteration(cost, occupancy, goal[:, :1])
    with pytest.raises(ValueError, match="outside"):
        value_iteration(cost, occupancy, goal + 100)
    blocked = occupancy.clone()
    blocked[0, goal[0, 0], goal[0, 1]] = 1.0
    with pytest.raises(ValueError, match="obstacle"):
        value_iteration(cost, blocked, goal)
    with pytest.raises(ValueError, match="must match"):
        value_iteration(cost[:, :-1], occupancy, goal)
    assert len(MOVES) == 8
