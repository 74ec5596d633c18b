"""The abflow DAG: conclude → train → gate → store → build image → deploy A/B → smoke test → promote.

``conclude`` decides the experiment the previous run started (promote, keep, or wait for more
evidence); when it says wait, nothing else runs. ``promote`` makes a model champion only on a first
run: afterwards the experiment decides, in the next run's ``conclude``.

One pipeline function serves every way users start it: the KFP UI and ``kfp run create`` (the
compiled YAML), ``abflow submit``/``abflow schedule`` and ``abflow run`` (the same function under
``kfp.local``). Every knob is a typed pipeline parameter. Caching is off on every step: a scheduled
retrain with unchanged parameters must retrain, redeploy and re-check, not replay yesterday's run.
"""

from typing import Any

from kfp import dsl

from abflow.components.datasets import BUNDLED_IRIS, DEFAULT_FEATURE_COLUMNS, DEFAULT_LABEL_COLUMN
from abflow.components.kaniko import kaniko_build
from abflow.components.steps import DEFAULT_COMPONENTS_IMAGE, Components, make_components

PIPELINE_NAME = "iris-ab"
STEP_NAMES = (
    "conclude", "train", "gate", "store", "build-image", "skip-image-build", "deploy-ab", "smoke-test", "promote",
)
"""The steps a run executes when kaniko has nothing to build (every local run); a kaniko build runs
``kaniko-build`` in place of ``skip-image-build``."""


def deploy_new_model(steps: Components, trained: Any, **params: Any) -> list[Any]:
    """Build the serving image, store the new model, deploy it as arm B, smoke-test and promote: the
    half of the DAG that runs only when there is a new model to test. Returns its tasks. The store
    waits for the image build, so a build that fails leaves no stored version behind (a failed deploy
    or smoke test deletes the one it was given)."""
    image = steps.build_image(builder=params["builder"], image_repo=params["image_repo"],
                              base_image=params["base_image"], artifact_root=params["artifact_root"])
    stored = steps.store(
        model=trained.outputs["model"],
        summary=trained.outputs["summary"],
        artifact_root=params["artifact_root"],
        model_name=params["model_name"],
        run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    ).after(image)
    with dsl.If(image.outputs["kaniko_needed"] == True, name="kaniko-build-needed"):  # noqa: E712 - a KFP condition
        kaniko = kaniko_build(context_uri=image.outputs["context_uri"], image=image.outputs["image_ref"])
    with dsl.Else(name="no-kaniko-build"):
        skipped = steps.skip_image_build(image_ref=image.outputs["image_ref"])
    deployed = steps.deploy_ab(
        target=params["target"],
        model_a_uri=stored.outputs["model_a_uri"],
        model_b_uri=stored.outputs["model_b_uri"],
        ratio_a=params["ratio_a"],
        ratio_schedule=params["ratio_schedule"],
        image_ref=image.outputs["image_ref"],
        image_digest=dsl.OneOf(kaniko.outputs["digest"], skipped.output),
        namespace=params["namespace"],
        deployment_name=params["deployment_name"],
        local_state_dir=params["local_state_dir"],
        local_port=params["local_port"],
        artifact_root=params["artifact_root"],
        model_name=params["model_name"],
        champion_version=stored.outputs["champion_version"],
        challenger_version=stored.outputs["version"],
        prometheus_url=params["prometheus_url"],
        run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        deploy_mode=params["deploy_mode"],
        shadow_fraction=params["shadow_fraction"],
    )
    smoked = steps.smoke_test(
        endpoint=deployed.outputs["endpoint"],
        record=deployed.outputs["record"],
        ratio_a=deployed.outputs["ratio_a"],
        requests=params["smoke_requests"],
        p99_budget_ms=params["p99_budget_ms"],
        artifact_root=params["artifact_root"],
        model_name=params["model_name"],
        experiment_id=deployed.outputs["experiment_id"],
        challenger_version=stored.outputs["version"],
        run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        mode=deployed.outputs["mode"],
    )
    promoted = steps.promote(
        artifact_root=params["artifact_root"],
        model_name=params["model_name"],
        version=stored.outputs["version"],
        run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        keep=params["keep"],
        local_state_dir=params["local_state_dir"],
        mode=deployed.outputs["mode"],
    ).after(smoked)
    return [stored, image, kaniko, skipped, deployed, smoked, promoted]


