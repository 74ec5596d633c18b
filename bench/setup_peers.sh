#!/usr/bin/env bash
# Install the two peer servers that bench/serving_bench.py measures abflow against, each in its own venv
# under bench/.venvs/, so neither ever becomes a dependency of abflow (Seldon Core >= 1.18 is under the
# Business Source License; we measure against it, we never ship it).
#
#   bash bench/setup_peers.sh          # idempotent: a venv whose pins have not changed is left alone
#   PYTHON=python3.11 bash bench/setup_peers.sh
#
# Both venvs get the scikit-learn and joblib versions of the interpreter that trains the model, so the
# very same model.joblib loads everywhere. numpy matches too where the peer allows it: seldon-core
# 1.18.2 requires numpy<2, so its venv gets the newest numpy 1.x (scikit-learn's wheels support both).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
venvs="$here/.venvs"

versions="$("$python" -c 'import joblib, numpy, sklearn; print(sklearn.__version__, joblib.__version__, numpy.__version__)')"
read -r sklearn_version joblib_version numpy_version <<<"$versions"
model_pins=("scikit-learn==$sklearn_version" "joblib==$joblib_version")

# make_venv NAME PACKAGE... : (re)create bench/.venvs/NAME unless it already holds exactly these pins.
make_venv() {
    local name="$1"
    shift
    local dir="$venvs/$name"
    local stamp="$dir/.bench-pins"
    local wanted="$* | $("$python" --version 2>&1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
        echo "bench/.venvs/$name is up to date ($*)"
        return
    fi
    echo "creating bench/.venvs/$name: $*"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip
    "$dir/bin/python" -m pip install --quiet "$@"
    printf '%s' "$wanted" >"$stamp"
}

# (a) The Seldon Core v1 Python wrapper, as the tutorial's s2i image runs it. setuptools<81 keeps the
# pkg_resources module its entry point still imports.
make_venv seldon "seldon-core==1.18.2" "setuptools<81" "numpy<2" "${model_pins[@]}"

# (b) MLServer with its scikit-learn runtime.
make_venv mlserver "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "numpy==$numpy_version" "${model_pins[@]}"

"$venvs/seldon/bin/seldon-core-microservice" --help >/dev/null
"$venvs/mlserver/bin/mlserver" --help >/dev/null
echo "peers ready: $venvs/seldon/bin/seldon-core-microservice, $venvs/mlserver/bin/mlserver"
