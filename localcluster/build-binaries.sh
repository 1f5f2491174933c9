#!/usr/bin/env bash
# Build the test cluster's binaries from Go modules (no downloads at cluster-up time):
#   kube-apiserver, kube-controller-manager, kube-scheduler  (go/kubernetes wrapper module)
#   etcd                                                      (go/etcd wrapper module)
#   kwok, kwokctl, helm                                       (go install pkg@version)
#   kubectl, only when the one on PATH is more than one minor away from the cluster.
# and the real node's: kubelet, kube-proxy (go/kubernetes), coredns and crictl (go install), the
# pause binary of the pod sandbox image (gcc, from the kubernetes module's own pause.c),
# local-path-provisioner (go install), which provisions its PersistentVolumes, and kube-router
# (go install), whose network-policy controller enforces its NetworkPolicies.
# They land in ${TTI_CACHE_DIR:-~/.cache/tti-operator}/bin/<versions>/, which is reused until a
# pin (versions.env, go/*/go.mod, go/*/go.sum) changes. The pins at the end of versions.env
# (local-path-provisioner's, kube-router's) have stamps of their own: changing one rebuilds that
# binary alone.
# One line per step (and, on a terminal, a progress line updated in place); Go's output goes to
# build/logs/cluster-build.log.
#
# Usage: build-binaries.sh [--print-dir]
set -euo pipefail

