#!/usr/bin/env bash
# Install what the playground's browser tests need: Debian's chromium (with a
# font, so pages render text) and curl. Idempotent and quick when it is already there.
# Needs root (or sudo) and apt-get, as on the project's Debian machines.
set -euo pipefail
packages=(chromium fonts-dejavu-core curl)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser: apt-get not found; install Chromium so that /usr/bin/chromium exists" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "browser: run as root (or install sudo) to apt-get install ${missing[*]}" >&2
    exit 1
  }
  sudo=(sudo)
fi
echo "==> installing ${missing[*]} with apt-get (the playground's browser tests)"
export DEBIAN_FRONTEND=noninteractive
# Other engineers' installs may hold dpkg's lock for a while: wait for it.
apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600)
"${apt[@]}" update -qq
"${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "==> $(/usr/bin/chromium --version)"
