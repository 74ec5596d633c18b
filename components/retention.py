"""Retention: which stored model versions may go, and deleting them.

Every run stores a version, so a nightly schedule fills the artifact store with models nobody will
serve again. ``prune_versions`` keeps the ``keep`` newest versions of a model and deletes the older
ones, except any version still in use: the champion, an arm of a running experiment, and whatever
the caller names (the version just deployed, the models the local endpoint and its rollback target
serve). ``discard_version`` is the same rule for one version: what a run that failed after storing
its model calls, so a failed run leaves no never-deployed version behind.

A version is deleted ``metadata.json`` first, so a server never loads a half-deleted one; a version
without ``metadata.json`` is a publish in progress (or one cut short) and is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from abflow.components.experiment import RUNNING, ExperimentError, list_experiments
from abflow.components.registry import check_name, check_version, read_champion
from abflow.components.store_writes import WritableStore, open_writable_store
from abflow.serving.artifact import METADATA_FILE, ModelMetadata
from abflow.serving.store import StoreError

DEFAULT_KEEP = 5


@dataclass(frozen=True)
class Retention:
    """What one pruning kept (version → why) and deleted (or, with ``dry_run``, would delete)."""

    model_name: str
    kept: Mapping[str, str]
    deleted: tuple[str, ...]
    dry_run: bool = False

    def describe(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        gone = f": {verb} {len(self.deleted)} ({', '.join(self.deleted)})" if self.deleted else f", {verb} none"
        return f"retention kept {len(self.kept)} version(s) of {self.model_name}{gone}"

    def lines(self) -> list[str]:
        """One line per version, newest first within each group: for ``abflow gc``."""
        return ([f"keep    {version}  ({why})" for version, why in self.kept.items()]
                + [f"{'delete' if self.dry_run else 'deleted'}  {version}" for version in self.deleted])


def versions_in_use(artifact_root: str, model_name: str, *, serving_uris: Iterable[str] = (),
                    protect: Iterable[str] = ()) -> dict[str, str]:
    """Version → why it must stay: the champion, the arms of running experiments, the versions
    ``serving_uris`` point at (in this store) and ``protect``."""
    in_use: dict[str, str] = {version: "protected" for version in protect if version}
    champion = read_champion(artifact_root, model_name)
    if champion is not None:
        in_use[champion.version] = "champion"
    for experiment in list_experiments(artifact_root, model_name):
        if experiment.status == RUNNING:
            for arm in experiment.arms:
                in_use.setdefault(arm.version, f"{arm.role} of running experiment {experiment.id}")
    store = open_writable_store(artifact_root)
    for uri in serving_uris:
        version = _version_at(store, model_name, uri)
        if version is not None:
            in_use.setdefault(version, "served by the local endpoint or its rollback target")
    return in_use


def stored_versions(artifact_root: str, model_name: str) -> list[tuple[str, ModelMetadata]]:
    """Every complete version (it has ``metadata.json``), newest first by creation time, then name."""
    store = open_writable_store(artifact_root)
    prefix = f"models/{check_name(model_name)}/"
    folders = sorted({key[len(prefix):].split("/", 1)[0] for key in store.list_keys(prefix)
                      if key.endswith(f"/{METADATA_FILE}") and key.count("/") == 3})
    found = [(version, ModelMetadata.from_json(store.read_bytes(f"{prefix}{version}/{METADATA_FILE}")))
             for version in folders]
    return sorted(found, key=lambda item: (item[1].created_at, item[0]), reverse=True)


def prune_versions(artifact_root: str, model_name: str, *, keep: int = DEFAULT_KEEP,
                   serving_uris: Iterable[str] = (), protect: Iterable[str] = (), dry_run: bool = False) -> Retention:
    """Delete every version of ``model_name`` but the ``keep`` newest and those in use
    (``versions_in_use``); with ``dry_run`` only say which."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest versions retention keeps), got {keep!r}")
    in_use = versions_in_use(artifact_root, model_name, serving_uris=serving_uris, protect=protect)
    kept: dict[str, str] = {}
    doomed: list[str] = []
    for rank, (version, _) in enumerate(stored_versions(artifact_root, model_name)):
        if version in in_use:
            kept[version] = in_use[version]
        elif rank < keep:
            kept[version] = f"one of the {keep} newest"
        else:
            doomed.append(version)
    if not dry_run:
        store = open_writable_store(artifact_root)
        for version in doomed:
            _delete(store, model_name, version)
    return Retention(model_name, kept, tuple(doomed), dry_run)


def discard_version(artifact_root: str, model_name: str, version: str, *,
                    serving_uris: Iterable[str] = ()) -> str | None:
    """Delete ``version`` unless it is in use; returns why it stays, or ``None`` once it is gone. For
    a run that stored ``version`` and then failed: nothing will ever serve it."""
    why = versions_in_use(artifact_root, model_name, serving_uris=serving_uris).get(version)
    if why is None:
        _delete(open_writable_store(artifact_root), model_name, version)
    return why


def discard_after_failure(artifact_root: str, model_name: str, version: str, *, local_state_dir: str = "") -> str:
    """``discard_version`` for a step that fails after the run stored ``version``, keeping what the
    local endpoint under ``local_state_dir`` (if any) and its rollback target serve: a line for the
    step's log. It never raises, so the error the run reports stays the step's own."""
    try:
        why = discard_version(artifact_root, model_name, version, serving_uris=served_locally(local_state_dir))
    except (StoreError, ExperimentError, ValueError, OSError) as exc:
        return f"could not delete version {version}, which this failed run stored: {exc}"
    return f"version {version} stays: {why}" if why else f"deleted version {version}: this failed run stored it"


def prune_after_deploy(artifact_root: str, model_name: str, *, keep: int, deployed: str,
                       local_state_dir: str) -> str:
    """Retention once a run deployed ``deployed`` and passed its smoke test: the pipeline's last step
    prunes with it protected, and with whatever the local endpoint and its rollback target serve.
    A line for the step's log; a pruning that fails says so and leaves the run successful."""
    try:
        return prune_versions(artifact_root, model_name, keep=keep, protect=[deployed],
                              serving_uris=served_locally(local_state_dir)).describe()
    except (StoreError, ExperimentError, OSError) as exc:
        return f"retention skipped: {exc}"


def served_locally(local_state_dir: str) -> list[str]:
    """The model URIs the local endpoint under ``local_state_dir`` serves, and its rollback target."""
    from abflow.components.local_target import deployed_model_uris

    return deployed_model_uris(Path(local_state_dir)) if local_state_dir else []


def _delete(store: WritableStore, model_name: str, version: str) -> None:
    store.delete_folder(f"models/{check_name(model_name)}/{check_version(version)}", METADATA_FILE)


def _version_at(store: WritableStore, model_name: str, uri: str) -> str | None:
    try:
        key = store.key_for(uri)
    except StoreError:
        return None  # another store, or a plain file: nothing of ours to protect
    parts = key.split("/")
    return parts[2] if len(parts) == 3 and parts[:2] == ["models", model_name] else None
