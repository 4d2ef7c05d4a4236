"""Member tokens: issue and verify ES256 JWTs. A thin layer over PyJWT that fixes the rules.

Claims: `sub` (member id as a string), `uid` (member id as a number), `email` (optional), `iat`,
`nbf`, `exp`, `iss`, `aud`, `jti`; header `alg: ES256`, `kid`.

Verification accepts ES256 only (the algorithm list is fixed here, never read from the token, so
`alg: none` and HS256-with-the-public-key tokens are refused), looks the key up by `kid` among
the configured public keys (unknown kid: refused), and requires `exp`, `iat`, `sub`, `iss`,
`aud`, checking `exp`, `nbf`, `iat`, `iss` and `aud` with a small leeway for clock skew.

PyJWT verification costs tens of microseconds, and a client sends the same token with every
request, so `TokenVerifier` keeps verified tokens (LRU, bounded) until they expire.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec

from bourse.adapters.auth.keys import ALGORITHM, PublicKeys, SigningKey

InvalidTokenCode = Literal[
    "missing_token",
    "malformed_token",
    "expired_token",
    "not_yet_valid",
    "bad_signature",
    "wrong_audience",
    "wrong_issuer",
    "unknown_key",
    "alg_not_allowed",
]

REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]


class InvalidToken(Exception):
    """A token that does not authenticate anyone; `code` is stable (the API returns it)."""

    def __init__(self, code: InvalidTokenCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: InvalidTokenCode = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    member_id: int
    email: str | None
    expires_at: int
    """`exp` of the token, Unix seconds."""


def token_from_authorization(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; `missing_token` otherwise."""
    if not header:
        raise InvalidToken("missing_token", "no Authorization header")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("missing_token", "Authorization is not 'Bearer <token>'")
    return token


class TokenIssuer:
    """Signs member tokens with one key (the newest of a key ring)."""

    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str,
        audience: str,
        ttl_s: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, member_id: int, email: str | None = None, ttl_s: int | None = None) -> str:
        return self.issue_with_expiry(member_id, email, ttl_s)[0]

    def issue_with_expiry(
        self, member_id: int, email: str | None = None, ttl_s: int | None = None
    ) -> tuple[str, int]:
        """The token and its `exp` (Unix seconds)."""
        if member_id <= 0:
            raise ValueError(f"member id must be positive, got {member_id}")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "sub": str(member_id),
            "uid": member_id,
            "iat": now,
            "nbf": now,
            "exp": now + (self.ttl_s if ttl_s is None else ttl_s),
            "iss": self.issuer,
            "aud": self.audience,
            "jti": uuid.uuid4().hex,
        }
        if email is not None:
            claims["email"] = email
        token = jwt.encode(claims, self.key.private_key, algorithm=ALGORITHM, headers={"kid": self.key.kid})
        return token, claims["exp"]


_ERRORS: tuple[tuple[type[jwt.InvalidTokenError], InvalidTokenCode], ...] = (
    # Most specific first: InvalidSignatureError is a DecodeError, every one an InvalidTokenError.
    (jwt.ExpiredSignatureError, "expired_token"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.InvalidTokenError, "malformed_token"),
)


class TokenVerifier:
    """Verifies member tokens against public keys by kid; caches what it verified until `exp`.

    `verify` raises `InvalidToken`; it never does I/O. Not thread safe (one per event loop)."""

    algorithms = (ALGORITHM,)

    def __init__(
        self,
        public_keys: PublicKeys,
        issuer: str,
        audience: str,
        leeway_s: float = 5.0,
        *,
        cache_size: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self._clock = clock
        self._keys: dict[str, ec.EllipticCurvePublicKey] = dict(public_keys)
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._options: Any = {"require": REQUIRED_CLAIMS}
        self.verifications = 0
        """Tokens checked by PyJWT (cache misses), valid or not."""
        self.cache_hits = 0

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    def update_keys(self, public_keys: PublicKeys) -> None:
        """Replace the verification keys (e.g. after fetching the JWKS again). Cached tokens are
        forgotten only if a key was removed or changed, so a periodic refresh costs nothing."""
        new_keys = dict(public_keys)
        dropped = any(
            kid not in new_keys or new_keys[kid].public_numbers() != key.public_numbers()
            for kid, key in self._keys.items()
        )
        self._keys = new_keys
        if dropped:
            self._cache.clear()

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise InvalidToken("missing_token", "no token")
        cache = self._cache
        principal = cache.get(token)
        if principal is not None:
            if self._clock() < principal.expires_at + self.leeway_s:
                cache.move_to_end(token)
                self.cache_hits += 1
                return principal
            del cache[token]
        principal = self._verify(token)
        cache[token] = principal
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> Principal:
        self.verifications += 1
        header = _unverified_header(token)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken("alg_not_allowed", f"algorithm {alg!r} is not accepted, only {ALGORITHM}")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown_key", f"no verification key with kid {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options=self._options,
            )
        except jwt.InvalidTokenError as exc:
            code = next(code for error, code in _ERRORS if isinstance(exc, error))
            raise InvalidToken(code, str(exc)) from None
        return _principal(claims)


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, only to choose the key (PyJWT then checks everything); 10x cheaper than
    `jwt.get_unverified_header`, which decodes the whole token."""
    segment, _, _ = token.partition(".")
    try:
        if token.count(".") != 2:
            raise ValueError("not a JWS compact token (header.payload.signature)")
        header = msgspec.json.decode(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, msgspec.DecodeError) as exc:  # binascii.Error is a ValueError
        raise InvalidToken("malformed_token", f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed_token", "header is not a JSON object")
    return header


def _principal(claims: Mapping[str, Any]) -> Principal:
    sub = claims["sub"]
    if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and 0 < len(sub) <= 18) or sub[0] == "0":
        raise InvalidToken("malformed_token", f"sub must be a member id, got {sub!r}")
    email = claims.get("email")
    if email is not None and not isinstance(email, str):
        raise InvalidToken("malformed_token", "email must be a string")
    return Principal(int(sub), email, int(claims["exp"]))
