"""train.ema_decay: the weight average follows the weights with its decay, and stands in for them."""
from __future__ import annotations

import pytest
import torch

from pipeline.training.averaging import WeightAverage


def test_weight_average_is_an_exponential_moving_average_with_a_short_warm_up() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    avg = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    seen, expected = [], start.clone()
    for n in range(200):
        with torch.no_grad():
            model[0].weight.add_(1.0)               # a step that moves every weight by +1
        avg.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * model[0].weight.detach()
        seen.append(avg.shadow["0.weight"].clone())
    torch.testing.assert_close(seen[-1], expected)
    # once warmed up (the warm-up decay reaches 0.9 after 80 updates) the average trails the moving
    # weights by decay / (1 - decay) = 9 steps; early on it follows them closer
    assert float((seen[5] - start).mean()) > 3.0
    lag = float((model[0].weight.detach() - avg.shadow["0.weight"]).mean())
    assert 8.0 < lag < 10.0
    assert avg.shadow["1.num_batches_tracked"].dtype == torch.int64     # integer buffers: copied


def test_swapped_in_lends_the_average_and_gives_the_weights_back_and_state_round_trips() -> None:
    model = torch.nn.Linear(3, 1)
    avg = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
    avg.update(model)
    live = model.weight.detach().clone()
    with avg.swapped_in(model):
        torch.testing.assert_close(model.weight.detach(), avg.shadow["weight"])
        assert not torch.equal(model.weight.detach(), live)
    assert torch.equal(model.weight.detach(), live)
    other = WeightAverage(torch.nn.Linear(3, 1), decay=0.5)
    other.load_state(avg.state())
    assert other.updates == 1 and torch.equal(other.shadow["weight"], avg.shadow["weight"])
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage(torch.nn.Linear(3, 2, bias=False), 0.5).load_state(avg.state())
    with pytest.raises(ValueError):
        WeightAverage(model, 1.0)