def retrain_and_deploy(steps: Components, *, data_uri: Any, feature_columns: Any, label_column: Any, c: Any,
                       max_iter: Any, test_size: Any, seed: Any, min_accuracy: Any, max_regression: Any,
                       **deploying: Any) -> list[Any]:
    """Train, gate and, when the gate finds a new model, deploy it (``deploying``: the parameters of
    ``deploy_new_model``): what runs once ``conclude`` lets the run go on. Returns its tasks."""
    trained = steps.train(data_uri=data_uri, feature_columns=feature_columns, label_column=label_column,
                          c=c, max_iter=max_iter, test_size=test_size, seed=seed)
    gated = steps.gate(
        model=trained.outputs["model"],
        holdout=trained.outputs["holdout"],
        summary=trained.outputs["summary"],
        artifact_root=deploying["artifact_root"],
        model_name=deploying["model_name"],
        min_accuracy=min_accuracy,
        max_regression=max_regression,
    )
    tasks = [trained, gated]
    with dsl.If(gated.outputs["Output"] == True, name="new-model-to-test"):  # noqa: E712 - a KFP condition
        tasks += deploy_new_model(steps, trained, **deploying)
    return tasks


def build_pipeline(components_image: str = DEFAULT_COMPONENTS_IMAGE) -> Any:
    """Build the pipeline whose steps run in ``components_image`` (an image holding abflow)."""
    steps = make_components(components_image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Decide the running A/B experiment (promote the challenger, keep the champion, or wait for "
            "evidence), then retrain the sklearn iris classifier, gate it, store it, build its serving "
            "image, deploy it as arm B of a RANDOM_ABTEST graph against the champion (or, with "
            "deploy_mode=shadow, as a shadow of the champion that no user sees) and smoke-test the "
            "endpoint (rolling back on failure); a first run promotes its model once it passed."
        ),
    )
    def iris_ab(
        data_uri: str = BUNDLED_IRIS,
        feature_columns: str = DEFAULT_FEATURE_COLUMNS,
        label_column: str = DEFAULT_LABEL_COLUMN,
        ratio_a: float = 0.5,
        min_accuracy: float = 0.9,
        max_regression: float = 0.02,
        c: float = 1.0,
        max_iter: int = 200,
        test_size: float = 0.25,
        seed: int = 42,
        model_name: str = "iris",
        artifact_root: str = "abflow-data",
        image_repo: str = "localhost:5000/abflow/iris-server",
        base_image: str = "python:3.11-slim",
        builder: str = "none",
        target: str = "local",
        namespace: str = "seldon",
        deployment_name: str = "iris-ab",
        local_state_dir: str = "abflow-data",
        local_port: int = 8000,
        smoke_requests: int = 200,
        p99_budget_ms: float = 500.0,
        ratio_schedule: str = "",
        prometheus_url: str = "",
        on_undecided: str = "wait",
        alpha: float = 0.05,
        min_feedback: int = 100,
        max_duration_hours: float = 0.0,
        keep: int = 5,
        p99_slack_ms: float = 5.0,
        deploy_mode: str = "ab",
        shadow_fraction: float = 1.0,
    ) -> None:
        concluded = steps.conclude(
            artifact_root=artifact_root,
            model_name=model_name,
            on_undecided=on_undecided,
            alpha=alpha,
            min_feedback=min_feedback,
            max_duration_hours=max_duration_hours,
            p99_slack_ms=p99_slack_ms,
            local_state_dir=local_state_dir,
            namespace=namespace,
            run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
        tasks = [concluded]
        with dsl.If(concluded.outputs["Output"] == True, name="retrain"):  # noqa: E712 - a KFP condition
            tasks += retrain_and_deploy(
                steps,
                data_uri=data_uri,
                feature_columns=feature_columns,
                label_column=label_column,
                c=c,
                max_iter=max_iter,
                test_size=test_size,
                seed=seed,
                min_accuracy=min_accuracy,
                max_regression=max_regression,
                artifact_root=artifact_root,
                model_name=model_name,
                ratio_a=ratio_a,
                image_repo=image_repo,
                base_image=base_image,
                builder=builder,
                target=target,
                namespace=namespace,
                deployment_name=deployment_name,
                local_state_dir=local_state_dir,
                local_port=local_port,
                smoke_requests=smoke_requests,
                p99_budget_ms=p99_budget_ms,
                ratio_schedule=ratio_schedule,
                prometheus_url=prometheus_url,
                keep=keep,
                deploy_mode=deploy_mode,
                shadow_fraction=shadow_fraction,
            )
        for task in tasks:
            task.set_caching_options(False)

    return iris_ab


iris_ab_pipeline = build_pipeline()

