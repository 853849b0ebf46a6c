#!/usr/bin/env bash
# Install what is missing, idempotently: Debian packages (as root, via apt-get) and the Python
# environment in .venv from the locked list requirements.lock. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(restic borgbackup btrfs-progs xfsprogs fuse3 libfuse3-dev pkg-config iproute2 util-linux
              postgresql-15 mariadb-server redis-server sqlite3 procps psmisc e2fsprogs)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages ${missing[*]}; run as root or install them" >&2; exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.frieze-lock-stamp
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || ! cmp -s requirements.lock "$stamp"; then
  echo "setup: installing Python packages from requirements.lock into .venv"
  .venv/bin/python -m pip install -q --upgrade pip uv
  # --compile-bytecode: every process (CLI runs, agents, test children) reads cached bytecode instead of
  # compiling each module it imports, which with PYTHONDONTWRITEBYTECODE set costs ~0.6 s per `frieze` run
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -r requirements.lock
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  cp requirements.lock "$stamp"
fi
# frieze's own modules (an editable install, so not compiled above); only changed files are compiled again
.venv/bin/python -m compileall -q src >/dev/null
