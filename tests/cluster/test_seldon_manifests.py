"""The cluster manifests, checked against the real schemas no API server is here to enforce.

SeldonDeployments are validated against the openAPIV3Schema of Seldon Core's own CRD (copied into
tests/data/crds with its provenance) for the version named in their apiVersion. That schema accepts
unknown fields, so each pod spec inside is also validated as a Pod, and the built-in kinds (RBAC),
with kubernetes-validate --strict against a Kubernetes version it bundles.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from abflow.components.seldon_manifests import (
    RBAC_RULES,
    ROUTING_INJECTION_ENV,
    SERVING_PORT,
    example_manifests,
    render_all,
    render_rbac,
    render_seldon_deployment,
)
from abflow.serving.graph import ab_graph, parse_graph, single_model_graph

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "tests/data/crds/seldondeployments.machinelearning.seldon.io.v1.17.1.yaml"
# A Kubernetes release both Seldon Core 1.17 and KFP 2.x run on, and that kubernetes-validate bundles.
K8S_VERSION = "1.28.0"
IMAGE = "registry.example.com/abflow/iris-server:3f2a9c"
URI_A = "gs://models/abflow/models/iris/v1"
URI_B = "gs://models/abflow/models/iris/v2"


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict[str, Any]]:
    # The C loader: the pure-Python one takes ~10 s on this 2.4 MB file.
    crd = yaml.load(CRD_PATH.read_text(), Loader=yaml.CSafeLoader)
    group = crd["spec"]["group"]
    return {f"{group}/{v['name']}": v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


def check_against_crd(manifest: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> None:
    schema = schemas[manifest["apiVersion"]]
    jsonschema.Draft7Validator(schema).validate(manifest)
    for predictor in manifest["spec"]["predictors"]:
        for i, component in enumerate(predictor.get("componentSpecs", [])):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"component-{i}"}}
            pod["spec"] = component["spec"]
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def rendered_variants() -> dict[str, dict[str, Any]]:
    ab = ab_graph("iris-ab", URI_A, URI_B, 0.3)
    return {
        "ab-image": render_seldon_deployment(ab, image=IMAGE, namespace="models"),
        "ab-sklearn-server": render_seldon_deployment(ab, image=None, namespace="models"),
        "ab-sklearn-server-sa": render_seldon_deployment(
            ab, image=None, namespace="models", service_account="model-reader"
        ),
        "single-image": render_seldon_deployment(
            single_model_graph("iris", URI_A), image=IMAGE, namespace="models", service_account="sa"
        ),
        "single-sklearn-server": render_seldon_deployment(
            single_model_graph("iris", URI_A), image=None, namespace="models"
        ),
    }


@pytest.mark.parametrize("variant", sorted(rendered_variants()))
def test_rendered_seldon_deployment_passes_the_crd_schema(variant: str, crd_schemas: dict) -> None:
    manifest = rendered_variants()[variant]
    assert manifest["apiVersion"] == "machinelearning.seldon.io/v1"
    check_against_crd(manifest, crd_schemas)


def test_the_validation_has_teeth(crd_schemas: dict) -> None:
    manifest = rendered_variants()["ab-image"]
    wrong_type = copy.deepcopy(manifest)
    wrong_type["spec"]["predictors"][0]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        check_against_crd(wrong_type, crd_schemas)
    typo = copy.deepcopy(manifest)
    typo["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        check_against_crd(typo, crd_schemas)


def test_ab_graph_keeps_ratio_and_routing_injection() -> None:
    manifest = rendered_variants()["ab-image"]
    predictor = manifest["spec"]["predictors"][0]
    assert predictor["svcOrchSpec"]["env"] == [ROUTING_INJECTION_ENV]
    router = predictor["graph"]
    assert router["implementation"] == "RANDOM_ABTEST"
    assert router["parameters"] == [{"name": "ratioA", "value": "0.3", "type": "FLOAT"}]
    parsed = parse_graph(manifest)
    assert parsed.router is not None and parsed.router.ratio_a == 0.3
    assert [n.image for n in parsed.model_nodes()] == [IMAGE, IMAGE]


def test_each_arm_on_the_serving_image_gets_its_own_pod_model_and_probes() -> None:
    predictor = rendered_variants()["ab-image"]["spec"]["predictors"][0]
    pods = [c["spec"]["containers"] for c in predictor["componentSpecs"]]
    assert [len(containers) for containers in pods] == [1, 1], "two arms on port 9000 must not share a pod"
    (arm_a,), (arm_b,) = pods
    common = ["--host", "0.0.0.0", "--port", str(SERVING_PORT)]
    assert arm_a["args"] == ["--model", URI_A, *common, "--name", "classifier-1", "--image", IMAGE]
    assert arm_b["args"] == ["--model", URI_B, *common, "--name", "classifier-2", "--image", IMAGE]
    for container in (arm_a, arm_b):
        assert container["image"] == IMAGE
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/ping"
        assert set(container["resources"]) == {"requests", "limits"}
    for child in predictor["graph"]["children"]:
        assert "implementation" not in child, "a custom container must not also be a prepackaged server"
        assert child["endpoint"] == {"type": "REST", "httpPort": SERVING_PORT}


def test_without_an_image_arms_use_sklearn_server_with_model_uri() -> None:
    manifest = rendered_variants()["ab-sklearn-server-sa"]
    children = manifest["spec"]["predictors"][0]["graph"]["children"]
    assert [(c["implementation"], c["modelUri"]) for c in children] == [
        ("SKLEARN_SERVER", URI_A),
        ("SKLEARN_SERVER", URI_B),
    ]
    assert {c["serviceAccountName"] for c in children} == {"model-reader"}
    assert [n.model_uri for n in parse_graph(manifest).model_nodes()] == [URI_A, URI_B]


def test_rbac_is_namespaced_least_privilege_and_strictly_valid() -> None:
    service_account, role, binding = render_rbac("models", runner_namespace="kubeflow")
    for document in (service_account, role, binding):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    assert [d["kind"] for d in (service_account, role, binding)] == ["ServiceAccount", "Role", "RoleBinding"]
    assert service_account["metadata"]["namespace"] == "kubeflow"
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "models"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "abflow-pipeline-runner", "namespace": "kubeflow"}
    ]
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert not any("*" in entry for entry in granted)
    assert granted == {(g, r, v) for g, r, verbs, _ in RBAC_RULES for v in verbs}
    assert all(role["metadata"]["annotations"][f"abflow/why-{r}"] for _, r, _, _ in RBAC_RULES)


def test_render_all_orders_deployment_then_rbac() -> None:
    documents = render_all(ab_graph("iris-ab", URI_A, URI_B, 0.5), image=IMAGE, namespace="models")
    assert [d["kind"] for d in documents] == ["SeldonDeployment", "ServiceAccount", "Role", "RoleBinding"]


def test_checked_in_manifests_are_current_and_valid(crd_schemas: dict) -> None:
    """Fails when manifests/ is stale: regenerate with the command named in each file's header."""
    expected = example_manifests()
    root = REPO / "manifests"
    on_disk = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.yaml")}
    regenerate = "python -m abflow.components.seldon_manifests --write manifests/"
    assert on_disk == expected, f"manifests/ is stale: run {regenerate}"
    for relative in ("seldon/ab-test.yaml", "seldon/single-model.yaml"):
        check_against_crd(yaml.safe_load(expected[relative]), crd_schemas)


def test_kubernetes_validate_cli_accepts_the_checked_in_rbac() -> None:
    """The same command a reviewer runs: kubernetes-validate works offline on its bundled schemas."""
    files = sorted(str(p) for p in (REPO / "manifests/rbac").glob("*.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3


def test_container_args_are_what_the_serving_image_entrypoint_parses() -> None:
    """The image runs ``python -m abflow.serving.modelserver``; its own parser must accept our args."""
    from abflow.serving.modelserver import parse_args

    container = rendered_variants()["ab-image"]["spec"]["predictors"][0]["componentSpecs"][1]["spec"]["containers"][0]
    args = parse_args(container["args"])
    assert (args.model, args.host, args.port, args.name, args.image) == (
        URI_B,
        "0.0.0.0",
        SERVING_PORT,
        "classifier-2",
        IMAGE,
    )
