#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment: the package with its
# `server` and `dev` extras, installed editable.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)

# Several make invocations may race to create the same environment.
mkdir -p "$venv"
exec 9>"$venv/.lock"
flock 9

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv with $($python --version)"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi

echo "==> installing tti-operator[server,gateway,dev] into $venv (torch is large: the first time takes minutes)"
"$venv/bin/python" -m pip install --progress-bar on -e "$root[server,gateway,dev]"

# With several source roots setuptools' editable install uses an import hook that
# mypy cannot follow; putting both roots on sys.path gives mypy the same view.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$root/common" "$root/operator" "$root/server" "$root/gateway" > "$site/tti-src.pth"

touch "$venv/.installed"
echo "==> $venv is ready"
