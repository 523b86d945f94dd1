"""Debian packages as a data source: fetched with ``apt-get download`` (the machine's
configured mirror, no install, no scripts) and read in memory.

A ``.deb`` is an ``ar`` archive holding ``data.tar.*``. Python's standard library
reads tar but has no ``ar`` reader, and ``dpkg-deb`` exists only on Debian, while a
local copy of the package (the ``*_DEB`` variables) may be used anywhere; the
``ar`` format is three fields in a fixed 60-byte header per member, so it is read
here. Files come straight out of the tar in memory (no extraction to disk, so a
hostile archive cannot write anywhere), and only regular files are read.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from hydranet.data.datasets._cache import cached_splits, local_copy
from hydranet.errors import DataError

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def deb_splits(
    data_dir: Path,
    name: str,
    package: str,
    deb: Path | None,
    env: str,
    read: Callable[[Path], Any],
    splits: Callable[[Any], dict[str, pa.Table]],
) -> dict[str, Path]:
    """The cached Parquet splits of data set ``name``, built once from Debian ``package``:
    ``splits(read(the .deb))``. ``deb`` (or ``$env``) names a local copy; without one the
    package is fetched with ``apt-get download`` into a temporary directory."""
    deb = local_copy(deb, env)

    def build() -> dict[str, pa.Table]:
        with tempfile.TemporaryDirectory(prefix=f"hydranet-{name}-") as tmp:
            raw = read(deb or fetch_deb(package, Path(tmp), env))
        return splits(raw)

    def announce(out_dir: Path) -> str:
        if deb is None:
            return f"fetching the {name} data set: Debian package {package} (with apt-get download; set {env} to use a local copy), cached in {out_dir} ..."
        return f"preparing the {name} data set from {deb}, cached in {out_dir} ..."

    return cached_splits(data_dir, name, build, announce)


def fetch_deb(package: str, dest: Path, env: str) -> Path:
    """Download ``package``'s .deb into ``dest`` with ``apt-get download``."""
    cmd = ["apt-get", "download", package]
    try:
        res = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise DataError(
            f"could not fetch Debian package {package}: apt-get is not installed (not a Debian machine); set {env} to a local copy of the .deb"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(
            f"could not fetch Debian package {package} with apt-get: {e}; set {env} to a local copy of the .deb"
        ) from None
    found = sorted(dest.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not found:
        lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        # apt's own warnings (W:) come before the error (E:) that says why
        errors = [ln for ln in lines if ln.startswith("E:")] or lines
        why = errors[-1] if errors else f"apt-get exited with {res.returncode}"
        hint = " (run apt-get update first?)" if "Unable to locate package" in why else ""
        raise DataError(
            f"could not fetch Debian package {package} with apt-get download: {why}{hint}; set {env} to a local copy of the .deb"
        )
    return found[0]


def deb_files(
    deb: Path, under: str, suffixes: tuple[str, ...] = ("",)
) -> Iterator[tuple[str, bytes]]:
    """``(path below under, content)`` for each regular file of the package's data
    below the folder ``under`` (e.g. ``usr/share/datasets/fashion-mnist``) whose
    name ends with one of ``suffixes``."""
    prefix = under.strip("/") + "/"
    try:
        data = _ar_member(deb, "data.tar")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if not (name.startswith(prefix) and name.endswith(suffixes) and member.isfile()):
                    continue
                fileobj = tf.extractfile(member)
                assert fileobj is not None  # a regular file always has content
                yield name[len(prefix) :], fileobj.read()
    except (OSError, EOFError, tarfile.TarError) as e:
        # a missing or truncated file, or a data.tar compressed in a way tarfile cannot read
        raise DataError(f"cannot read Debian package {deb}: {e}") from None


def _ar_member(deb: Path, stem: str) -> bytes:
    """The content of the first ``ar`` member whose name starts with ``stem``."""
    with open(deb, "rb") as f:
        if f.read(len(_AR_MAGIC)) != _AR_MAGIC:
            raise DataError(f"{deb} is not a Debian package (.deb)")
        while True:
            header = f.read(_AR_HEADER)
            if len(header) < _AR_HEADER:
                raise DataError(f"Debian package {deb} has no {stem}.* member")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise DataError(f"Debian package {deb} is damaged (bad member header)") from None
            if name.startswith(stem):
                body = f.read(size)
                if len(body) != size:
                    raise DataError(f"Debian package {deb} is truncated")
                return body
            f.seek(size + size % 2, io.SEEK_CUR)  # members start at even offsets
