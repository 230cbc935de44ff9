#!/usr/bin/env bash
# The one command for a lent GPU machine (the library's device tool): install, then `make gpu-check`.
#
#   device run, carry [".gpu"], command "bash benchmarks/gpu_device.sh"
#
# Needs .gpu/ from `make gpu-bundle` (wheels and the archive). On the machine it
#   1. installs the missing dependencies from .gpu/wheels into the machine's own Python (no index:
#      nothing can be fetched there) and the project itself, editable, without touching its torch;
#   2. runs benchmarks/gpu_check.sh with ABLATE_DATA=.gpu/cifar10-jpeg.tar.gz, every step's log
#      and the summary written to $OUT (what comes back from the machine).
# GPU_CHECK_STEPS picks the steps (see gpu_check.sh), so that the check can be split over two
# calls of at most 10 minutes each.
#
# Environment: PY (default python3), OUT (default a temporary folder), GPU_CHECK_STEPS.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-$(mktemp -d -t ablate-gpu-out.XXXXXX)}
[ -d .gpu/wheels ] && [ -f .gpu/cifar10-jpeg.tar.gz ] || {
    echo "gpu-device: .gpu/ is missing or incomplete: run 'make gpu-bundle' here and carry .gpu" >&2
    exit 2
}
start=$SECONDS
"$PY" -m pip install -q --no-index --find-links .gpu/wheels -r .gpu/requirements.txt >"$OUT/install.log" 2>&1
rc=$?
tail -n 20 "$OUT/install.log"
if [ $rc -ne 0 ]; then
    echo "gpu-device: installing from .gpu/wheels failed (exit $rc); $OUT/install.log has pip's output" >&2
    exit $rc
fi
BIN=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
ABLATE="$BIN/ablate"
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/install.log" 2>&1; then
    # The project itself needs only to be importable: without setuptools there, run it from the tree.
    echo "gpu-device: 'pip install -e .' failed (see install.log); running the project from $PWD instead"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    mkdir -p .gpu/bin
    cat >.gpu/bin/ablate <<SH
#!/bin/sh
exec "$PY" -m ablations.cli "\$@"
SH
    chmod +x .gpu/bin/ablate
    ABLATE=$PWD/.gpu/bin/ablate
fi
echo "gpu-device: installed in $((SECONDS - start)) s"
export PY ABLATE ABLATE_DATA=$PWD/.gpu/cifar10-jpeg.tar.gz ABLATE_CACHE=${ABLATE_CACHE:-/tmp/ablate-cache}
export GPU_CHECK_LOGS=$OUT PYTHONUNBUFFERED=1
bash benchmarks/gpu_check.sh
