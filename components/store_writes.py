"""Writing the artifact store, for the pipeline's steps: atomic replaces and compare-and-swap updates.

The read path (``abflow.serving.store``) is all a model server needs; what the steps add here:

* **Atomic writes.** A reader never sees half a file: locally every write goes to a temporary file
  that replaces the target with ``os.replace``; GCS object writes are atomic by nature.
* **Compare-and-swap.** ``read_versioned`` + ``write_if_unchanged`` let two pipeline runs update the
  same small file (the champion pointer, an experiment record) without losing either update. On GCS
  this is the object generation with an ``if_generation_match`` precondition; locally it is a content
  token checked and written while holding an exclusive ``flock`` on a sidecar lock file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NewType, Protocol

from abflow.serving.local_files import exclusive_lock, write_atomically
from abflow.serving.store import (
    DEFAULT_DEADLINE_S,
    GcsStore,
    LocalStore,
    NotFoundInStore,
    Store,
    StoreError,
    check_key,
    store_location,
)

Generation = NewType("Generation", int)
"""An opaque version token for one key, as returned by ``read_versioned``; pass it back unchanged.

``ABSENT`` (0) means "the key does not exist", mirroring GCS's ``if_generation_match=0``."""

ABSENT = Generation(0)


class WritableStore(Store, Protocol):
    """A store the pipeline's steps write to."""

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` atomically, replacing what was there; return the key's URI."""
        ...

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix`` (a plain string prefix, as GCS lists), sorted."""
        ...

    def read_versioned(self, key: str) -> tuple[bytes | None, Generation]:
        """The current bytes (``None`` when missing) and the token ``write_if_unchanged`` expects."""
        ...

    def write_if_unchanged(self, key: str, data: bytes, generation: Generation) -> bool:
        """Write only if ``key`` is still at ``generation`` (``ABSENT``: still missing).

        Returns ``False``, writing nothing, when someone else changed the key in between; the caller
        re-reads and retries its read-modify-write."""
        ...

    def delete_folder(self, folder: str, first: str) -> int:
        """Delete every key under ``folder/``, ``folder/<first>`` before the others (a model version's
        ``metadata.json``: without it no server loads what is left, should the deletion stop half-way).
        Returns how many keys were deleted; a missing folder is 0."""
        ...


def open_writable_store(uri: str, *, deadline_s: float = DEFAULT_DEADLINE_S) -> WritableStore:
    """``abflow.serving.store.open_store``, for writing: the same URIs, the same keys."""
    where = store_location(uri)
    if isinstance(where, Path):
        return LocalWritableStore(where)
    return GcsWritableStore(*where, deadline_s=deadline_s)


def check_prefix(prefix: str) -> str:
    """Validate a listing prefix and return its folder part (``""`` for the root): everything up to
    the last ``/`` must be a valid key; the last part is a partial name and may be empty."""
    folder = prefix.rpartition("/")[0]
    if folder:
        check_key(folder)
    elif prefix.startswith("/"):
        check_key(prefix)
    return folder


def content_token(data: bytes) -> Generation:
    """A non-zero token derived from the content: equal tokens mean equal bytes, which is all a
    compare-and-swap needs (rewriting a file that still holds what we read loses nothing)."""
    return Generation(int.from_bytes(hashlib.sha256(data).digest()[:7], "big") + 1)


class LocalWritableStore(LocalStore):
    """A local folder written under ``flock`` (so a mounted volume must support it)."""

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self.path_for(key)
        with self._locked(path):
            self._replace(path, data)
        return path.as_uri()

    def list_keys(self, prefix: str = "") -> list[str]:
        # Walk only the deepest folder the prefix names; the prefix's last part filters names there.
        folder = self.root / check_prefix(prefix)
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            base = Path(dirpath).relative_to(self.root)
            for name in filenames:
                key = (base / name).as_posix()
                if not name.startswith(".") and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def read_versioned(self, key: str) -> tuple[bytes | None, Generation]:
        try:
            data = self.read_bytes(key)
        except NotFoundInStore:
            return None, ABSENT
        return data, content_token(data)

    def write_if_unchanged(self, key: str, data: bytes, generation: Generation) -> bool:
        path = self.path_for(key)
        with self._locked(path):
            try:
                current = content_token(path.read_bytes())
            except FileNotFoundError:
                current = ABSENT
            if current != generation:
                return False
            self._replace(path, data)
        return True

    def delete_folder(self, folder: str, first: str) -> int:
        path = self.path_for(folder)
        keys = self.list_keys(f"{folder}/")
        try:
            (path / first).unlink(missing_ok=True)
            if path.exists():
                shutil.rmtree(path)
        except OSError as exc:
            raise StoreError(f"cannot delete {path.as_uri()}: {exc}") from exc
        return len(keys)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """Hold an exclusive lock on ``path``'s sidecar ``.<name>.lock``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(path.with_name(f".{path.name}.lock")):
                yield
        except OSError as exc:
            raise StoreError(f"cannot write under {path.parent.as_uri()}: {exc}") from exc

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        try:
            write_atomically(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write {path.as_uri()}: {exc}") from exc


class GcsWritableStore(GcsStore):
    """Objects under ``gs://<bucket>/<prefix>``, written with generation preconditions where asked."""

    def write_bytes(self, key: str, data: bytes) -> str:
        with self._translate(key, action="write"):
            self._bucket.blob(self._name(key)).upload_from_string(data, **self._call_options())
        return self.uri_for(key)

    def list_keys(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        check_prefix(prefix)
        with self._translate(prefix, action="list"):
            blobs = self._bucket.client.list_blobs(self._bucket, prefix=root + prefix, **self._call_options())
            return sorted(blob.name[len(root):] for blob in blobs)

    def read_versioned(self, key: str) -> tuple[bytes | None, Generation]:
        data, generation = self._download(key)
        return data, Generation(generation)

    def delete_folder(self, folder: str, first: str) -> int:
        from google.api_core.exceptions import NotFound

        keys = self.list_keys(f"{folder}/")
        ordered = sorted(keys, key=lambda key: key != f"{folder}/{first}")
        for key in ordered:
            with self._translate(key, action="delete"), contextlib.suppress(NotFound):  # already gone: fine
                self._bucket.blob(self._name(key)).delete(**self._call_options())
        return len(keys)

    def write_if_unchanged(self, key: str, data: bytes, generation: Generation) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket.blob(self._name(key))
        with self._translate(key, action="write"):
            try:
                blob.upload_from_string(data, if_generation_match=generation, **self._call_options())
            except PreconditionFailed:  # 412: the object's generation moved on (or it now exists)
                return False
        return True
