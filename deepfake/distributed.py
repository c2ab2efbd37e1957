"""Several processes, one run: the few collective steps ``torchrun`` training needs, in one place.

``torchrun --nproc_per_node N deepfake_detection.py`` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set. Each trains on its shard of every epoch and DistributedDataParallel averages the
gradients; rank 0 alone writes files. Without those variables (a plain ``python`` run) nothing here
starts a process group and every helper is the single-process identity, so that run is unchanged.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import DeepfakeError

T = TypeVar("T")


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes (NCCL for GPUs, gloo for ``--device cpu`` or a machine
    without one); False for a plain run."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    dist.init_process_group("nccl" if device != "cpu" and torch.cuda.is_available() else "gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This process's own GPU when the run spans several (``cuda`` -> ``cuda:LOCAL_RANK``)."""
    if not is_distributed() or device.type != "cuda":
        return device
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(local)
    return local


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (any small picklable object) on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank, so all ranks take the same branch (e.g. stop on a diverged loss)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(*values: float) -> list[float]:
    """Each value summed over all ranks (epoch loss and counts of the whole epoch, not of one shard)."""
    if not is_distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return total.tolist()


def shard(order: torch.Tensor) -> torch.Tensor:
    """This rank's share of an epoch's order, which every rank draws alike: DistributedSampler's rule
    (wrap around to a multiple of the world size, then every world_size-th from this rank), so all shards
    are the same length and every rank takes the same number of steps."""
    ranks = world_size()
    if ranks == 1:
        return order
    padded = torch.cat([order, order[: (-len(order)) % ranks]])
    return padded[rank()::ranks]


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model under DistributedDataParallel in a distributed run (its gradients averaged over ranks),
    else the model itself."""
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's batch-norm statistics on every rank: each rank's last training batch moved its own, and the
    weights scored and kept must be the same everywhere."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class RankFailedError(DeepfakeError):
    """Another rank failed in a section every rank runs: this rank stops too, with that rank's message."""


def main_first(make: Callable[[], T]) -> T:
    """``make()`` on rank 0, then on the others, which so read what rank 0 wrote (samples made once).

    A rank whose ``make()`` raises stops every rank at once: it raises its own error, and every other rank a
    RankFailedError with that error's one line, instead of waiting in a collective until the backend times out.
    """
    if not is_distributed():
        return make()
    made, error = _attempt(make) if is_main() else (None, None)
    _stop_if_failed(broadcast(_one_line(error)), error)
    if not is_main():
        made, error = _attempt(make)
    lines = [None] * world_size()
    dist.all_gather_object(lines, _one_line(error))
    _stop_if_failed(next((line for line in lines if line), None), error)
    return made


def _attempt(make: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return make(), None
    except Exception as error:  # any kind: each would leave the other ranks waiting
        return None, error


def _one_line(error: Exception | None) -> str | None:
    if error is None:
        return None
    return f"rank {rank()} failed: {error if isinstance(error, DeepfakeError) else repr(error)}"


def _stop_if_failed(failure: str | None, own_error: Exception | None) -> None:
    """Raise this rank's own error, else another rank's ``failure`` line; nothing when every rank succeeded."""
    if own_error is not None:
        raise own_error
    if failure is not None:
        raise RankFailedError(failure)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
