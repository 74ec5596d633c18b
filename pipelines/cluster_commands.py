"""``abflow images``, ``render``, ``submit`` and ``schedule``: the cluster half of the command line.

``images`` builds (and pushes) the components and serving images under one repository prefix;
``render`` prints exactly what the ``seldon`` deploy target applies (for review or GitOps);
``submit``/``schedule`` start the pipeline on Kubeflow Pipelines — compiled for ``--image-repo`` —
after refusing parameters that could only fail later on a cluster (``abflow.pipelines.cluster_checks``).
Flags fall back to the environment variables KFP's own tools read (``KF_PIPELINES_ENDPOINT``), so one
shell setup serves both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from abflow.serving.graph import RANDOM_ABTEST, ROUTER_IMPLEMENTATIONS

DEFAULT_PIPELINE_YAML = Path(__file__).resolve().parent / "iris_ab_pipeline.yaml"
DEFAULT_EXPERIMENT = "abflow"
HOST_ENV = "KF_PIPELINES_ENDPOINT"
TOKEN_ENV = "KFP_TOKEN"


def add_commands(subparsers: Any) -> None:
    _add_images(subparsers)
    _add_render(subparsers)
    _add_submit(subparsers)
    _add_schedule(subparsers)


def _add_images(subparsers: Any) -> None:
    images = subparsers.add_parser(
        "images",
        help="build (and push) the components and serving images",
        description=(
            "Build abflow's two images under one repository prefix: REPO/abflow-components:<version>-<hash>, "
            "which every pipeline step runs in, and REPO/iris-server:<hash>, which each A/B arm runs. "
            "Tags are content hashes: an unchanged image is not rebuilt or pushed again."
        ),
        epilog=(
            "examples:\n"
            "  abflow images push --repo europe-docker.pkg.dev/my-project/abflow\n"
            "  abflow images build --repo registry.example.com/ml --builder docker"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    images.add_argument("action", choices=["build", "push"], help="build only, or build and push")
    images.add_argument("--repo", required=True, metavar="REGISTRY/PATH", help="repository prefix of both images")
    images.add_argument(
        "--builder", choices=["auto", "buildah", "docker"], default="auto", help="image builder (default: auto)"
    )
    images.add_argument("--base-image", default="python:3.11-slim", help="Python base image (default: %(default)s)")
    images.add_argument(
        "--insecure", action="store_true", help="registry on plain HTTP or with a self-signed certificate"
    )
    images.set_defaults(handler=_images)


def _add_render(subparsers: Any) -> None:
    render = subparsers.add_parser(
        "render",
        help="print the SeldonDeployment and RBAC the seldon target would apply",
        description=(
            "Render the A/B graph (or a single model) as a SeldonDeployment followed by the RBAC the "
            "pipeline's service account needs, as multi-document YAML: exactly what deploy applies."
        ),
        epilog=(
            "examples:\n"
            "  abflow render --target seldon --model-a gs://bucket/abflow/models/iris/v1 \\\n"
            "      --model-b gs://bucket/abflow/models/iris/v2 --ratio-a 0.3 \\\n"
            "      --image europe-docker.pkg.dev/proj/abflow/iris-server:3f2a9c --namespace seldon\n"
            "  abflow render --model-a gs://b/iris/v1 --model-b gs://b/iris/v2 --router THOMPSON_SAMPLING \\\n"
            "      --image europe-docker.pkg.dev/proj/abflow/iris-server:3f2a9c --experiment iris-nightly \\\n"
            "      --router-state-claim iris-router-state\n"
            "  abflow render --model-a gs://b/iris/v1 --model-b gs://b/iris/v2 --shadow-fraction 0.25\n"
            "  abflow render --target seldon --model-a gs://bucket/abflow/models/iris/v1 | kubectl apply -f -\n"
            "  abflow render --rbac-only --namespace seldon --runner-namespace kubeflow | kubectl apply -f -"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render.add_argument("--target", choices=["seldon"], default="seldon", help="deploy target (default: seldon)")
    render.add_argument(
        "--rbac-only",
        action="store_true",
        help="print only the ServiceAccount, Role and RoleBinding: safe to kubectl apply where a graph already serves",
    )
    render.add_argument("--model-a", metavar="URI", help="arm A (champion) model URI (required unless --rbac-only)")
    render.add_argument("--model-b", metavar="URI", help="arm B (challenger) model URI; omit for a single model")
    render.add_argument("--ratio-a", type=float, default=0.5, help="share of traffic to arm A (default: 0.5)")
    render.add_argument(
        "--image", help="abflow serving image; without it the arms use Seldon's SKLEARN_SERVER with modelUri"
    )
    render.add_argument("--namespace", default="seldon", help="namespace of the SeldonDeployment (default: seldon)")
    render.add_argument("--name", default="iris-ab", help="SeldonDeployment name (default: iris-ab)")
    render.add_argument(
        "--service-account",
        default="abflow-pipeline-runner",
        help="service account pipeline runs use to deploy (default: abflow-pipeline-runner)",
    )
    render.add_argument(
        "--runner-namespace", help="namespace KFP runs pipeline pods in (e.g. kubeflow; default: --namespace)"
    )
    render.add_argument("--model-service-account", help="identity of the model pods, for reading gs:// models")
    policy = render.add_argument_group("traffic policy (default: Seldon's own RANDOM_ABTEST coin flip)")
    policy.add_argument("--router", choices=ROUTER_IMPLEMENTATIONS, default=RANDOM_ABTEST,
                        help="the router over the two arms; a bandit learns from feedback and ignores --ratio-a")
    policy.add_argument("--unit", metavar="tag:KEY",
                        help="sticky split: the meta.tags key naming the unit of assignment, e.g. tag:user")
    policy.add_argument("--shadow-fraction", type=float, metavar="F",
                        help="deploy --model-b as a shadow of --model-a, mirrored this share of requests "
                        "(a whole percent, e.g. 0.25), instead of an A/B split")
    policy.add_argument("--experiment", default="", metavar="ID",
                        help="the experiment the graph serves: labels its metrics and salts a sticky split")
    policy.add_argument("--router-state-claim", metavar="PVC",
                        help="PersistentVolumeClaim a sticky or bandit router keeps its outcome ledger on, so a "
                        "restarted router resumes what it learned (needs --experiment)")
    render.set_defaults(handler=_render)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pipeline_yaml",
        nargs="?",
        type=Path,
        default=DEFAULT_PIPELINE_YAML,
        metavar="PIPELINE_YAML",
        help="compiled pipeline (default: the iris A/B pipeline shipped with abflow; see abflow compile)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get(HOST_ENV),
        help=f"KFP API endpoint, e.g. http://localhost:8080 (env {HOST_ENV})",
    )
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (env {TOKEN_ENV})")
    parser.add_argument("--namespace", help="KFP profile namespace (multi-user Kubeflow only)")
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="experiment, created when missing (default: abflow)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter, typed as the pipeline declares it; repeat per parameter",
    )
    parser.add_argument(
        "--service-account", help="Kubernetes service account the run's pods use (e.g. abflow-pipeline-runner)"
    )
    parser.add_argument(
        "--image-repo",
        metavar="REGISTRY/PATH",
        help="compile abflow's pipeline for the images `abflow images push --repo REGISTRY/PATH` pushed "
        "(required unless PIPELINE_YAML already names a registry the cluster can pull from)",
    )


def _add_submit(subparsers: Any) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="start one run of the pipeline on Kubeflow Pipelines",
        description="Start one run of the compiled pipeline on a KFP cluster, with caching off.",
        epilog=(
            "examples:\n"
            "  abflow submit --host http://localhost:8080 --param target=seldon --param ratio_a=0.3 --wait\n"
            "  abflow submit my-pipeline.yaml --host https://kfp.example.com --experiment nightly"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(submit)
    submit.add_argument("--wait", action="store_true", help="wait until the run finishes; fail unless it succeeds")
    submit.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits (default: 3600)")
    submit.set_defaults(handler=_submit)


def _add_schedule(subparsers: Any) -> None:
    schedule = subparsers.add_parser(
        "schedule",
        help="create a recurring run (e.g. a nightly retrain) on Kubeflow Pipelines",
        description=(
            "Store the pipeline (a new version only when it changed) and create a recurring run: one "
            "at a time, no catch-up of missed runs, caching off."
        ),
        epilog=(
            "examples:\n"
            "  abflow schedule --host http://localhost:8080 --name iris-nightly --cron '0 0 2 * * *' \\\n"
            "      --param target=seldon --param artifact_root=gs://bucket/abflow\n"
            "  abflow schedule --host http://localhost:8080 --name iris-daily --every 24h\n"
            "cron has 6 fields, seconds first: '0 0 2 * * *' = 02:00 daily"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(schedule)
    schedule.add_argument("--name", required=True, help="recurring run (and stored pipeline) name")
    when = schedule.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="6-field cron, seconds first, e.g. '0 0 2 * * *'")
    when.add_argument("--every", help="interval, e.g. 24h, 30m, 1h30m")
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default: 1)")
    schedule.add_argument("--catchup", action="store_true", help="start runs missed while paused (default: skip)")
    schedule.set_defaults(handler=_schedule)


def _render(args: argparse.Namespace) -> int:
    from abflow.components.seldon_manifests import render_all, render_rbac, to_yaml
    from abflow.serving.graph import GraphError, ab_graph, shadow_graph, single_model_graph

    if args.rbac_only:
        rbac = render_rbac(args.namespace, args.service_account, runner_namespace=args.runner_namespace)
        sys.stdout.write(to_yaml(rbac))
        return 0
    if not args.model_a:
        print("abflow render: --model-a is required (or --rbac-only for the RBAC alone)", file=sys.stderr)
        return 2
    try:
        if args.model_b and args.shadow_fraction is not None:
            graph = shadow_graph(args.name, args.model_a, args.model_b, args.shadow_fraction)
        elif args.model_b:
            graph = ab_graph(args.name, args.model_a, args.model_b, args.ratio_a, unit=args.unit, router=args.router)
        else:
            graph = single_model_graph(args.name, args.model_a)
        documents = render_all(
            graph,
            image=args.image,
            namespace=args.namespace,
            service_account=args.service_account,
            runner_namespace=args.runner_namespace,
            model_service_account=args.model_service_account,
            experiment_id=args.experiment,
            router_state_claim=args.router_state_claim,
        )
    except (GraphError, ValueError) as exc:
        print(f"abflow render: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(to_yaml(documents))
    return 0


def _images(args: argparse.Namespace) -> int:
    from abflow.components.imaging import (
        COMPONENTS_IMAGE_NAME,
        SERVING_IMAGE_NAME,
        ImageBuildError,
        build_image,
        make_build_context,
        make_components_build_context,
        resolve_builder,
    )

    repo = args.repo.rstrip("/")
    try:
        if resolve_builder(args.builder) == "none":
            raise ImageBuildError("no image builder found: install buildah (or docker with a running daemon)")
        with tempfile.TemporaryDirectory(prefix="abflow-images-") as folder:
            contexts = (
                (make_components_build_context(Path(folder) / "components", base_image=args.base_image),
                 f"{repo}/{COMPONENTS_IMAGE_NAME}"),
                (make_build_context(Path(folder) / "serving", base_image=args.base_image),
                 f"{repo}/{SERVING_IMAGE_NAME}"),
            )  # fmt: skip
            for context, image_repo in contexts:
                built = build_image(
                    context,
                    image_repo=image_repo,
                    builder=args.builder,
                    push=args.action == "push",
                    tls_verify=not args.insecure,
                )
                print(built.ref)
    except (ImageBuildError, ValueError) as exc:
        print(f"abflow images: {exc}", file=sys.stderr)
        return 2
    print(f"next: abflow submit --image-repo {repo} … (or abflow compile --image-repo {repo})", file=sys.stderr)
    return 0


@contextmanager
def _cluster_package(args: argparse.Namespace) -> Iterator[Path]:
    """The pipeline YAML to send: abflow's, compiled for ``--image-repo``, or the one given as is."""
    from abflow.pipelines.compiled import compile_for_registry
    from abflow.pipelines.package import SubmissionError

    if args.image_repo is None:
        yield args.pipeline_yaml
        return
    if args.pipeline_yaml != DEFAULT_PIPELINE_YAML:
        raise SubmissionError(
            f"--image-repo compiles abflow's own pipeline, but {args.pipeline_yaml} was given and is sent as it "
            "was compiled: drop one of the two (abflow compile --image-repo REGISTRY/PATH -o FILE makes such a file)"
        )
    with tempfile.TemporaryDirectory(prefix="abflow-compile-") as folder:
        path = Path(folder) / DEFAULT_PIPELINE_YAML.name
        try:
            compile_for_registry(path, args.image_repo)
        except ValueError as exc:
            raise SubmissionError(str(exc)) from None
        yield path


