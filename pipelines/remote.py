"""Start and schedule the compiled pipeline on Kubeflow Pipelines, through ``kfp.Client``.

``kfp.Client`` speaks KFP's v2beta1 REST API (experiments, uploads, runs, recurring runs); this module
decides what to send and closes the gaps it leaves:

* parameters typed by the pipeline's declarations and caching off on every task of every DAG
  (``abflow.pipelines.package``: the client's ``enable_caching`` reaches only the root DAG);
* a recurring run needs both a pipeline id and a version id: the pipeline is stored once and a
  version named by the spec's content hash is added only when the spec changed;
* waiting for a run polls ``get_run`` with our own deadline, because the client's
  ``wait_for_run_completion`` does not treat ``CANCELED`` as finished and would wait out its timeout;
* the client prints links on stdout; they go to stderr so stdout holds only abflow's own answer;
* its ``ApiException``/connection errors become messages that say what to check.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from abflow.pipelines.package import PipelinePackage, SubmissionError, load_package, typed_params, without_caching
from abflow.pipelines.triggers import CRON_EXAMPLE, parse_cron, parse_every

TERMINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")
PORT_FORWARD_HINT = (
    "check --host (e.g. kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080)"
)
T = TypeVar("T")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    url: str
    state: str


@dataclass(frozen=True)
class ScheduleInfo:
    recurring_run_id: str
    url: str
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str
    trigger: dict[str, Any]


class Kfp:
    """A ``kfp.Client`` whose every call reports failures as ``SubmissionError`` with what to check."""

    def __init__(self, host: str | None, *, token: str | None = None, namespace: str | None = None) -> None:
        if not host:
            raise SubmissionError(f"no KFP host: pass --host or set KF_PIPELINES_ENDPOINT; {PORT_FORWARD_HINT}")
        import kfp

        self.host = host.rstrip("/")
        self.namespace = namespace
        with warnings.catch_warnings():
            # "only works with KFP v2.0.0-beta.2 and later": docs/cluster.md pins a later backend.
            warnings.simplefilter("ignore", FutureWarning)
            self.client = self.call(
                "connect",
                lambda: kfp.Client(host=self.host, existing_token=token, namespace=namespace or "kubeflow"),
            )

    def ui_url(self, fragment: str) -> str:
        return f"{self.host}/#/{fragment}"

    def call(self, what: str, request: Callable[[], T]) -> T:
        import kfp_server_api
        import urllib3

        try:
            with contextlib.redirect_stdout(sys.stderr):
                return request()
        except kfp_server_api.ApiException as exc:
            hint = " (check --token / KFP_TOKEN)" if exc.status in (401, 403) else ""
            raise SubmissionError(f"KFP refused to {what}: HTTP {exc.status}: {_server_message(exc)}{hint}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise SubmissionError(f"cannot reach KFP at {self.host} to {what}: {exc}; {PORT_FORWARD_HINT}") from None
        except TimeoutError:
            # kfp.Client's health check retries 5 times, 5 s apart, then raises this.
            raise SubmissionError(
                f"KFP at {self.host} does not answer GET /apis/v2beta1/healthz: is it the KFP API "
                f"(no path after the port)? {PORT_FORWARD_HINT}"
            ) from None

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (``kfp.Client.create_experiment`` reuses)."""
        experiment = self.call(f"get or create experiment {name!r}", lambda: self.client.create_experiment(name=name))
        return str(experiment.experiment_id)

    def pipeline_version(self, package: PipelinePackage, name: str) -> tuple[str, str]:
        """(pipeline_id, pipeline_version_id) of ``package`` stored as pipeline ``name``.

        Versions are named ``<name>-<sha256[:12]>`` of their spec, so scheduling an unchanged pipeline
        again reuses its version instead of piling up identical ones. (Uploading a new pipeline also
        stores KFP's default version, named like the pipeline; abflow schedules a content-named one.)
        """
        version_name = f"{name}-{package.content_hash()[:12]}"
        with package.written() as path:
            pipeline_id = self.call(f"find pipeline {name!r}", lambda: self.client.get_pipeline_id(name))
            if pipeline_id is None:
                uploaded = self.call(
                    f"upload pipeline {name!r}",
                    lambda: self.client.upload_pipeline(str(path), pipeline_name=name, namespace=self.namespace),
                )
                pipeline_id = uploaded.pipeline_id
            listed = self.call(
                f"list versions of pipeline {name!r}",
                lambda: self.client.list_pipeline_versions(pipeline_id, filter=_display_name_is(version_name)),
            )
            found = [v for v in listed.pipeline_versions or [] if v.display_name == version_name]
            if found:
                return str(pipeline_id), str(found[0].pipeline_version_id)
            version = self.call(
                f"upload version {version_name!r}",
                lambda: self.client.upload_pipeline_version(str(path), version_name, pipeline_id=pipeline_id),
            )
        return str(pipeline_id), str(version.pipeline_version_id)

    def run_state(self, run_id: str) -> str:
        run = self.call(f"get run {run_id}", lambda: self.client.get_run(run_id))
        return str(run.state or "RUNTIME_STATE_UNSPECIFIED")