# No dirname: the "Go is missing" check must work with a bare PATH.
src=${BASH_SOURCE[0]}
[[ $src == */* ]] || src=./$src
here=$(cd "${src%/*}" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${TTI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tti-operator}
bin_dir="$cache_root/bin/kubernetes-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
if [[ ${1:-} == --print-dir ]]; then
  echo "$bin_dir"
  exit 0
fi

say() { printf '==> %s\n' "$*"; }
die() { printf 'cluster-build: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 ||
  die "Go is not installed (or not on PATH). Install Go >= 1.24 from https://go.dev/dl/ and retry."

# The wrapper modules must build the versions named in versions.env.
pinned() { sed -n "s|^require $1 \(v[^ ]*\).*|\1|p; s|^[[:space:]]$1 \(v[^ ]*\).*|\1|p" "$2" | head -n1; }
[[ $(pinned k8s.io/kubernetes "$here/go/kubernetes/go.mod") == "$KUBERNETES_VERSION" ]] ||
  die "go/kubernetes/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION (versions.env)"
[[ $(pinned go.etcd.io/etcd/server/v3 "$here/go/etcd/go.mod") == "$ETCD_VERSION" ]] ||
  die "go/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION (versions.env)"

# versions.env up to the pins that have stamps of their own.
own_stamps='^# Built with stamps of their own'
inputs_hash=$(sed "/$own_stamps/,\$d" "$here/versions.env" |
  cat - "$here"/go/*/go.mod "$here"/go/*/go.sum | sha256sum | cut -c1-16)
stamp="$bin_dir/.built-$inputs_hash"
provisioner_stamp="$bin_dir/.local-path-provisioner-$LOCAL_PATH_PROVISIONER_VERSION"
kube_router_stamp="$bin_dir/.kube-router-$KUBE_ROUTER_VERSION"

# kubectl from PATH is fine within one minor version of the cluster (Kubernetes' skew policy).
kube_minor=$(cut -d. -f2 <<<"$KUBERNETES_VERSION")
path_kubectl_ok() {
  local minor
  command -v kubectl >/dev/null 2>&1 || return 1
  minor=$(kubectl version --client -o json 2>/dev/null |
    sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n1)
  [[ -n $minor ]] && (( minor >= kube_minor - 1 && minor <= kube_minor + 1 ))
}

need_kubectl=0
if ! path_kubectl_ok; then need_kubectl=1; fi
# What is missing: everything (build_all) or kubectl alone; local-path-provisioner; kube-router.
build_all=1 only_kubectl=0 build_provisioner=1 build_kube_router=1
if [[ -f $stamp ]]; then
  build_all=0
  if (( need_kubectl )) && [[ ! -x $bin_dir/kubectl ]]; then only_kubectl=1; fi
fi
if [[ -f $provisioner_stamp && -x $bin_dir/local-path-provisioner ]]; then build_provisioner=0; fi
if [[ -f $kube_router_stamp && -x $bin_dir/kube-router ]]; then build_kube_router=0; fi
if (( build_all == 0 && only_kubectl == 0 && build_provisioner == 0 && build_kube_router == 0 )); then
  say "cluster binaries up to date in $bin_dir"
  exit 0
fi

export CGO_ENABLED=0
# Keep the module cache and build cache where Go keeps them: a second build reuses them.
mkdir -p "$bin_dir"
work=$(mktemp -d "$bin_dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# shellcheck source=../scripts/step.sh
source "$here/../scripts/step.sh"
mkdir -p "$step_log_dir"
# Absolute: the builds run in other folders. Shown as step_log names it.
log="$(cd "$step_log_dir" && pwd)/cluster-build.log"
shown_log=$(step_log cluster-build)
part="$work/part.log"
: >"$log"
die_see_log() { die "$1; full log: $shown_log"; }

# go build -v names each package as it compiles: count them against the total for progress,
# on one line updated in place on a terminal (and cleared when done); elsewhere (CI) nothing.
# (Asked here: inside a command substitution stdout is never the terminal.)
if [[ -t 1 ]]; then tty=1; else tty=0; fi
progress() {
  local total=$1 label=$2
  awk -v total="$total" -v label="$label" -v tty="$tty" -v logfile="$part" '
    { print >> logfile; n++; pct = int(100 * n / total); if (pct > 100) pct = 100
      if (tty) { printf "\r    %s: %d/%d packages compiled (%d%%)", label, n, total, pct; fflush() } }
    END { if (tty) printf "\r\033[K" }'
}

# run_go LABEL LIST-DIR LIST-PKGS GO-ARGS...: run `go GO-ARGS -v` with progress (the total is
# `go list -deps LIST-PKGS` in LIST-DIR), its output appended to the log; on failure show the
# errors from it.
run_go() {
  local label=$1 list_dir=$2 list_pkgs=$3 total start rc
  shift 3
  start=$SECONDS
  # shellcheck disable=SC2086  # LIST-PKGS is a space-separated list
  total=$(cd "$list_dir" && go list -deps $list_pkgs 2>/dev/null | wc -l) || total=0
  (( total > 0 )) || total=1000
  : >"$part"
  set +e
  nice go "$1" -v "${@:2}" 2>&1 | progress "$total" "$label"
  rc=${PIPESTATUS[0]}
  set -e
  { printf '### %s (go %s)\n' "$label" "$*"; cat "$part"; } >>"$log"
  if (( rc != 0 )); then
    # -v lines are bare package paths; anything else is a diagnostic.
    grep -v '^[a-zA-Z0-9_./~-]*$' "$part" | tail -n 40 >&2 || true
    die_see_log "building $label failed (errors above)"
  fi
  printf '### %s built in %d s\n' "$label" "$((SECONDS - start))" >>"$log"
}

# module_dir MODULE@VERSION: where Go keeps that module's source (downloading it if needed).
module_dir() {
  go mod download -json "$1" 2>>"$log" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p'
}


kube_ldflags="-s -w
  -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION
  -X k8s.io/component-base/version.gitMajor=$(cut -d. -f1 <<<"${KUBERNETES_VERSION#v}")
  -X k8s.io/component-base/version.gitMinor=$kube_minor
  -X k8s.io/component-base/version.gitTreeState=clean
  -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z
  -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION
  -X k8s.io/client-go/pkg/version.gitMajor=$(cut -d. -f1 <<<"${KUBERNETES_VERSION#v}")
  -X k8s.io/client-go/pkg/version.gitMinor=$kube_minor"
# No replace directives: `go install` at the pin, with the version string upstream's
# scripts/build sets.
build_local_path_provisioner() {
  local version=$LOCAL_PATH_PROVISIONER_VERSION
  GOBIN="$work" run_go "local-path-provisioner" \
    "$(module_dir "github.com/rancher/local-path-provisioner@$version")" . install -trimpath \
    -ldflags "-s -w -X main.VERSION=$version" "github.com/rancher/local-path-provisioner@$version"
  rm -f "$bin_dir"/.local-path-provisioner-*
  mv -f "$work/local-path-provisioner" "$bin_dir/"
  touch "$provisioner_stamp"
  "$bin_dir/local-path-provisioner" --version >>"$log" 2>&1
}

# No replace directives either; the version and build date by ldflags, as its Makefile sets
# them (it prints them on stderr).
build_kube_router() {
  local version=$KUBE_ROUTER_VERSION module=github.com/cloudnativelabs/kube-router/v2
  GOBIN="$work" run_go "kube-router" "$(module_dir "$module@$version")" ./cmd/kube-router install \
    -trimpath -ldflags "-s -w -X $module/pkg/version.Version=$version
    -X $module/pkg/version.BuildDate=1970-01-01T00:00:00Z" "$module/cmd/kube-router@$version"
  rm -f "$bin_dir"/.kube-router-*
  mv -f "$work/kube-router" "$bin_dir/"
  touch "$kube_router_stamp"
  "$bin_dir/kube-router" --version >>"$log" 2>&1
}

if (( build_all == 0 )); then
  if (( only_kubectl )); then
    say "kubectl on PATH is missing or more than one minor away from $KUBERNETES_VERSION: building kubectl"
    (cd "$here/go/kubernetes" &&
      run_go "kubectl" . k8s.io/kubernetes/cmd/kubectl build -trimpath -ldflags "$kube_ldflags" \
        -o "$work/kubectl" k8s.io/kubernetes/cmd/kubectl)
    mv -f "$work/kubectl" "$bin_dir/kubectl"
    "$bin_dir/kubectl" version --client >>"$log" 2>&1
  fi
  if (( build_provisioner )); then
    say "building local-path-provisioner $LOCAL_PATH_PROVISIONER_VERSION into $bin_dir (log: $shown_log)"
    build_local_path_provisioner
  fi
  if (( build_kube_router )); then
    say "building kube-router $KUBE_ROUTER_VERSION into $bin_dir (log: $shown_log)"
    build_kube_router
  fi
  exit 0
fi

t0=$SECONDS
say "building the cluster binaries into $bin_dir (the first build takes many minutes; later runs reuse Go's caches; log: $shown_log)"
kube_pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
if (( need_kubectl )); then
  say "kubectl on PATH is missing or more than one minor away from $KUBERNETES_VERSION: building kubectl too"
  kube_pkgs+=(k8s.io/kubernetes/cmd/kubectl)
fi
say "[1/7] kubernetes $KUBERNETES_VERSION: ${kube_pkgs[*]##*/}"
(cd "$here/go/kubernetes" &&
  run_go "kubernetes" . "${kube_pkgs[*]}" build -trimpath -ldflags "$kube_ldflags" -o "$work/" "${kube_pkgs[@]}")

say "[2/7] etcd $ETCD_VERSION"
(cd "$here/go/etcd" &&
  run_go "etcd" . go.etcd.io/etcd/server/v3 build -trimpath -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3)

say "[3/7] kwok, kwokctl $KWOK_VERSION"
kwok_ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}
  -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"