def _checked_params(args: argparse.Namespace, pipeline_yaml: Path) -> dict[str, Any]:
    """``--param`` values typed by the pipeline, after the cluster checks passed on them."""
    from abflow.pipelines.cluster_checks import cluster_problems
    from abflow.pipelines.package import SubmissionError, declared_parameters, load_package, parse_param

    package = load_package(pipeline_yaml)
    params = dict(parse_param(option, package.pipeline_spec) for option in args.param)
    declared = declared_parameters(package.pipeline_spec)
    effective = {name: params.get(name, body.get("defaultValue")) for name, body in declared.items()}
    problems = cluster_problems({k: v for k, v in effective.items() if v is not None}, package.images())
    if problems:
        raise SubmissionError(
            "this run would fail on the cluster:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )
    return params


def _submit(args: argparse.Namespace) -> int:
    from abflow.pipelines.package import SubmissionError
    from abflow.pipelines.remote import submit

    try:
        with _cluster_package(args) as pipeline_yaml:
            info = submit(
                pipeline_yaml,
                host=args.host,
                experiment=args.experiment,
                params=_checked_params(args, pipeline_yaml),
                wait=args.wait,
                timeout=args.timeout,
                service_account=args.service_account,
                token=args.token,
                namespace=args.namespace,
            )
    except SubmissionError as exc:
        print(f"abflow submit: {exc}", file=sys.stderr)
        return 2
    print(f"run {info.run_id}: {info.state}\n{info.url}")
    return 0 if not args.wait or info.state == "SUCCEEDED" else 1


def _schedule(args: argparse.Namespace) -> int:
    from abflow.pipelines.package import SubmissionError
    from abflow.pipelines.remote import schedule
    from abflow.pipelines.triggers import parse_cron, parse_every

    try:
        # The trigger first: a typo there should not wait for the pipeline to compile.
        _ = parse_cron(args.cron) if args.cron is not None else parse_every(args.every)
        with _cluster_package(args) as pipeline_yaml:
            info = schedule(
                pipeline_yaml,
                host=args.host,
                experiment=args.experiment,
                name=args.name,
                cron=args.cron,
                every=args.every,
                params=_checked_params(args, pipeline_yaml),
                max_concurrency=args.max_concurrency,
                catchup=args.catchup,
                service_account=args.service_account,
                token=args.token,
                namespace=args.namespace,
            )
    except SubmissionError as exc:
        print(f"abflow schedule: {exc}", file=sys.stderr)
        return 2
    print(
        f"recurring run {info.recurring_run_id} ({info.trigger}) of pipeline {info.pipeline_id} "
        f"version {info.pipeline_version_id}\n{info.url}"
    )
    return 0
