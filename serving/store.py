"""One way to read the artifact store, whether it is a local folder or a GCS bucket: what a model server
needs to load its model, and the base the pipeline's writes build on (``abflow.components.store_writes``).

``open_store(uri)`` turns a path, a ``file://`` URI or a ``gs://bucket/prefix`` URI into a ``Store``;
nothing else in abflow branches on the scheme (the KServe storage idea). Keys are ``/``-separated
paths relative to the store's root, identical on both backends; ``key_for`` maps a URI read from a
record back to a key, refusing one that lies outside the store.

``google-cloud-storage`` is imported only when a ``gs://`` store is opened, so the serving image
needs it only for GCS models, and every network call has a short deadline so that an unreachable
bucket fails in seconds with a message that says what to check, rather than hanging for minutes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from google.cloud.storage import Bucket

DEFAULT_DEADLINE_S = 10.0
"""Total time one GCS operation may spend retrying before it gives up. Short on purpose: a pipeline
step pointed at a wrong bucket or emulator should fail within ~15 s and say why, not after the client
library's default two minutes."""

EMULATOR_PROJECT = "abflow-local"


class StoreError(RuntimeError):
    """The store could not do what was asked; the message names the URI and what to check."""


class NotFoundInStore(StoreError):
    """The key does not exist in the store (the message names its full URI)."""


class Store(Protocol):
    """A place that holds keyed bytes: a local folder or a GCS prefix."""

    @property
    def uri(self) -> str:
        """The store's root, as a URI that ``open_store`` accepts."""
        ...

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (a file or a folder), usable by other processes and machines."""
        ...

    def key_for(self, uri: str) -> str:
        """The key of ``uri`` in this store; ``StoreError`` if it lies anywhere else (another bucket or
        folder, or a ``..`` climbing out), so a URI read from a record cannot point outside its store."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


def open_store(uri: str, *, deadline_s: float = DEFAULT_DEADLINE_S) -> Store:
    """Open the store at a local path, ``file:///abs/path`` or ``gs://bucket[/prefix]``.

    ``deadline_s`` bounds each GCS operation including retries; it has no effect on local stores."""
    where = store_location(uri)
    return LocalStore(where) if isinstance(where, Path) else GcsStore(*where, deadline_s=deadline_s)


def store_location(uri: str) -> Path | tuple[str, str]:
    """Where a store URI points: a local folder, or a GCS ``(bucket, prefix)``; ``StoreError`` if nowhere."""
    if not uri:
        raise StoreError("empty artifact store URI: give a folder, file:///abs/path or gs://bucket/prefix")
    parsed = urlparse(uri)
    if parsed.scheme == "gs":
        if not parsed.netloc:
            raise StoreError(f"{uri!r} names no bucket: use gs://<bucket>/<prefix>")
        prefix = parsed.path.strip("/")
        if prefix:
            check_key(prefix)
        return parsed.netloc, prefix
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(
                f"{uri!r} is not an absolute file URI (host {parsed.netloc!r}): use file:///abs/path "
                "or a plain path"
            )
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, i.e. a path
        raise StoreError(
            f"unsupported artifact store scheme {parsed.scheme!r} in {uri!r}: use a folder, "
            "file:///abs/path or gs://bucket/prefix"
        )
    return Path(uri)


def check_key(key: str) -> str:
    """Reject keys that would escape the root or collide with the local store's hidden lock and
    temporary files (names starting with ``.``); both backends accept exactly the same keys."""
    parts = key.split("/")
    if not key or any(not part or part.startswith(".") for part in parts):
        raise StoreError(
            f"invalid store key {key!r}: use '/'-separated names without empty parts, leading '/' "
            "or parts starting with '.'"
        )
    return key


def _relative_key(relative: str, uri: str, root: str) -> str:
    try:
        return check_key(relative.rstrip("/"))
    except StoreError:
        raise StoreError(f"{uri!r} does not name a key inside the store {root} (an empty, '.' or '..' "
                         "part, or a hidden name)") from None


