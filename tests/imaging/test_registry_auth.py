"""The "already pushed?" probe against a private registry that speaks the OCI distribution token flow.

Real registry: Debian's docker-registry (distribution 2.8) with ``auth: token``, which answers an
anonymous request with 401 and a ``Bearer realm=…,service=…,scope=…`` challenge and verifies every
token's RS256 signature, issuer, audience and access claims itself.
Stand-in: the token server (the realm) is a small server written here, because no distribution token
server is packaged for this machine; it issues what such a server issues (a JWT whose ``x5c`` chain is
the certificate the registry trusts) to the one user it knows, and nothing to anonymous callers.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from abflow.components.oci_registry import docker_credentials, parse_challenge, registry_has_tag, split_ref
from tests.fixtures.images import require_tool, stop_process
from tests.fixtures.processes import free_port, wait_until

SERVICE = "abflow-test-registry"
ISSUER = "abflow-test-issuer"
USER, PASSWORD = "ci-pusher", "s3cret"
REPOSITORY = "ml/iris-server"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues distribution tokens (RS256 JWTs) for ``USER``; refuses anonymous and wrong passwords."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    requests_seen: list[dict[str, str]]

    def token(self, scope: str) -> str:
        kind, name, actions = scope.split(":")
        now = int(datetime.datetime.now(datetime.UTC).timestamp())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "access": [{"type": kind, "name": name, "actions": actions.split(",")}],
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                """Quiet: ``requests_seen`` is the log."""

            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                server.requests_seen.append({**query, "authorization": self.headers.get("Authorization", "")})
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected or query.get("service") != SERVICE:
                    self.send_response(401)
                    self.end_headers()
                    return
                payload = json.dumps({"token": server.token(query["scope"]), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@dataclass(frozen=True)
class PrivateRegistry:
    host: str
    tokens: TokenServer
    pushed_tag: str


def _self_signed() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _push_tiny_image(host: str, tokens: TokenServer, tag: str) -> None:
    """Push a one-layer image as any client would, with a push token (the registry checks it)."""
    auth = {"Authorization": f"Bearer {tokens.token(f'repository:{REPOSITORY}:pull,push')}"}
    blobs = {"config": json.dumps({"architecture": "amd64", "os": "linux"}).encode(), "layer": gzip.compress(b"")}
    digests = {}
    for name, data in blobs.items():
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = requests.post(f"http://{host}/v2/{REPOSITORY}/blobs/uploads/", headers=auth, timeout=10)
        assert started.status_code == 202, started.text
        location = urllib.parse.urljoin(f"http://{host}/", started.headers["Location"])
        done = requests.put(location, params={"digest": digest}, data=data, headers=auth, timeout=10)
        assert done.status_code == 201, done.text
        digests[name] = (digest, len(data))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": digests["config"][0],
            "size": digests["config"][1],
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": digests["layer"][0],
                "size": digests["layer"][1],
            }
        ],
    }
    put = requests.put(
        f"http://{host}/v2/{REPOSITORY}/manifests/{tag}",
        data=json.dumps(manifest),
        headers={**auth, "Content-Type": manifest["mediaType"]},
        timeout=10,
    )
    assert put.status_code == 201, put.text


def _answers_401(url: str) -> bool:
    """The registry is up: it asks for a token (it would never answer 200 to an anonymous client)."""
    try:
        return requests.get(url, timeout=1).status_code == 401
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def private_registry() -> Iterator[PrivateRegistry]:
    binary = require_tool("docker-registry")
    work = Path(tempfile.mkdtemp(prefix="abflow-private-registry-"))
    key, certificate = _self_signed()
    (work / "root.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    tokens = TokenServer(key, certificate, [])
    token_server = ThreadingHTTPServer(("127.0.0.1", 0), tokens.handler())
    threading.Thread(target=token_server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{free_port()}"
    config = {  # JSON is YAML
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {"addr": host},
        "auth": {
            "token": {
                "realm": f"http://127.0.0.1:{token_server.server_address[1]}/token",
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(work / "root.pem"),
            }
        },
    }
    (work / "config.yml").write_text(json.dumps(config))
    with (work / "registry.log").open("wb") as log:
        process = subprocess.Popen([binary, "serve", str(work / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: process.poll() is None and _answers_401(f"http://{host}/v2/"),
            timeout=30,
            what=f"docker-registry with token auth on {host} (log: {work / 'registry.log'})",
        )
        _push_tiny_image(host, tokens, "3f2a9c0d1e2f")
        tokens.requests_seen.clear()
        yield PrivateRegistry(host, tokens, "3f2a9c0d1e2f")
    finally:
        stop_process(process)
        token_server.shutdown()
        token_server.server_close()
        shutil.rmtree(work, ignore_errors=True)


def write_docker_config(path: Path, host: str, *, user: str = USER, password: str = PASSWORD) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_anonymous_probe_of_a_private_registry_cannot_tell(
    private_registry: PrivateRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the probe did before: anonymous only, so an existing image was rebuilt on every run."""
    ref = f"{private_registry.host}/{REPOSITORY}:{private_registry.pushed_tag}"
    assert registry_has_tag(ref, tls_verify=False, config_path=tmp_path / "missing.json") is False
    assert "answered HTTP 401" in capsys.readouterr().err
    (asked,) = private_registry.tokens.requests_seen
    assert asked["scope"] == f"repository:{REPOSITORY}:pull" and asked["authorization"] == ""


