#!/usr/bin/env bash
# One command for everything.
#   ./run_all.sh                      install what is missing, then run every stage of the default profile
#   ./run_all.sh --profile toy-large  another profile (tiny | toy-large | paper)
#   ./run_all.sh --only STAGE         one stage (see `promu stages`)
#   ./run_all.sh --force              rerun stages even when their cached outputs exist
#   ./run_all.sh --quick              one fine-tuning seed instead of three (a look, not evidence)
#   ./run_all.sh --test [ARGS]        install the same way, then lint and run the test suite
#   ./run_all.sh --lab [ARGS]         install the same way, then start JupyterLab on notebooks/
set -euo pipefail
cd "$(dirname "$0")"

VENV=${PROMU_VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.promu-install-stamp"

bootstrap() {
  local want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return 0
  fi
  echo "[promu] installing the environment into $VENV (first run takes a few minutes)"
  local t0=$SECONDS
  if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV"
  fi
  "$PY" -m pip install --quiet --upgrade pip
  # torch first and pinned: the local wheel cache holds exactly these releases. Everything
  # under constraints.txt: the exact versions that produced figures/.
  "$PY" -m pip install --quiet -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
  "$PY" -m pip install --quiet -c constraints.txt -e ".[dev]"
  "$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (promu)" >/dev/null
  echo "$want" > "$STAMP"
  echo "[promu] environment ready in $((SECONDS - t0)) s"
}

if [[ "${1:-}" == "--test" ]]; then
  shift
  bootstrap
  echo "[promu] ruff lint + format check"
  "$VENV/bin/ruff" check promu_lib tests benchmarks notebooks
  "$VENV/bin/ruff" format --check promu_lib tests benchmarks notebooks
  echo "[promu] pytest"
  set +e
  "$PY" -m pytest "$@"
  rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then
    echo "[promu] pytest collected no tests: treated as a failure (the suite must not vanish)" >&2
    exit 1
  fi
  exit $rc
fi

if [[ "${1:-}" == "--lab" ]]; then
  shift
  bootstrap
  as_root=()
  if [[ $(id -u) -eq 0 ]]; then as_root=(--allow-root); fi  # jupyter refuses root otherwise
  exec "$VENV/bin/jupyter" lab ${as_root[@]+"${as_root[@]}"} "$@"
fi

bootstrap
# = `promu run "$@"`, without loading the other commands (the runner stays small)
exec "$PY" -m promu_lib.pipeline "$@"
