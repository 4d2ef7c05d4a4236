"""What the routes need, injected: the markets, the order intake, ids, token verification, reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bourse.application.catalog import Catalog
from bourse.application.ports import (
    IdSource,
    OrderProgress,
    OrderSubmitter,
    ReadModel,
    StatisticsReads,
    TokenVerifier,
)
from bourse.entrypoints.rest.errors import ApiError


@dataclass(slots=True)
class GatewayDeps:
    catalog: Catalog
    intake: OrderSubmitter[Any]
    ids: IdSource
    verifier: TokenVerifier
    queries: ReadModel
    """The GET endpoints' reads: the most durable complete source first (see the gateway)."""
    live_queries: ReadModel | None = None
    """Reads on the write path (`DELETE /orders` lists the open orders to cancel): the freshest
    source first, the query service, which applies the streams as they come; `queries` if unset."""
    decision_timeout_s: float = 2.0
    """How long POST /order waits for the accounts decision before answering 202."""
    progress: OrderProgress | None = None
    """Asked before an order is called not found; None: no stage can be behind (tests)."""
    statistics: StatisticsReads | None = None
    """Tickers and k-lines, by the same rule as `queries` (the statistics service last); None:
    no statistics source, those reads answer 503 `unavailable`."""


# Both dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread (anyio), two thread hand-offs per request.
async def get_deps(request: Request) -> GatewayDeps:
    deps: GatewayDeps = request.app.state.deps
    return deps


Deps = Annotated[GatewayDeps, Depends(get_deps)]


CHALLENGE = 'Bearer realm="bourse"'
"""A 401 must say how to authenticate (RFC 9110 WWW-Authenticate; RFC 6750 for bearer tokens)."""


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="member token",
    description="A member's JWT (ES256). In development, `bourse token MEMBER_ID` prints one.",
)
"""Reads `Authorization: Bearer <token>` and declares the scheme in the OpenAPI document, so the
docs page can authorize its requests; refusals stay ours (problem+json with a stable code)."""


async def current_member(
    deps: Deps, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
) -> int:
    """The member id of a valid `Authorization: Bearer <JWT>`; 401 problem+json otherwise."""
    return member_of_token(deps, credentials.credentials if credentials is not None else "")


def member_of_token(deps: GatewayDeps, token: str) -> int:
    if not token:
        raise ApiError(
            401,
            "missing_token",
            "send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": CHALLENGE},
        )
    try:
        principal = deps.verifier.verify(token)
    except Exception as exc:
        code = getattr(exc, "code", "invalid_token")
        raise ApiError(
            401,
            str(code),
            str(exc) or "invalid token",
            headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'},
        ) from exc
    return principal.member_id


Member = Annotated[int, Depends(current_member)]
