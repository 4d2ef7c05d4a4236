"""Member authentication: ES256 JWTs with key rotation by `kid`.

What the gateway (and any service that authenticates members) uses:

    keys = await fetch_jwks(nc, namespace)                  # public keys from the auth service
    verifier = TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience)
    principal = verifier.verify(token_from_authorization(request.headers.get("authorization")))
    principal.member_id                                      # or InvalidToken with a stable .code
"""

from __future__ import annotations

from pathlib import Path

from bourse.auth.client import AuthRequestFailed, fetch_jwks, keep_keys_fresh, request_dev_token
from bourse.auth.keys import (
    DEV_KID_SUFFIX,
    KeyFileError,
    KeyRing,
    PublicKeys,
    SigningKey,
    generate_key,
    is_dev_kid,
    load_key_ring,
    load_or_create_key_ring,
)
from bourse.auth.tokens import (
    InvalidToken,
    InvalidTokenCode,
    Principal,
    TokenIssuer,
    TokenVerifier,
    token_from_authorization,
)
from bourse.settings import Settings

__all__ = [
    "DEV_KID_SUFFIX",
    "AuthRequestFailed",
    "InvalidToken",
    "InvalidTokenCode",
    "KeyFileError",
    "KeyRing",
    "Principal",
    "PublicKeys",
    "SigningKey",
    "TokenIssuer",
    "TokenVerifier",
    "fetch_jwks",
    "generate_key",
    "is_dev_kid",
    "issuer_for",
    "keep_keys_fresh",
    "key_ring_for",
    "keys_dir",
    "load_key_ring",
    "load_or_create_key_ring",
    "request_dev_token",
    "token_from_authorization",
    "verifier_for",
]


def keys_dir(settings: Settings) -> Path:
    return settings.jwt_keys_dir or settings.data_dir / "keys"


def key_ring_for(settings: Settings) -> KeyRing:
    """The key ring of the settings' folder; with dev tokens on, a key is made on first use."""
    return load_or_create_key_ring(keys_dir(settings), create=settings.dev_tokens)


def issuer_for(settings: Settings, ring: KeyRing) -> TokenIssuer:
    return TokenIssuer(
        ring.signing_key, issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl_s=settings.jwt_ttl_s
    )


def verifier_for(settings: Settings, public_keys: PublicKeys) -> TokenVerifier:
    return TokenVerifier(public_keys, settings.jwt_issuer, settings.jwt_audience)
