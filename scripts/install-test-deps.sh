#!/usr/bin/env bash
# Debian tools the tests drive for real (load generator, daemonless image builder, base-image maker,
# local registry, metrics server) and the Python package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(hey buildah debootstrap docker-registry prometheus)
missing=()
for pkg in "${debs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== pip install -e .[test]"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
bash scripts/build-kube.sh  # etcd and kube-apiserver for tests/cluster, built once per version
bash scripts/build-kfp-compiler.sh  # the KFP backend's Argo compiler, built once per KFP release
bash scripts/build-seldon-operator.sh  # Seldon Core v1's operator, built once per release
