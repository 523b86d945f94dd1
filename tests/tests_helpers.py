import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# a RESULTS file's other section, which a benchmark's --smoke run must leave as it is
OTHER_SECTION = "# Benchmark results\n\n<!-- BEGIN other -->\nkeep me\n<!-- END other -->\n"


def benchmarks_on_path() -> None:
    """benchmarks/ importable (its scripts and their ``_common``), as the scripts run."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


def read_only_mount_works(src: Path, dst: Path) -> bool:
    """Whether a read-only bind mount of ``src`` at ``dst`` can be made in a private mount
    namespace: as root (where file modes restrict nothing) the way to test a read-only run."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = f"mount --bind {src} {dst} && mount -o remount,bind,ro {dst} && ! touch {dst}/x"
    res = subprocess.run(["unshare", "--mount", "sh", "-c", probe], capture_output=True)
    return res.returncode == 0


def hydranet_on_read_only_mount(
    src: Path, mnt: Path, args: list[str]
) -> subprocess.CompletedProcess:
    """``python -m hydranet ARGS`` with ``src`` bind-mounted read-only at ``mnt`` (EROFS,
    which no file mode lifts); check :func:`read_only_mount_works` first."""
    quoted = " ".join(f"'{a}'" for a in args)
    script = (
        f"mount --bind {src} {mnt} && mount -o remount,bind,ro {mnt} && "
        f"exec {sys.executable} -m hydranet {quoted}"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
