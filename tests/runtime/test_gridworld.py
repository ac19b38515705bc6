"""Tests of runtime/gridworld.py: the generator's invariants, shortest experts, the .npz round trip."""
import numpy as np
import pytest
import torch

from runtime.grid import MOVES, shortest_path_distances
from runtime.gridworld import PAPER_OBSTACLES, GridworldData, generate


@pytest.fixture(scope="module", params=[8, 16])
def data(request) -> GridworldData:
    return generate(request.param, maps=40, seed=request.param, chunk=16)


def test_shapes_borders_and_free_cells(data):
    M, H, W = data.maps.shape
    T = data.meta["trajs"]
    assert (M, H, W, T) == (40, data.meta["size"], data.meta["size"], 7)
    assert data.starts.shape == (M, T, 2) and data.goals.shape == (M, 2)
    assert data.maps[:, [0, -1], :].all() and data.maps[:, :, [0, -1]].all()
    assert data.maps[:, 1:-1, 1:-1].any(axis=(1, 2)).all()                         # obstacles inside
    rows = np.arange(M)
    assert (data.maps[rows, data.goals[:, 0], data.goals[:, 1]] == 0).all()
    assert (data.maps[rows[:, None], data.starts[..., 0], data.starts[..., 1]] == 0).all()
    assert not (data.starts == data.goals[:, None]).all(-1).any()                 # start != goal
    flat = data.starts[..., 0].astype(int) * W + data.starts[..., 1]
    assert all(len(set(f)) == T for f in flat)                                    # distinct starts
    count, size = PAPER_OBSTACLES[H]
    assert (data.meta["max_obstacles"], data.meta["max_obstacle_size"]) == (count, size)


def test_expert_paths_are_valid_and_shortest(data):
    M, H, W = data.maps.shape
    occupancy = torch.as_tensor(data.maps, dtype=torch.float64)
    distance = shortest_path_distances(torch.ones_like(occupancy), occupancy,
                                       torch.as_tensor(data.goals.astype(np.int64)))
    for m in range(M):
        for t in range(data.starts.shape[1]):
            n = int(data.expert_lengths[m, t])
            cells = data.expert_states[m, t, :n + 1].astype(int)
            actions = data.expert_actions[m, t, :n].astype(int)
            assert (data.expert_states[m, t, n + 1:] == -1).all() and (data.expert_actions[m, t, n:] == -1).all()
            assert (cells[0] == data.starts[m, t]).all() and (cells[-1] == data.goals[m]).all()
            assert (np.diff(cells, axis=0) == np.array(MOVES)[actions]).all()   # each step is its action
            assert (data.maps[m, cells[:, 0], cells[:, 1]] == 0).all()          # never on an obstacle
            length = np.linalg.norm(np.diff(cells, axis=0), axis=1).sum()
            assert abs(length - float(distance[m, cells[0, 0], cells[0, 1]])) < 1e-9
            # ties: the expert takes the lowest-index move that stays on a shortest path
            for cell, action in zip(cells[:-1], actions):
                remaining = float(distance[m, cell[0], cell[1]])
                for lower in range(action):
                    nxt = cell + np.array(MOVES[lower])
                    if 0 <= nxt[0] < H and 0 <= nxt[1] < W:
                        via = np.hypot(*MOVES[lower]) + float(distance[m, nxt[0], nxt[1]])
                        assert via > remaining + 1e-9


def test_state_action_pairs_and_round_trip(data, tmp_path):
    map_index, states, actions = data.state_action_pairs()
    assert len(actions) == data.expert_lengths.sum() and (np.diff(map_index) >= 0).all()
    assert (actions >= 0).all() and (actions < 8).all()
    path = tmp_path / "grid.npz"
    data.save(path)
    loaded = GridworldData.load(path)
    assert loaded.meta == data.meta
    for name in ("maps", "goals", "starts", "expert_states", "expert_actions", "expert_lengths"):
        assert np.array_equal(getattr(loaded, name), getattr(data, name)) and \
            getattr(loaded, name).dtype == getattr(data, name).dtype


def test_seeded_and_checked():
    a, b = generate(8, 5, seed=3), generate(8, 5, seed=3)
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.expert_actions, b.expert_actions)
    assert not np.array_equal(a.maps, generate(8, 5, seed=4).maps)
    with pytest.raises(ValueError, match="no obstacle limits"):
        generate(10, 2)
    assert generate(10, 2, max_obstacles=5, max_obstacle_size=2).maps.shape == (2, 10, 10)
