"""Data-parallel training under ``torchrun``: the same Trainer, one process per rank.

``torchrun --nproc-per-node N -m hydranet train SPEC --out DIR`` (or ``hydranet train
--nproc N``, which launches exactly that) starts N copies of the ordinary training. Each
reads RANK / WORLD_SIZE / LOCAL_RANK from its environment and joins one process group:
gloo on CPU, NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``).

What makes N ranks train the *same* model as one process with the same spec:

* Data. Every rank builds the same per-epoch permutation (same seed) and takes its
  contiguous slice of every global batch, so ``train.batch_size`` is the GLOBAL batch size,
  ``train.lr`` applies to that global batch, and there is no learning-rate scaling.
* Losses. A task's loss is the mean over the labeled rows of the global batch, not the
  mean of per-rank means: per-rank label counts and loss sums are all-reduced once per
  step (2K numbers). Each rank's loss tensor carries the global value (so every rank's
  balancer sees identical numbers and keeps identical state) and a gradient that, averaged
  over ranks, is the gradient of the global mean (:meth:`Distributed.global_losses`).
* Gradients. Loss-weighting methods (one backward) run under DistributedDataParallel,
  whose reducer averages ``.grad`` during the backward. Gradient-aggregation methods
  compute per-task gradients with ``autograd.grad``, which DDP never sees, so for them
  the step runs under ``model.no_sync()``: the per-task gradient matrix ``G`` [K, P] is
  averaged across ranks *before* aggregating (so MGDA, PCGrad, ... aggregate the
  global-batch gradients, bit-identical on every rank), and the task-specific parameters'
  ``.grad`` are averaged after the balancer's backward. The same no-sync path is taken by
  loss weighting in a step where some task has no labeled row on any rank (DDP's reducer
  would wait forever for that tower's gradients).
* Representation gradients (``rep_grad = true``, mgda_ub). The columns of ``G`` are this
  rank's rows of the representation, so they are not averaged but gathered: every rank
  aggregates all ranks' columns side by side (the global batch's ``G``; a few hundred KB
  per step for the census MMoE), keeps its own slice of the direction, backpropagates it,
  and the shared parameters' ``.grad`` is then summed over ranks.

Exact under DDP (same update as one process on the global batch, up to float summation
order): ew, static, uw, dwa, rlw, famo, gls, gradnorm (the per-task gradients of the
layer it takes norms of are averaged across ranks first), and every gradient-aggregation
method (mgda, mgda_ub, pcgrad, cagrad, imtl, nash_mtl, upgrad, aligned_mtl, graddrop), with
or without ``rep_grad`` (graddrop's per-coordinate random draws under ``rep_grad`` meet the
columns in another order than in one process: same distribution, not the same numbers).
Refused: gradnorm with ``rep_grad = true`` (it trains through DDP's reducer, which the
representation path bypasses). Also not bit-exact: dropout masks (drawn per rank) and
``--diagnose`` statistics (computed on rank 0's shard).

Only rank 0 writes the run directory, checkpoints and metrics, and evaluates; its
early-stopping decision is broadcast so every rank stops at the same epoch. ``--resume``
loads the checkpoint on every rank.

Sharded encoders (``train.shard_encoders = ["text"]``). The named feature groups' encoders
are ``fully_shard``-ed (FSDP2): each rank holds 1/N of their parameters, gradients and
optimizer state (DTensors, sharded on dim 0), all-gathered for the forward and
reduce-scattered (averaged, as DDP averages) in the backward; DDP ignores those parameters
and keeps the trunk and towers. Works on CPU with gloo. Only loss weighting without
``rep_grad`` runs sharded: the gradient-aggregation methods build per-task gradients of the
shared parameters with ``autograd.grad``, which FSDP's backward hooks do not reduce.
Checkpoints and ``model.safetensors`` hold full tensors (gathered on every rank, written by
rank 0), so the run loads in one process. Rank 0 keeps a full, unsharded replica of the
model, refreshed from the shards at each epoch end and checkpoint, which it evaluates and
saves (its parameters only: the gradients and optimizer state stay sharded).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from hydranet.errors import SpecError, UserError
from hydranet.train.device import device_type

if TYPE_CHECKING:
    from hydranet.balance import Balancer

__all__ = ["Distributed", "ShardedLoader", "is_main_process", "launch"]

T = TypeVar("T")


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """False on the ranks other than 0 of a torchrun launch (they print and write nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_gpus_per_rank(device: str, ranks: int) -> None:
    """CUDA ranks take one GPU each (``cuda:LOCAL_RANK``): ``ranks`` on this machine need as
    many. Without this, a second rank on a one-GPU machine died in ``set_device`` with a CUDA
    traceback (seen on an H200)."""
    if device_type(device) != "cuda":
        return
    gpus = torch.cuda.device_count()
    if ranks > gpus:
        raise UserError(
            f"{ranks} CUDA ranks on this machine need {ranks} GPUs, and it has {gpus}: start at most {gpus} (--nproc), or set train.device = 'cpu' (or HYDRANET_DEVICE=cpu) for CPU ranks"
        )


@dataclass
class Distributed:
    """This process's place in the process group; ``world_size == 1`` is plain training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    # rank 0's full copy of a model with sharded encoders (None elsewhere, or without sharding)
    replica: nn.Module | None = None
    sharded: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ set-up
    @classmethod
    def from_env(cls, device_type: str) -> Distributed:
        """Join the group described by torchrun's environment (no-op for a single process)."""
        world = env_world_size()
        if world <= 1:
            return cls()
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                check_gpus_per_rank("cuda", local + 1)
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend, init_method="env://")
            owns = True
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(
                f"process group ({dist.get_rank()}/{dist.get_world_size()}) does not match RANK/WORLD_SIZE ({rank}/{world})"
            )
        return cls(rank, world, local, owns)

    def device(self, device: torch.device) -> torch.device:
        """One GPU per rank: ``cuda:LOCAL_RANK`` whatever CUDA index the spec named."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def check_spec(self, spec, diagnose: bool = False) -> None:
        if not self.enabled:
            return
        if diagnose and spec.train.shard_encoders:
            raise UserError(
                "--diagnose cannot run with train.shard_encoders (it compares per-task gradients over all shared parameters, which a sharded encoder holds in pieces across ranks); drop one of them"
            )
        from hydranet.balance import BALANCERS

        if spec.balance.rep_grad and not BALANCERS.get(spec.balance.method).aggregates_gradients:
            raise SpecError(
                [
                    (
                        "balance.rep_grad",
                        f"{spec.balance.method!r} with rep_grad = true cannot run under DDP (its representation gradients are per row and it trains through DDP's reducer); use rep_grad = false or train in one process",
                    )
                ]
            )
        if spec.train.shard_encoders and (
            BALANCERS.get(spec.balance.method).aggregates_gradients or spec.balance.rep_grad
        ):
            raise SpecError(
                [
                    (
                        "train.shard_encoders",
                        f"balance.method {spec.balance.method!r}{' with rep_grad' if spec.balance.rep_grad else ''} cannot train sharded encoders (it builds per-task gradients of the shared parameters with autograd.grad, which FSDP does not reduce); use a loss-weighting method or an empty train.shard_encoders",
                    )
                ]
            )

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    # ------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (small picklable values: decisions, messages)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; a UserError there is raised on every rank (none hangs)."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except UserError as e:
                error = e
        message = self.broadcast(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise UserError(message)
        return result

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def average_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average tensors in place across ranks: one all-reduce per dtype over their concatenation."""
        self._all_reduce_(tensors, average=True)

    def _all_reduce_(self, tensors: Sequence[torch.Tensor], average: bool) -> None:
        if not self.enabled or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if average:
                flat /= self.world_size
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n

    def sum_grads_(self, params: Sequence[nn.Parameter]) -> None:
        """Sum ``.grad`` across ranks (parameters without a gradient are skipped)."""
        self._all_reduce_([p.grad for p in params if p.grad is not None], average=False)

    def average_grads_(self, params: Sequence[nn.Parameter]) -> None:
        """Average ``.grad`` across ranks (parameters without a gradient are skipped: which
        ones have one is the same on every rank, since presence decisions are global; so are
        sharded ones, whose gradients FSDP has already reduced)."""
        from torch.distributed.tensor import DTensor

        self.average_(
            [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
        )

    # ------------------------------------------------------------ the loss
    def global_losses(
        self, losses: dict[str, torch.Tensor], counts: torch.Tensor, global_counts: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
        """Per-task losses whose value is the global-batch mean and whose gradient, averaged
        over ranks, is that mean's gradient; and which tasks have a label on some rank.

        ``counts`` / ``global_counts`` are this rank's and all ranks' labeled elements per
        task (float64, in ``losses`` order). Task.loss is ``sum_local / max(n_local, 1)``;
        with the global sum S and count N the global mean is ``S / max(N, 1)``. The gradient
        part is ``a = loss_local * W * max(n_local, 1) / max(N, 1)`` (its rank average is
        d(S/N)); the tensor is ``value + (a - a.detach())``, whose value is exactly the
        global mean, the same float on every rank.
        """
        names = list(losses)
        local_n = counts.clamp_min(1.0)
        sums = self.sum(torch.stack([losses[t].detach() for t in names]).double().cpu() * local_n)
        total_n = global_counts.clamp_min(1.0)
        value = sums / total_n
        factor = self.world_size * local_n / total_n
        out = {}
        for i, t in enumerate(names):
            loss = losses[t]
            a = loss * float(factor[i])
            out[t] = torch.as_tensor(float(value[i]), dtype=loss.dtype, device=loss.device) + (
                a - a.detach()
            )
        return out, {t: bool(global_counts[i] > 0) for i, t in enumerate(names)}

    # ------------------------------------------------------------ model
    def wrap(self, model: nn.Module, device: torch.device, shard: Sequence[str] = ()) -> nn.Module:
        """DDP around ``model``; the encoders of the feature groups in ``shard`` are sharded
        with FSDP first (in place: ``model``'s parameters there become DTensors) and DDP
        ignores their parameters and buffers."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        if shard:
            self._shard(model, device, shard)
        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, output_device=device.index if ids else None)

    def _shard(self, model: nn.Module, device: torch.device, shard: Sequence[str]) -> None:
        import copy
        import warnings

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.is_main:
            self.replica = copy.deepcopy(model)  # before sharding: full tensors
        self.sharded = True
        # FSDP warns, every step, when a sharded module returns a view (an in-place op on it
        # would skip FSDP's pre-backward hook); encoders' outputs only meet the fusion, which
        # concatenates them out of place
        warnings.filterwarnings(
            "ignore",
            message=r"FSDP2-wrapped module .* returned a view tensor",
            category=UserWarning,
        )
        mesh = init_device_mesh(device.type, (self.world_size,))
        names = {id(m): n for n, m in model.named_modules()}
        ignored: set[str] = set()
        for group in shard:
            encoder = model.encoder.encoders[group]
            fully_shard(encoder, mesh=mesh)
            prefix = names[id(encoder)]
            ignored |= {f"{prefix}.{n}" for n, _ in encoder.named_parameters()}
            ignored |= {f"{prefix}.{n}" for n, _ in encoder.named_buffers()}
        DDP._set_params_and_buffers_to_ignore_for_model(model, list(ignored))

    def clip_grad_norm_(self, params: Iterable[nn.Parameter], max_norm: float) -> None:
        """``torch.nn.utils.clip_grad_norm_``; with sharded encoders, the norm of their
        gradients (DTensors, reduced over the shards) and the others' are taken apart, since
        torch's foreach kernels take no mix of the two."""
        if not self.sharded:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return
        from torch.distributed.tensor import DTensor
        from torch.nn.utils import clip_grads_with_norm_, get_total_norm

        with_grad = [p for p in params if p.grad is not None]
        parts = [
            [p for p in with_grad if isinstance(p.grad, DTensor)],
            [p for p in with_grad if not isinstance(p.grad, DTensor)],
        ]
        norms = [get_total_norm([p.grad for p in part]) for part in parts if part]
        norms = [n.full_tensor() if isinstance(n, DTensor) else n for n in norms]
        total = torch.linalg.vector_norm(torch.stack(norms))
        for part in parts:
            if part:
                clip_grads_with_norm_(part, max_norm, total)

    # ------------------------------------------------------------ sharded state
    def full_tensors(self, obj: Any) -> Any:
        """``obj`` (nested dicts, lists) with every DTensor replaced by its full tensor on the
        CPU. Collective under sharding: every rank calls it with the same structure."""
        from torch.distributed.tensor import DTensor

        if isinstance(obj, DTensor):
            return obj.full_tensor().cpu()
        if isinstance(obj, dict):
            return {k: self.full_tensors(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(self.full_tensors(v) for v in obj)
        return obj

    def full_model(self, model: nn.Module) -> nn.Module:
        """The model with full tensors: ``model`` itself without sharding; with it, rank 0's
        replica refreshed from the shards (collective: every rank calls it; the other ranks
        get ``model`` back and must not read its state)."""
        if not self.sharded:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.replica is None:
            return model
        self.replica.load_state_dict(full)
        return self.replica

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a full state dict (every rank holds it) into ``model``, sharded or not."""
        if not self.sharded:
            model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if self.replica is not None:
            self.replica.load_state_dict(
                state
            )  # first: the next call makes state's tensors DTensors
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a full optimizer state dict: the state of a sharded parameter is cut to this
        rank's shard (every rank holds the full tensors, so no communication)."""
        if self.sharded:
            from torch.distributed.tensor import DTensor, distribute_tensor

            params = [p for g in optimizer.param_groups for p in g["params"]]
            per_param = {}
            for key, st in state["state"].items():
                p = params[int(key)]
                if isinstance(p, DTensor):
                    st = {
                        k: distribute_tensor(
                            v.to(p.device), p.device_mesh, p.placements, src_data_rank=None
                        )
                        if isinstance(v, torch.Tensor) and v.shape == p.shape
                        else v
                        for k, v in st.items()
                    }
                per_param[key] = st
            state = {**state, "state": per_param}
        optimizer.load_state_dict(state)

    def reduce_task_gradients(self, balancer: Balancer) -> None:
        """Make the balancer aggregate the global batch's per-task gradients.

        Sets the balancer's declared hooks (see :class:`~hydranet.balance.Balancer`), which it
        applies itself where it takes the per-task gradient matrix: the parameters' ``J`` is
        averaged across ranks (every rank gets the global-batch G and the same direction);
        the representation's, whose columns are this rank's rows, is gathered instead (see
        the module docstring). Gradnorm averages the gradients it takes norms of the same way.
        """
        if not self.enabled:
            return

        def averaged(J: torch.Tensor) -> torch.Tensor:
            J = J.contiguous().clone()
            self.average_([J])
            return J

        def gathered(J: torch.Tensor) -> tuple[torch.Tensor, int]:
            # The global batch's matrix is every rank's columns side by side, divided by W
            # (each rank's loss is scaled so that the rank average of gradients is the global
            # mean's, see global_losses); every rank aggregates that same matrix and keeps its
            # own slice, which the trainer backpropagates and then sums over ranks
            # (average_grads_ would be wrong here: each rank holds a different part of the
            # shared gradient)
            parts, offset = self.all_gather_columns(J)
            return parts / self.world_size, offset

        balancer.task_gradient_reducer = averaged
        balancer.task_gradient_gatherer = gathered

    def all_gather_columns(self, J: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's ``J`` [K, n_r] side by side, in rank order, and where this rank's begin
        (the n_r may differ: the last batch's slices are uneven)."""
        J = J.contiguous()
        sizes = torch.zeros(self.world_size, dtype=torch.long, device=J.device)
        sizes[self.rank] = J.shape[1]
        dist.all_reduce(sizes, op=dist.ReduceOp.SUM)
        sizes_l = sizes.tolist()
        width = max(sizes_l)
        padded = J.new_zeros(J.shape[0], width)
        padded[:, : J.shape[1]] = J
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        out = torch.cat([g[:, :n] for g, n in zip(gathered, sizes_l, strict=True)], dim=1)
        return out, sum(sizes_l[: self.rank])


class ShardedLoader:
    """A BatchLoader's global batches, this rank's contiguous slice of each.

    The permutation, the batch boundaries, ``len``, ``set_epoch`` and ``state_dict`` are the
    wrapped loader's (identical on every rank), so a checkpoint from rank 0 resumes every rank.
    """

    def __init__(self, loader, rank: int, world_size: int):
        self.inner, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __iter__(self) -> Iterator:
        inner = self.inner
        bs, n = inner.batch_size, len(inner.data)
        order = inner.order() if inner.shuffle else torch.arange(n, device=inner.data.device)
        for b in range(inner.position, len(inner)):
            block = order[b * bs : (b + 1) * bs]
            mine = torch.tensor_split(block, self.world_size)[self.rank]
            inner.position = b + 1  # before the yield, as BatchLoader does
            yield inner.data.take(mine)
        inner.set_epoch(inner.epoch + 1)


def launch(nproc: int, argv: list[str]) -> int:
    """``torchrun --standalone --nproc-per-node nproc -m hydranet <argv>``, run in this process
    through torchrun's own API; the exit code of the first rank that failed, else 0.

    Each rank reports its own error in one line (``hydranet: error: ...``); torchrun's
    failure report (a traceback of its agent) and its log lines are kept out, so a bad spec
    or data file under ``--nproc`` reads as it does in one process.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise UserError(f"--nproc must be at least 1; got {nproc}")
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "hydranet", *argv])
    # torchrun's modules set their own loggers' levels, so each one is quietened (and restored)
    manager = logging.Logger.manager
    elastic = [
        logging.getLogger(name)
        for name in list(manager.loggerDict)
        if name.startswith("torch.distributed.elastic")
    ]
    levels = [log.level for log in elastic]
    for log in elastic:
        log.setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:
        # SIGTERM/SIGINT to this launcher: torchrun has stopped the ranks; the last
        # checkpoint stands (--resume continues from it)
        print(f"hydranet: stopped by {e.sigval.name}; the ranks were stopped", file=sys.stderr)
        return 128 + int(e.sigval)
    finally:
        for log, level in zip(elastic, levels, strict=True):
            log.setLevel(level)
    return 0
