"""The training record every ``fit`` returns: :class:`TrainingHistory` and its subclasses.

:func:`pyro_kr.fit` returns a :class:`~pyro_kr.History` (loss, ELBO and schedule per step),
:func:`pyro_kr.amortized.fit_amortized` an :class:`~pyro_kr.amortized.AmortizedHistory`
(plus validation) and :meth:`pyro_kr.flow_matching.COTFlowMatching.fit` a
:class:`~pyro_kr.flow_matching.FlowMatchingHistory` (plus validation W2 and timings). All of
them are a :class:`TrainingHistory`: ``loss`` (one float per step), ``steps``, ``seconds``
(wall time of the training loop) and ``state_dict`` / ``from_state_dict``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

__all__ = ["TrainingHistory"]


@dataclass
class TrainingHistory:
    """Per-step training loss and the run's wall time: the base of every history.

    Attributes:
        loss: the training loss of every step (what the optimizer minimized).
        seconds: wall time of the training loop in seconds.

    Example:
        >>> h = TrainingHistory(loss=[3.0, 2.0, 1.5], seconds=0.1)
        >>> h.steps, h.final_loss
        (3, 1.5)
        >>> TrainingHistory.from_state_dict(h.state_dict()) == h
        True
    """

    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        """Number of steps recorded."""
        return len(self.loss)

    @property
    def final_loss(self) -> float:
        """The last step's loss (``nan`` before the first step)."""
        return self.loss[-1] if self.loss else float("nan")

    def state_dict(self) -> dict:
        """Every field, copied (lists are new lists): what a checkpoint stores."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict) -> TrainingHistory:
        """Rebuild a history from :meth:`state_dict` (fields it lacks keep their defaults)."""
        return cls(**state)
