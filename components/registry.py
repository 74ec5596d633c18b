"""The model registry inside the artifact store: versions, their metadata, and the champion pointer.

Layout under the artifact root (a folder or ``gs://bucket/prefix``, through ``abflow.components.store_writes``)::

    models/<name>/<version>/model.joblib        the pickled sklearn Pipeline (Seldon SKLEARN_SERVER convention)
    models/<name>/<version>/metadata.json       abflow.serving.artifact.ModelMetadata: sha256, library versions, ...
    models/<name>/<version>/metadata.json.sig   its HMAC, when ABFLOW_MODEL_SIGNING_KEY is set
    models/<name>/champion.json                 the version that serves as arm A, plus every past promotion

Versions are immutable: publishing never overwrites a different model, and writes ``metadata.json``
last, so a version whose publishing was cut short has none and no server will load it. ``champion.json``
is only ever changed by a compare-and-swap read-modify-write, so two runs promoting at the same moment
both land in its ``history`` and the later write becomes the current champion. The model URI it holds is
only believed if it names a version folder of that model in the same store: whoever can edit the file
must not be able to point the servers (which unpickle what they load) somewhere else.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from abflow.components.store_writes import ABSENT, open_writable_store
from abflow.components.training import TrainResult
from abflow.serving.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    ModelMetadata,
    runtime_versions,
    sha256_of,
    sign_metadata,
    signature_matches,
    signing_key_from_env,
)
from abflow.serving.store import Store, StoreError, open_store

CHAMPION_FILE = "champion.json"
PROMOTE_ATTEMPTS = 50
"""Each lost compare-and-swap means another promotion succeeded, so this is only reached when 50
promotions land while one is trying: far beyond any schedule, and a bound rather than a hang."""

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class PublishedModel:
    """A stored model version; ``uri`` is its folder, the ``modelUri`` a server is given."""

    name: str
    version: str
    uri: str
    sha256: str
    metadata: ModelMetadata


@dataclass(frozen=True)
class Champion:
    """One promotion: the version that serves as arm A from ``promoted_at`` on."""

    version: str
    model_uri: str
    metrics: dict[str, float]
    promoted_at: str
    run_id: str

    @classmethod
    def from_json_dict(cls, raw: Any, where: str) -> Champion:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        missing = {"version", "model_uri", "promoted_at"} - raw.keys()
        if missing:
            raise ValueError(f"{where} lacks {sorted(missing)}")
        return cls(
            version=str(raw["version"]),
            model_uri=str(raw["model_uri"]),
            metrics={str(k): float(v) for k, v in dict(raw.get("metrics") or {}).items()},
            promoted_at=str(raw["promoted_at"]),
            run_id=str(raw.get("run_id", "")),
        )


@dataclass(frozen=True)
class Arms:
    """The two models of the A/B graph: the champion (A) and the challenger (B)."""

    model_a_uri: str
    model_b_uri: str
    champion_version: str | None


def new_version(now: datetime | None = None) -> str:
    """A version name that sorts by creation time and is unique without coordination: the UTC time
    to the millisecond plus a random suffix, e.g. ``20250301-142501-123-9f3a1c``. It is lower case,
    so it also fits Kubernetes names and image tags."""
    moment = _utc(now)
    return f"{moment:%Y%m%d-%H%M%S}-{moment.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def publish_model(root_uri: str, name: str, train: TrainResult, *, run_id: str,
                  version: str | None = None) -> PublishedModel:
    """Write ``model.joblib``, then (with ``ABFLOW_MODEL_SIGNING_KEY`` set) ``metadata.json.sig``, then
    ``metadata.json`` into a new version folder, each atomically. The metadata goes last: servers load
    nothing without it, so a reader that finds it finds the model (and signature) complete beside it.

    Publishing the same bytes under the same version again (a retried step) returns the stored
    version; a different model under an existing version is refused."""
    now = datetime.now(UTC)
    version = check_version(version) if version is not None else new_version(now)
    store = open_writable_store(root_uri)
    folder = _model_key(name, version)
    sha = sha256_of(train.model_bytes)
    metadata = ModelMetadata(
        name=name,
        version=version,
        sha256=sha,
        versions=runtime_versions(),
        class_names=list(train.class_names),
        params=dict(train.params),
        metrics=dict(train.metrics),
        data_fingerprint=train.data_fingerprint,
        created_at=now.isoformat(timespec="seconds"),
        run_id=run_id,
        extra={"confusion_matrix": train.confusion_matrix},
    )
    model_key, metadata_key = f"{folder}/{MODEL_FILE}", f"{folder}/{METADATA_FILE}"
    immutable = (f"{store.uri_for(folder)} already holds a different model; versions are immutable: "
                 "publish under a new version")
    if not store.write_if_unchanged(model_key, train.model_bytes, ABSENT) and (
        sha256_of(store.read_bytes(model_key)) != sha
    ):
        raise StoreError(immutable)
    key = signing_key_from_env()
    signature_key = f"{folder}/{SIGNATURE_FILE}"
    stored, _ = store.read_versioned(metadata_key)
    if stored is None:
        if key is not None:  # a leftover of a publish cut short before its metadata is overwritten
            store.write_bytes(signature_key, sign_metadata(metadata.to_json(), key))
        if store.write_if_unchanged(metadata_key, metadata.to_json(), ABSENT):
            return PublishedModel(name=name, version=version, uri=store.uri_for(folder), sha256=sha,
                                  metadata=metadata)
        stored = store.read_bytes(metadata_key)  # a concurrent publish of this version got there first
    metadata = ModelMetadata.from_json(stored)
    if metadata.sha256 != sha:
        raise StoreError(immutable)
    if key is not None and not (store.exists(signature_key)
                                and signature_matches(stored, store.read_bytes(signature_key), key)):
        store.write_bytes(signature_key, sign_metadata(stored, key))  # same model: signing it is ours to do
    return PublishedModel(name=name, version=version, uri=store.uri_for(folder), sha256=sha,
                          metadata=metadata)


def read_model(root_uri: str, name: str, version: str) -> PublishedModel:
    """A published version, from its ``metadata.json``."""
    store = open_store(root_uri)
    folder = _model_key(name, check_version(version))
    metadata = ModelMetadata.from_json(store.read_bytes(f"{folder}/{METADATA_FILE}"))
    return PublishedModel(name=name, version=version, uri=store.uri_for(folder), sha256=metadata.sha256,
                          metadata=metadata)


def read_champion(root_uri: str, name: str) -> Champion | None:
    """The current champion, or ``None`` before the first promotion."""
    store = open_writable_store(root_uri)
    data, _ = store.read_versioned(_champion_key(name))
    if data is None:
        return None
    where = store.uri_for(_champion_key(name))
    champion = Champion.from_json_dict(_parse_champion_file(data, where), where)
    uri = model_uri_in_store(store, name, champion.model_uri, where=where)
    if uri != store.uri_for(_model_key(name, champion.version)):
        raise StoreError(f"{where} names version {champion.version} but its model_uri {champion.model_uri!r} is "
                         f"another version's folder: {_CHAMPION_FIX}")
    return replace(champion, model_uri=uri)


_CHAMPION_FIX = "promote the intended version again (or restore champion.json from its history)"


def model_uri_in_store(store: Store, name: str, uri: str, *, where: str) -> str:
    """``uri``, as this store spells it, if it is the folder of a version of model ``name`` in ``store``.

    For every model URI read back from a record in the store (the champion pointer, an experiment's
    arms): servers unpickle what such a URI names, so a record edited to point at another bucket, another
    folder or up with ``..`` is refused, with the reason, rather than followed."""
    try:
        key = store.key_for(uri)
    except StoreError as exc:
        raise StoreError(f"{where} points at a model outside its artifact store: {exc}; {_CHAMPION_FIX}") from None
    prefix, _, version = key.rpartition("/")
    if prefix != f"models/{check_name(name)}" or not _VERSION.fullmatch(version) or version == CHAMPION_FILE:
        raise StoreError(f"{where} points at {uri!r}, which is not a version folder of model {name!r} "
                         f"(models/{name}/<version> in {store.uri}); {_CHAMPION_FIX}")
    return store.uri_for(key)


def choose_arms(root_uri: str, name: str, new_model_uri: str) -> Arms:
    """Champion as arm A, the new model as arm B; before any promotion both arms serve the new model,
    as the tutorial's first deployment does."""
    champion = read_champion(root_uri, name)
    if champion is None:
        return Arms(model_a_uri=new_model_uri, model_b_uri=new_model_uri, champion_version=None)
    if not open_store(champion.model_uri).exists(MODEL_FILE):  # a URI read_champion confined to the store
        raise StoreError(
            f"the champion of {name!r} is version {champion.version}, but {champion.model_uri}/{MODEL_FILE} "
            f"is gone; restore it, or promote another version (or delete {CHAMPION_FILE} to start over)"
        )
    return Arms(model_a_uri=champion.model_uri, model_b_uri=new_model_uri,
                champion_version=champion.version)


