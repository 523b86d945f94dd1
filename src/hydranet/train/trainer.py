"""The training loop: setup, epochs of steps, validation, checkpoints, the final Run.

Reads top to bottom: :func:`train` calls :func:`setup` (the builders of
:mod:`hydranet.train.builders`: data, model, optimizer, balancer, distributed,
compile/graph), then :meth:`Trainer.fit`: epochs of steps, each epoch's record, and the
callbacks (:mod:`hydranet.train.callbacks`) that observe it: early stopping, the metrics
log, the epoch lines and checkpoints. Every ``checkpoint_every`` steps (or at each epoch end)
the whole state (model, optimizer, scheduler, balancer, RNG, loader position,
running sums, early-stopping state) goes to ``checkpoint.safetensors`` through
an atomic rename, so ``--resume`` after a kill continues bit-for-bit on CPU.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hydranet import rundir
from hydranet.balance import BalanceContext
from hydranet.data.loader import BatchLoader
from hydranet.errors import SpecError, TrainingDiverged, UserError
from hydranet.evaluate.inference import predict_arrays, split_metrics
from hydranet.models.build import build_model
from hydranet.spec import Spec
from hydranet.tasks import Task
from hydranet.train import _malloc, transfer
from hydranet.train.builders import (
    build_balancer,
    build_forward,
    check_early_stopping,
    device_type,
    fit_encoders,
    select_device,
)
from hydranet.train.callbacks import (
    Callback,
    Checkpoints,
    EarlyStopping,
    EpochLines,
    MetricsLog,
)
from hydranet.train.distributed import Distributed, ShardedLoader, is_main_process
from hydranet.train.graph import GraphedStep, blockers
from hydranet.train.optim import build_optimizer, build_scheduler, device_lr_
from hydranet.train.prepare import Split, prepare, resolve_auto_sizes, resolve_spec, split_rows
from hydranet.train.progress import Progress
from hydranet.train.resume import RunFinished, position, record_changes, resume_spec
from hydranet.train.state_io import load_state, save_state
from hydranet.train.threads import ThreadChooser

__all__ = ["Trainer", "build_balancer", "select_device", "setup", "train"]


def train(
    spec: Spec | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    diagnose: bool = False,
    progress: bool | None = None,
    stop_after_steps: int | None = None,
    source: str | None = None,
):
    """Train ``spec`` into the run directory ``out`` and return the :class:`~hydranet.Run`.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes the run and every
    rank returns it once it is complete. With ``resume``, a finished run with nothing more
    to train says so and is returned as it is, untouched. ``source`` names the spec file in
    messages (a path ``spec`` names itself).
    """
    from hydranet.run import Run

    try:
        trainer = setup(
            spec, out, resume=resume, diagnose=diagnose, progress=progress, source=source
        )
    except RunFinished as e:
        if is_main_process():
            print(f"hydranet: {e}", file=sys.stderr)
        return Run.load(out)
    try:
        trainer.fit(stop_after_steps=stop_after_steps)
        trainer.dist.barrier()  # rank 0's files are complete before any rank loads them
    finally:
        trainer.dist.close()
    return Run.load(trainer.out)


def setup(
    spec: Spec | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    diagnose: bool = False,
    progress: bool | None = None,
    source: str | None = None,
) -> Trainer:
    """Everything before the first step: run directory, data, preprocessor, model, optimizer.

    With ``resume``, ``spec`` must match the run's own spec but for
    :data:`~hydranet.train.resume.RESUMABLE_KEYS`
    (a finished run raises :class:`RunFinished` when it has nothing more to train)."""
    if not isinstance(spec, Spec):
        source = source or str(spec)
        spec = Spec.load(spec)
    dist = Distributed.from_env(device_type(spec.train.device))
    try:
        return _setup(
            spec,
            Path(out),
            dist,
            resume=resume,
            diagnose=diagnose,
            progress=progress,
            source=source,
        )
    except BaseException:
        # a rank that fails here (a missing data file) leaves the process group now: left to
        # the interpreter's exit, gloo's destructors ran with its threads still up and the
        # rank aborted ("terminate called without an active exception") instead of exit 2
        dist.close()
        raise


def _setup(
    spec: Spec,
    out: Path,
    dist: Distributed,
    *,
    resume: bool,
    diagnose: bool,
    progress: bool | None,
    source: str | None = None,
) -> Trainer:
    changed: dict[str, tuple[Any, Any]] = {}
    if resume:
        # everything that refuses, or finds nothing to do, comes before the first write; every
        # rank reads the run's files once rank 0 has written them (when it trained them just now)
        dist.barrier()
        spec, changed = resume_spec(spec, out, source)
    dist.on_main(lambda: rundir.prepare_dir(out, resume=resume))
    if resume:
        if changed:
            dist.barrier()  # every rank has read the run's spec.json before rank 0 rewrites it
            dist.on_main(lambda: record_changes(out, spec, changed))
    else:
        # a Spec given in Python (no file): its relative data paths mean the current directory
        spec = resolve_spec(spec.absolute_paths(Path.cwd()))
    dist.check_spec(spec, diagnose=diagnose)
    torch.manual_seed(spec.train.seed)
    if isinstance(spec.train.threads, int):
        torch.set_num_threads(spec.train.threads)
    if spec.train.deterministic:
        # cuBLAS (CUDA >= 10.2) is deterministic only with a fixed workspace, and torch's
        # deterministic mode raises at the first CUDA matrix product without this setting
        # (torch's reproducibility notes). cuBLAS reads it when its handle is made, which is
        # later than this (no CUDA work has run yet in a fresh run).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    tasks, prep, splits = prepare(spec)
    # a resumed run's spec holds the numbers its first start chose: nothing is auto any more
    spec, chosen = resolve_auto_sizes(spec, len(splits["train"]))
    if chosen:
        dist.on_main(lambda: print("\n".join(f"hydranet: {c}" for c in chosen), file=sys.stderr))
    check_early_stopping(spec, tasks, splits)
    if resume:
        encoder_states = rundir.read_encoder_states(out)
    else:
        encoder_states = fit_encoders(spec, prep, tasks, splits["train"])
        dist.on_main(lambda: rundir.write_meta(out, spec, prep, tasks, encoder_states))
        dist.on_main(lambda: rundir.write_split_rows(out, split_rows(splits)))
    trainer = Trainer(
        spec,
        tasks,
        splits,
        prep,
        out,
        diagnose=diagnose,
        progress=progress,
        dist=dist,
        encoder_states=encoder_states,
    )
    trainer.spec_file = source or "SPEC"
    if resume:
        trainer.restore()
        if "train.epochs" in changed:
            trainer.stretch_schedule(changed["train.epochs"][0])
    return trainer


def host_resident(nbytes: int, device: torch.device, free: int | None = None) -> bool:
    """Whether a training split of ``nbytes`` stays in host memory rather than on ``device``:
    on a GPU, when it is more than half of the free device memory (the model, optimizer state
    and activations need the rest). A CPU holds it where it is."""
    if device.type != "cuda":
        return False
    if free is None:
        free = torch.cuda.mem_get_info(device)[0]
    return nbytes > free // 2


class Trainer:
    def __init__(
        self,
        spec: Spec,
        tasks: list[Task],
        splits: dict[str, Split],
        prep,
        out: Path,
        *,
        diagnose: bool = False,
        progress: bool | None = None,
        dist: Distributed | None = None,
        encoder_states: dict[str, Any] | None = None,
    ):
        cfg = spec.train
        self.spec, self.cfg, self.tasks, self.splits, self.out = spec, cfg, tasks, splits, out
        self.dist = dist or Distributed()
        self.device = self.dist.device(select_device(cfg.device))
        if self.device.type == "cpu":
            _malloc.tune()  # large tensors reused, not unmapped after every op (see _malloc)
        self.model = build_model(spec, prep, tasks, encoder_states).to(self.device)
        transfer.set_epoch(self.model, 0)
        if self.dist.enabled and transfer.graph_blockers(self.model):
            raise UserError(
                "an encoder that unfreezes during training (unfreeze_after) cannot train under DDP; freeze it or fine-tune it all (freeze = false)"
            )
        # frozen pretrained encoders: training runs on their embeddings, computed once
        self.splits = splits = transfer.encode_frozen(self.model, splits, self.device)
        self.balancer = build_balancer(spec).to(self.device)
        self.train_data = None  # the in-memory training split, on the device
        self.loader = self._train_loader(splits["train"])
        # every training row labeled for every task: each batch's task presence is known
        # without looking (no host sync per step, and the step can be a CUDA graph)
        self.all_labeled = self.train_data is not None and all(
            bool(m.all()) for m in self.train_data.masks.values()
        )
        self.diagnostics = None
        if diagnose:
            from hydranet.balance.diagnostics import ConflictTracker

            self.diagnostics = ConflictTracker([t.name for t in tasks])
        self.graph_step = self._graph_step()
        # train.threads = "auto": one process on the CPU measures its thread count per epoch
        self.thread_chooser = (
            ThreadChooser(torch.get_num_threads())
            if cfg.threads == "auto" and self.device.type == "cpu" and not self.dist.enabled
            else None
        )
        # under DDP self.model stays the plain module (state_dict keys, evaluation, rep);
        # the wrapped one only runs the training forward. Before the optimizer: sharding
        # replaces the sharded encoders' parameters
        self.ddp = self.dist.wrap(self.model, self.device, cfg.shard_encoders)
        self.balancer_params = [p for p in self.balancer.parameters() if p.requires_grad]
        params = transfer.param_groups(self.model, self.balancer_params)
        self.optimizer = build_optimizer(
            params, cfg, self.device, capturable=self.graph_step is not None
        )
        self.scheduler = build_scheduler(self.optimizer, cfg, cfg.epochs * len(self.loader))
        self.dist.reduce_task_gradients(self.balancer)
        self.forward = build_forward(self.ddp, cfg.compile)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=cfg.precision == "fp16" and self.device.type == "cuda"
        )
        # the balancer says whether it works on the shared representation (mgda_ub always does;
        # gradnorm and the gradient methods when rep_grad is set)
        self.need_rep = self.balancer.uses_representation
        self._split_params()
        self.progress = Progress(enabled=progress if self.dist.is_main else False)
        # loop state (all of it goes into checkpoints)
        self.epoch = 0
        self.step = 0
        self.last_checkpoint: tuple[int, int] | None = None  # (epoch, step), see position()
        self.spec_file = "SPEC"  # the spec file, for the commands messages suggest
        # running loss sums stay on the device: the host reads them for the progress bar, the
        # epoch's log and checkpoints, not every step
        self.loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=self.device)
        self.loss_steps = 0
        # divergence is tracked on the device too and checked every `check_every` steps (every
        # step on CPU, where a check costs nothing), always before a checkpoint is written
        self.check_every = 1 if self.device.type == "cpu" else 32
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_losses = torch.zeros(len(tasks), dtype=torch.float32, device=self.device)
        # what observes the loop; early stopping first, so the record it sees is the epoch's
        self.early_stopping = EarlyStopping(cfg.early_stopping)
        self.callbacks: list[Callback] = [
            self.early_stopping,
            MetricsLog(),
            EpochLines(),
            Checkpoints(cfg.checkpoint_every),
        ]

    def _split_params(self) -> None:
        """The trained parameters the balancer combines task gradients on (shared) and those
        that get the summed gradient (task parameters and pretrained encoders, see transfer)."""
        pretrained = transfer.pretrained_parameter_ids(self.model)
        self.shared_params = [
            p for p in self.model.shared_parameters() if p.requires_grad and id(p) not in pretrained
        ]
        shared_ids = {id(p) for p in self.shared_params}
        self.task_params = [
            p for p in self.model.parameters() if id(p) not in shared_ids and p.requires_grad
        ]

    # ------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        state = {
            "model": self.dist.full_model(self.model).state_dict(),
            "optimizer": self.dist.full_tensors(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": torch.get_rng_state(),
            "loop": {
                "epoch": self.epoch,
                "step": self.step,
                "loss_steps": self.loss_steps,
            },
            "loss_sums": self.loss_sums.cpu(),
        }
        for cb in self.callbacks:  # early stopping's best value and patience
            state["loop"].update(cb.state_dict())
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.diagnostics is not None:
            state["diagnostics"] = self.diagnostics.state_dict()
        return state

    def _train_loader(self, split):
        from hydranet.data.stream import StreamingSplit

        cfg = self.cfg
        if isinstance(split, StreamingSplit):
            return split.loader(
                cfg.batch_size, seed=cfg.seed, rank=self.dist.rank, world_size=self.dist.world_size
            )
        nbytes = split.data.nbytes()
        if host_resident(nbytes, self.device):
            # batches are gathered on the host (from the memory-mapped image cache, say) and
            # copied to the device per step; the permutation is the same either way
            self.train_data = split.data
            self.dist.on_main(
                lambda: print(
                    f"hydranet: the training split ({nbytes / 2**30:.1f} GiB) stays in host "
                    "memory, as it is larger than half the GPU's free memory; batches are "
                    "copied to the GPU each step",
                    file=sys.stderr,
                )
            )
        else:
            self.train_data = split.data.to(self.device)
        loader = BatchLoader(self.train_data, cfg.batch_size, shuffle=True, seed=cfg.seed)
        return (
            ShardedLoader(loader, self.dist.rank, self.dist.world_size)
            if self.dist.enabled
            else loader
        )

    def _graph_step(self) -> GraphedStep | None:
        mode = self.cfg.cuda_graph
        if mode == "off":
            return None
        reasons = blockers(self) + transfer.graph_blockers(self.model)
        if reasons:
            if mode == "on":
                raise SpecError(
                    [
                        (
                            "train.cuda_graph",
                            f"cannot capture the training step as a CUDA graph: {'; '.join(reasons)}",
                        )
                    ]
                )
            return None
        return GraphedStep(self, self.cfg.batch_size)

    def checkpoint(self) -> None:
        self.check_finite()  # never a checkpoint of a diverged model
        # sharded encoders: every rank takes part in gathering the full state
        state = self.state() if self.dist.is_main or self.dist.sharded else None
        if self.dist.is_main:
            save_state(state, self.out / rundir.CHECKPOINT)
        self.last_checkpoint = position(
            {"epoch": self.epoch, "step": self.step}, self.loader.state_dict()
        )

    def restore(self) -> None:
        path = self.out / rundir.CHECKPOINT
        if not path.exists():
            raise UserError(
                f"cannot resume: no checkpoint in {self.out} (train without --resume to start afresh)"
            )
        s = load_state(path)
        loop = s["loop"]
        if loop["epoch"] > self.cfg.epochs:
            raise UserError(
                f"cannot resume {self.out} with train.epochs = {self.cfg.epochs}: its checkpoint has trained {loop['epoch']} epochs already"
            )
        self.dist.load_model_state(self.model, s["model"])
        self.dist.load_optimizer_state(self.optimizer, s["optimizer"])
        if self.graph_step is not None:
            device_lr_(self.optimizer, self.device)
        self.scheduler.load_state_dict(s["scheduler"])
        self.balancer.load_state_dict(s["balancer"])
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.loader.load_state_dict(s["loader"])
        torch.set_rng_state(s["rng"])
        if "cuda_rng" in s and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["cuda_rng"], self.device)
        self.epoch, self.step, self.loss_steps = loop["epoch"], loop["step"], loop["loss_steps"]
        for cb in self.callbacks:
            cb.load_state_dict(loop)
        self.loss_sums = s["loss_sums"].to(self.device)
        if self.diagnostics is not None and "diagnostics" in s:
            # a checkpoint from a run without --diagnose has none: the epoch's means then cover
            # the steps after the resume only
            self.diagnostics.load_state_dict(s["diagnostics"])
        self.last_checkpoint = position(loop, s["loader"])
        if self.dist.is_main:
            rundir.truncate_metrics(self.out, keep_before_epoch=self.epoch)
            epoch, step = self.last_checkpoint
            print(f"hydranet: resuming {self.out} at epoch {epoch}, step {step}", file=sys.stderr)

    def stretch_schedule(self, old_epochs: int) -> None:
        """After :meth:`restore` with a changed ``train.epochs``: the schedule was built for
        the new total, but the optimizer holds the rate the old one gave; a decaying schedule
        (cosine, linear) now decays over the new total, so its rate jumps (up, when a finished
        run is extended) and the user is told by how much."""
        sched = self.scheduler
        rates = [
            float(b) * f(sched.last_epoch)
            for b, f in zip(sched.base_lrs, sched.lr_lambdas, strict=True)
        ]
        before = float(self.optimizer.param_groups[0]["lr"])
        for group, lr in zip(self.optimizer.param_groups, rates, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        sched._last_lr = list(rates)
        kind = self.cfg.schedule.kind
        if kind != "constant" and self.dist.is_main:
            print(
                f"hydranet: the {kind} schedule now spans {self.cfg.epochs} epochs, not {old_epochs}: "
                f"the learning rate goes from {before:.3g} to {rates[0]:.3g} at step {self.step}",
                file=sys.stderr,
            )

    # ------------------------------------------------------------ loop
    def fit(self, stop_after_steps: int | None = None) -> None:
        cfg = self.cfg
        self.model.train()
        while self.epoch < cfg.epochs and not self.early_stopping.stopped:
            resuming_mid_epoch = (
                self.loader.state_dict()["position"] > 0
                and self.loader.state_dict()["epoch"] == self.epoch
            )
            if not resuming_mid_epoch:
                self.loader.set_epoch(self.epoch)
            lines = transfer.set_epoch(self.model, self.epoch)
            if lines:
                self._split_params()
                if self.dist.is_main:
                    print("\n".join(f"hydranet: {line}" for line in lines), file=sys.stderr)
            if self.thread_chooser is not None:
                self.thread_chooser.start_epoch()
            t0 = time.perf_counter()
            with self.progress.epoch(
                self.epoch, cfg.epochs, len(self.loader), start=self.loader.state_dict()["position"]
            ) as bar:
                rows = self.run_epoch(bar, stop_after_steps)
                if rows is None:
                    return
            seconds = time.perf_counter() - t0
            if self.thread_chooser is not None:
                self.thread_chooser.end_epoch()  # an epoch too short to measure settles here
            if self.dist.enabled:
                rows = int(self.dist.sum(torch.tensor([rows], dtype=torch.float64))[0])
            self.end_epoch(rows / max(seconds, 1e-9), seconds)
        self.finish()

    def run_epoch(self, bar=None, stop_after_steps: int | None = None) -> int | None:
        """The steps of the loader's current epoch (from its position); the rows trained, or
        None when ``stop_after_steps`` was reached."""
        rows = 0
        graph = self.graph_step
        for batch in self.loader.indices() if graph is not None else self.loader:
            if graph is not None:  # row indices: the step gathers them itself
                self._after_step(graph(batch))
                rows += batch.shape[0]
            else:
                if batch.device != self.device:
                    batch = batch.to(self.device, non_blocking=True)
                chooser = self.thread_chooser
                if chooser is not None and chooser.measuring:
                    t0 = time.perf_counter()
                    self.train_step(batch)
                    chooser.observe(time.perf_counter() - t0)
                else:
                    self.train_step(batch)
                rows += batch.size
            if bar is not None:
                bar.advance(self._progress_fields)
            for cb in self.callbacks:
                cb.on_step_end(self)
            if stop_after_steps is not None and self.step >= stop_after_steps:
                return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the epoch's time covers its kernels
        return rows

    def train_step(self, batch) -> None:
        if not self.dist.enabled:
            self._step(batch)
            return
        import contextlib

        # label counts first (K numbers). Presence decisions are global, identical on every
        # rank; DDP's reducer runs the step unless a parameter would get no gradient (a task
        # left out as absent) or the gradients come from autograd.grad (gradient methods)
        counts = torch.stack([batch.masks[t.name].sum() for t in self.tasks]).double().cpu()
        global_counts = self.dist.sum(counts.clone())
        self._sync_grads = self.balancer.aggregates_gradients or bool((global_counts == 0).any())
        with self.ddp.no_sync() if self._sync_grads else contextlib.nullcontext():
            self._step(batch, (counts, global_counts))

    def _step(self, batch, counts: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self._after_step(self.compute_step(batch, counts))

    def compute_step(
        self, batch, counts: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Forward, losses, the balancer's backward, clipping and the optimizer step; the stacked
        task losses (detached). No host sync when every row is labeled (it may be a CUDA graph)."""
        # graphs replay without autocast's cast cache (it would hold tensors from the capture)
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype,
            enabled=self.amp_dtype is not None,
            cache_enabled=self.graph_step is None,
        ):
            if self.need_rep:
                outputs, rep = self.model.forward_with_rep(batch.features)
            else:
                outputs, rep = self.forward(batch.features), None
        losses = {
            t.name: t.loss(outputs[t.name].float(), batch.targets[t.name][0], batch.masks[t.name])
            for t in self.tasks
        }
        global_present = None
        if counts is not None:
            losses, global_present = self.dist.global_losses(losses, *counts)
        stacked = torch.stack([loss.detach() for loss in losses.values()])
        # every balancer learns which tasks have labels in this batch (an absent task's loss is
        # an exact zero that must not count as a perfect loss in uw, gls, famo or gradnorm)
        if global_present is not None:
            present = global_present
        elif self.all_labeled:
            present = dict.fromkeys(losses, True)
        else:
            present = {t.name: bool(batch.masks[t.name].any()) for t in self.tasks}
        if self.diagnostics is not None:
            self.diagnostics.observe(losses, self.shared_params, present)
        ctx = BalanceContext(
            shared_params=self.shared_params,
            task_params=self.task_params,
            rep=rep,
            present=present,
            step=self.step,
            epoch=self.epoch,
            scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.balancer.backward(losses, ctx)
        if self.dist.enabled:
            self._average_gradients()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            self.dist.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return stacked

    def _after_step(self, stacked: torch.Tensor) -> None:
        """The host side of a step: schedule, running sums, divergence (recorded on the device)."""
        self.scheduler.step()
        self.step += 1
        self.loss_sums += stacked
        self.loss_steps += 1
        first = (self._bad_step < 0) & ~torch.isfinite(stacked).all()
        self._bad_step = torch.where(first, self.step, self._bad_step)
        self._bad_losses = torch.where(first, stacked.float(), self._bad_losses)
        if self.step % self.check_every == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` if a loss has been NaN or infinite (one host sync)."""
        step = int(self._bad_step)
        if step < 0:
            return
        values = self._bad_losses.tolist()
        k = next(i for i, v in enumerate(values) if not math.isfinite(v))
        epoch = self.epoch + 1
        if self.last_checkpoint is None:
            kept = (
                f"no checkpoint was written, so there is nothing to resume: with a lower train.lr "
                f"or a train.grad_clip, `hydranet train {self.spec_file} --out {self.out}` starts it afresh"
            )
        else:
            at, at_step = self.last_checkpoint
            kept = (
                f"the last good checkpoint in {self.out} (epoch {at}, step {at_step}) is kept, but resuming it "
                "repeats these steps: train with a lower train.lr or a train.grad_clip into a new --out"
            )
        raise TrainingDiverged(
            f"loss of task {self.tasks[k].name!r} is {values[k]} at step {step} (epoch {epoch}); "
            f"training stopped; {kept}"
        )

    def _average_gradients(self) -> None:
        if self.balancer.used_representation:
            # rep_grad under DDP: each rank backpropagated its own slice of the aggregated
            # representation gradient, so the shared gradient is the sum of the ranks' parts
            self.dist.sum_grads_(self.shared_params)
        if self._sync_grads:
            # gradient methods: the shared .grad is the aggregate of the rank-averaged G,
            # already identical on every rank; the heads' gradients are local
            params = (
                self.task_params
                if self.balancer.aggregates_gradients
                else list(self.model.parameters())
            )
            self.dist.average_grads_(params)
        self.dist.average_grads_(self.balancer_params)  # outside DDP (uw's log-variances)

    def _progress_fields(self) -> str:
        n = max(self.loss_steps, 1)
        parts = [
            f"{t.name} {v / n:.4f}"
            for t, v in zip(self.tasks, self.loss_sums.tolist(), strict=True)
        ]
        if self.balancer.shows_weights:
            parts.append("w " + " ".join(f"{w:.2f}" for w in self.balancer.last_weights.values()))
        return "  ".join(parts)

    @property
    def eval_model(self):
        """The model rank 0 evaluates and saves: with sharded encoders, its full replica."""
        return self.dist.replica if self.dist.sharded else self.model

    def end_epoch(self, rows_per_s: float, seconds: float) -> None:
        self.check_finite()
        self.dist.full_model(self.model)  # sharded: rank 0's replica gets this epoch's weights
        record = self.epoch_record(rows_per_s, seconds)
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)
        self.epoch += 1
        self.loss_sums.zero_()
        self.loss_steps = 0
        for cb in self.callbacks:
            cb.after_epoch(self)

    def epoch_record(self, rows_per_s: float, seconds: float) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl: training losses, validation metrics and losses
        (rank 0), the balancer's weights, the learning rate, diagnostics, speed."""
        n = max(self.loss_steps, 1)
        train_loss = {
            t.name: v / n for t, v in zip(self.tasks, self.loss_sums.tolist(), strict=True)
        }
        self.balancer.end_epoch(train_loss)
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": train_loss,
        }
        if "validation" in self.splits and self.dist.is_main:
            metrics, val_loss = self.evaluate("validation")
            record["val_loss"] = val_loss
            record["val"] = metrics
        record["weights"] = dict(self.balancer.last_weights)
        # a device tensor with capturable optimizers
        record["lr"] = float(self.scheduler.get_last_lr()[0])
        if self.diagnostics is not None:
            record["diagnostics"] = self.diagnostics.epoch_summary()
        record["rows_per_s"] = rows_per_s
        record["seconds"] = seconds
        if self.thread_chooser is not None:
            record["threads"] = self.thread_chooser.chosen
            record["step_ms"] = {str(n): m * 1e3 for n, m in self.thread_chooser.medians.items()}
        return record

    def evaluate(self, split: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        s = self.splits[split]
        preds, losses = predict_arrays(
            self.eval_model,
            s.data.features,
            self.tasks,
            self.cfg.eval_batch_size,
            self.device,
            targets={k: v[0] for k, v in s.data.targets.items()},
            masks=s.data.masks,
        )
        return split_metrics(self.tasks, preds, s.labels, s.masks), losses

    def finish(self) -> None:
        """Restore the best weights (early stopping), write the model and the final metrics."""
        if not self.dist.is_main:
            return
        for cb in self.callbacks:
            cb.on_train_end(self)  # early stopping restores the best epoch's weights
        rundir.write_weights(self.out, self.eval_model)
        final: dict[str, Any] = {
            "epochs": self.epoch,
            "steps": self.step,
            "best_epoch": self.early_stopping.best_epoch if self.cfg.early_stopping else self.epoch,
            "stopped_early": self.early_stopping.stopped,
        }
        for split in ("validation", "test"):
            if split in self.splits:
                final[split] = self.evaluate(split)[0]
        rundir.write_json(self.out / rundir.FINAL, final)
        rundir.write_manifest(self.out)  # last: a run with a manifest is a finished one
