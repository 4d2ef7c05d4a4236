"""The `auth` service over real NATS: JWKS for verifiers, dev tokens only when allowed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from nats.aio.client import Client
from nats.errors import NoRespondersError

from bourse.adapters.auth import (
    AuthRequestFailed,
    InvalidToken,
    TokenIssuer,
    TokenVerifier,
    fetch_jwks,
    generate_key,
    load_key_ring,
    request_dev_token,
)
from bourse.config.auth import verifier_for
from bourse.config.settings import Settings
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.auth import Auth


async def started(nc: Client, settings: Settings) -> ServiceHost:
    host = ServiceHost(ServiceContext(settings, nc, nc.jetstream()))
    await host.start([Auth])
    return host


@pytest.fixture
async def auth_host(nc: Client, settings: Settings) -> AsyncIterator[ServiceHost]:
    host = await started(nc, settings)
    yield host
    await host.stop()


async def test_dev_token_from_the_issue_endpoint_verifies_with_the_published_jwks(
    nc: Client, settings: Settings, auth_host: ServiceHost
) -> None:
    keys = await fetch_jwks(nc, settings.namespace)
    assert list(keys) == list(load_key_ring(settings.data_dir / "keys").public_keys)  # made on first use
    issued = await request_dev_token(nc, settings.namespace, 17, email="ada@example.com", ttl_s=300)
    principal = verifier_for(settings, keys).verify(issued.token)
    assert (principal.member_id, principal.email, principal.expires_at) == (
        17,
        "ada@example.com",
        issued.expires_at,
    )
    assert auth_host.health()["auth"]["signing_kid"] in keys


async def test_jwks_endpoint_publishes_every_public_key_and_no_private_part(
    nc: Client, settings: Settings
) -> None:
    folder = settings.data_dir / "keys"
    old, new = generate_key(folder, "20260101T000000000000Z"), generate_key(folder, "20260201T000000000000Z")
    host = await started(nc, settings)
    try:
        reply = await nc.request(f"{settings.namespace}.svc.auth.jwks", b"", timeout=2)
        document = msgspec.json.decode(reply.data)
        assert [key["kid"] for key in document["keys"]] == [old.kid, new.kid]
        assert all("d" not in key for key in document["keys"])
        issued = await request_dev_token(nc, settings.namespace, 3)
        verifier = TokenVerifier(
            await fetch_jwks(nc, settings.namespace), settings.jwt_issuer, settings.jwt_audience
        )
        assert verifier.verify(issued.token).member_id == 3
        old_token = TokenIssuer(old, issuer=settings.jwt_issuer, audience=settings.jwt_audience).issue(4)
        assert verifier.verify(old_token).member_id == 4  # rotation: the old key still verifies
        assert host.health()["auth"]["signing_kid"] == new.kid
    finally:
        await host.stop()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "bad request body"),
        (b'{"member_id": 0}', "member_id"),
        (b'{"member_id": 1, "ttl_s": 0}', "ttl_s"),
    ],
)
async def test_issue_endpoint_rejects_bad_requests(
    nc: Client, settings: Settings, auth_host: ServiceHost, body: bytes, message: str
) -> None:
    reply = await nc.request(f"{settings.namespace}.svc.auth.issue", body, timeout=2)
    headers = reply.headers or {}
    assert headers.get("Nats-Service-Error-Code") == "400"
    assert message in headers.get("Nats-Service-Error", "")
    with pytest.raises(AuthRequestFailed):
        await request_dev_token(nc, settings.namespace, -5)


async def test_without_dev_tokens_there_is_no_issue_endpoint_but_jwks_is_served(
    nc: Client, settings: Settings, tmp_path: Path
) -> None:
    auth_server_key = generate_key(tmp_path / "auth-server")  # the exchange's own auth server signs
    public_only = tmp_path / "public"
    public_only.mkdir()
    (public_only / f"{auth_server_key.kid}.pem").write_bytes(
        auth_server_key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    production = settings.model_copy(update={"dev_tokens": False, "jwt_keys_dir": public_only})
    host = await started(nc, production)
    try:
        with pytest.raises(NoRespondersError):
            await request_dev_token(nc, settings.namespace, 1)
        keys = await fetch_jwks(nc, settings.namespace)
        assert list(keys) == [auth_server_key.kid]
        token = TokenIssuer(auth_server_key, issuer="bourse", audience="bourse-api").issue(8)
        assert verifier_for(production, keys).verify(token).member_id == 8
        assert list(public_only.iterdir()) == [public_only / f"{auth_server_key.kid}.pem"]  # nothing made
    finally:
        await host.stop()


async def test_without_dev_tokens_and_without_keys_auth_refuses_to_start(
    nc: Client, settings: Settings
) -> None:
    production = settings.model_copy(update={"dev_tokens": False})
    with pytest.raises(RuntimeError, match="no token verification keys"):
        await started(nc, production)


async def test_token_signed_by_a_key_the_gateway_does_not_know_is_refused(
    nc: Client, settings: Settings, auth_host: ServiceHost, tmp_path: Path
) -> None:
    verifier = verifier_for(settings, await fetch_jwks(nc, settings.namespace))
    rogue = TokenIssuer(generate_key(tmp_path / "rogue"), issuer="bourse", audience="bourse-api").issue(1)
    with pytest.raises(InvalidToken) as failure:
        verifier.verify(rogue)
    assert failure.value.code == "unknown_key"
