#!/usr/bin/env bash
# Builds kfp-argo-compile (tests/tools/kfp-compile): the Kubeflow Pipelines backend's own Argo compiler
# behind a small main, at the KFP release tests/tools/kfp-compile/KFP_VERSION names (its go.mod pins
# the matching commit). Cached at ~/.cache/abflow/bin/kfp-argo-compile-<release>, so a machine builds a
# release once and later runs return at once; a change to the main or its go.mod/go.sum rebuilds it.
#
# Measured on 2 cores, Go 1.26.8, nothing else running, right after build-kube.sh on empty caches (it
# shares some modules and packages with it): 85 s; beside another Go build, caches empty, 418 s. Warm
# (binary cached) ≈ 0.05 s.
set -euo pipefail
cd "$(dirname "$0")/.."

go_bin="${GO:-/usr/local/go/bin/go}"
module_dir=tests/tools/kfp-compile
bin_dir="${XDG_CACHE_HOME:-$HOME/.cache}/abflow/bin"
release="$(tr -d '[:space:]' < "$module_dir/KFP_VERSION")"
dest="$bin_dir/kfp-argo-compile-$release"
# What the binary was built from: a cached binary of the same release but other sources is rebuilt.
sources="$(cat "$module_dir/main.go" "$module_dir/go.mod" "$module_dir/go.sum" | sha256sum | cut -d' ' -f1)"

if [ -x "$dest" ] && [ "$(cat "$dest.sources" 2>/dev/null)" = "$sources" ]; then
  echo "== kfp-argo-compile $release: cached at $dest"
  exit 0
fi
echo "== go build kfp-argo-compile $release"
mkdir -p "$bin_dir"
# Built beside its destination and renamed into place, so an interrupted build never leaves a
# half-written binary that a later run would take for a cached one.
tmp="$(mktemp "$dest.XXXXXX")"
(cd "$module_dir" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
  "$go_bin" build -p 2 -trimpath -ldflags='-s -w' -o "$tmp" .) \
  || { rm -f "$tmp"; exit 1; }
mv "$tmp" "$dest"
echo "$sources" > "$dest.sources"