def promote(root_uri: str, name: str, published: PublishedModel, *, run_id: str) -> Champion:
    """Make ``published`` the champion, appending the promotion to ``champion.json``'s history.

    A compare-and-swap loop: read the file and its generation, write the new document only if the
    generation is unchanged, otherwise re-read and try again. A write whose response was lost but
    which did land (and so conflicts with itself on retry) is recognised by its promotion id."""
    if published.name != name:
        raise ValueError(f"cannot promote a model named {published.name!r} as champion of {name!r}")
    store = open_writable_store(root_uri)
    key = _champion_key(name)
    where = store.uri_for(key)
    champion = Champion(version=published.version, model_uri=published.uri,
                        metrics=dict(published.metadata.metrics),
                        promoted_at=datetime.now(UTC).isoformat(timespec="microseconds"), run_id=run_id)
    entry = {**asdict(champion), "promotion_id": uuid.uuid4().hex}
    for attempt in range(PROMOTE_ATTEMPTS):
        data, generation = store.read_versioned(key)
        document = _parse_champion_file(data, where) if data is not None else {}
        history = list(document.get("history", []))
        if any(isinstance(past, dict) and past.get("promotion_id") == entry["promotion_id"]
               for past in history):
            return champion
        updated = {**document, "name": name, **entry, "history": [*history, entry]}
        if store.write_if_unchanged(key, json.dumps(updated, indent=2).encode(), generation):
            return champion
        # Jitter so that several losers do not collide again in lockstep.
        time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
    raise StoreError(
        f"gave up promoting {published.version} after {PROMOTE_ATTEMPTS} conflicting updates of {where}; "
        "other runs kept changing it: retry the promote step"
    )


def promote_version(root_uri: str, name: str, version: str, *, run_id: str) -> Champion:
    """``promote`` a version that is already in the store, by name."""
    return promote(root_uri, name, read_model(root_uri, name, version), run_id=run_id)


def _parse_champion_file(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); fix it or restore it from its history") from exc
    if not isinstance(document, dict) or not isinstance(document.get("history", []), list):
        raise ValueError(f"{where} must be a JSON object with a 'history' list")
    return document


def _champion_key(name: str) -> str:
    return f"models/{check_name(name)}/{CHAMPION_FILE}"


def _model_key(name: str, version: str) -> str:
    return f"models/{check_name(name)}/{version}"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"model name {name!r} must be 1-63 lower-case letters, digits or '-', starting and ending "
            "with a letter or digit (it names folders, images and Kubernetes objects)"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version) or version == CHAMPION_FILE:
        raise ValueError(
            f"model version {version!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return version


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware (e.g. datetime.now(UTC)), got naive {now}")
    return now.astimezone(UTC)
