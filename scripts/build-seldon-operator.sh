#!/usr/bin/env bash
# Builds Seldon Core v1's operator (the controller that turns a SeldonDeployment into Deployments and
# Services) from its Go module, github.com/seldonio/seldon-core/operator, at the release
# tests/tools/seldon-operator/VERSION names. Cached at ~/.cache/abflow/bin/seldon-operator-<release>, so
# a machine builds a release once and later runs return at once.
#
# Which release: Apache-2.0 ones only (1.18 and later are under the Business Source License). The
# module is tagged operator/v<release> for some releases; the Go module proxy serves operator/v1.16.0,
# not 1.17.x (Seldon tagged 1.17.x on the repository only, and the proxy answers no commit or tag
# query, only exact pseudo-versions). The operator's go.mod has replace lines, which `go install
# module@version` refuses, so it is built inside the downloaded module, with its own go.sum.
#
# Measured on 2 cores, Go 1.26.8, nothing else running, after build-kube.sh and build-kfp-compiler.sh on
# empty caches (they share k8s.io modules): 77 s; beside another Go build 259 s. Warm (binary cached)
# ≈ 0.05 s.
set -euo pipefail
cd "$(dirname "$0")/.."

go_bin="${GO:-/usr/local/go/bin/go}"
release="$(tr -d '[:space:]' < tests/tools/seldon-operator/VERSION)"
module="github.com/seldonio/seldon-core/operator@v$release"
bin_dir="${XDG_CACHE_HOME:-$HOME/.cache}/abflow/bin"
dest="$bin_dir/seldon-operator-$release"

if [ -x "$dest" ]; then
  echo "== seldon-operator $release: cached at $dest"
  exit 0
fi
echo "== go build seldon-operator $release"
dir="$(GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go_bin" mod download -json "$module" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
mkdir -p "$bin_dir"
# Built beside its destination and renamed into place, so an interrupted build never leaves a
# half-written binary that a later run would take for a cached one.
tmp="$(mktemp "$dest.XXXXXX")"
(cd "$dir" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
  "$go_bin" build -p 2 -trimpath -ldflags='-s -w' -o "$tmp" .) \
  || { rm -f "$tmp"; exit 1; }
mv "$tmp" "$dest"
