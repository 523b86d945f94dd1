"""Importing hydranet changes nothing about the process; the CLI applies its settings itself.

Each check runs in a fresh interpreter with a clean environment (this test process has
already imported torch, and conftest applies the CLI's settings to it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hydranet

SRC = str(Path(hydranet.__file__).resolve().parents[1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    return {**env, "PYTHONPATH": SRC, **extra}


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(**env), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return res


def test_import_hydranet_changes_no_environment_and_loads_no_torch():
    """torch not loaded: the CLI can still set OMP_WAIT_POLICY before its OpenMP starts."""
    _python(
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import hydranet\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(hydranet.train) and hydranet.Spec.__name__ == 'Spec'\n"
    )


def test_importing_every_module_changes_no_global_state():
    _python(
        "import importlib, os, pkgutil\n"
        "import torch\n"
        "def state():\n"
        "    return (dict(os.environ), torch.get_num_threads(), torch.get_num_interop_threads(),\n"
        "            torch.get_default_dtype(), torch.is_grad_enabled(),\n"
        "            torch.are_deterministic_algorithms_enabled(),\n"
        "            torch.get_float32_matmul_precision())\n"
        "before = state()\n"
        "import hydranet\n"
        "names = [m.name for m in pkgutil.walk_packages(hydranet.__path__, 'hydranet.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "assert len(names) > 30, names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "    assert state() == before, name\n"
    )


def _spin_count(stderr: str) -> str | None:
    # libgomp's OMP_DISPLAY_ENV=VERBOSE report: a passive wait policy means no spinning
    for line in stderr.splitlines():
        if "GOMP_SPINCOUNT" in line:
            return line.split("=")[1].strip().strip("'")
    return None


def test_cli_makes_openmp_wait_passively_unless_switched_off(tmp_path):
    probe = _python("import torch", OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="PASSIVE")
    if _spin_count(probe.stderr) != "0":
        pytest.skip("torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT report)")

    def spin(**env: str) -> str | None:
        # a command that loads torch (to read the run) and then fails fast: not a run
        res = subprocess.run(
            [sys.executable, "-m", "hydranet", "evaluate", str(tmp_path)],
            env=_clean_env(OMP_DISPLAY_ENV="VERBOSE", **env),
            capture_output=True,
            text=True,
        )
        assert res.returncode == 2 and "not a complete hydranet run" in res.stderr, res.stderr
        return _spin_count(res.stderr)

    assert spin() == "0"  # set at the CLI's entry, before torch loaded libgomp
    assert spin(HYDRANET_OMP_PASSIVE="0") not in (None, "0")
