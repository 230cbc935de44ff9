#!/usr/bin/env bash
# `make gpu-bundle`: what a lent GPU machine needs to run `make gpu-check`, in .gpu/ (git-ignored).
#
# Offline GPU machines (see docs/gpu.md, "On an offline GPU machine")
# start bare, offline, with their own Python and torch but without MLflow, Optuna or pydantic.
# This script, run here where pip reaches a registry, puts into .gpu/:
#   wheels/                 the project's dependencies that such a machine lacks, for its Python
#                           (GPU_PY, default 3.12) on x86-64 Linux: mlflow-skinny (MLflow's client,
#                           tracking store and no UI: `ablate ui` is not part of the check), optuna,
#                           pydantic, SQLAlchemy, alembic and what they need; numpy is left out (the
#                           machine's torch comes with its own);
#   cifar10-jpeg.tar.gz     a copy of $ABLATE_DATA (the working tree travels, ../shared does not).
# benchmarks/gpu_device.sh installs the wheels there with pip --no-index and runs the check.
#
# Environment: ABLATE_DATA (required), GPU_PY (default 3.12), PIP (default .venv/bin/pip or pip3).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_PY=${GPU_PY:-3.12}
PIP=${PIP:-$([ -x .venv/bin/pip ] && echo .venv/bin/pip || echo pip3)}
: "${ABLATE_DATA:?set ABLATE_DATA to cifar10-jpeg.tar.gz (it travels with the bundle)}"
[ -f "$ABLATE_DATA" ] || { echo "gpu-bundle: ABLATE_DATA=$ABLATE_DATA is not a file" >&2; exit 2; }

# The versions this checkout is tested with here (pip freeze of the project's environment), so the
# GPU machine runs the same MLflow and Optuna as CI; the rest pip resolves against what is there.
pins=()
for name in mlflow-skinny optuna pydantic sqlalchemy alembic; do
    version=$("$PIP" show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    pins+=("$name${version:+==$version}")
done

rm -rf .gpu/wheels
mkdir -p .gpu/wheels
py_tag=cp${GPU_PY/./}
"$PIP" download -q --only-binary=:all: --python-version "$GPU_PY" --implementation cp --abi "$py_tag" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d .gpu/wheels "${pins[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
rm -f .gpu/wheels/numpy-*.whl
install -m 644 "$ABLATE_DATA" .gpu/cifar10-jpeg.tar.gz
printf '%s\n' "${pins[@]}" >.gpu/requirements.txt
echo "gpu-bundle: $(ls .gpu/wheels | wc -l) wheels for Python $GPU_PY ($(du -sh .gpu/wheels | cut -f1)) and the archive in .gpu/"
echo "gpu-bundle: pins $(tr '\n' ' ' <.gpu/requirements.txt)"
echo "gpu-bundle: the working tree that travels is $(du -sh --exclude=.git --exclude=.venv --exclude=mlruns . | cut -f1) (the device tool's limit: 64 MiB)"
