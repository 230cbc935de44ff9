#!/usr/bin/env bash
# `make gpu-check`: everything that checks the CUDA path, then one summary.
#
# On a machine with CUDA, each a step of GPU_CHECK_STEPS (default: all but full):
#   tests          the tests marked `cuda` (all in tests/test_fused.py), on the machine's own torch
#                  (GPU_CHECK_TESTS overrides the pytest arguments; the CPU tests are CI's, and the
#                  engine's pass on torch 2.11, the GPU image's: see docs/development.md, Torch versions);
#   throughput     benchmarks/throughput.py --device cuda (needs ABLATE_DATA);
#   fused          benchmarks/fused.py --device cuda: K = 1, 2, 4, 8, 16 for cnn4 and resnet18, eager;
#   fused-compile  benchmarks/fused.py --compile both for cnn4 at K = 1 and 8 (GPU_CHECK_COMPILE
#                  overrides its arguments): whether torch.compile pays, which decides train.compile;
#   smoke, quick   those profiles of studies/batchnorm.yaml on CUDA (needs ABLATE_DATA), in
#                  throw-away MLflow and Optuna stores, with their wall times;
#   full           the full profile (6 runs of 60 epochs on all 45,000 training images: the issue's
#                  10-minute target); also with GPU_CHECK_FULL=1.
# and, only when GPU_CHECK_STEPS names them (each fits one 10-minute call on an H100):
#   seed000, seed003  the seed's full recipe (studies/seeds/seed00N.yaml --profile full, 3 seeds): the
#                  reproduction rows of docs/seeds.md;
#   transfer       studies/batchnorm.yaml and studies/rotation.yaml at --profile quick and medium (15
#                  epochs on all 45,000 images), 3 seeds each, with report --by-epoch and its figures: the
#                  transfer table of docs/report.md.
# On a CPU-only machine it runs as far as it can in a few minutes: the `cuda` tests (they skip),
# throughput.py with a few steps on the CPU, fused.py for K = 1, 2 on the CPU, and skips the studies
# with a message. Every step's output goes to a log file named in the summary.
#
# Environment: PY (default .venv/bin/python), ABLATE (default .venv/bin/ablate), ABLATE_DATA,
# GPU_CHECK_STEPS, GPU_CHECK_FULL, GPU_CHECK_TESTS, GPU_CHECK_COMPILE, GPU_CHECK_LOGS (the folder
# for the logs and summary.txt; default a new temporary one).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ABLATE=${ABLATE:-.venv/bin/ablate}
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d -t ablate-gpu-check.XXXXXX)}
mkdir -p "$LOGS"
STEPS=${GPU_CHECK_STEPS:-tests throughput fused fused-compile smoke quick}
[ "${GPU_CHECK_FULL:-0}" = 1 ] && STEPS="$STEPS full"
SUMMARY=()

wanted() {  # wanted STEP: is STEP in GPU_CHECK_STEPS?
    case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

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
    # shellcheck disable=SC2086  # GPU_CHECK_TESTS is a list of pytest arguments
    wanted tests && run_step tests "$PY" -m pytest -q -rs ${GPU_CHECK_TESTS:--m cuda tests/test_fused.py}
else
    if wanted tests; then
        run_step tests-cuda-marked "$PY" -m pytest -q -m cuda -rs
        SUMMARY+=("$(printf '%-22s %-18s %7s   %s' "" "" "" "(the whole suite on the CPU: make test)")")
    fi
fi

if wanted throughput && [ -n "${ABLATE_DATA:-}" ]; then
    if [ "$DEVICE" = cuda ]; then
        run_step throughput "$PY" benchmarks/throughput.py --device cuda
    else
        run_step throughput-cpu "$PY" benchmarks/throughput.py --device cpu --steps 4 --warmup 1
    fi
elif wanted throughput; then
    skip_step throughput "ABLATE_DATA is not set (it times the real data pipeline)"
fi

if [ "$DEVICE" = cuda ]; then
    wanted fused && run_step fused "$PY" benchmarks/fused.py --device cuda --steps 50 --warmup 5
    # shellcheck disable=SC2086
    wanted fused-compile && run_step fused-compile "$PY" benchmarks/fused.py --device cuda \
        ${GPU_CHECK_COMPILE:---models cnn4 --ks 1,8 --steps 50 --warmup 5 --compile both}
else
    wanted fused && run_step fused-cpu "$PY" benchmarks/fused.py --device cpu --ks 1,2 --steps 2 --warmup 1 --batch 32
fi

STUDIES=""
for profile in smoke quick full; do
    wanted $profile && STUDIES="$STUDIES $profile"
done
if [ -n "$STUDIES" ] && [ "$DEVICE" = cuda ] && [ -n "${ABLATE_DATA:-}" ]; then
    STORES=$(mktemp -d -t ablate-gpu-check-stores.XXXXXX)
    for profile in $STUDIES; do
        run_step "batchnorm-$profile" "$ABLATE" run studies/batchnorm.yaml --profile "$profile" \
            --set train.device=cuda --tracking-uri "sqlite:///$STORES/mlflow.db" --storage "sqlite:///$STORES/optuna.db"
    done
elif [ -n "$STUDIES" ] && [ "$DEVICE" = cuda ]; then
    skip_step batchnorm-studies "ABLATE_DATA is not set"
elif [ -n "$STUDIES" ]; then
    skip_step batchnorm-studies "no CUDA device (the studies on the CPU: make run)"
fi

# The long measurements, each in its own throw-away stores, with the report (and the effect by epoch).
for long in seed000 seed003 transfer; do
    wanted $long || continue
    if [ "$DEVICE" != cuda ] || [ -z "${ABLATE_DATA:-}" ]; then
        skip_step "$long" "needs a CUDA device and ABLATE_DATA"
        continue
    fi
    LONG_STORES=$(mktemp -d -t "ablate-gpu-$long.XXXXXX")
    store=(--tracking-uri "sqlite:///$LONG_STORES/mlflow.db")
    case $long in
    seed000 | seed003)
        run_step "$long-full" "$ABLATE" run "studies/seeds/$long.yaml" --profile full --set train.device=cuda \
            "${store[@]}" --storage "sqlite:///$LONG_STORES/optuna.db" ;;
    transfer)
        for study in batchnorm rotation; do
            for profile in quick medium; do
                run_step "$study-$profile" "$ABLATE" run "studies/$study.yaml" --profile $profile \
                    --set train.device=cuda "${store[@]}" --storage "sqlite:///$LONG_STORES/optuna.db"
                run_step "$study-$profile-by-epoch" "$ABLATE" report "$study" --profile $profile "${store[@]}" \
                    --by-epoch --plots "$LOGS/$study-$profile-plots"
            done
        done ;;
    esac
done

{
    echo
    echo "== gpu-check summary: $DEVICE_LINE"
    echo "steps: $STEPS"
    for line in "${SUMMARY[@]}"; do
        echo "$line"
    done
} | tee "$LOGS/summary.txt"
case "${SUMMARY[*]}" in
*FAILED*) exit 1 ;;
esac
