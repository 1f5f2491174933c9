#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment: the package with its
# `server`, `gateway` and `dev` extras, installed editable. One line per step; pip's
# output goes to build/logs/ (scripts/step.sh), named when a step fails.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=step.sh
source "$root/scripts/step.sh"

# Several make invocations may race to create the same environment.
mkdir -p "$venv"
exec 9>"$venv/.lock"
flock 9

create() { "$python" -m venv "$venv" && "$venv/bin/python" -m pip install --upgrade pip; }

if [ ! -x "$venv/bin/python" ]; then
  step venv-create "creating $venv with $("$python" --version)" create
fi

step venv-install "installing tti-operator[server,gateway,dev] into $venv (torch is large: \
the first time takes minutes; log: $(step_log venv-install))" \
  "$venv/bin/python" -m pip install --progress-bar off -e "$root[server,gateway,dev]"

# With several source roots setuptools' editable install uses an import hook that
# mypy cannot follow; putting both roots on sys.path gives mypy the same view.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$root/common" "$root/operator" "$root/server" "$root/gateway" > "$site/tti-src.pth"

touch "$venv/.installed"
