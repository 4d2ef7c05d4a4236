"""Member authentication at the gateway: every token that does not prove a member is a 401
problem with the verifier's stable code, and reaches nothing; a member never sees, cancels or
amends another member's order (404, as for an id that does not exist)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bourse.adapters.auth import SigningKey, TokenIssuer
from bourse.config.auth import key_ring_for
from tests.e2e.harness import Exchange, expect_problem


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(exchange: Exchange, member_id: int = 1) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": str(member_id),
        "uid": member_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": exchange.settings.jwt_issuer,
        "aud": exchange.settings.jwt_audience,
        "jti": "e2e",
    }


def kid(exchange: Exchange) -> str:
    return key_ring_for(exchange.settings).signing_key.kid


def issuer(exchange: Exchange, key: SigningKey | None = None, **overrides: Any) -> TokenIssuer:
    settings = exchange.settings
    options: dict[str, Any] = {"issuer": settings.jwt_issuer, "audience": settings.jwt_audience}
    options.update(overrides)
    return TokenIssuer(key or key_ring_for(settings).signing_key, **options)


def other_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()))


def alg_none(exchange: Exchange) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": kid(exchange)}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims(exchange)).encode())}."


def hs256_keyed_with_the_public_key(exchange: Exchange) -> str:
    """The classic confusion attack: HMAC with the server's public key (PEM) as the secret."""
    public_pem = key_ring_for(exchange.settings).signing_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": kid(exchange)}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims(exchange)).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def another_members_claims(exchange: Exchange) -> str:
    """A valid token of member 1 whose payload is swapped for member 2's: the signature breaks."""
    header, _, signature = issuer(exchange).issue(1).split(".")
    return f"{header}.{b64(json.dumps(claims(exchange, 2)).encode())}.{signature}"


def not_yet_valid(exchange: Exchange) -> str:
    return issuer(exchange, clock=lambda: time.time() + 3600).issue(1)


AUTHORIZATION: dict[str, tuple[Callable[[Exchange], str | None], str]] = {
    "no_header": (lambda _: None, "missing_token"),
    "not_bearer": (lambda ex: f"Basic {b64(b'alice:secret')}", "missing_token"),
    "bearer_without_a_token": (lambda _: "Bearer", "missing_token"),
    "not_a_jwt": (lambda _: "Bearer not-a-token", "malformed_token"),
    "expired": (lambda ex: f"Bearer {issuer(ex).issue(1, ttl_s=-60)}", "expired_token"),
    "not_yet_valid": (lambda ex: f"Bearer {not_yet_valid(ex)}", "not_yet_valid"),
    "signed_by_another_key_same_kid": (
        lambda ex: f"Bearer {issuer(ex, other_key(kid(ex))).issue(1)}",
        "bad_signature",
    ),
    "signed_by_an_unknown_key": (
        lambda ex: f"Bearer {issuer(ex, other_key('20990101T000000000000Z')).issue(1)}",
        "unknown_key",
    ),
    "payload_swapped": (lambda ex: f"Bearer {another_members_claims(ex)}", "bad_signature"),
    "alg_none": (lambda ex: f"Bearer {alg_none(ex)}", "alg_not_allowed"),
    "hs256_with_the_public_key": (
        lambda ex: f"Bearer {hs256_keyed_with_the_public_key(ex)}",
        "alg_not_allowed",
    ),
    "another_audience": (lambda ex: f"Bearer {issuer(ex, audience='other-api').issue(1)}", "wrong_audience"),
    "another_issuer": (lambda ex: f"Bearer {issuer(ex, issuer='evil').issue(1)}", "wrong_issuer"),
}


@pytest.mark.parametrize("case", list(AUTHORIZATION))
async def test_a_token_that_proves_no_member_is_a_401_with_its_code_and_reaches_nothing(
    shared_exchange: Exchange, case: str
) -> None:
    make, code = AUTHORIZATION[case]
    value = make(shared_exchange)
    headers = {"Authorization": value} if value is not None else {}
    http = shared_exchange.http
    await shared_exchange.settle()
    streams = await shared_exchange.stream_sizes()
    balances = await shared_exchange.member(1).balances()

    order = {"market": "btc_usd", "side": "sell", "amount": "1", "price": "1"}
    for response in (
        await http.post("/order", json=order, headers=headers),
        await http.get("/balances", headers=headers),
        await http.get("/orders", headers=headers),
        await http.delete("/orders", headers=headers),
        await http.get("/order/1", headers=headers),
    ):
        expect_problem(response, 401, code)
    await shared_exchange.settle()
    assert await shared_exchange.stream_sizes() == streams
    assert await shared_exchange.member(1).balances() == balances


async def test_a_valid_token_is_accepted_and_speaks_for_its_member(shared_exchange: Exchange) -> None:
    for member_id in (1, 3):
        response = await shared_exchange.http.get(
            "/orders", headers={"Authorization": f"Bearer {issuer(shared_exchange).issue(member_id)}"}
        )
        assert response.status_code == 200, response.text
        assert all(order["member_id"] == member_id for order in response.json())


async def test_another_members_order_is_not_found_for_get_cancel_and_amend(
    shared_exchange: Exchange,
) -> None:
    alice, bob = shared_exchange.member(1), shared_exchange.member(2)
    oid = await alice.limit("buy", "0.1", "30000")
    await shared_exchange.settle()
    before = (await alice.order(oid), await alice.balances(), await bob.balances())

    for response in (
        await bob.http.get(f"/order/{oid}", headers=bob.headers),
        await bob.cancel(oid),
        await bob.amend(oid, price="31000"),
        await bob.amend(oid, amount="0.05"),
    ):
        expect_problem(response, 404, "order_not_found")
    # exactly what an id that does not exist gets: nothing tells bob the order exists
    unknown = str(int(oid) + 1)
    for response in (
        await bob.http.get(f"/order/{unknown}", headers=bob.headers),
        await bob.cancel(unknown),
        await bob.amend(unknown, price="31000"),
    ):
        expect_problem(response, 404, "order_not_found")
    await shared_exchange.settle()
    assert (await alice.order(oid), await alice.balances(), await bob.balances()) == before
    assert oid not in [order["id"] for order in await bob.orders()]


async def test_a_401_asks_for_a_bearer_token(shared_exchange: Exchange) -> None:
    """RFC 9110: a 401 carries WWW-Authenticate; RFC 6750 says which error a bad token is."""
    missing = await shared_exchange.http.get("/balances")
    expect_problem(missing, 401, "missing_token")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    expired = await shared_exchange.http.get(
        "/balances", headers={"Authorization": f"Bearer {issuer(shared_exchange).issue(1, ttl_s=-60)}"}
    )
    expect_problem(expired, 401, "expired_token")
    assert expired.headers["www-authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