class LocalStore:
    """A folder on this machine, or a mounted volume."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri_for(self, key: str) -> str:
        return self.path_for(key).as_uri()

    def key_for(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
            path = Path(unquote(parsed.path))
        elif len(parsed.scheme) <= 1:
            path = Path(uri).expanduser().absolute()
        else:
            raise StoreError(f"{uri!r} is not in the local store {self.uri}")
        if not path.is_relative_to(self.root):
            raise StoreError(f"{uri!r} lies outside the store {self.uri}")
        return _relative_key(path.relative_to(self.root).as_posix(), uri, self.uri)

    def read_bytes(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundInStore(f"{path.as_uri()} does not exist") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path.as_uri()}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()


class GcsStore:
    """Objects under ``gs://<bucket>/<prefix>`` through the official ``google-cloud-storage`` client.

    With ``STORAGE_EMULATOR_HOST`` set (fake-gcs-server in tests and local runs) the client talks to
    that endpoint with anonymous credentials; otherwise it uses Application Default Credentials."""

    def __init__(self, bucket: str, prefix: str = "", *, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.bucket_name = bucket
        self.prefix = prefix
        self.deadline_s = deadline_s
        self._bucket = self._connect()

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}" if self.prefix else f"gs://{self.bucket_name}"

    def __repr__(self) -> str:
        return f"GcsStore({self.uri!r})"

    def uri_for(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{self._name(key)}"

    def key_for(self, uri: str) -> str:
        parsed = urlparse(uri)
        root = f"{self.prefix}/" if self.prefix else ""
        name = parsed.path.lstrip("/")
        if parsed.scheme != "gs" or parsed.netloc != self.bucket_name or not name.startswith(root):
            raise StoreError(f"{uri!r} lies outside the store {self.uri}")
        return _relative_key(name[len(root):], uri, self.uri)

    def read_bytes(self, key: str) -> bytes:
        data, _ = self._download(key)
        if data is None:
            raise NotFoundInStore(
                f"{self.uri_for(key)} does not exist (or bucket {self.bucket_name!r} does not)"
            )
        return data

    def exists(self, key: str) -> bool:
        with self._translate(key, action="read"):
            return bool(self._bucket.blob(self._name(key)).exists(**self._call_options()))

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call_options(self) -> dict[str, Any]:
        """Per-call retry and timeout: retry transient errors until the deadline, and never let one
        attempt (connect or a silent peer) use more than half of it."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        attempt_s = self.deadline_s / 2
        return {"retry": DEFAULT_RETRY.with_timeout(self.deadline_s), "timeout": (attempt_s, attempt_s)}

    def _download(self, key: str) -> tuple[bytes | None, int]:
        """The bytes (None when missing) and the object generation they are (0 when missing)."""
        from google.api_core.exceptions import NotFound

        blob = self._bucket.blob(self._name(key))
        with self._translate(key, action="read"):
            try:
                data = blob.download_as_bytes(**self._call_options())
            except NotFound:
                return None, 0
        # The download response carries the generation of exactly the bytes it returned.
        return data, int(blob.generation or 0)

    @contextlib.contextmanager
    def _translate(self, key: str, *, action: str) -> Iterator[None]:
        """Turn the client's many exception types into one ``StoreError`` that says what to check,
        keeping the original as ``__cause__``."""
        from google.api_core.exceptions import (
            Forbidden,
            GoogleAPIError,
            NotFound,
            RetryError,
            Unauthorized,
        )
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        target = "/".join(part for part in (self.uri, key) if part)
        try:
            yield
        except NotFound as exc:
            hint = "it does not exist" if action == "read" else f"bucket {self.bucket_name!r} does not exist"
            raise StoreError(f"{target}: {hint} ({exc.code} {exc.message})") from exc
        except (Unauthorized, Forbidden) as exc:
            raise StoreError(
                f"{target}: access denied ({exc.code} {exc.message}); check the credentials "
                "(GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`) and that "
                f"they may {action} in bucket {self.bucket_name!r}"
            ) from exc
        except (RetryError, RequestException, GoogleAuthError, GoogleAPIError, OSError) as exc:
            reason = exc.__cause__ if isinstance(exc, RetryError) and exc.__cause__ else exc
            raise StoreError(
                f"cannot {action} {target} (gave up within {self.deadline_s:g}s): "
                f"{type(reason).__name__}: {reason}; "
                f"check the network, {self._endpoint_hint()}, the credentials and that bucket "
                f"{self.bucket_name!r} exists"
            ) from exc

    @staticmethod
    def _endpoint_hint() -> str:
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            return f"that the emulator at STORAGE_EMULATOR_HOST={emulator} is running"
        return "STORAGE_EMULATOR_HOST (unset: talking to Google Cloud Storage itself)"

    def _connect(self) -> Bucket:
        try:
            from google.cloud import storage
        except ImportError as exc:
            raise StoreError(
                f"{self.uri} needs the google-cloud-storage package: pip install google-cloud-storage"
            ) from exc
        from google.auth.exceptions import GoogleAuthError

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]  # google-auth is untyped here
            client = storage.Client(project=EMULATOR_PROJECT, credentials=anonymous)
        else:
            try:
                client = storage.Client()
            except GoogleAuthError as exc:
                raise StoreError(
                    f"no Google Cloud credentials for {self.uri}: {exc}; set "
                    "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`, "
                    "or point STORAGE_EMULATOR_HOST at a GCS emulator"
                ) from exc
        return client.bucket(self.bucket_name)
