"""What ``abflow submit``/``schedule`` refuse before sending: runs that could only fail later on a cluster.

A run on Kubeflow Pipelines takes minutes to reach the step where a wrong parameter bites (a model
stored in a pod-local folder is gone when the deploy step looks for it; an image on ``localhost`` is
pulled by the cluster node from itself). Each check here names the parameter and what to pass
instead. Only parameters the pipeline declares are checked, so a pipeline of your own is checked for
what it shares with abflow's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from abflow.components.imaging import is_local_registry
from abflow.pipelines.parameters import parameter_problems

CLUSTER_BUILDER = "kaniko"
CLUSTER_TARGET = "seldon"
PUSH_HINT = "abflow images push --repo REGISTRY/PATH, then pass --image-repo REGISTRY/PATH"
# Kubernetes object names: a DNS-1123 label (namespaces) and subdomain (deployments, service accounts).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CLUSTER_JUDGED = frozenset({"target", "builder"})
"""Parameters whose every laptop value the checks below refuse with the cluster's own advice."""


def cluster_problems(parameters: Mapping[str, Any], images: Iterable[str]) -> list[str]:
    """Every reason a run with ``parameters`` (the declared defaults with ``--param`` values over them)
    on a pipeline whose steps run ``images`` would fail on a cluster, each with the fix."""
    problems = [
        f"the pipeline's steps run {image}, a registry on the machine that compiled it, which no cluster "
        f"node can pull from: {PUSH_HINT}"
        for image in dict.fromkeys(images)
        if is_local_registry(image)
    ]
    problems += _deployment_problems(parameters)
    problems += parameter_problems({k: v for k, v in parameters.items() if k not in CLUSTER_JUDGED}, str)
    return problems


def _deployment_problems(p: Mapping[str, Any]) -> list[str]:
    problems = []
    if "target" in p and p["target"] != CLUSTER_TARGET:
        problems.append(
            f"target={p['target']}: the local target serves from the deploy step's own pod, which is deleted "
            f"when the step ends; use --param target={CLUSTER_TARGET}"
        )
    root = p.get("artifact_root")
    if root is not None and not str(root).startswith("gs://"):
        problems.append(
            f"artifact_root={root} is a folder inside each step's pod: the model the store step writes is gone "
            "before deploy runs, and model pods cannot read it; use --param artifact_root=gs://BUCKET/PREFIX"
        )
    builder = p.get("builder")
    if builder == "none":
        problems.append(
            "builder=none serves the arms with Seldon's SKLEARN_SERVER instead of abflow's image, and the smoke "
            f"test refuses its class names (t:0, t:1, t:2); use --param builder={CLUSTER_BUILDER}"
        )
    elif builder is not None and builder != CLUSTER_BUILDER:
        problems.append(
            f"builder={builder} needs a container daemon or privileges that a pipeline pod does not have; "
            f"use --param builder={CLUSTER_BUILDER} (it builds in its own step and pushes to image_repo)"
        )
    repo = p.get("image_repo")
    if repo is not None and is_local_registry(f"{str(repo).rstrip('/')}/x"):
        problems.append(
            f"image_repo={repo} is a registry on the machine that compiled the pipeline: kaniko cannot push "
            f"there and model pods cannot pull from it; {PUSH_HINT} (or --param image_repo=REGISTRY/PATH/iris-server)"
        )
    for name, pattern, kind in (
        ("namespace", _DNS_LABEL, "a DNS label"),
        ("deployment_name", _DNS_SUBDOMAIN, "a DNS subdomain"),
    ):
        if name in p and not pattern.match(str(p[name])):
            problems.append(f"{name}={p[name]!r} is not a Kubernetes name ({kind}: lower-case letters, digits, '-')")
    account = p.get("service_account")
    if account and not _DNS_SUBDOMAIN.match(str(account)):
        problems.append(f"service_account={account!r} is not a Kubernetes service account name (a DNS subdomain)")
    return problems
