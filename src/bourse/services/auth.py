"""auth: publishes the public keys that verify member tokens, and issues tokens in development.

Endpoints (core NATS request/reply, `bourse.svc.auth.<endpoint>`):

- `jwks`: the JWKS of every key in the key ring (`{"keys": [...]}`); gateways and pushers fetch
  it at start (`bourse.adapters.auth.fetch_jwks`) and verify tokens locally, with no call per request.
- `issue` (only with `BOURSE_DEV_TOKENS=true`, the embedded default): `{"member_id": 1,
  "email"?: ..., "ttl_s"?: ...}` -> `{"token": ..., "expires_at": ...}`, signed with the newest
  private key. Production turns dev tokens off: members get tokens from the exchange's own auth
  server, and only that server's public keys are in the keys folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from nats.micro.request import Request

from bourse.adapters.auth import KeyRing, TokenIssuer
from bourse.adapters.auth.client import ISSUE_ENDPOINT, JWKS_ENDPOINT, IssueReply, IssueRequest
from bourse.config.auth import issuer_for, key_ring_for, keys_dir
from bourse.runtime.service import Endpoint, Service, ServiceContext

MAX_DEV_TTL_S = 30 * 24 * 3600


class Auth(Service):
    name = "auth"
    description = "Member token keys (JWKS); issues tokens when dev tokens are on"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.ring = KeyRing()
        self.issuer: TokenIssuer | None = None
        self._jwks = b""

    async def start(self) -> None:
        settings = self.ctx.settings
        self.ring = key_ring_for(settings)
        if not self.ring.public_keys:
            raise RuntimeError(
                f"no token verification keys in {keys_dir(settings)}: put the auth server's public keys "
                "there (<kid>.pem or a JWKS .json), or set BOURSE_DEV_TOKENS=true"
            )
        if settings.dev_tokens:
            self.issuer = issuer_for(settings, self.ring)
        self._jwks = msgspec.json.encode(self.ring.jwks())
        self.log.info(
            "token keys loaded",
            extra={"kids": sorted(self.ring.public_keys), "dev_tokens": settings.dev_tokens},
        )

    def endpoints(self) -> Sequence[Endpoint]:
        endpoints = [Endpoint(JWKS_ENDPOINT, self.subject(JWKS_ENDPOINT), self.jwks)]
        if self.ctx.settings.dev_tokens:
            endpoints.append(Endpoint(ISSUE_ENDPOINT, self.subject(ISSUE_ENDPOINT), self.issue))
        return endpoints

    async def jwks(self, request: Request) -> None:
        await request.respond(self._jwks)

    async def issue(self, request: Request) -> None:
        if self.issuer is None:
            await request.respond_error("403", "dev tokens are off")
            return
        try:
            body = msgspec.json.decode(request.data, type=IssueRequest)
        except msgspec.DecodeError as exc:
            await request.respond_error("400", f"bad request body: {exc}")
            return
        ttl_s = self.issuer.ttl_s if body.ttl_s is None else body.ttl_s
        if body.member_id <= 0 or not 0 < ttl_s <= MAX_DEV_TTL_S:
            await request.respond_error("400", f"member_id must be positive, ttl_s in 1..{MAX_DEV_TTL_S}")
            return
        token, expires_at = self.issuer.issue_with_expiry(body.member_id, body.email, ttl_s)
        await request.respond(msgspec.json.encode(IssueReply(token, expires_at)))

    def health(self) -> Mapping[str, Any]:
        return {
            "kids": sorted(self.ring.public_keys),
            "signing_kid": self.issuer.key.kid if self.issuer else None,
            "dev_tokens": self.ctx.settings.dev_tokens,
        }
