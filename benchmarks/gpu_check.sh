#!/usr/bin/env bash
# `make gpu-check`: everything that checks the CUDA path, then one summary.
#
# On a machine with CUDA:
#   1. the whole test suite, tests marked `cuda` included;
#   2. benchmarks/throughput.py --device cuda (needs ABLATE_DATA);
#   3. benchmarks/fused.py --device cuda --compile both (K = 1, 2, 4, 8, 16 for cnn4 and resnet18,
#      eager and torch.compile'd: the measurement that decides train.compile's default on CUDA);
#   4. the smoke and the quick profile of studies/batchnorm.yaml on CUDA (needs ABLATE_DATA), in
#      throw-away MLflow and Optuna stores, with their wall times; with GPU_CHECK_FULL=1 also the
#      full profile (6 runs of 60 epochs on all 45,000 training images: the issue's 10-minute target).
# On a CPU-only machine it runs as far as it can in a few minutes: the `cuda` tests (they skip),
# throughput.py with a few steps on the CPU, fused.py for K = 1, 2 on the CPU, and skips the studies
# with a message. Every step's output goes to a log file named in the summary.
#
# Environment: PY (default .venv/bin/python), ABLATE (default .venv/bin/ablate), ABLATE_DATA.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ABLATE=${ABLATE:-.venv/bin/ablate}
LOGS=$(mktemp -d -t ablate-gpu-check.XXXXXX)
SUMMARY=()

run_step() {  # run_step NAME COMMAND...: run it, log it, note its status and wall time
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$LOGS/$name.log"
    local status="ok"
    [ $rc -ne 0 ] && status="FAILED (exit $rc)"
    SUMMARY+=("$(printf '%-22s %-18s %5d s   %s' "$name" "$status" $((SECONDS - start)) "$LOGS/$name.log")")
}

skip_step() {  # skip_step NAME WHY
    SUMMARY+=("$(printf '%-22s %-18s %7s   %s' "$1" "skipped" "" "$2")")
}

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    DEVICE_LINE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)")
else
    DEVICE=cpu
    DEVICE_LINE="no CUDA device: CPU only ($("$PY" -c "import torch; print('torch', torch.__version__)"))"
fi
echo "gpu-check on: $DEVICE_LINE"

if [ "$DEVICE" = cuda ]; then
    run_step tests "$PY" -m pytest -q
else
    run_step tests-cuda-marked "$PY" -m pytest -q -m cuda -rs
    SUMMARY+=("$(printf '%-22s %-18s %7s   %s' "" "" "" "(the whole suite on the CPU: make test)")")
fi

if [ -n "${ABLATE_DATA:-}" ]; then
    if [ "$DEVICE" = cuda ]; then
        run_step throughput "$PY" benchmarks/throughput.py --device cuda
    else
        run_step throughput-cpu "$PY" benchmarks/throughput.py --device cpu --steps 4 --warmup 1
    fi
else
    skip_step throughput "ABLATE_DATA is not set (it times the real data pipeline)"
fi

if [ "$DEVICE" = cuda ]; then
    run_step fused "$PY" benchmarks/fused.py --device cuda --compile both
else
    run_step fused-cpu "$PY" benchmarks/fused.py --device cpu --ks 1,2 --steps 2 --warmup 1 --batch 32
fi

if [ "$DEVICE" = cuda ] && [ -n "${ABLATE_DATA:-}" ]; then
    STORES=$(mktemp -d -t ablate-gpu-check-stores.XXXXXX)
    PROFILES="smoke quick"
    [ "${GPU_CHECK_FULL:-0}" = 1 ] && PROFILES="smoke quick full"
    for profile in $PROFILES; do
        run_step "batchnorm-$profile" "$ABLATE" run studies/batchnorm.yaml --profile "$profile" \
            --set train.device=cuda --tracking-uri "sqlite:///$STORES/mlflow.db" --storage "sqlite:///$STORES/optuna.db"
    done
elif [ "$DEVICE" = cuda ]; then
    skip_step batchnorm-studies "ABLATE_DATA is not set"
else
    skip_step batchnorm-studies "no CUDA device (the studies on the CPU: make run)"
fi

echo
echo "== gpu-check summary: $DEVICE_LINE"
for line in "${SUMMARY[@]}"; do
    echo "$line"
done
case "${SUMMARY[*]}" in
*FAILED*) exit 1 ;;
esac
