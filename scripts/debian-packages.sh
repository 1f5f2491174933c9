#!/usr/bin/env bash
# Debian's packages the demo and the tests need, installed only when missing (a second run
# is a no-op). Needs apt-get, and root or sudo.
#   node     the local cluster's real node: containerd, runc, the CNI plugins, iptables and
#            conntrack for kube-proxy, ipset for kube-router's policies; buildah and
#            debootstrap to build the images
#   browser  the playground's browser tests: chromium, a font so pages render text, curl
# Usage: debian-packages.sh GROUP...
# One line when something is installed; apt's output goes to build/logs/ (scripts/step.sh).
set -euo pipefail
# shellcheck source=step.sh
source "$(dirname "$0")/step.sh"

declare -A groups=(
  [node]="containerd runc containernetworking-plugins iptables conntrack ipset buildah debootstrap"
  [browser]="chromium fonts-dejavu-core curl"
)
(( $# > 0 )) || { echo "usage: $0 ${!groups[*]}" >&2; exit 2; }

missing=()
for group in "$@"; do
  [[ -v "groups[$group]" ]] || { echo "debian-packages: no group $group (${!groups[*]})" >&2; exit 2; }
  for package in ${groups[$group]}; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
done
(( ${#missing[@]} == 0 )) && exit 0

command -v apt-get >/dev/null 2>&1 ||
  { echo "debian-packages: needs Debian's apt-get to install ${missing[*]}" >&2; exit 1; }
sudo=()
if (( EUID != 0 )); then
  command -v sudo >/dev/null 2>&1 ||
    { echo "debian-packages: run as root (or install sudo) to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
# Another install may hold dpkg's lock for a while: wait for it.
apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600)
apt_install() { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; }
step "debian-packages-$(IFS=-; echo "$*")" "installing Debian packages ($*): ${missing[*]}" apt_install
