"""The tutorial's OAuth2 client-credentials flow, kept so its ``deploy.py`` works unchanged.

Seldon's old API gateway issued opaque bearer tokens from ``POST /oauth/token`` for the deployment's
``oauth_key``/``oauth_secret``. Tokens here are random, held in memory and valid for the gateway's
``expires_in`` of 43199 s; a restart forgets them, exactly like a restarted gateway did.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import parse_qs

import orjson

TOKEN_TTL_SECONDS = 43199
MAX_LIVE_TOKENS = 10_000


class OAuthError(Exception):
    """A refused token request or call; ``error`` is the RFC 6749 error code."""

    def __init__(self, code: int, error: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.error = error
        self.description = description

    def body(self) -> bytes:
        return orjson.dumps({"error": self.error, "error_description": self.description})


class TokenIssuer:
    """Issues and checks bearer tokens for one client id/secret pair."""

    def __init__(self, key: str, secret: str, *, ttl: float = TOKEN_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic, max_tokens: int = MAX_LIVE_TOKENS) -> None:
        self._key = key.encode()
        self._secret = secret.encode()
        self._ttl = ttl
        self._clock = clock
        self._max_tokens = max_tokens
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def issue(self, authorization: str | None, form: bytes) -> bytes:
        """Answer ``POST /oauth/token``: client credentials via HTTP basic auth (or form fields)."""
        fields = {k: v[-1] for k, v in parse_qs(form.decode("utf-8", "replace")).items()}
        if fields.get("grant_type") != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type",
                             "send grant_type=client_credentials as a form field")
        client = _basic_credentials(authorization) or (
            fields.get("client_id", "").encode(), fields.get("client_secret", "").encode())
        if not (hmac.compare_digest(client[0], self._key) and hmac.compare_digest(client[1], self._secret)):
            raise OAuthError(401, "invalid_client",
                             "wrong client credentials; use the graph's oauth_key and oauth_secret "
                             "as HTTP basic auth user and password")
        token = secrets.token_urlsafe(24)
        now = self._clock()
        self._forget_expired(now)
        self._expiry[token] = now + self._ttl
        while len(self._expiry) > self._max_tokens:
            self._expiry.popitem(last=False)
        return orjson.dumps({"access_token": token, "token_type": "bearer",
                             "expires_in": int(self._ttl), "scope": "read write"})

    def check(self, authorization: str | None) -> None:
        """Raise ``OAuthError(401)`` unless ``authorization`` carries a live bearer token."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise OAuthError(401, "unauthorized",
                             "this graph requires OAuth: get a token from POST /oauth/token and send "
                             "'Authorization: Bearer <token>'")
        expiry = self._expiry.get(authorization[7:].strip())
        if expiry is None or expiry <= self._clock():
            raise OAuthError(401, "invalid_token",
                             "unknown or expired bearer token; get a new one from POST /oauth/token")

    def _forget_expired(self, now: float) -> None:
        while self._expiry:
            token, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                return
            del self._expiry[token]


def _basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None
