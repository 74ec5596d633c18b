#!/usr/bin/env bash
# mypy --strict on abflow.serving and abflow.components. The folders are installed under the abflow
# namespace by a setuptools mapping that mypy cannot follow (an import hook), so mypy reads them through
# a throwaway view that lays the checkout out as the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
view=$(mktemp -d)
trap 'rm -rf "$view"' EXIT
mkdir "$view/abflow"
ln -s "$PWD/abflow/__init__.py" "$view/abflow/__init__.py"
for package in serving components pipelines; do
  ln -s "$PWD/$package" "$view/abflow/$package"
done
MYPYPATH="$view" python3 -m mypy --strict -p abflow.serving -p abflow.components
