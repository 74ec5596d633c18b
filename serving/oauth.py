"""The tutorial's OAuth2 client-credentials flow, kept so its ``deploy.py`` works unchanged.

Seldon's old API gateway issued opaque bearer tokens from ``POST /oauth/token`` for the deployment's
``oauth_key``/``oauth_secret``. Tokens here are random, held in memory and valid for the gateway's
``expires_in`` of 43199 s; a restart forgets them, exactly like a restarted gateway did.

What a token request may cost, since it is the one route open to callers without a token:

* ``admit`` runs on the request's head, before its body is read: wrong HTTP basic credentials are a
  401 there, and every attempt, right or wrong, spends one of its address's ``ADDRESS_BURST`` tokens
  (refilled at ``ADDRESS_RATE`` per second; past them, a 429), which also slows guessing secrets.
* the body is a form of a few fields, so the route reads at most ``MAX_TOKEN_BODY_BYTES`` (4 KiB).
  RFC 6749's form-field credentials (``client_id``/``client_secret``) are kept because they fit in
  that bound: without basic auth the server reads at most those 4 KiB, rate-bounded per address.
* issuing spends one of the client id's ``CLIENT_BURST`` tokens (refilled at ``CLIENT_RATE`` per
  second): a bound on the whole graph's issuing, since a graph has one client id.
* live tokens are held per client, a client being one client id at one address: each may hold
  ``TOKENS_PER_CLIENT``, and its next token replaces its own oldest, never someone else's; when all
  clients together hold ``MAX_LIVE_TOKENS``, new ones are refused (503) until some expire.

Refusals are RFC 6749 error bodies (``error``, ``error_description``) that also carry Seldon's
``status`` object, so OAuth clients and Seldon clients both find what they look for.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import parse_qs

import orjson

from abflow.serving.protocol import status_body

TOKEN_TTL_SECONDS = 43199
MAX_TOKEN_BODY_BYTES = 4096
ADDRESS_BURST = 20
ADDRESS_RATE = 5.0
CLIENT_BURST = 200
CLIENT_RATE = 50.0
TOKENS_PER_CLIENT = 100
MAX_LIVE_TOKENS = 10_000
UNAUTHORIZED = "UNAUTHORIZED"


class OAuthError(Exception):
    """A refused token request or call; ``error`` is the RFC 6749 error code."""

    def __init__(self, code: int, error: str, description: str, *, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.error = error
        self.description = description
        self.retry_after = retry_after

    def body(self) -> bytes:
        status = orjson.loads(status_body(self.code, self.description, UNAUTHORIZED))["status"]
        return orjson.dumps({"error": self.error, "error_description": self.description, "status": status})

    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after is not None:
            return (("Retry-After", str(max(1, math.ceil(self.retry_after)))),)
        return (("WWW-Authenticate", 'Basic realm="abflow"'),) if self.code == 401 else ()


class KeyedBuckets:
    """A token bucket per key (``burst`` tokens, refilled at ``rate`` per second).

    Keys whose bucket has refilled are forgotten when the table passes ``max_keys`` (a full bucket and
    no bucket are the same thing), so a stream of new addresses cannot grow it without bound."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Spend one token of ``key``'s bucket: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_keys:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self._rate >= self._burst:
                del self._buckets[key]