def submit(
    package_path: str | Path,
    *,
    host: str | None,
    experiment: str,
    params: Mapping[str, Any],
    wait: bool,
    timeout: float = 3600,
    poll_interval: float = 5,
    service_account: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> RunInfo:
    """Start one run of the compiled pipeline, caching off; with ``wait``, until it finishes."""
    package = without_caching(load_package(package_path))
    typed = typed_params(params, package.pipeline_spec)
    kfp = Kfp(host, token=token, namespace=namespace)
    experiment_id = kfp.experiment_id(experiment)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    with package.written() as path:
        run = kfp.call(
            "create a run",
            lambda: kfp.client.run_pipeline(
                experiment_id=experiment_id,
                job_name=f"{package.name} {stamp}",
                pipeline_package_path=str(path),
                params=typed,
                service_account=service_account,
            ),
        )
    run_id = str(run.run_id)
    url = kfp.ui_url(f"runs/details/{run_id}")
    state = str(run.state or "PENDING")
    if wait:
        state = _wait_for_run(kfp, run_id, url, timeout=timeout, poll_interval=poll_interval)
    return RunInfo(run_id=run_id, url=url, state=state)


def _wait_for_run(kfp: Kfp, run_id: str, url: str, *, timeout: float, poll_interval: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = kfp.run_state(run_id)
        if state in TERMINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise SubmissionError(f"run {run_id} still {state} after {timeout:g}s; follow it at {url}")
        time.sleep(poll_interval)


def schedule(
    package_path: str | Path,
    *,
    host: str | None,
    experiment: str,
    name: str,
    cron: str | None,
    every: str | None,
    params: Mapping[str, Any],
    max_concurrency: int = 1,
    catchup: bool = False,
    service_account: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> ScheduleInfo:
    """Create a recurring run of the pipeline (stored as pipeline ``name``), caching off.

    Exactly one of ``cron`` (KFP's 6 fields, seconds first) or ``every`` (``24h``) is required.
    ``max_concurrency`` 1 and no catch-up by default: a retrain that outlasts its interval, or a
    cluster that was down for a week, must not start a pile of overlapping retrains.
    """
    if (cron is None) == (every is None):
        raise SubmissionError(f"give exactly one of --cron ({CRON_EXAMPLE}) or --every (e.g. 24h)")
    if max_concurrency < 1:
        raise SubmissionError(f"max_concurrency must be at least 1, got {max_concurrency}")
    cron_expression = parse_cron(cron) if cron is not None else None
    interval = parse_every(every) if every is not None else None
    package = without_caching(load_package(package_path))
    typed = typed_params(params, package.pipeline_spec)
    kfp = Kfp(host, token=token, namespace=namespace)
    experiment_id = kfp.experiment_id(experiment)
    pipeline_id, version_id = kfp.pipeline_version(package, name)
    created = kfp.call(
        f"create recurring run {name!r}",
        lambda: kfp.client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=name,
            description=f"abflow schedule of {package.name}",
            cron_expression=cron_expression,
            interval_second=interval,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=typed,
            pipeline_id=pipeline_id,
            version_id=version_id,
            service_account=service_account,
        ),
    )
    recurring_id = str(created.recurring_run_id)
    trigger = (
        {"cron_schedule": {"cron": cron_expression}}
        if cron_expression
        else {"periodic_schedule": {"interval_second": interval}}
    )
    return ScheduleInfo(
        recurring_run_id=recurring_id,
        url=kfp.ui_url(f"recurringrun/details/{recurring_id}"),
        pipeline_id=pipeline_id,
        pipeline_version_id=version_id,
        experiment_id=experiment_id,
        trigger=trigger,
    )


def _display_name_is(name: str) -> str:
    """A v2beta1 list filter, in the form ``kfp.Client`` itself builds for ``get_pipeline_id``."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _server_message(exc: Any) -> str:
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        return str(json.loads(exc.body).get("message") or exc.body)
    return str(exc.body or exc.reason)
