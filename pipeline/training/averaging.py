"""An exponential moving average of the model's weights (``train.ema_decay``).

The weights after the last optimiser step carry the noise of the last few batches, and on a small data
set which epoch validation picks is partly chance.  Averaging the weights over the last steps (Polyak
averaging; an EMA as in many training recipes) keeps what the steps agree on.  Validation, ``best.pt``
and so prediction use the averaged weights; training goes on with the live ones, and ``last.pt`` keeps
both, so an interrupted run resumes exactly.  (On the demo's corpus, where the fused score's offset
varies by a few tenths from one trained model to the next, 0.98 did not raise the cross-validated
accuracy: README, "The demo".)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch


class WeightAverage:
    """The EMA of every floating-point entry of a model's ``state_dict`` (parameters and float buffers;
    integer buffers are copied as they are).

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``: the early average follows the
    weights quickly instead of remembering the random initialisation for hundreds of steps.
    """

    def __init__(self, model: "torch.nn.Module", decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an average's decay is in (0, 1), not {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model: "torch.nn.Module") -> None:
        """Fold the model's current weights into the average (after an optimiser step)."""
        import torch

        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                avg = self.shadow[k]
                if avg.is_floating_point():
                    avg.lerp_(v.detach().to(avg.dtype), 1.0 - d)
                else:
                    avg.copy_(v)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        """For ``last.pt`` (plain tensors and numbers: loadable with ``weights_only=True``)."""
        return {"decay": self.decay, "updates": self.updates, "weights": self.shadow}

    def load_state(self, state: dict[str, Any]) -> None:
        differ = set(self.shadow) ^ set(state["weights"])     # entries in one but not the other
        if differ:
            raise ValueError(f"the saved weight average does not fit this model ({sorted(differ)[:3]} ...)")
        self.updates = int(state["updates"])
        for k, v in state["weights"].items():
            self.shadow[k].copy_(v)

    @contextmanager
    def swapped_in(self, model: "torch.nn.Module") -> Iterator[None]:
        """Within the block ``model`` holds the averaged weights; its own come back afterwards."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(live)
