"""The typed Kubeflow Pipelines interfaces of abflow's steps.

Each function here is a KFP lightweight component: typed inputs and outputs (``Output[Model]``,
``Output[Metrics]``, ``Output[ClassificationMetrics]``, ``Output[HTML]``, plain parameters) over the
plain logic in the sibling modules, which is tested without KFP. KFP ships each function's *source*
into the step's container, so every import lives inside the function body and the body stays a few
lines long. The container image is chosen when the pipeline is built (``make_components``), because
on a cluster it must be an image that already holds abflow.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

DEFAULT_COMPONENTS_IMAGE = "localhost:5000/abflow/components:0.1.0"


def conclude(
    artifact_root: str,
    model_name: str,
    on_undecided: str,
    alpha: float,
    min_feedback: int,
    max_duration_hours: float,
    p99_slack_ms: float,
    local_state_dir: str,
    namespace: str,
    run_id: str,
    metrics: Output[Metrics],
    report: Output[HTML],
) -> bool:
    """Decide the running experiment of ``model_name`` (the previous run's champion vs challenger, on
    the outcomes its endpoint recorded) and act: ``promote`` swaps the champion pointer, ``keep``
    leaves it, ``continue`` (too little evidence) follows ``on_undecided``. The decision is appended
    to ``<artifact_root>/experiments/<model_name>/<id>.json``.

    Args:
        on_undecided: ``wait`` (end the run here, successfully, retraining nothing; with a
            ``ratio_schedule`` and the guardrails passed, first move the split one step) or
            ``replace`` (end the experiment as ``keep`` and go on to test a new challenger).
        alpha: Level of the anytime-valid test on the difference of mean rewards.
        min_feedback: Feedbacks per arm before the test is asked.
        max_duration_hours: After this long without evidence the champion is kept (0: no limit).
        p99_slack_ms: The p99 guardrail lets the challenger's p99 reach 1.2 x the champion's plus this.
        local_state_dir: The local target's state root, where a moved split is redeployed.
        namespace: The seldon target's namespace, where a moved split is applied.

    Returns:
        Whether the run goes on to train a new challenger. (A single output on purpose: KFP's local
        runner resolves a condition on a step's ``Output``, not on a named output, outside a branch.)
    """
    from abflow.components import steplog
    from abflow.components.conclusion import conclude_experiment, report_html, rules_from

    conclusion = conclude_experiment(artifact_root, model_name, on_undecided=on_undecided,
                                     rules=rules_from(alpha, min_feedback, max_duration_hours, p99_slack_ms),
                                     run_id=run_id,
                                     local_state_dir=local_state_dir, namespace=namespace)
    for name, value in conclusion.as_metrics().items():
        metrics.log_metric(name, value)
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(report_html(conclusion))
    steplog.finish(conclusion.summary)
    return conclusion.proceed


def train(
    data_uri: str,
    feature_columns: str,
    label_column: str,
    c: float,
    max_iter: int,
    test_size: float,
    seed: int,
    model: Output[Model],
    holdout: Output[Dataset],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
) -> NamedTuple("TrainOutputs", [("accuracy", float), ("summary", str)]):  # type: ignore[valid-type]
    """Train the iris classifier (LogisticRegression in a Pipeline) on a stratified split.

    Args:
        data_uri: ``iris`` (scikit-learn's bundled data) or a CSV: a path, ``file://`` or ``gs://`` URI.
        feature_columns: The CSV's four measurement columns, comma-separated (case-insensitive).
        label_column: The CSV's class column: class names (``Iris-setosa``, ``setosa``) or 0-2.
        c: Inverse regularisation strength of LogisticRegression.
        max_iter: Solver iteration limit.
        test_size: Share of the data held out for the metrics, in (0, 1).
        seed: Seed of the split and the solver, so a rerun with the same inputs is reproducible.

    Returns:
        accuracy: Held-out accuracy (what the gate checks).
        summary: JSON of metrics, params, class names and data fingerprint (what the store records).
    """
    import json

    from abflow.components import steplog
    from abflow.components.datasets import to_csv
    from abflow.components.training import train_iris, train_summary

    result = train_iris(c=c, max_iter=max_iter, test_size=test_size, seed=seed, data_uri=data_uri,
                        feature_columns=feature_columns, label_column=label_column)
    with open(model.path, "wb") as handle:
        handle.write(result.model_bytes)
    model.metadata.update({"framework": "scikit-learn", "file": "model.joblib", "sha256": result.sha256})
    assert result.holdout is not None, "train_iris always returns its held-out rows"
    with open(holdout.path, "w", encoding="utf-8") as handle:
        handle.write(to_csv(result.holdout))
    holdout.metadata.update({"rows": len(result.holdout.labels), "data_fingerprint": result.data_fingerprint})
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    confusion_matrix.log_confusion_matrix(list(result.class_names), result.confusion_matrix)
    steplog.finish(f"trained on {data_uri}, accuracy {result.metrics['accuracy']:.3f}")
    return (result.metrics["accuracy"], json.dumps(train_summary(result)))


def gate(
    model: Input[Model],
    holdout: Input[Dataset],
    summary: str,
    artifact_root: str,
    model_name: str,
    min_accuracy: float,
    max_regression: float,
    decision: Output[Metrics],
) -> bool:
    """Stop the run unless the new model clears ``min_accuracy`` and is no worse than the current
    champion by more than ``max_regression`` (accuracy points), both scored on the new model's
    held-out rows. The failure names the number that missed.

    Returns:
        Whether there is a new model to test: False when it is byte for byte the champion, so the run
        stores and deploys nothing and ends successfully. (A single output on purpose: KFP's local
        runner resolves a condition on a step's ``Output``, not on a named output, outside a branch.)
    """
    import json

    from abflow.components import steplog
    from abflow.components.datasets import DEFAULT_FEATURE_COLUMNS, DEFAULT_LABEL_COLUMN, parse_csv
    from abflow.components.gating import gate_challenger

    with open(model.path, "rb") as handle:
        model_bytes = handle.read()
    with open(holdout.path, encoding="utf-8") as handle:
        rows = parse_csv(handle.read(), feature_columns=DEFAULT_FEATURE_COLUMNS.split(","),
                         label_column=DEFAULT_LABEL_COLUMN, where="the held-out rows")
    result = gate_challenger(model_bytes=model_bytes, metrics=json.loads(summary)["metrics"], holdout=rows,
                             artifact_root=artifact_root, model_name=model_name, min_accuracy=min_accuracy,
                             max_regression=max_regression)
    for name, value in result.as_metrics().items():
        decision.log_metric(name, value)
    steplog.finish(f"gate passed ({result.describe()})" if result.new_model else result.describe())
    return result.new_model


def store(
    model: Input[Model],
    summary: str,
    artifact_root: str,
    model_name: str,
    run_id: str,
) -> NamedTuple(  # type: ignore[valid-type]
    "StoreOutputs",
    [("model_uri", str), ("version", str), ("model_a_uri", str), ("model_b_uri", str), ("champion_version", str)],
):
    """Upload the model and its metadata to ``<artifact_root>/models/<model_name>/<version>/`` and
    pick the arms: the current champion as arm A and the new model as arm B (both arms the new
    model on the first run).

    Args:
        artifact_root: A local folder or ``gs://bucket/prefix``.

    Returns:
        champion_version: The champion's version (arm A), empty before the first promotion.
    """
    from abflow.components import steplog
    from abflow.components.registry import choose_arms, publish_model
    from abflow.components.training import train_result_from

    with open(model.path, "rb") as handle:
        result = train_result_from(handle.read(), summary)
    published = publish_model(artifact_root, model_name, result, run_id=run_id)
    arms = choose_arms(artifact_root, model_name, published.uri)
    steplog.finish(f"stored {published.uri}")
    return (published.uri, published.version, arms.model_a_uri, arms.model_b_uri, arms.champion_version or "")


def build_image(
    builder: str,
    image_repo: str,
    base_image: str,
    artifact_root: str,
    build_context: Output[Artifact],
) -> NamedTuple(  # type: ignore[valid-type]
    "ImageOutputs", [("image_ref", str), ("tag", str), ("context_uri", str), ("kaniko_needed", bool)]
):
    """Build the serving image from a context tagged by its content hash; skip the build when that
    tag is already in the registry.

    Args:
        builder: ``auto`` (buildah, else docker, else none), ``buildah``, ``docker``, ``kaniko``
            (upload the context for the pipeline's kaniko step: on a cluster) or ``none`` (record the
            context and tag only: the local target needs no image).
        image_repo: Repository to tag and push, e.g. ``registry.example.com/ml/iris-server``.
        base_image: Python base image of the serving image.
        artifact_root: Where kaniko's build context is uploaded (``gs://``; kaniko builder only).

    Returns:
        image_ref: The image to deploy; empty for builder ``none`` (the seldon target then serves
            the arms with Seldon's SKLEARN_SERVER).
    """
    from pathlib import Path

    from abflow.components import steplog
    from abflow.components.imaging import build_image as build
    from abflow.components.imaging import make_build_context

    context = make_build_context(Path(build_context.path), base_image=base_image)
    build_context.metadata.update({"tag": context.tag, "builder": builder})
    if builder == "kaniko":
        from abflow.components.kaniko import stage_for_kaniko

        stage = stage_for_kaniko(context, image_repo=image_repo, artifact_root_uri=artifact_root)
        steplog.finish(f"image {stage.image_ref} (kaniko build needed: {stage.build_needed})")
        return (stage.image_ref, context.tag, stage.context_uri, stage.build_needed)
    built = build(context, image_repo=image_repo, builder=builder)
    steplog.finish(f"image {built.ref} ({built.builder})")
    return (built.ref if built.builder != "none" else "", built.tag, "", False)


def skip_image_build(image_ref: str) -> str:
    """The branch taken when kaniko has nothing to build (another builder ran, or the tag is already
    pushed): no new digest, so the deployment uses the content-hash tag."""
    from abflow.components import steplog

    steplog.finish(f"no kaniko build needed ({image_ref or 'builder none: no image'})")
    return ""


def deploy_ab(
    target: str,
    model_a_uri: str,
    model_b_uri: str,
    ratio_a: float,
    ratio_schedule: str,
    image_ref: str,
    image_digest: str,
    namespace: str,
    deployment_name: str,
    local_state_dir: str,
    local_port: int,
    artifact_root: str,
    model_name: str,
    champion_version: str,
    challenger_version: str,
    prometheus_url: str,
    run_id: str,
    deploy_mode: str,
    shadow_fraction: float,
) -> NamedTuple(  # type: ignore[valid-type]
    "DeployOutputs",
    [("endpoint", str), ("record", str), ("ratio_a", float), ("experiment_id", str), ("mode", str)],
):
    """Deploy the A/B graph (RANDOM_ABTEST, arm A the champion with share ``ratio_a``) and keep the
    previous deployment for rollback. When the arms serve different versions this starts an
    experiment: its record goes to ``<artifact_root>/experiments/<model_name>/<id>.json``, which the
    next run's ``conclude`` decides.

    Args:
        target: ``local`` (processes on 127.0.0.1, replacing the previous graph on the same port)
            or ``seldon`` (a SeldonDeployment applied to ``namespace``).
        ratio_schedule: Optional champion shares, e.g. ``0.9,0.75,0.5``: the experiment starts at the
            first and each undecided ``conclude`` moves one step; empty for a fixed ``ratio_a``.
        local_state_dir: Where the local target keeps its releases (local target only).
        local_port: Port of the local endpoint (local target only).
        prometheus_url: Where the experiment's outcomes are read on a cluster (seldon target).
        deploy_mode: ``ab`` (the challenger is arm B) or ``shadow`` (the champion serves everything
            and the challenger gets a copy of ``shadow_fraction`` of the requests, its answers
            compared and discarded: no user sees it, so no experiment starts). A first run, with no
            champion to shadow, deploys as ``ab``.

    Returns:
        ratio_a: The split deployed (the schedule's first step when there is one).
        experiment_id: The experiment started, empty when both arms serve the same version.
        mode: How the challenger was deployed (``ab`` or ``shadow``).
    """
    from abflow.components import steplog
    from abflow.components.deploy_targets import deploy_challenger
    from abflow.components.retention import discard_after_failure
    from abflow.serving.graph import SHADOW_MODE

    try:
        deployed = deploy_challenger(
            target,
            artifact_root=artifact_root,
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
            model_a_uri=model_a_uri,
            model_b_uri=model_b_uri,
            ratio_a=ratio_a,
            ratio_schedule=ratio_schedule,
            image=f"{image_ref}@{image_digest}" if image_ref and image_digest else image_ref,
            namespace=namespace,
            name=deployment_name,
            local_state_dir=local_state_dir,
            local_port=local_port,
            prometheus_url=prometheus_url,
            run_id=run_id,
            mode=deploy_mode,
            shadow_fraction=shadow_fraction,
        )
    except Exception:
        steplog.note(discard_after_failure(artifact_root, model_name, challenger_version,
                                           local_state_dir=local_state_dir if target == "local" else ""))
        raise
    experiment = deployed.experiment
    if deployed.mode == SHADOW_MODE:
        started = (f"; challenger {challenger_version} shadows champion {champion_version} on "
                   f"{shadow_fraction:.0%} of requests: no user sees it, no experiment")
    elif experiment:
        started = (f"; experiment {experiment.id}: champion {experiment.champion.version} vs challenger "
                   f"{experiment.challenger.version}, champion share {deployed.ratio_a:g}")
    else:
        started = "; both arms serve the same version: not an experiment"
    steplog.finish(f"deployed {deployed.record.endpoint}{started}")
    return (deployed.record.endpoint, deployed.record.to_json(), deployed.ratio_a,
            experiment.id if experiment else "", deployed.mode)


def smoke_test(
    endpoint: str,
    record: str,
    ratio_a: float,
    requests: int,
    p99_budget_ms: float,
    artifact_root: str,
    model_name: str,
    experiment_id: str,
    challenger_version: str,
    run_id: str,
    mode: str,
    metrics: Output[Metrics],
    report: Output[HTML],
) -> None:
    """Send ``requests`` tutorial-format predictions and check status, schema, class names,
    probabilities, ``meta.routing``, both arms, the arm-A share (binomial test) and p99; for a
    ``mode="shadow"`` deployment, the champion alone and then the shadow's counts (answered,
    errors, agreement with the champion), which the report shows. On failure
    the endpoint is rolled back to the previous deployment, the experiment it started is marked
    rolled back, ``challenger_version`` (stored by this run, served by nothing now) is deleted, and
    the run fails with the reasons."""
    import json

    from abflow.components import steplog
    from abflow.components.deploy_targets import rollback
    from abflow.components.experiment import mark_rolled_back, update_experiment
    from abflow.components.retention import discard_after_failure
    from abflow.components.smoke import render_html_report, require_pass, run_smoke
    from abflow.serving.graph import SHADOW_MODE

    if mode == SHADOW_MODE:
        from abflow.components.shadow_smoke import smoke_shadow_deployment

        result = smoke_shadow_deployment(endpoint, record, requests=requests, p99_budget_ms=p99_budget_ms)
    else:
        local = json.loads(record).get("target") == "local"  # abflow's executor, which counts its failovers
        result = run_smoke(endpoint, requests=requests, ratio_a=ratio_a, p99_budget_ms=p99_budget_ms,
                           count_failovers=local)
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(render_html_report(result))
    for name, value in result.as_metrics().items():
        metrics.log_metric(name, value)
    if not result.passed:
        restored = rollback(record)
        if experiment_id:
            update_experiment(artifact_root, model_name, experiment_id,
                              lambda experiment: mark_rolled_back(experiment, run_id=run_id,
                                                                  reason="its deployment failed the smoke test"))
        steplog.note(f"smoke failed, rolled back to {restored}")
        steplog.note(discard_after_failure(artifact_root, model_name, challenger_version))
    require_pass(result)
    steplog.finish(f"smoke passed ({result.describe()})")


def promote(artifact_root: str, model_name: str, version: str, run_id: str, keep: int, local_state_dir: str,
            mode: str) -> str:
    """Make the first model that passed its smoke test the champion (arm A of the next run). Once
    there is a champion this leaves it: the experiment decides, in the next run's ``conclude``. The
    champion pointer is swapped atomically, so racing scheduled runs lose no promotion. Then
    retention: the ``keep`` newest versions stay, and every version in use (the champion, a running
    experiment's arms, ``version``, what the local endpoint and its rollback target serve); older
    ones are deleted.

    Returns:
        The champion's version after this step.
    """
    from abflow.components import steplog
    from abflow.components.registry import promote_version, read_champion
    from abflow.components.retention import prune_after_deploy
    from abflow.serving.graph import SHADOW_MODE

    steplog.note(prune_after_deploy(artifact_root, model_name, keep=keep, deployed=version,
                                    local_state_dir=local_state_dir))
    champion = read_champion(artifact_root, model_name)
    if champion is not None and mode == SHADOW_MODE:
        steplog.finish(f"champion stays {champion.version}: {version} ran as a shadow, which promotes nothing; "
                       "deploy it with deploy_mode=ab to A/B-test it")
    elif champion is not None:
        steplog.finish(f"champion stays {champion.version}: the A/B experiment decides whether {version} replaces "
                       "it (the next run's conclude step)")
    if champion is not None:
        return champion.version
    champion = promote_version(artifact_root, model_name, version, run_id=run_id)
    steplog.finish(f"first model: champion is now {champion.version}")
    return str(champion.version)


STEP_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    conclude,
    train,
    gate,
    store,
    build_image,
    skip_image_build,
    deploy_ab,
    smoke_test,
    promote,
)


@dataclass(frozen=True)
class Components:
    """The step components, built for one container image."""

    conclude: Any
    train: Any
    gate: Any
    store: Any
    build_image: Any
    skip_image_build: Any
    deploy_ab: Any
    smoke_test: Any
    promote: Any


def make_components(image: str = DEFAULT_COMPONENTS_IMAGE) -> Components:
    """Wrap every step for ``image``: an image holding abflow, so ``packages_to_install`` stays
    empty and nothing is fetched when a step starts."""
    built = {func.__name__: dsl.component(func, base_image=image, install_kfp_package=False) for func in STEP_FUNCTIONS}
    return Components(**built)
