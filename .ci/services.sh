# Source this file: start PostgreSQL and an `mlflow server` on loopback for the multi-machine test.
#
#   source .ci/services.sh        # needs .venv (make install) for mlflow and psycopg2
#
# Exports ABLATE_TEST_POSTGRES (Optuna storage URL) and ABLATE_TEST_MLFLOW_SERVER (tracking URI),
# which tests/test_multi_machine.py reads, and stops both services when the sourcing shell exits.
# PostgreSQL comes from Debian's packages: installed with apt-get when missing and we are root.

_pg_bin() {
  local initdb
  initdb=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$initdb" ]; then dirname "$(readlink -f "$initdb")"; fi  # a plain `&&` would trip `set -e`
}

_free_port() {
  .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_ablate_services_start() {
  local bin dir pg_port ml_port as_pg=()
  bin=$(_pg_bin)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "services: installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; } || true
    bin=$(_pg_bin)
  fi
  if [ -z "$bin" ]; then
    echo "services: no PostgreSQL (initdb) found; the multi-machine test will be skipped" >&2
    return 0
  fi
  dir=$(mktemp -d /tmp/ablate-services.XXXXXX)
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
    chown postgres "$dir"
    as_pg=(runuser -u postgres --)
  fi
  ABLATE_SERVICES_STOP="kill -- -\$(cat '$dir/mlflow.pid' 2>/dev/null) 2>/dev/null; ${as_pg[*]} '$bin/pg_ctl' -D '$dir/pg' -m fast stop >/dev/null 2>&1; rm -rf '$dir'"
  trap 'eval "$ABLATE_SERVICES_STOP"' EXIT
  pg_port=$(_free_port)
  "${as_pg[@]}" "$bin/initdb" -D "$dir/pg" -U ablate --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; return 1; }
  "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $dir" start >/dev/null ||
    { cat "$dir/pg.log" >&2; return 1; }
  "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U ablate optuna
  "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U ablate mlflow
  ml_port=$(_free_port)
  mkdir -p "$dir/artifacts"
  setsid .venv/bin/mlflow server --backend-store-uri "postgresql://ablate@127.0.0.1:$pg_port/mlflow" \
    --artifacts-destination "$dir/artifacts" --host 127.0.0.1 --port "$ml_port" --workers 1 \
    >"$dir/mlflow.log" 2>&1 &
  echo $! >"$dir/mlflow.pid"  # setsid made it a process group leader: the stop kills its workers too
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$ml_port/health" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -sf "http://127.0.0.1:$ml_port/health" >/dev/null || { tail -30 "$dir/mlflow.log" >&2; return 1; }
  export ABLATE_TEST_POSTGRES="postgresql://ablate@127.0.0.1:$pg_port/optuna"
  export ABLATE_TEST_MLFLOW_SERVER="http://127.0.0.1:$ml_port"
  export ABLATE_SERVICES_DIR="$dir"
  echo "services: PostgreSQL on 127.0.0.1:$pg_port, mlflow server on $ABLATE_TEST_MLFLOW_SERVER" >&2
}

_ablate_services_start
# A one-node Slurm cluster for tests/test_slurm.py (ABLATE_TEST_SLURM, SLURM_CONF); its trap stops both.
source "$(dirname "${BASH_SOURCE[0]}")/slurm.sh"
