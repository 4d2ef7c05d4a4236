"""Asking the `auth` service over NATS: its public keys (JWKS), kept fresh for a verifier, and,
in development, a token."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bourse.adapters.auth.keys import PublicKeys, public_keys_from_jwks
from bourse.adapters.auth.tokens import TokenVerifier
from bourse.contracts.subjects import service_subject

log = logging.getLogger(__name__)

JWKS_ENDPOINT = "jwks"
ISSUE_ENDPOINT = "issue"


class AuthRequestFailed(RuntimeError):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class IssueRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    member_id: int
    email: str | None = None
    ttl_s: int | None = None


class IssueReply(msgspec.Struct, frozen=True):
    token: str
    expires_at: int


async def _request(nc: Client, subject: str, body: bytes, timeout_s: float, wait_s: float) -> bytes:
    """Request, retrying while nobody answers (the auth service may still be starting)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            reply = await nc.request(subject, body, timeout=timeout_s)
            break
        except (NoRespondersError, NatsTimeoutError):
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.2)
    headers = reply.headers or {}
    if "Nats-Service-Error-Code" in headers:
        raise AuthRequestFailed(headers["Nats-Service-Error-Code"], headers.get("Nats-Service-Error", ""))
    return reply.data


async def fetch_jwks_document(
    nc: Client, namespace: str, *, timeout_s: float = 2.0, wait_s: float = 10.0
) -> dict[str, Any]:
    data = await _request(nc, service_subject(namespace, "auth", JWKS_ENDPOINT), b"", timeout_s, wait_s)
    document: dict[str, Any] = msgspec.json.decode(data)
    return document


async def fetch_jwks(
    nc: Client, namespace: str, *, timeout_s: float = 2.0, wait_s: float = 10.0
) -> PublicKeys:
    """The verification keys the `auth` service publishes, by kid: give them to `TokenVerifier`.

    Waits up to `wait_s` for an auth service to answer (processes may start in any order)."""
    return public_keys_from_jwks(await fetch_jwks_document(nc, namespace, timeout_s=timeout_s, wait_s=wait_s))


async def request_dev_token(
    nc: Client,
    namespace: str,
    member_id: int,
    *,
    email: str | None = None,
    ttl_s: int | None = None,
    timeout_s: float = 2.0,
) -> IssueReply:
    """A token from the dev-only `issue` endpoint (only there when `BOURSE_DEV_TOKENS` is true)."""
    body = msgspec.json.encode(IssueRequest(member_id, email, ttl_s))
    data = await _request(nc, service_subject(namespace, "auth", ISSUE_ENDPOINT), body, timeout_s, 0.0)
    return msgspec.json.decode(data, type=IssueReply)


JWKS_REFRESH_S = 60.0


async def keep_keys_fresh(
    nc: Client, namespace: str, verifier: TokenVerifier, *, every_s: float = JWKS_REFRESH_S
) -> None:
    """Run as a task beside a verifier: tokens signed by a newly rotated kid verify within
    `every_s`. A failed fetch keeps the keys it had and tries again at the next interval."""
    while True:
        await asyncio.sleep(every_s)
        try:
            keys = await fetch_jwks(nc, namespace, wait_s=0.0)
        except Exception as exc:
            log.warning("jwks refresh failed", extra={"error": repr(exc)})
            continue
        verifier.update_keys(keys)
