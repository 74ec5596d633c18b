"""A test's own namespace on the real control plane, with abflow's RBAC, and the pipeline's runner.

The pipeline's ServiceAccount (``kubeflow/abflow-pipeline-runner``, as ``manifests/rbac/`` names it)
exists once per pytest run; each test gets a namespace of its own holding abflow's Role and RoleBinding,
applied by the admin from ``abflow render --rbac-only``, and a client that acts as that ServiceAccount
through a token from the TokenRequest API.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from abflow.components.seldon_manifests import (
    DEFAULT_SERVICE_ACCOUNT,
    RBAC_RULES,
    ROLE_NAME,
    SELDON_GROUP,
    SELDON_PLURAL,
)
from abflow.pipelines.cli import main
from tests.cluster.seldon_operator_standin import Scenario, SeldonOperatorStandIn
from tests.fixtures.control_plane import ControlPlane
from tests.fixtures.processes import wait_until

RUNNER_NAMESPACE = "kubeflow"
RUNNER = f"system:serviceaccount:{RUNNER_NAMESPACE}:{DEFAULT_SERVICE_ACCOUNT}"


@dataclass(frozen=True)
class Runner:
    """The pipeline's ServiceAccount: its token and a kubeconfig holding it."""

    token: str
    kubeconfig: Path


@dataclass
class Namespace:
    """A test's namespace, RBAC applied, with the operator stand-in's scenario for it."""

    name: str
    plane: ControlPlane
    runner: Runner
    operator: SeldonOperatorStandIn
    scenario: Scenario

    def runner_client(self) -> Any:
        return self.plane.api_client(self.runner.token)

    def stored(self, name: str = "iris-ab") -> dict[str, Any] | None:
        """The SeldonDeployment as the API server stores it (read by the admin), or None."""
        with self.plane.api_client() as admin:
            try:
                found: dict[str, Any] = client.CustomObjectsApi(admin).get_namespaced_custom_object(
                    SELDON_GROUP, "v1", self.name, SELDON_PLURAL, name
                )
            except client.ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        return found

    def clear(self) -> None:
        """Delete every SeldonDeployment and Deployment in the namespace (as the admin), and wait until
        the server lists none: a fixed-name namespace (``seldon``, where ``manifests/rbac`` points) is
        shared by every test that uses it in one control plane, and must not hand one test's
        ``iris-ab`` to the next."""
        with self.plane.api_client() as admin:
            custom = client.CustomObjectsApi(admin)
            custom.delete_collection_namespaced_custom_object(SELDON_GROUP, "v1", self.name, SELDON_PLURAL)
            client.AppsV1Api(admin).delete_collection_namespaced_deployment(self.name)
            wait_until(lambda: not custom.list_namespaced_custom_object(
                SELDON_GROUP, "v1", self.name, SELDON_PLURAL)["items"], what=f"namespace {self.name} to be empty")

    def deployments(self) -> list[dict[str, Any]]:
        """The Deployments the operator stand-in made, by name."""
        with self.plane.api_client() as admin:
            found = client.AppsV1Api(admin).list_namespaced_deployment(self.name, _preload_content=False)
        return sorted(json.loads(found.data)["items"], key=lambda d: d["metadata"]["name"])

    def rbac(self) -> list[dict[str, Any]]:
        """What ``abflow render --rbac-only`` prints for this namespace, as the docs tell users to apply."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            said = main(["render", "--rbac-only", "--namespace", self.name, "--runner-namespace", RUNNER_NAMESPACE])
        assert said == 0, f"abflow render --rbac-only exited {said}"
        return list(yaml.safe_load_all(printed.getvalue()))

    def grant(self, documents: list[dict[str, Any]]) -> None:
        """Apply RBAC ``documents`` as the admin and wait until the authorizer enforces the Role's rules
        (it reads RBAC objects from a cache the API server fills a moment later)."""
        self.plane.apply(documents)
        role = next(d for d in documents if d["kind"] == "Role")
        wanted = _rules(role["rules"])
        wait_until(lambda: self.rules() == wanted, timeout=10, what=f"Role {ROLE_NAME} enforced in {self.name}")

    def rules(self) -> set[tuple[str, str, str]]:
        """(verb, group, resource) the real authorizer grants the runner on the resources abflow's Role
        names, from a SelfSubjectRulesReview made as the runner."""
        review = client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=self.name))
        with self.runner_client() as runner:
            answer = client.AuthorizationV1Api(runner).create_self_subject_rules_review(review)
        granted = [{"verbs": r.verbs, "apiGroups": r.api_groups or [], "resources": r.resources or []}
                   for r in answer.status.resource_rules]  # fmt: skip
        return {rule for rule in _rules(granted) if rule[2] in ROLE_RESOURCES}


ROLE_RESOURCES = {resource for _, resource, _, _ in RBAC_RULES}


def _rules(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(verb, group, resource) for rule in rules for verb in rule["verbs"] for group in rule["apiGroups"]
            for resource in rule["resources"]}  # fmt: skip


def new_namespace(plane: ControlPlane, runner: Runner, operator: SeldonOperatorStandIn, name: str) -> Namespace:
    plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    namespace = Namespace(name, plane, runner, operator, Scenario())
    operator.scenarios[name] = namespace.scenario
    return namespace
