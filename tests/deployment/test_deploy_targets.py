"""The target dispatch the deploy-ab and smoke-test steps go through (the local path runs for real in
tests/pipelines/test_end_to_end.py)."""

import json

import pytest

from abflow.components.deploy_targets import deploy, rollback


def test_an_unknown_target_is_named_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown deploy target 'kserve': use one of local, seldon"):
        deploy("kserve", model_a_uri="a", model_b_uri="b", ratio_a=0.5, image="", namespace="ns", name="iris-ab",
               local_state_dir="/tmp/unused", local_port=8000)


def test_a_record_of_an_unknown_target_cannot_be_rolled_back() -> None:
    with pytest.raises(ValueError, match="target 'kserve'"):
        rollback(json.dumps({"target": "kserve", "name": "iris-ab", "endpoint": "http://x"}))
