"""A trunk that holds a training process at a chosen step, so a test can stop it there.

Tests that kill or signal a training process must do it while the process is still
training, at a point whose checkpoint they know. Waiting a fixed delay raced the run:
on a busy machine the delay could end after the run had finished, or before it had
checkpointed. ``HeldMMoE`` (spec: ``architecture = "held_trunk:HeldMMoE"``, with this
directory on PYTHONPATH) is the built-in MMoE, bit for bit; when the environment sets
``HOLD_AFTER_STEPS_ENV`` to N, the forward of training step N + 1 writes
``held-<rank>`` into ``$HOLD_DIR_ENV`` and waits there. The test waits for that file,
then kills or signals the process. Without the variables it never holds, so a resumed
run or a reference run trains through.

The wait is bounded (``MAX_HOLD_S``): a test that died without stopping the process does
not leave it behind for ever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from hydranet.models.trunks.mmoe import MMoE

HOLD_AFTER_STEPS_ENV = "HYDRANET_TEST_HOLD_AFTER_STEPS"
HOLD_DIR_ENV = "HYDRANET_TEST_HOLD_DIR"
MAX_HOLD_S = 900
ARCHITECTURE = "held_trunk:HeldMMoE"
TESTS_DIR = Path(__file__).resolve().parent


class HeldMMoE(MMoE):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        after = os.environ.get(HOLD_AFTER_STEPS_ENV)
        self._hold_after = int(after) if after else None
        self._steps = 0

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        # one shared() per training forward; evaluation runs without grad and is not counted
        if self._hold_after is not None and self.training and torch.is_grad_enabled():
            self._steps += 1
            if self._steps > self._hold_after:
                _hold()
        return super().shared(x)


def _hold() -> None:
    held = Path(os.environ[HOLD_DIR_ENV]) / f"held-{os.environ.get('RANK', '0')}"
    held.write_text(str(os.getpid()))
    deadline = time.monotonic() + MAX_HOLD_S
    while time.monotonic() < deadline:
        time.sleep(0.1)
    raise RuntimeError(f"held for {MAX_HOLD_S} s and never stopped: the test did not end it")


def hold_env(hold_dir: Path, after_steps: int | None = None) -> dict[str, str]:
    """The environment for a training subprocess that uses ``HeldMMoE`` (held after
    ``after_steps`` steps, or never with None)."""
    env = {k: v for k, v in os.environ.items() if k not in (HOLD_AFTER_STEPS_ENV, HOLD_DIR_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    if after_steps is not None:
        env[HOLD_AFTER_STEPS_ENV] = str(after_steps)
        env[HOLD_DIR_ENV] = str(hold_dir)
    return env


def wait_until_held(hold_dir: Path, proc, timeout_s: float = 300) -> None:
    """Until rank 0 is held. The timeout only turns a hang into a failure; a process that
    ends first (it crashed, or finished: the hold did not work) fails at once."""
    held = hold_dir / "held-0"
    deadline = time.monotonic() + timeout_s
    while not held.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the training process exited ({proc.returncode}) before the hold")
        if time.monotonic() > deadline:
            raise AssertionError(f"the training process was not held within {timeout_s} s")
        time.sleep(0.05)


def train_cmd(spec: Path, out: Path, *extra: str) -> list[str]:
    """``python -m hydranet train SPEC --out OUT --no-progress EXTRA...``: the process a test
    holds (with :func:`hold_env`), then kills, signals or resumes."""
    return [sys.executable, "-m", "hydranet", "train", str(spec), "--out", str(out), "--no-progress", *extra]  # fmt: skip


def kill_when_held(cmd: list[str], hold_dir: Path, after_steps: int) -> None:
    """Run ``cmd`` held after ``after_steps`` training steps (its output dropped), and kill -9
    it once it is held: a process killed at a known step, whatever the machine's load."""
    proc = subprocess.Popen(
        cmd,
        env=hold_env(hold_dir, after_steps=after_steps),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_held(hold_dir, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
