"""Cluster manifests for the ``seldon`` deploy target: the SeldonDeployment and the RBAC it needs.

The SeldonDeployment starts from ``abflow.serving.graph.to_seldon_deployment`` — the same graph object the
local executor runs — and only adds what a real cluster needs on top (namespace, labels, the serving
image or Seldon's SKLEARN_SERVER, probes, resources, routing injection). So the graph users test on
a laptop and the one applied to the cluster cannot drift.

``python -m abflow.components.seldon_manifests --write manifests/`` regenerates the checked-in examples under
``manifests/``; a test fails when they are stale.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from abflow.serving.graph import (
    HEADER_UNIT,
    RANDOM_ABTEST,
    Graph,
    ModelNode,
    RouterNode,
    ab_graph,
    render_router_node,
    single_model_graph,
    to_seldon_deployment,
)

SELDON_API_VERSION = "machinelearning.seldon.io/v1"
SELDON_GROUP = "machinelearning.seldon.io"
SELDON_PLURAL = "seldondeployments"
DEFAULT_NAMESPACE = "seldon"
DEFAULT_SERVICE_ACCOUNT = "abflow-pipeline-runner"
ROLE_NAME = "abflow-seldon-deployer"
MANAGED_BY = {"app.kubernetes.io/managed-by": "abflow", "app.kubernetes.io/part-of": "abflow"}

# Seldon v1's service orchestrator only writes ``meta.routing`` into responses when this is set;
# the smoke test and the per-arm report depend on it.
ROUTING_INJECTION_ENV = {"name": "SELDON_ENABLE_ROUTING_INJECTION", "value": "true"}

# How abflow's serving image is started: the model to load and the port Seldon expects a MODEL on.
SERVING_PORT = 9000
# The serving image's entry point runs a model server; a router node runs the router server instead.
ROUTER_COMMAND = ("python3", "-m", "abflow.serving.routerserver")
ROUTER_STATE_VOLUME = "router-state"
ROUTER_STATE_DIR = "/var/lib/abflow/router"
SERVING_PORT_NAME = "http"
READINESS_PATH = "/ready"
LIVENESS_PATH = "/health/ping"

# Requests are what the iris model measurably needs plus headroom; limits stop a runaway pod from
# starving its node. Memory matters more than CPU for a joblib-loaded sklearn model.
MODEL_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}
ORCHESTRATOR_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}

# What the deploy target calls, and nothing else. Each entry: API group, resource, verbs, and why.
RBAC_RULES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (
        SELDON_GROUP,
        SELDON_PLURAL,
        ("get", "create", "patch", "delete"),
        "get: read the current spec (kept for rollback) and poll status; create: first deploy; "
        "patch: redeploy and roll back to the previous spec (server-side apply); delete: roll back a first deploy",
    ),
    (
        "apps",
        "deployments",
        ("list",),
        "list: wait until the operator's Deployments run the new pods only (Seldon v1 stays Available during a "
        "rolling update)",
    ),
    ("", "pods", ("list",), "list: name the waiting/terminated reasons of the deployment's pods on timeout"),
    ("", "events", ("list",), "list: show the operator's events for the deployment on timeout"),
)


def render_seldon_deployment(
    graph: Graph,
    *,
    image: str | None,
    namespace: str,
    service_account: str | None = None,
    experiment_id: str = "",
    router_state_claim: str | None = None,
) -> dict[str, Any]:
    """The SeldonDeployment (``machinelearning.seldon.io/v1``) the ``seldon`` target applies.

    With ``image`` (or an image on the graph's node), every MODEL node runs abflow's serving image,
    one pod per arm (each on port 9000, so arms cannot collide), loading its model URI. Without it,
    the nodes use Seldon's prepackaged ``SKLEARN_SERVER`` with ``modelUri`` (the artifact layout
    keeps its ``model.joblib`` convention). ``service_account`` is the pods' identity for reading
    ``gs://`` models. ``experiment_id`` (the experiment the deployment serves) becomes each predictor's
    ``version`` annotation and label, which Seldon's orchestrator and model containers put on their
    metrics as ``predictor_version``: how ``components/prometheus_outcomes.py`` tells this
    experiment's series from the previous one's. ``router_state_claim`` names a PersistentVolumeClaim
    that a sticky or bandit router (abflow's router server) keeps its outcome ledger on, so a bandit
    restarted or rescheduled resumes what it learned; the ledger is kept per experiment, so it needs
    ``experiment_id``.
    """
    if router_state_claim and not experiment_id:
        raise ValueError("a router's state on a volume is kept per experiment: give the experiment id "
                         "(abflow render --experiment ID) with the claim")
    manifest = to_seldon_deployment(graph)
    node_images = {node.name: node.image for node in graph.model_nodes() if node.image}
    manifest["apiVersion"] = SELDON_API_VERSION
    metadata = manifest.setdefault("metadata", {})
    metadata["namespace"] = namespace
    metadata["labels"] = {**metadata.get("labels", {}), **MANAGED_BY}
    for predictor in manifest["spec"]["predictors"]:
        predictor["replicas"] = predictor.get("replicas", 1)
        if experiment_id:
            for key in ("annotations", "labels"):
                predictor[key] = {**predictor.get(key, {}), "version": experiment_id}
        predictor["svcOrchSpec"] = {
            "env": [dict(ROUTING_INJECTION_ENV)],
            "resources": copy.deepcopy(ORCHESTRATOR_RESOURCES),
        }
        predictor["componentSpecs"] = [
            _serve_node(node, image or node_images.get(node["name"]), service_account)
            for node in _model_nodes(predictor["graph"])
        ]
        if graph.router is not None and needs_router_server(graph.router) and not predictor.get("shadow"):
            router_image = image or next(iter(node_images.values()), None)
            router_pod = _serve_router(predictor["graph"], graph.router, router_image, graph.name, experiment_id,
                                       router_state_claim)
            predictor["componentSpecs"].append(router_pod)
    return manifest


def needs_router_server(router: RouterNode) -> bool:
    """Seldon v1's own RANDOM_ABTEST is a coin flip; a sticky split or a bandit is abflow's router
    server (``abflow.serving.routerserver``) in a ``type: ROUTER`` node, driven by the orchestrator."""
    return router.implementation != RANDOM_ABTEST or router.unit is not None


def _serve_router(node: dict[str, Any], router: RouterNode, image: str | None, graph_name: str,
                  experiment_id: str, state_claim: str | None = None) -> dict[str, Any]:
    """Rewrite the router node as a custom ROUTER on abflow's image and return its pod: one replica, so
    one state learns from every feedback (Seldon's orchestrator sends each to the router that chose).
    The experiment id, when there is one, salts a sticky split as it does under ``abflow serve``;
    ``state_claim`` mounts a PersistentVolumeClaim for the router's outcome ledger."""
    if image is None:
        raise ValueError(f"router {router.name!r} ({router.implementation}{', sticky' if router.unit else ''}) runs "
                         "abflow's router server, which needs abflow's serving image: pass --image")
    if router.unit_source is not None and router.unit_source[0] == HEADER_UNIT:
        raise ValueError(f"router {router.name!r} is sticky by {router.unit}, but Seldon v1's orchestrator passes "
                         "no request headers to a router: make the unit a meta.tags key (tag:KEY) for the cluster")
    # The router only needs its children's names and order: their models live in their own pods.
    first, second = (ModelNode(child.name, None, None, None) for child in router.children)
    bare = dataclasses.replace(router, children=(first, second))
    args = ["--node", json.dumps(render_router_node(bare), separators=(",", ":")), "--graph-name", graph_name,
            "--host", "0.0.0.0", "--port", str(SERVING_PORT)]
    if experiment_id:
        args += ["--experiment", experiment_id]
    if state_claim:
        args += ["--state-dir", ROUTER_STATE_DIR]
    for key in ("implementation", "parameters"):
        node.pop(key, None)
    node["type"] = "ROUTER"
    node["endpoint"] = {"type": "REST", "httpPort": SERVING_PORT}
    container = {
        "name": router.name,
        "image": image,
        "command": list(ROUTER_COMMAND),
        "args": args,
        "ports": [{"name": SERVING_PORT_NAME, "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe(READINESS_PATH, initial_delay=2),
        "livenessProbe": _probe(LIVENESS_PATH, initial_delay=5),
        "resources": copy.deepcopy(ORCHESTRATOR_RESOURCES),
    }
    pod: dict[str, Any] = {"containers": [container]}
    if state_claim:
        container["volumeMounts"] = [{"name": ROUTER_STATE_VOLUME, "mountPath": ROUTER_STATE_DIR}]
        pod["volumes"] = [{"name": ROUTER_STATE_VOLUME, "persistentVolumeClaim": {"claimName": state_claim}}]
    return {"spec": pod, "replicas": 1}


def render_rbac(
    namespace: str,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    *,
    runner_namespace: str | None = None,
) -> list[dict[str, Any]]:
    """ServiceAccount, namespaced Role and RoleBinding letting pipeline runs deploy, and no more.

    The Role lives in ``namespace`` (where SeldonDeployments go); the ServiceAccount in
    ``runner_namespace`` (where KFP runs its pods, e.g. ``kubeflow``), defaulting to ``namespace``.
    No ClusterRole: the deploy step never needs cluster-wide rights, unlike the tutorial's tiller.
    """
    runner_namespace = runner_namespace or namespace
    service_account_doc = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": service_account, "namespace": runner_namespace, "labels": dict(MANAGED_BY)},
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": ROLE_NAME,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {f"abflow/why-{resource}": why for _, resource, _, why in RBAC_RULES},
        },
        "rules": [
            {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for group, resource, verbs, _ in RBAC_RULES
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ROLE_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE_NAME},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": runner_namespace}],
    }
    return [service_account_doc, role, binding]


def render_all(
    graph: Graph,
    *,
    image: str | None,
    namespace: str,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    runner_namespace: str | None = None,
    model_service_account: str | None = None,
    experiment_id: str = "",
    router_state_claim: str | None = None,
) -> list[dict[str, Any]]:
    """Everything the ``seldon`` target needs, SeldonDeployment first, in ``kubectl apply`` order."""
    deployment = render_seldon_deployment(
        graph, image=image, namespace=namespace, service_account=model_service_account, experiment_id=experiment_id,
        router_state_claim=router_state_claim,
    )
    return [deployment, *render_rbac(namespace, service_account, runner_namespace=runner_namespace)]


def to_yaml(documents: Iterable[Mapping[str, Any]]) -> str:
    """Multi-document YAML in the order given, keys in rendering order (readable in review)."""
    return "---\n".join(yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False) for doc in documents)


def _model_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The leaf (MODEL) nodes of a rendered graph, as the very dicts inside it, so they can be edited."""
    children = node.get("children") or []
    if not children:
        return [node]
    return [leaf for child in children for leaf in _model_nodes(child)]


def _serve_node(node: dict[str, Any], image: str | None, service_account: str | None) -> dict[str, Any]:
    """Rewrite one MODEL node for how it is served and return its pod (one pod per arm)."""
    container: dict[str, Any] = {"name": node["name"]}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if image is not None:
        model_uri = node.pop("modelUri", None)
        if not model_uri:
            raise ValueError(f"MODEL node {node['name']!r} has no model URI: build the graph with one URI per arm")
        # A custom MODEL container: Seldon must not also treat it as a prepackaged server.
        node.pop("implementation", None)
        node["type"] = "MODEL"
        node["endpoint"] = {"type": "REST", "httpPort": SERVING_PORT}
        container.update(
            image=image,
            args=serving_args(node["name"], model_uri, image),
            ports=[{"name": SERVING_PORT_NAME, "containerPort": SERVING_PORT, "protocol": "TCP"}],
            readinessProbe=_probe(READINESS_PATH, initial_delay=5),
            livenessProbe=_probe(LIVENESS_PATH, initial_delay=15),
        )
    elif service_account is not None:
        # The prepackaged server's storage initializer downloads modelUri with the node's account.
        node["serviceAccountName"] = service_account
    container["resources"] = copy.deepcopy(MODEL_RESOURCES)
    if service_account is not None:
        pod_spec["serviceAccountName"] = service_account
    return {"spec": pod_spec}


def serving_args(node_name: str, model_uri: str, image: str) -> list[str]:
    """``python -m abflow.serving.modelserver`` arguments: all interfaces (the orchestrator is in another
    pod), Seldon's MODEL port, and the node name and image reported in ``meta.requestPath``."""
    return [
        "--model", model_uri,
        "--host", "0.0.0.0",
        "--port", str(SERVING_PORT),
        "--name", node_name,
        "--image", image,
    ]  # fmt: skip


def _probe(path: str, *, initial_delay: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": SERVING_PORT_NAME},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": 5,
        "failureThreshold": 3,
    }


# The checked-in examples under manifests/: what a reviewer or a GitOps repo starts from.
EXAMPLE_NAMESPACE = DEFAULT_NAMESPACE
EXAMPLE_RUNNER_NAMESPACE = "kubeflow"
EXAMPLE_IMAGE = "registry.example.com/ml/iris-server:3f2a9c0d1e2f"
EXAMPLE_MODEL_A = "gs://abflow-models/models/iris/v1"
EXAMPLE_MODEL_B = "gs://abflow-models/models/iris/v2"
GENERATED_HEADER = "# Generated by `python -m abflow.components.seldon_manifests --write manifests/`; do not edit.\n"


def example_manifests() -> dict[str, str]:
    """Relative path under ``manifests/`` → file content, all rendered by the functions above."""
    ab = ab_graph("iris-ab", EXAMPLE_MODEL_A, EXAMPLE_MODEL_B, 0.5)
    single = single_model_graph("iris", EXAMPLE_MODEL_A)
    service_account, role, binding = render_rbac(EXAMPLE_NAMESPACE, runner_namespace=EXAMPLE_RUNNER_NAMESPACE)
    ab_doc = render_seldon_deployment(ab, image=EXAMPLE_IMAGE, namespace=EXAMPLE_NAMESPACE)
    single_doc = render_seldon_deployment(single, image=None, namespace=EXAMPLE_NAMESPACE)
    files = {
        "seldon/ab-test.yaml": [ab_doc],
        "seldon/single-model.yaml": [single_doc],
        "rbac/serviceaccount.yaml": [service_account],
        "rbac/role.yaml": [role],
        "rbac/rolebinding.yaml": [binding],
    }
    # RBAC only: `kubectl apply -k manifests/` must never replace a SeldonDeployment that serves.
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["rbac/serviceaccount.yaml", "rbac/role.yaml", "rbac/rolebinding.yaml"],
    }
    rendered = {path: GENERATED_HEADER + to_yaml(docs) for path, docs in files.items()}
    rendered["kustomization.yaml"] = GENERATED_HEADER + to_yaml([kustomization])
    return rendered


def write_examples(root: Path) -> list[Path]:
    written = []
    for relative, content in example_manifests().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m abflow.components.seldon_manifests",
        description="Regenerate the example cluster manifests (SeldonDeployments, RBAC, kustomization).",
    )
    parser.add_argument("--write", metavar="DIR", type=Path, required=True, help="e.g. manifests/")
    args = parser.parse_args(argv)
    for path in write_examples(args.write):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
