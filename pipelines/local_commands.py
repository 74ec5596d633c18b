"""``abflow run``, ``abflow compile``, ``abflow predict`` and ``abflow gc``: the laptop half of the command line.

``run`` takes one flag per pipeline parameter, generated from the compiled pipeline's declared
parameters (``abflow.pipelines.parameters``) so the two can never drift; only the help texts are written here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from abflow.pipelines.parameters import machine_problems, parameter_problems, pipeline_parameters

DEFAULT_DATA_DIR = Path("abflow-data")
DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
TUTORIAL_PAYLOAD = {
    "data": {
        "names": ["sepallengthcm", "sepalwidthcm", "petallengthcm", "petalwidthcm"],
        "tensor": {"shape": [1, 4], "values": [5.1, 3.5, 1.4, 0.2]},
    }
}

PARAMETER_HELP = {
    "data_uri": "training data: iris (scikit-learn's bundled copy) or a CSV path, file:// or gs:// URI",
    "feature_columns": "the CSV's four measurement columns, comma-separated, matched case-insensitively",
    "label_column": "the CSV's class column: iris-setosa/setosa/0 style labels",
    "ratio_a": "share of requests routed to arm A, the champion (0..1)",
    "min_accuracy": "the gate: never deploy a model whose held-out accuracy is below this",
    "max_regression": "the gate: never deploy a model this much less accurate than the champion",
    "c": "LogisticRegression inverse regularisation strength",
    "max_iter": "LogisticRegression solver iteration limit",
    "test_size": "held-out share of the iris data for the metrics (0..1)",
    "seed": "seed of the split and the solver",
    "model_name": "model name in the artifact store (models/<name>/<version>/)",
    "artifact_root": "artifact store: a local folder or gs://bucket/prefix",
    "image_repo": "repository the serving image is tagged and pushed to",
    "base_image": "Python base image of the serving image",
    "builder": "image builder: none (record the build context only), auto, buildah, docker; kaniko on a cluster",
    "target": "deploy target: local (processes on 127.0.0.1) or seldon (a SeldonDeployment)",
    "namespace": "Kubernetes namespace (seldon target)",
    "deployment_name": "name of the deployment (SeldonDeployment metadata.name)",
    "local_state_dir": "where the local target keeps its releases and the running endpoint's state",
    "local_port": "port of the local A/B endpoint; a new run replaces the graph on the same port",
    "smoke_requests": "number of requests the smoke test sends",
    "p99_budget_ms": "the smoke test fails when p99 latency exceeds this",
    "ratio_schedule": "champion's share per step of the experiment, e.g. 0.9,0.75,0.5: each undecided conclude "
    "moves one step (empty: a fixed --ratio-a)",
    "prometheus_url": "Prometheus the experiment's outcomes are read from on a cluster (seldon target)",
    "on_undecided": "when the running experiment lacks evidence: wait (end the run, retrain nothing) or replace "
    "(end it as keep and test a new challenger)",
    "alpha": "level of the experiment's anytime-valid test on the difference of mean rewards",
    "min_feedback": "feedbacks per arm before the experiment's test is asked",
    "max_duration_hours": "keep the champion when the experiment has run this long without evidence (0: no limit)",
    "p99_slack_ms": "the latency guardrail: the challenger's p99 may reach 1.2 x the champion's plus this many ms",
    "keep": "retention: after a successful run, keep this many newest model versions (plus every version the "
    "champion, a running experiment or the endpoint uses) and delete the older ones; see also `abflow gc`",
    "deploy_mode": "ab: the new model is arm B of the A/B test; shadow: the champion serves everyone and the new "
    "model gets a copy of --shadow-fraction of the requests, compared and never returned (no experiment)",
    "shadow_fraction": "deploy_mode shadow: the share of requests mirrored to the shadow, a whole percent (e.g. 0.25)",
}
PATH_PARAMETERS = ("artifact_root", "local_state_dir")


def add_commands(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the whole pipeline on this machine and leave an A/B endpoint on localhost",
        description=(
            "Run the abflow pipeline with Kubeflow Pipelines' local runner: train, gate, store, "
            "build image, deploy the A/B graph on 127.0.0.1, smoke-test it, promote. The first run "
            "serves the new model on both arms; later runs A/B-test the new model (arm B) against "
            "the champion (arm A)."
        ),
        epilog="examples:\n  abflow run\n  abflow run --ratio-a 0.8 --local-port 8100\n"
        "  abflow run --artifact-root gs://my-bucket/abflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="local folder for run outputs and logs, and the default artifact root (default: %(default)s)",
    )
    for name, parameter in pipeline_parameters().items():
        default = None if name in PATH_PARAMETERS else parameter.default
        shown = "<data-dir>" if name in PATH_PARAMETERS else default
        run.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=parameter.python_type,
            default=default,
            help=f"{PARAMETER_HELP[name]} (default: {shown})",
        )
    run.set_defaults(handler=run_command)

    compile_parser = subparsers.add_parser(
        "compile",
        help="write the pipeline as KFP YAML for the KFP UI or `kfp run create`",
        description="Compile the pipeline to KFP v2 IR YAML.",
        epilog="examples:\n  abflow compile -o iris_ab_pipeline.yaml --image-repo registry.example.com/ml\n"
        "  abflow compile --regenerate   # rewrite the checked-in YAML files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compile_parser.add_argument("-o", "--output", type=Path, default=Path("iris_ab_pipeline.yaml"))
    images = compile_parser.add_mutually_exclusive_group()
    images.add_argument(
        "--image-repo",
        metavar="REGISTRY/PATH",
        help="name the images `abflow images push --repo REGISTRY/PATH` pushed: for a cluster",
    )
    images.add_argument(
        "--components-image",
        default=None,
        help="image holding abflow that every step runs in (build it from components/Containerfile)",
    )
    compile_parser.add_argument(
        "--regenerate", action="store_true", help="rewrite the YAML files checked into the repository"
    )
    compile_parser.set_defaults(handler=compile_command)

    predict = subparsers.add_parser(
        "predict",
        help="send the tutorial's prediction request to an endpoint",
        description="POST the tutorial's iris payload to /api/v1.0/predictions and print the response.",
        epilog="examples:\n  abflow predict\n  abflow predict --values 6.7 3.0 5.2 2.3 --url http://127.0.0.1:8100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("--url", default=DEFAULT_ENDPOINT,
                         help="the endpoint: its base URL or the predictions URL `abflow run` prints "
                              "(default: %(default)s)")
    predict.add_argument("--values", type=float, nargs=4, metavar="X", help="the four iris features")
    predict.add_argument("--token", help="OAuth bearer token, when the graph requires one")
    predict.set_defaults(handler=predict_command)

    defaults = pipeline_parameters()
    gc = subparsers.add_parser(
        "gc",
        help="delete old model versions from the artifact store (retention)",
        description="Keep the --keep newest versions of the model and every version in use (the champion, the "
        "arms of a running experiment, what the local endpoint and its rollback target serve); delete the "
        "others. Every successful run does the same with its keep parameter.",
        epilog="examples:\n  abflow gc --dry-run\n  abflow gc --keep 10 --artifact-root gs://my-bucket/abflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gc.add_argument("--keep", type=int, default=defaults["keep"].default,
                    help="how many newest versions to keep besides those in use (default: %(default)s)")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    gc.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                    help="the default artifact root and local state dir, as for abflow run (default: %(default)s)")
    gc.add_argument("--artifact-root", default=None, help="artifact store: a local folder or gs://bucket/prefix")
    gc.add_argument("--local-state-dir", default=None, help="where the local endpoint keeps its releases")
    gc.add_argument("--model-name", default=defaults["model_name"].default, help="model name (default: %(default)s)")
    gc.set_defaults(handler=gc_command)


def pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = args.data_dir.resolve()
    arguments = {name: getattr(args, name) for name in pipeline_parameters()}
    for name in PATH_PARAMETERS:
        value = arguments[name] or str(data_dir)
        arguments[name] = value if value.startswith("gs://") else str(Path(value).resolve())
    return arguments


def check_arguments(arguments: dict[str, Any]) -> list[str]:
    """Catch parameters that would fail late, before a minute of training is spent on them: every
    value a step would refuse, then what would stop the run on this machine (builder, port)."""
    return parameter_problems(arguments) + machine_problems(arguments)


def curl_line(endpoint: str) -> str:
    return (
        f"curl -s -X POST {endpoint.rstrip('/')}/api/v1.0/predictions "
        f"-H 'Content-Type: application/json' -d '{json.dumps(TUTORIAL_PAYLOAD, separators=(',', ':'))}'"
    )


def run_command(args: argparse.Namespace) -> int:
    from abflow.pipelines.local_run import PipelineRunFailed, run_locally

    arguments = pipeline_arguments(args)
    problems = check_arguments(arguments)
    if problems:
        for problem in problems:
            print(f"abflow run: {problem}", file=sys.stderr)
        print("abflow run: nothing ran and nothing was stored; see abflow run --help", file=sys.stderr)
        return 2
    print(f"abflow run: pipeline iris-ab, artifacts in {arguments['artifact_root']}", file=sys.stderr)
    try:
        result = run_locally(arguments, data_dir=args.data_dir.resolve())
    except PipelineRunFailed as failure:
        print(f"abflow run: {failure}", file=sys.stderr)
        return 1
    print(f"abflow run: done in {result.seconds:.1f}s (log: {result.log_path})", file=sys.stderr)
    report = result.output("conclude", "report")
    if report is not None and result.run_dir is not None:
        readable = args.data_dir.resolve() / "reports" / f"{result.run_dir.name}.html"
        readable.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report, readable)
        print(f"\nexperiment report (conclude): {readable}")
    if arguments["target"] == "local":
        endpoint = f"http://127.0.0.1:{arguments['local_port']}"
        serving_state = Path(arguments["local_state_dir"]) / "serving"
        print(f"\nA/B endpoint: {endpoint}/api/v1.0/predictions\ntry it:\n  {curl_line(endpoint)}")
        print(f"  abflow predict --url {endpoint}")
        print(f"see it:\n  abflow status --state-dir {serving_state}")
        print(f"stop it:\n  abflow down --state-dir {serving_state}")
    return 0


def compile_command(args: argparse.Namespace) -> int:
    from abflow.components.steps import DEFAULT_COMPONENTS_IMAGE
    from abflow.pipelines.compiled import compile_pipeline, regenerate

    if args.regenerate:
        for path in regenerate():
            print(f"wrote {path}")
        return 0
    if args.image_repo:
        from abflow.pipelines.compiled import compile_for_registry

        try:
            refs = compile_for_registry(args.output, args.image_repo)
        except ValueError as exc:
            print(f"abflow compile: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.output} (steps run {refs.components}; image_repo defaults to {refs.serving_repo})")
        return 0
    output = compile_pipeline(args.output, args.components_image or DEFAULT_COMPONENTS_IMAGE)
    print(f"wrote {output}")
    return 0


def gc_command(args: argparse.Namespace) -> int:
    from abflow.components.experiment import ExperimentError
    from abflow.components.retention import prune_versions, served_locally
    from abflow.serving.store import StoreError

    values = {"keep": args.keep, "model_name": args.model_name}
    problems = parameter_problems(values)
    if problems:
        for problem in problems:
            print(f"abflow gc: {problem}", file=sys.stderr)
        return 2
    data_dir = args.data_dir.resolve()
    root = args.artifact_root or str(data_dir)
    root = root if root.startswith("gs://") else str(Path(root).resolve())
    try:
        retention = prune_versions(root, args.model_name, keep=args.keep, dry_run=args.dry_run,
                                   serving_uris=served_locally(str(args.local_state_dir or data_dir)))
    except (StoreError, ExperimentError, OSError, ValueError) as error:
        print(f"abflow gc: {error}", file=sys.stderr)
        return 1
    for line in retention.lines():
        print(line)
    print(f"abflow gc: {retention.describe()} in {root}", file=sys.stderr)
    return 0


def predict_command(args: argparse.Namespace) -> int:
    import requests

    from abflow.components.smoke import OAUTH_TOKEN_PATH, predictions_url

    payload = json.loads(json.dumps(TUTORIAL_PAYLOAD))
    if args.values:
        payload["data"]["tensor"]["values"] = args.values
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    url = predictions_url(args.url)
    try:
        response = requests.post(url, json=payload, headers=headers, timeout=10)
    except requests.RequestException as error:
        print(
            f"abflow predict: cannot reach {args.url} ({error}); is the endpoint up? "
            "Check with `abflow status`, or start one with `abflow run`.",
            file=sys.stderr,
        )
        return 1
    if response.status_code != 200:
        print(response.text, file=sys.stderr)
        if response.status_code == 401:
            base = url[: url.index("/api/")] if "/api/" in url else url
            fix = "that token was refused: get a new one" if args.token else "pass a bearer token with --token TOKEN"
            print(f"abflow predict: {url} requires OAuth: {fix}; the graph's spec.oauth_key/oauth_secret get one "
                  f"from the endpoint:\n  curl -s -u KEY:SECRET -d grant_type=client_credentials {base}"
                  f"{OAUTH_TOKEN_PATH}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0
