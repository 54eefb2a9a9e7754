"""Classifier two-sample test (C2ST): how well a small classifier tells two sets of draws apart."""

from __future__ import annotations

import torch
from torch import nn

from pyro_kr._validation import check_dim
from pyro_kr.metrics._inputs import Draws, as_pair, generator, subsample

_CLASSIFIERS = ("mlp", "logistic")


def _make_classifier(kind: str, d: int, hidden: int) -> nn.Module:
    if kind == "logistic":
        return nn.Linear(d, 1)
    return nn.Sequential(
        nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


def c2st(
    x: Draws,
    y: Draws,
    *,
    seed: int = 0,
    classifier: str = "mlp",
    folds: int = 5,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-2,
    hidden: int | None = None,
) -> float:
    """Return the cross-validated accuracy of a classifier trained to tell ``x`` from ``y``.

    Both sets are cut to the same size ``min(n, m)`` (seeded subsets), pooled, standardized by
    the pooled mean and standard deviation, labelled 0/1 and split into ``folds`` folds; for
    each fold a fresh classifier is trained on the others with Adam (``steps`` minibatch steps
    of ``batch_size``) and scored on it. The mean held-out accuracy is returned: about 0.5 when
    the sets come from the same distribution, 1.0 when they are perfectly separable (Lopez-Paz
    and Oquab 2017; the torch analogue of sbi's ``c2st``, without scikit-learn). Its noise
    floor is not exactly 0.5 at finite size: report it (:func:`pyro_kr.metrics.noise_floor`).
    The training runs with one torch thread (tiny networks; the setting is restored after).

    Args:
        x: draws of shape ``(n, d)`` (or ``(n,)``, or a dict).
        y: draws of shape ``(m, d)``.
        seed: seed of the subsets, fold split, initialization and minibatches (the global RNG
            state is restored afterwards).
        classifier: ``"mlp"`` (two hidden ReLU layers of ``hidden`` units) or ``"logistic"``
            (linear: detects differences in location only).
        folds: number of cross-validation folds (>= 2).
        steps: optimizer steps per fold.
        batch_size: minibatch size.
        lr: Adam learning rate.
        hidden: hidden width of the MLP (default ``max(16, 10 d)``).

    Returns:
        Mean held-out accuracy in ``[0, 1]``.

    Example:
        >>> x, y = torch.randn(300, 2), torch.randn(300, 2) + 6.0
        >>> c2st(x, y, steps=100) > 0.95
        True
    """
    if classifier not in _CLASSIFIERS:
        raise ValueError(f"c2st expected classifier in {_CLASSIFIERS}, got {classifier!r}")
    check_dim("folds", folds, minimum=2)
    check_dim("steps", steps)
    check_dim("batch_size", batch_size)
    xt, yt = as_pair("c2st", x, y)
    n = min(xt.shape[0], yt.shape[0])
    if 2 * n < 2 * folds:
        raise ValueError(f"c2st needs at least {folds} draws per set for {folds} folds, got {n}")
    gen = generator(seed)
    xt, yt = subsample(xt, n, gen), subsample(yt, n, gen)
    data = torch.cat([xt, yt]).cpu()
    data = (data - data.mean(0)) / data.std(0).clamp_min(1e-12)
    data = data.to(torch.float32)
    labels = torch.cat([torch.zeros(n), torch.ones(n)])
    perm = torch.randperm(2 * n, generator=gen)
    data, labels = data[perm], labels[perm]
    width = max(16, 10 * data.shape[1]) if hidden is None else hidden
    threads = torch.get_num_threads()
    # tiny networks: thread-pool overhead dominates, and is catastrophic on a busy machine
    torch.set_num_threads(1)
    try:
        accuracies = _cross_validate(data, labels, classifier, width, folds, steps, batch_size,
                                     lr, gen, seed)
    finally:
        torch.set_num_threads(threads)
    return sum(accuracies) / len(accuracies)


def _cross_validate(
    data: torch.Tensor,
    labels: torch.Tensor,
    classifier: str,
    width: int,
    folds: int,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    seed: int,
) -> list[float]:
    d = data.shape[1]
    fold_of = torch.arange(data.shape[0]) % folds
    accuracies = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k in range(folds):
            train, test = fold_of != k, fold_of == k
            xtr, ytr = data[train], labels[train]
            model = _make_classifier(classifier, d, width)
            optim = torch.optim.Adam(model.parameters(), lr=lr)
            loss_fn = nn.BCEWithLogitsLoss()
            for _ in range(steps):
                idx = torch.randint(0, xtr.shape[0], (min(batch_size, xtr.shape[0]),),
                                    generator=gen)
                loss = loss_fn(model(xtr[idx]).squeeze(-1), ytr[idx])
                optim.zero_grad()
                loss.backward()
                optim.step()
            with torch.no_grad():
                predicted = (model(data[test]).squeeze(-1) > 0).float()
            accuracies.append(float((predicted == labels[test]).float().mean()))
    return accuracies
