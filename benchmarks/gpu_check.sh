#!/usr/bin/env bash
# Every check that needs a CUDA GPU, as one prepared run: the CUDA tests, the throughput benchmark
# (data pipeline on and off, 96/150/224 px, each architecture), measured against estimated peak memory,
# and torch.compile against eager. Logs go to $OUT (or ./gpu-check-out).
#
# A GPU machine often has PyTorch but not losslab's other dependencies, and no network. So:
#   bash benchmarks/gpu_check.sh --fetch      # here, with the package registry: wheels into .whl/
#   bash benchmarks/gpu_check.sh              # there, with .whl/ copied beside it: installs from .whl/, runs
# --fetch builds losslab's own wheel and downloads the pure or manylinux wheels the GPU image lacks
# (PYVER, default 3.12, must match that machine's python3). Installing goes to /tmp/site, never into the
# machine's own environment, and only what does not import already is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
# The dependencies a GPU image with PyTorch usually lacks (mlflow and optuna are not needed by these checks).
WHEELS=(kornia kornia_rs pydantic pydantic_core annotated_types typing_inspection typing_extensions pluggy typer)

if [ "${1:-}" = "--fetch" ]; then
    mkdir -p .whl
    python3 -m pip wheel -q --no-deps -w .whl . || exit 1
    platforms=()
    for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    pinned=()  # the versions tested here, where installed here
    for name in "${WHEELS[@]}"; do
        version=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)
        pinned+=("$name${version:+==$version}")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl "${pinned[@]}" || exit 1
    ls -la .whl
    exit 0
fi

out=${OUT:-gpu-check-out}
mkdir -p "$out"
missing=()
for module in torch kornia pydantic pluggy typer yaml cv2 tqdm scipy; do
    python3 -c "import $module" 2>/dev/null || missing+=("$module")
done
python3 -c "import losslab.core" 2>/dev/null || missing+=(losslab)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from .whl/ for: ${missing[*]}"
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: ${missing[*]} missing and no .whl/ here; run 'bash benchmarks/gpu_check.sh --fetch' first" >&2
        exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
           torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$out/env.txt"

status=0
step() {  # step NAME COMMAND...: run, log to $out/NAME.log, remember a failure, go on
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc in $((SECONDS - t0)) s"
    [ "$rc" = 0 ] || status=1
}
step tests python3 -m pytest -q -p no:cacheprovider tests/test_gpu_fast_path.py tests/test_losses.py \
    tests/test_device_data.py tests/test_memory.py
# SIZES, BATCH and STEPS shrink the benchmarks for a dry run of this script on a CPU
sizes=(${SIZES:-96 150 224})
batch=${BATCH:-64}
steps=${STEPS:-20}
step throughput python3 benchmarks/gpu_throughput.py --sizes "${sizes[@]}" --batch "$batch" --steps "$steps"
step compiled python3 benchmarks/gpu_throughput.py --archs unet --sizes "${sizes[-1]}" --batch "$batch" \
    --steps "$steps" --compile
exit $status