kwok_src=$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")
GOBIN="$work" run_go "kwok" "$kwok_src" "./cmd/kwok ./cmd/kwokctl" install -trimpath -ldflags "$kwok_ldflags" \
  "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"

say "[4/7] helm $HELM_VERSION"
helm_src=$(module_dir "helm.sh/helm/v3@$HELM_VERSION")
# helm's default .Capabilities.KubeVersion is the client-go it was built with: 0.N -> 1.N,
# as helm's Makefile derives it.
helm_kube_minor=$(sed -n 's|^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*|\1|p' "$helm_src/go.mod")
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION
  -X helm.sh/helm/v3/internal/version.gitTreeState=clean
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$helm_kube_minor
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$helm_kube_minor"
GOBIN="$work" run_go "helm" "$helm_src" ./cmd/helm install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

say "[5/7] coredns $COREDNS_VERSION, crictl $CRICTL_VERSION, pause $PAUSE_VERSION (the pod sandbox)"
coredns_src=$(module_dir "github.com/coredns/coredns@$COREDNS_VERSION")
GOBIN="$work" run_go "coredns" "$coredns_src" . install -trimpath \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
  "github.com/coredns/coredns@$COREDNS_VERSION"
GOBIN="$work" run_go "crictl" "$(module_dir "sigs.k8s.io/cri-tools@$CRICTL_VERSION")" ./cmd/crictl install \
  -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
  "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
kube_src=$(cd "$here/go/kubernetes" && module_dir "k8s.io/kubernetes@$KUBERNETES_VERSION")
{ gcc -Os -static -Wall -Werror -DVERSION="$PAUSE_VERSION" -o "$work/pause" "$kube_src/build/pause/linux/pause.c" &&
  strip "$work/pause"; } >>"$log" 2>&1 || die_see_log "building pause failed"

rm -f "$part" "$bin_dir"/.built-*
mv -f "$work"/* "$bin_dir/"
touch "$stamp"
if (( build_provisioner )); then
  say "[6/7] local-path-provisioner $LOCAL_PATH_PROVISIONER_VERSION (the real node's PersistentVolumes)"
  build_local_path_provisioner
else
  say "[6/7] local-path-provisioner $LOCAL_PATH_PROVISIONER_VERSION: up to date"
fi
if (( build_kube_router )); then
  say "[7/7] kube-router $KUBE_ROUTER_VERSION (the real node's NetworkPolicies)"
  build_kube_router
else
  say "[7/7] kube-router $KUBE_ROUTER_VERSION: up to date"
fi
{
  for b in kube-apiserver kubelet etcd kwokctl coredns; do
    printf '%-15s %s\n' "$b" "$("$bin_dir/$b" --version 2>&1 | head -n1)"
  done
  printf '%-15s %s\n' helm "$("$bin_dir/helm" version --short)"
} >>"$log"
say "cluster binaries ready in $bin_dir ($((SECONDS - t0)) s; their versions: $shown_log)"