class TokenIssuer:
    """Issues and checks bearer tokens for one client id/secret pair."""

    def __init__(self, key: str, secret: str, *, ttl: float = TOKEN_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic, tokens_per_client: int = TOKENS_PER_CLIENT,
                 max_tokens: int = MAX_LIVE_TOKENS, address_burst: int = ADDRESS_BURST,
                 address_rate: float = ADDRESS_RATE, client_burst: int = CLIENT_BURST,
                 client_rate: float = CLIENT_RATE) -> None:
        self._key = key.encode()
        self._secret = secret.encode()
        self._ttl = ttl
        self._clock = clock
        self._tokens_per_client = tokens_per_client
        self._max_tokens = max_tokens
        self._per_address = KeyedBuckets(address_rate, address_burst, clock)
        self._per_client_id = KeyedBuckets(client_rate, client_burst, clock)
        self._expiry: OrderedDict[str, tuple[float, str]] = OrderedDict()
        """token → (expiry, client), in issue order, which is also expiry order (one TTL for all)."""
        self._by_client: dict[str, deque[str]] = {}
        """client → its live tokens, oldest first."""

    @property
    def live_tokens(self) -> int:
        return len(self._expiry)

    def admit(self, authorization: str | None, remote: str | None) -> None:
        """Check a token request's head before its body is read: its address's rate, and basic
        credentials if it sends them (form-field credentials are checked by ``issue``)."""
        wait = self._per_address.take(remote or "")
        if wait:
            raise OAuthError(429, "slow_down", f"too many token requests from this address: retry in "
                                               f"{math.ceil(wait)} s, and reuse a token until it expires",
                             retry_after=wait)
        client = _basic_credentials(authorization)
        if client is not None and not self._valid(client):
            raise _invalid_client()

    def issue(self, authorization: str | None, form: bytes, remote: str | None = None) -> bytes:
        """Answer ``POST /oauth/token``: client credentials via HTTP basic auth (or form fields)."""
        fields = {k: v[-1] for k, v in parse_qs(form.decode("utf-8", "replace")).items()}
        if fields.get("grant_type") != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type",
                             "send grant_type=client_credentials as a form field")
        client = _basic_credentials(authorization) or (
            fields.get("client_id", "").encode(), fields.get("client_secret", "").encode())
        if not self._valid(client):
            raise _invalid_client()
        wait = self._per_client_id.take("")
        if wait:
            raise OAuthError(429, "slow_down", f"too many tokens issued for this client id: retry in "
                                               f"{math.ceil(wait)} s, and reuse a token until it expires",
                             retry_after=wait)
        token = self._remember(remote or "")
        return orjson.dumps({"access_token": token, "token_type": "bearer",
                             "expires_in": int(self._ttl), "scope": "read write"})

    def check(self, authorization: str | None) -> None:
        """Raise ``OAuthError(401)`` unless ``authorization`` carries a live bearer token."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise OAuthError(401, "unauthorized",
                             "this graph requires OAuth: get a token from POST /oauth/token and send "
                             "'Authorization: Bearer <token>'")
        entry = self._expiry.get(authorization[7:].strip())
        if entry is None or entry[0] <= self._clock():
            raise OAuthError(401, "invalid_token",
                             "unknown or expired bearer token; get a new one from POST /oauth/token")

    def _valid(self, client: tuple[bytes, bytes]) -> bool:
        # Both comparisons always run, so the time taken says nothing about which one failed.
        key_ok = hmac.compare_digest(client[0], self._key)
        secret_ok = hmac.compare_digest(client[1], self._secret)
        return key_ok and secret_ok

    def _remember(self, client: str) -> str:
        now = self._clock()
        self._forget_expired(now)
        mine = self._by_client.setdefault(client, deque())
        if len(mine) >= self._tokens_per_client:
            del self._expiry[mine.popleft()]
        elif len(self._expiry) >= self._max_tokens:
            if not mine:
                del self._by_client[client]
            raise OAuthError(503, "temporarily_unavailable",
                             f"{self._max_tokens} tokens are live, the most this endpoint holds: reuse the "
                             "token you have, or retry once some expire", retry_after=60.0)
        token = secrets.token_hex(24)  # hex: a token starting with '-' would read as a flag in `--token $TOKEN`
        self._expiry[token] = (now + self._ttl, client)
        mine.append(token)
        return token

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            token, (expires, client) = next(iter(expiry.items()))
            if expires > now:
                return
            del expiry[token]
            mine = self._by_client[client]
            mine.popleft()  # issue order is the same per client and overall, so it is this client's oldest
            if not mine:
                del self._by_client[client]


def _invalid_client() -> OAuthError:
    return OAuthError(401, "invalid_client", "wrong client credentials; use the graph's oauth_key and oauth_secret "
                                             "as HTTP basic auth user and password")


def _basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None
