"""Data-parallel training under ``torchrun``: process group, DDP wrapping, rank-0 output.

:func:`pyro_kr.fit` (hence :func:`pyro_kr.fit_amortized`) calls :func:`setup` itself: when
the script runs under ``torchrun`` (the ``RANK`` / ``WORLD_SIZE`` environment variables, with
``WORLD_SIZE > 1``) or inside an initialized ``torch.distributed`` process group, it joins the
group (``gloo`` on CPU, ``nccl`` on CUDA), wraps the trainable modules in
``torch.nn.parallel.DistributedDataParallel`` so that gradients are averaged over the ranks,
and lets only rank 0 show progress and write checkpoints. Outside such a launch every function
here is a no-op (rank 0 of a world of 1).

Example:
    >>> from pyro_kr import distributed
    >>> distributed.world_size(), distributed.rank(), distributed.is_main()
    (1, 0, True)
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "DataParallelObjective", "barrier", "is_main", "launched", "mean", "rank", "setup",
    "shard", "world_size",
]


def launched() -> bool:
    """Whether this process is one of several (an initialized group, or torchrun's env)."""
    return world_size() > 1


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Number of processes (``WORLD_SIZE`` before the group is set up; 1 without a launch)."""
    if _initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Global rank of this process (``RANK`` before the group is set up; 0 without a launch)."""
    if _initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0: the process that writes progress, checkpoints and results."""
    return rank() == 0


def setup(backend: str | None = None) -> bool:
    """Join the process group of a ``torchrun`` launch; return whether training is parallel.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default ``nccl`` when CUDA is available, else
            ``gloo``. Under ``nccl`` the current CUDA device becomes ``LOCAL_RANK``.

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` without ``RANK``, ``MASTER_ADDR`` or
            ``MASTER_PORT`` (launch with ``torchrun``, which sets them).
    """
    if _initialized():
        return torch.distributed.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: launch the "
            "script with torchrun (e.g. torchrun --nproc_per_node=2 train.py)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend)
    atexit.register(_shutdown)
    return torch.distributed.get_world_size() > 1


def _shutdown() -> None:
    if _initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _initialized():
        torch.distributed.barrier()


def _device() -> torch.device:
    if _initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks (``value`` itself without a process group)."""
    if not _initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return float(t) / torch.distributed.get_world_size()


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch of indices (equal shares).

    Raises:
        ValueError: the batch does not split evenly over the ranks.
    """
    size, r = world_size(), rank()
    if size == 1:
        return index
    if len(index) % size:
        raise ValueError(
            f"the global batch of {len(index)} does not split over {size} processes: use a "
            f"batch_size divisible by the number of processes"
        )
    step = len(index) // size
    return index[r * step:(r + 1) * step]


def _trainable_modules(*objects) -> list[nn.Module]:
    found: dict[int, nn.Module] = {}
    for obj in objects:
        owner = getattr(obj, "__self__", None)  # a bound method
        # the objects, the owners of bound methods, and the modules these hold directly
        candidates = [obj, owner]
        for holder in (obj, owner):
            if holder is not None and not isinstance(holder, nn.Module):
                candidates += list(getattr(holder, "__dict__", {}).values())
        for candidate in candidates:
            if isinstance(candidate, nn.Module) and any(
                p.requires_grad for p in candidate.parameters()
            ):
                found.setdefault(id(candidate), candidate)
    return list(found.values())


class DataParallelObjective(nn.Module):
    """The training loss as a module, so that ``DistributedDataParallel`` can wrap it.

    ``forward(*args, **kwargs)`` returns ``loss.differentiable_loss(model, guide, ...)`` for a
    Pyro ELBO, else ``loss(model, guide, ...)``. The trainable modules (model, guide or loss
    when they are modules, the objects whose bound methods they are, and the modules these
    objects hold as attributes) are its submodules, so DDP averages their gradients over the
    ranks during ``backward``.

    Raises:
        RuntimeError: no trainable ``nn.Module`` is found (plain ``pyro.param`` guides are not
            supported in parallel: use an autoguide or a ``PyroModule``).
    """

    def __init__(self, model: Callable, guide: Callable, loss) -> None:
        super().__init__()
        modules = _trainable_modules(model, guide, loss)
        if not modules:
            raise RuntimeError(
                "training under torchrun needs the trainable parameters inside torch "
                "modules (a pyro autoguide, pyro_kr.AutoKR/AmortizedKR or a PyroModule); "
                "a guide built from pyro.param calls cannot be wrapped in DDP"
            )
        self.parts = nn.ModuleList(modules)
        self._fns = (model, guide, loss)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        model, guide, loss = self._fns
        if hasattr(loss, "differentiable_loss"):
            return loss.differentiable_loss(model, guide, *args, **kwargs)
        return loss(model, guide, *args, **kwargs)


def wrap(model: Callable, guide: Callable, loss) -> Callable:
    """A Pyro loss callable whose gradients DDP averages over the ranks.

    Use as ``SVI(model, guide, optim, wrap(model, guide, loss))``; the parameters must exist
    (run the guide once before).
    """
    from torch.nn.parallel import DistributedDataParallel

    objective = DataParallelObjective(model, guide, loss)
    device = _device()
    ddp = DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None,
    )

    def parallel_loss(_model, _guide, *args, **kwargs):
        return ddp(*args, **kwargs)

    parallel_loss.ddp = ddp
    return parallel_loss
