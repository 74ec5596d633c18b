"""Token issuing on a fake clock: credentials checked from the head, rates bounded per address and per
client id, and one client's tokens never evicting another's."""

from __future__ import annotations

import base64
from collections.abc import Callable

import orjson
import pytest

from abflow.serving.oauth import (
    ADDRESS_BURST,
    CLIENT_BURST,
    TOKENS_PER_CLIENT,
    KeyedBuckets,
    OAuthError,
    TokenIssuer,
)

BASIC = "Basic " + base64.b64encode(b"k:s").decode()
FORM = b"grant_type=client_credentials"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issuer(clock: Clock, **kwargs: int | float) -> TokenIssuer:
    return TokenIssuer("k", "s", clock=clock, **kwargs)  # type: ignore[arg-type]


def token(issuer: TokenIssuer, remote: str = "10.0.0.1", form: bytes = FORM, authorization: str | None = BASIC) -> str:
    issuer.admit(authorization, remote)
    value: str = orjson.loads(issuer.issue(authorization, form, remote))["access_token"]
    return value


def refused(code: int, action: Callable[[], object]) -> OAuthError:
    with pytest.raises(OAuthError) as error:
        action()
    assert error.value.code == code
    return error.value


def test_wrong_basic_credentials_are_refused_from_the_head() -> None:
    tokens = issuer(Clock())
    error = refused(401, lambda: tokens.admit("Basic " + base64.b64encode(b"k:wrong").decode(), "10.0.0.1"))
    assert error.error == "invalid_client" and ("WWW-Authenticate", 'Basic realm="abflow"') in error.headers()
    body = orjson.loads(error.body())
    assert body["error"] == "invalid_client" and body["status"]["code"] == 401 and body["status"]["status"] == "FAILURE"
    tokens.admit(None, "10.0.0.1")  # no basic auth: the form fields are checked once read


def test_form_field_credentials_still_get_a_token() -> None:
    tokens = issuer(Clock())
    value = token(tokens, form=FORM + b"&client_id=k&client_secret=s", authorization=None)
    tokens.check(f"Bearer {value}")
    refused(401, lambda: tokens.issue(None, FORM + b"&client_id=k&client_secret=x", "10.0.0.1"))


def test_each_address_gets_a_burst_then_a_429_with_retry_after_then_tokens_again() -> None:
    clock = Clock()
    tokens = issuer(clock, address_rate=2.0)
    for _ in range(ADDRESS_BURST):
        tokens.admit(None, "10.0.0.1")
    error = refused(429, lambda: tokens.admit(BASIC, "10.0.0.1"))
    assert error.headers() == (("Retry-After", "1"),) and "retry in 1 s" in error.description
    tokens.admit(BASIC, "10.0.0.2")  # another address has its own bucket
    clock.now += 0.5
    tokens.admit(BASIC, "10.0.0.1")


def test_issuing_is_bounded_per_client_id_whatever_the_address() -> None:
    tokens = issuer(Clock(), address_burst=10**6)
    for n in range(CLIENT_BURST):
        token(tokens, remote=f"10.0.{n // 250}.{n % 250}")
    refused(429, lambda: tokens.issue(BASIC, FORM, "10.9.9.9"))


def test_a_client_requesting_thousands_of_tokens_evicts_only_its_own() -> None:
    clock = Clock()
    tokens = issuer(clock, address_burst=10**6, client_burst=10**6)
    victim = token(tokens, remote="10.0.0.2")
    mine = [token(tokens, remote="10.0.0.1") for _ in range(3 * TOKENS_PER_CLIENT)]
    tokens.check(f"Bearer {victim}")
    for kept in mine[-TOKENS_PER_CLIENT:]:
        tokens.check(f"Bearer {kept}")
    refused(401, lambda: tokens.check(f"Bearer {mine[0]}"))
    assert tokens.live_tokens == TOKENS_PER_CLIENT + 1


def test_when_every_slot_is_taken_new_clients_are_refused_not_served_by_evicting() -> None:
    clock = Clock()
    tokens = issuer(clock, address_burst=10**6, client_burst=10**6, max_tokens=3, ttl=100)
    held = [token(tokens, remote=f"10.0.0.{n}") for n in range(3)]
    error = refused(503, lambda: token(tokens, remote="10.0.0.9"))
    assert "3 tokens are live" in error.description and error.headers()[0][0] == "Retry-After"
    for value in held:
        tokens.check(f"Bearer {value}")
    clock.now += 101  # all expire, and the next issue forgets them: the table has room again
    fresh = token(tokens, remote="10.0.0.9")
    tokens.check(f"Bearer {fresh}")
    refused(401, lambda: tokens.check(f"Bearer {held[0]}"))
    assert tokens.live_tokens == 1


def test_buckets_forget_full_keys_past_their_table_size() -> None:
    clock = Clock()
    buckets = KeyedBuckets(rate=1.0, burst=2, clock=clock, max_keys=10)
    for n in range(10):
        assert buckets.take(f"a{n}") == 0.0
    clock.now += 5  # every bucket refilled: forgetting them changes nothing
    assert buckets.take("b") == 0.0
    assert len(buckets._buckets) == 1  # noqa: SLF001 - the table shrank to the one live key
    assert buckets.take("b") == 0.0 and buckets.take("b") == pytest.approx(1.0)


def test_tokens_are_hex_so_none_reads_as_a_flag_on_a_command_line() -> None:
    """``abflow predict --token $TOKEN`` failed when a URL-safe token began with '-'."""
    clock = Clock()
    tokens = issuer(clock)
    issued = []
    for i in range(ADDRESS_BURST):
        issued.append(token(tokens, remote=f"10.0.1.{i}"))
    assert all(len(value) == 48 and set(value) <= set("0123456789abcdef") for value in issued)
