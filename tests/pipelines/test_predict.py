"""``abflow predict`` takes the URL ``abflow run`` prints, and a 401 says how to authenticate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from abflow.pipelines.cli import main
from tests.fixtures.serving import ServedGraph


@pytest.mark.parametrize("suffix", ["", "/", "/api/v1.0/predictions", "/api/v1.0/predictions/",
                                    "/api/v0.1/predictions"])
def test_predict_takes_a_base_url_or_the_predictions_url(tutorial_ab: ServedGraph, suffix: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--url", tutorial_ab.url + suffix, "--token", tutorial_ab.get_token()]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["data"]["names"] == ["iris-setosa", "iris-versicolor", "iris-virginica"]


def test_a_401_names_the_token_flag_and_where_to_get_a_token(tutorial_ab: ServedGraph) -> None:
    result = subprocess.run([sys.executable, "-m", "abflow.pipelines.cli", "predict", "--url",
                             f"{tutorial_ab.url}/api/v1.0/predictions"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stderr.splitlines()[0])["status"]["code"] == 401
    assert "pass a bearer token with --token TOKEN" in result.stderr
    assert f"grant_type=client_credentials {tutorial_ab.url}/oauth/token" in result.stderr


def test_a_refused_token_says_so(tutorial_ab: ServedGraph, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--url", tutorial_ab.url, "--token", "not-a-token"]) == 1
    err = capsys.readouterr().err
    assert "that token was refused: get a new one" in err and "--token TOKEN" not in err
