"""Ask a container registry whether a tag exists, logged in as the builder would be.

The pipeline skips building an image whose content tag is already pushed, so the question must be
answered by private registries too. The OCI distribution API answers an anonymous request with 401
and a ``WWW-Authenticate`` challenge; the client then follows it:

* ``Bearer realm=…,service=…,scope=…``: fetch a token from the realm (anonymously, or with the
  registry's credentials from a Docker ``config.json`` as HTTP Basic) and repeat the request with it
  (the distribution token spec; Docker Hub, GitLab, Harbor, Artifact Registry, GHCR);
* ``Basic realm=…``: repeat the request with the credentials as HTTP Basic.

Credentials come from the Docker config every builder reads: ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json`` (in a pipeline step: the registry Secret mounted there). Only inline
``auths`` entries are read; credential helpers (``credsStore``/``credHelpers``) would need their
binaries, so a registry behind one answers "cannot tell" and the image is rebuilt.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests
from urllib3.exceptions import InsecureRequestWarning

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
DOCKER_HUB = "registry-1.docker.io"
# How Docker Hub appears in a config.json written by `docker login`.
DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", DOCKER_HUB)
_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: the scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull,push"`` → Challenge.

    Quoted values may hold commas and escaped quotes; parameter names are case-insensitive.
    """
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _CHALLENGE_PARAM.match(rest, position)
        if match is None or match.end() == position:
            break
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
        position = match.end()
    return Challenge(scheme.lower(), params)


def split_ref(ref: str) -> tuple[str, str, str]:
    """``host[:port]/path:tag`` → (host, path, tag), with Docker Hub's implicit host and ``library/``."""
    name, _, tag = ref.rpartition(":")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    repository = name if "/" in name else f"library/{name}"
    return DOCKER_HUB, repository, tag


def docker_credentials(host: str, config_path: Path | None = None) -> tuple[str, str] | None:
    """(username, password) for ``host`` from a Docker ``config.json``, or None when it has none."""
    path = config_path or docker_config_path()
    try:
        auths = json.loads(path.read_text(encoding="utf-8")).get("auths") or {}
    except (OSError, ValueError):
        return None
    keys = DOCKER_HUB_KEYS if host == DOCKER_HUB else (host, f"https://{host}", f"http://{host}")
    for key in keys:
        entry = auths.get(key) or auths.get(f"{key}/")
        if not entry:
            continue
        if entry.get("username") and entry.get("password"):
            return str(entry["username"]), str(entry["password"])
        if entry.get("auth"):
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            if sep:
                return user, password
        if entry.get("identitytoken"):
            # What `docker login` stores for token-based registries: sent as the password of "<token>".
            return "<token>", str(entry["identitytoken"])
    return None


def docker_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def registry_has_tag(
    ref: str, *, tls_verify: bool = True, timeout: float = 10.0, config_path: Path | None = None
) -> bool:
    """Whether the registry serves a manifest for ``ref`` (``host/repo:tag``), via ``HEAD /v2/…``.

    Anonymous first; on a 401 challenge, with a token or Basic credentials as above. Answers False
    when the registry cannot tell us (unreachable, or no credentials it accepts): building again is
    safe, and the push that follows reports the real problem with its own message.
    """
    host, repository, tag = split_ref(ref)
    credentials = docker_credentials(host, config_path)
    schemes = ("https",) if tls_verify else ("https", "http")
    problems = []
    for scheme in schemes:
        url = f"{scheme}://{host}/v2/{repository}/manifests/{tag}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InsecureRequestWarning)  # tls_verify=False was asked for
                response = _head(url, tls_verify, timeout, headers={})
                if response.status_code == 401:
                    response = _answer_challenge(response, url, repository, credentials, tls_verify, timeout)
        except requests.RequestException as error:
            problems.append(f"{scheme}: {error}")
            continue
        if response.status_code not in (200, 404):
            login = "" if credentials else f" and {docker_config_path()} has no credentials for {host}"
            _say(
                f"cannot tell whether {ref} exists (the registry answered HTTP {response.status_code}{login}); "
                "building it"
            )
        return bool(response.status_code == 200)
    _say(f"cannot reach the registry {host} to check for {ref} ({'; '.join(problems)}); building it")
    return False


def _head(url: str, tls_verify: bool, timeout: float, headers: Mapping[str, str]) -> requests.Response:
    return requests.head(
        url,
        headers={"Accept": MANIFEST_ACCEPT, **headers},
        timeout=timeout,
        verify=tls_verify,
        allow_redirects=True,
    )


def _answer_challenge(
    response: requests.Response,
    url: str,
    repository: str,
    credentials: tuple[str, str] | None,
    tls_verify: bool,
    timeout: float,
) -> requests.Response:
    """Follow the 401's ``WWW-Authenticate`` challenge once; the last response is returned."""
    challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
    if challenge.scheme == "basic" and credentials is not None:
        return _head(url, tls_verify, timeout, headers={"Authorization": _basic(credentials)})
    if challenge.scheme != "bearer" or "realm" not in challenge.params:
        return response
    query = {"scope": challenge.params.get("scope") or f"repository:{repository}:pull"}
    if "service" in challenge.params:
        query["service"] = challenge.params["service"]
    auth = {"Authorization": _basic(credentials)} if credentials else {}
    token_response = requests.get(
        challenge.params["realm"], params=query, headers=auth, timeout=timeout, verify=tls_verify
    )
    if token_response.status_code != 200:
        return token_response
    answer = token_response.json()
    token = answer.get("token") or answer.get("access_token")
    if not token:
        return token_response
    return _head(url, tls_verify, timeout, headers={"Authorization": f"Bearer {token}"})


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


def _say(message: str) -> None:
    print(f"abflow: {message}", file=sys.stderr, flush=True)
