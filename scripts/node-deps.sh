#!/usr/bin/env bash
# Debian's packages the local cluster's real node needs: containerd, runc and the CNI
# plugins to run pods, iptables and conntrack for kube-proxy, buildah and debootstrap to
# build the images. Installs only what is missing; a second run is a no-op.
set -euo pipefail

packages=(containerd runc containernetworking-plugins iptables conntrack buildah debootstrap)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
(( ${#missing[@]} == 0 )) && exit 0

command -v apt-get >/dev/null 2>&1 ||
  { echo "node-deps: needs Debian's apt-get to install: ${missing[*]}" >&2; exit 1; }
sudo=()
if (( EUID != 0 )); then
  command -v sudo >/dev/null 2>&1 ||
    { echo "node-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "==> installing Debian packages for the real node: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
echo "==> installed ${missing[*]}"