def test_credentials_from_docker_config_get_a_token_and_see_the_tag(
    private_registry: PrivateRegistry, tmp_path: Path
) -> None:
    config = write_docker_config(tmp_path / "config.json", private_registry.host)
    ref = f"{private_registry.host}/{REPOSITORY}:{private_registry.pushed_tag}"
    assert registry_has_tag(ref, tls_verify=False, config_path=config) is True
    missing = f"{private_registry.host}/{REPOSITORY}:000000000000"
    assert registry_has_tag(missing, tls_verify=False, config_path=config) is False
    assert {r["service"] for r in private_registry.tokens.requests_seen[-2:]} == {SERVICE}


def test_docker_config_env_is_where_a_pipeline_step_mounts_the_secret(
    private_registry: PrivateRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_docker_config(tmp_path / "config.json", private_registry.host)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    ref = f"{private_registry.host}/{REPOSITORY}:{private_registry.pushed_tag}"
    assert registry_has_tag(ref, tls_verify=False) is True


def test_wrong_password_means_build_it(private_registry: PrivateRegistry, tmp_path: Path) -> None:
    config = write_docker_config(tmp_path / "config.json", private_registry.host, password="wrong")
    ref = f"{private_registry.host}/{REPOSITORY}:{private_registry.pushed_tag}"
    assert registry_has_tag(ref, tls_verify=False, config_path=config) is False


def test_docker_config_entries_as_docker_and_podman_write_them(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    hub = base64.b64encode(b"hubuser:hubpass").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": hub},
                    "registry.example.com": {"username": "u", "password": "p"},
                    "https://gcr.example.com": {"identitytoken": "tok"},
                },
                "credsStore": "desktop",
            }
        )
    )
    assert docker_credentials("registry-1.docker.io", config) == ("hubuser", "hubpass")
    assert docker_credentials("registry.example.com", config) == ("u", "p")
    assert docker_credentials("gcr.example.com", config) == ("<token>", "tok")
    assert docker_credentials("other.example.com", config) is None
    assert docker_credentials("registry.example.com", tmp_path / "absent.json") is None


def test_challenge_parsing_keeps_commas_inside_quotes() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:ml/iris:pull,push",error="insufficient_scope"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:ml/iris:pull,push",
        "error": "insufficient_scope",
    }
    assert parse_challenge('Basic realm="Registry Realm"') == parse_challenge('basic REALM="Registry Realm"')
    assert parse_challenge("").scheme == ""


_VALUE = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@given(params=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), _VALUE, max_size=5))
def test_any_quoted_challenge_parses_back(params: dict[str, str]) -> None:
    escaped = {k: v.replace("\\", "\\\\").replace('"', '\\"') for k, v in params.items()}
    quoted = ",".join(f'{k}="{v}"' for k, v in escaped.items())
    assert parse_challenge(f"Bearer {quoted}") == parse_challenge(f"bearer {quoted}")
    assert dict(parse_challenge(f"Bearer {quoted}").params) == params


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("registry.example.com/ml/iris:1", ("registry.example.com", "ml/iris", "1")),
        ("127.0.0.1:5000/ml/iris:abc", ("127.0.0.1:5000", "ml/iris", "abc")),
        ("python:3.11-slim", ("registry-1.docker.io", "library/python", "3.11-slim")),
        ("martizih/kaniko:v1", ("registry-1.docker.io", "martizih/kaniko", "v1")),
    ],
)
def test_refs_split_into_host_repository_tag(ref: str, expected: tuple[str, str, str]) -> None:
    assert split_ref(ref) == expected
