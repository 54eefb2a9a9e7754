"""Minibatches streamed from the shards of an on-disk bank (banks larger than memory).

:class:`ShardStream` holds out a seeded share of every shard for validation and serves the
rest in epochs: each epoch visits the shards in a seeded random order and the rows of each
shard in a seeded random order. Batch ``t`` is a pure function of ``(seed, t)``, so a resumed
run sees exactly the batches of an uninterrupted one, and under ``torchrun`` every rank takes
its contiguous share of the same global batch. At most ``cache`` shards are in memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch

from pyro_kr import distributed
from pyro_kr.simulation.bank import SimulationBank

__all__ = ["ShardStream", "StreamingForwardLoss"]


def _generator(*key: int) -> torch.Generator:
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


class ShardStream:
    """Seeded validation split and minibatches over the shards of ``bank``.

    Args:
        bank: an on-disk :class:`SimulationBank`.
        batch_size: global batch size (split over ``torchrun`` processes).
        validation_fraction: share of every shard held out (at least one pair in all).
        seed: seed of the split and the visiting orders.
        cache: shards kept in memory.

    Example:
        >>> import pyro, pyro.distributions as dist, torch, tempfile, pyro_kr
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     return pyro.sample("y", dist.Normal(z, 0.1), obs=y)
        >>> bank = pyro_kr.simulate(model, 20, observed="y", chunk_size=8,
        ...                         path=tempfile.mkdtemp())
        >>> stream = ShardStream(bank, batch_size=5, validation_fraction=0.25, seed=0)
        >>> stream.num_train, stream.num_validation
        (15, 5)
        >>> tuple(stream.batch(0)[0]["z"].shape)
        (5,)
    """

    def __init__(self, bank: SimulationBank, *, batch_size: int, validation_fraction: float,
                 seed: int, cache: int = 2) -> None:
        self.bank, self.batch_size, self.seed, self.cache = bank, batch_size, seed, cache
        self._loaded: OrderedDict[int, tuple] = OrderedDict()
        self.val_rows, self.train_rows = [], []
        for i, n in enumerate(bank.shard_sizes):
            perm = torch.randperm(n, generator=_generator(seed, 0, i))
            k = int(round(validation_fraction * n))
            self.val_rows.append(perm[:k])
            self.train_rows.append(perm[k:])
        if not sum(len(r) for r in self.val_rows):
            self.val_rows[0], self.train_rows[0] = self.train_rows[0][:1], self.train_rows[0][1:]
        self.train_sizes = torch.tensor([len(r) for r in self.train_rows])
        self.num_train = int(self.train_sizes.sum())
        self.num_validation = len(bank) - self.num_train
        if self.num_train < 1:
            raise ValueError("the validation split leaves no training pairs in the bank")
        self._epoch: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _shard(self, i: int) -> tuple[dict, dict]:
        if i in self._loaded:
            self._loaded.move_to_end(i)
        else:
            self._loaded[i] = self.bank.shard(i)
            while len(self._loaded) > self.cache:
                self._loaded.popitem(last=False)
        return self._loaded[i]

    def validation(self) -> tuple[dict, dict]:
        """The held-out pairs of every shard (one pass over the bank)."""
        parts = []
        for i, rows in enumerate(self.val_rows):
            if len(rows):
                lat, obs = self.bank.shard(i)
                parts.append(({k: v[rows] for k, v in lat.items()},
                              {k: v[rows] for k, v in obs.items()}))
        return tuple({k: torch.cat([p[j][k] for p in parts]) for k in parts[0][j]}
                     for j in (0, 1))

    def _order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._epoch is None or self._epoch[0] != epoch:
            order = torch.randperm(len(self.train_rows), generator=_generator(self.seed, 1, epoch))
            self._epoch = (epoch, order, torch.cumsum(self.train_sizes[order], 0))
        return self._epoch[1], self._epoch[2]

    def batch(self, step: int) -> tuple[dict, dict]:
        """This rank's share of global batch ``step``: ``(latents, observations)``."""
        b = self.batch_size
        positions = distributed.shard(torch.arange(step * b, (step + 1) * b))
        pieces = []
        epochs = positions // self.num_train
        for e in torch.unique(epochs).tolist():
            r = positions[epochs == e] % self.num_train
            order, cum = self._order(e)
            k = torch.searchsorted(cum, r, right=True)  # position in the epoch's shard order
            offset = r - (cum - self.train_sizes[order])[k]
            for j in torch.unique(k).tolist():
                s = int(order[j])
                perm = torch.randperm(len(self.train_rows[s]),
                                      generator=_generator(self.seed, 2, e, s))
                rows = self.train_rows[s][perm[offset[k == j]]]
                lat, obs = self._shard(s)
                pieces.append(({n: v[rows] for n, v in lat.items()},
                               {n: v[rows] for n, v in obs.items()}))
        return tuple({n: torch.cat([p[i][n] for p in pieces]) for n in pieces[0][i]}
                     for i in (0, 1))


class StreamingForwardLoss:
    """``-mean log q(u_i | y_i)`` over streamed minibatches (as the in-memory forward loss).

    ``step`` is the index of the next batch (set it to the checkpoint's step on resume).
    """

    def __init__(self, guide, stream: ShardStream, *, start: int = 0) -> None:
        self.guide, self.stream, self.step = guide, stream, start
        self.last: dict[str, float] = {}

    def _tensors(self, lat: dict, obs: dict) -> tuple[torch.Tensor, dict]:
        ref = self.guide.reference_like()
        with torch.no_grad():
            latent = self.guide.pack({n: lat[n].to(ref) for n in self.guide.order}).detach()
        return latent, {n: obs[n].to(ref) for n in self.guide.observed}

    def validation(self) -> tuple[torch.Tensor, dict]:
        """Packed validation latents and observations on the guide's device and dtype."""
        return self._tensors(*self.stream.validation())

    def nll(self, index: torch.Tensor, latent: torch.Tensor, data: dict) -> torch.Tensor:
        y = {k: v[index] for k, v in data.items()}
        return -self.guide.log_prob(latent[index], y).mean()

    def __call__(self, model, guide, *args, **kwargs) -> torch.Tensor:
        latent, data = self._tensors(*self.stream.batch(self.step))
        self.step += 1
        loss = -self.guide.log_prob(latent, data).mean()
        self.last = {"loss": float(loss.detach()), "elbo": math.nan}
        return loss
