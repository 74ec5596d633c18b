"""The test control plane is the one ``tests/tools/kube/go.mod`` pins, and its authorizer is RBAC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.fixtures.control_plane import ControlPlane, pinned_version


def test_the_api_server_is_the_pinned_release(control_plane: ControlPlane) -> None:
    with config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig)) as admin:
        version = client.VersionApi(admin).get_code()
    assert version.git_version == pinned_version("k8s.io/kubernetes")
    assert (version.major, version.minor) == ("1", pinned_version("k8s.io/kubernetes").split(".")[1])


def test_a_service_account_without_a_role_is_refused(control_plane: ControlPlane, tmp_path: Path) -> None:
    """Through a kubeconfig, as kubectl would: the token is real, the authorizer says no."""
    control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nobody"}},
                         {"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": {"name": "nobody", "namespace": "nobody"}}])  # fmt: skip
    kubeconfig = control_plane.service_account_kubeconfig(tmp_path / "kubeconfig", "nobody", "nobody")
    with config.new_client_from_config(config_file=str(kubeconfig)) as as_nobody, \
            pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(as_nobody).list_namespaced_pod("nobody")
    assert refused.value.status == 403
    said = json.loads(refused.value.body)["message"]
    assert 'User "system:serviceaccount:nobody:nobody" cannot list resource "pods"' in said
