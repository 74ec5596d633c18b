#!/usr/bin/env bash
# Builds the real control plane the cluster tests run against: kube-apiserver from the k8s.io/kubernetes
# module and etcd from go.etcd.io/etcd/server/v3, at the versions tests/tools/kube/go.mod pins (its
# `replace` lines pin every k8s.io staging module to the release matching k8s.io/kubernetes, whose own
# go.mod names them v0.0.0). Each binary is cached at ~/.cache/abflow/bin/<name>-<version>, so a
# machine builds a version once and later runs return at once.
#
# Measured on 2 cores, Go 1.26.8, nothing else running: cold (empty module and build caches, every
# module fetched from the proxy) 330 s wall for both binaries (kube-apiserver ≈ 100 MB, etcd ≈ 26 MB);
# on cores shared with other builds (load ≈ 10) it took 13 min 52 s. Warm (binaries cached) 0.05 s.
set -euo pipefail
cd "$(dirname "$0")/.."

go_bin="${GO:-/usr/local/go/bin/go}"
module_dir=tests/tools/kube
bin_dir="${XDG_CACHE_HOME:-$HOME/.cache}/abflow/bin"

# The versions come from the wrapper's go.mod, the one place they are written down.
pinned() { awk -v mod="$1" '$1 == "require" { $1 = "" ; $0 = $0 } $1 == mod { print $2; exit }' "$module_dir/go.mod"; }
kube_version="$(pinned k8s.io/kubernetes)"
etcd_version="$(pinned go.etcd.io/etcd/server/v3)"
if [ -z "$kube_version" ] || [ -z "$etcd_version" ]; then
  echo "build-kube.sh: $module_dir/go.mod pins no k8s.io/kubernetes or go.etcd.io/etcd/server/v3" >&2
  exit 1
fi

build() {  # build <name> <version> <package> [ldflags…]
  local name="$1" version="$2" package="$3" ldflags="-s -w ${4:-}"
  local dest="$bin_dir/$name-$version"
  if [ -x "$dest" ]; then
    echo "== $name $version: cached at $dest"
    return
  fi
  echo "== go build $name $version"
  mkdir -p "$bin_dir"
  # Built beside its destination and renamed into place, so an interrupted build never leaves a
  # half-written binary that a later run would take for a cached one.
  local tmp
  tmp="$(mktemp "$dest.XXXXXX")"
  (cd "$module_dir" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS='-mod=readonly -buildvcs=false' \
    "$go_bin" build -p 2 -trimpath -ldflags="$ldflags" -o "$tmp" "$package") \
    || { rm -f "$tmp"; exit 1; }
  mv "$tmp" "$dest"
}

minor="${kube_version#v1.}"
minor="${minor%%.*}"
# kube-apiserver reports these at /version; without them it claims v0.0.0-master.
build kube-apiserver "$kube_version" k8s.io/kubernetes/cmd/kube-apiserver \
  "-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
build etcd "$etcd_version" go.etcd.io/etcd/server/v3
