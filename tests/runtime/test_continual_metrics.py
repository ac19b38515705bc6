"""Continual-learning metrics on a hand-made accuracy matrix."""
import json

import pytest
import torch

from runtime.continual_metrics import (ContinualResult, average_accuracy, backward_transfer,
                                       forward_transfer, results_table)

# R[i, j]: score on task j after training through task i (3 tasks), and the random init's b.
R = torch.tensor([[0.90, 0.20, 0.15],
                  [0.60, 0.80, 0.30],
                  [0.50, 0.70, 0.95]], dtype=torch.float64)
B = torch.tensor([0.10, 0.12, 0.08], dtype=torch.float64)


def test_acc_bwt_fwt_by_hand():
    assert average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)
    assert backward_transfer(R) == pytest.approx(((0.50 - 0.90) + (0.70 - 0.80)) / 2)
    assert forward_transfer(R, B) == pytest.approx(((0.20 - 0.12) + (0.30 - 0.08)) / 2)


def test_single_task_and_shape_errors():
    one = torch.tensor([[0.7]])
    assert backward_transfer(one) == 0.0 and forward_transfer(one, torch.tensor([0.1])) == 0.0
    with pytest.raises(ValueError, match="square"):
        average_accuracy(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="baseline"):
        forward_transfer(R, torch.zeros(2))


def test_result_table_json_and_heatmap(tmp_path):
    result = ContinualResult(R, B, task_names=("a", "b", "c"))
    table = result.table()
    assert "0.950" in table and "ACC 0.717" in table and "BWT -0.250" in table
    assert "FWT +0.150" in table
    back = ContinualResult.from_json(result.to_json())
    assert torch.equal(back.R, R) and torch.equal(back.baseline, B) and back.names == ("a", "b", "c")
    assert json.loads(result.to_json())["BWT"] == pytest.approx(-0.25)
    path = tmp_path / "heat.png"
    result.heatmap(path)
    assert path.stat().st_size > 1000
    markdown = results_table([("naive", result), ("no baseline", ContinualResult(R))])
    assert "| naive | 0.717 | -0.250 | +0.150 |" in markdown and "n/a" in markdown
