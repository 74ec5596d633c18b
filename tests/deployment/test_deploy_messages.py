"""What a failed local deploy says about what still serves: only what really runs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.local_target import DeployError, current_deployment, deploy_local, stop_local
from abflow.serving.artifact import MODEL_FILE
from tests.fixtures.processes import free_port


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deploy"
    yield root
    stop_local(root)


def test_a_failed_deploy_does_not_claim_a_stopped_release_keeps_serving(state_root: Path, iris_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    corrupt = Path(shutil.copytree(iris_model_dir, tmp_path / "corrupt"))
    (corrupt / MODEL_FILE).write_bytes(b"not the model its metadata.json vouches for")
    port = free_port()
    first = deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir), ratio_a=1.0,
                         state_root=state_root, port=port)
    stop_local(state_root)  # its processes are gone; the pointers stay
    with pytest.raises(DeployError) as failed:
        deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(corrupt), ratio_a=0.5,
                     state_root=state_root, port=port)
    message = str(failed.value)
    assert "release 1, deployed before, is not running either" in message
    assert "keeps serving" not in message
    assert current_deployment(state_root) == first
