"""Member authentication: ES256 JWTs with key rotation by `kid`.

What the gateway (and any service that authenticates members) uses:

    keys = await fetch_jwks(nc, namespace)                  # public keys from the auth service
    verifier = TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience)
    principal = verifier.verify(token_from_authorization(request.headers.get("authorization")))
    principal.member_id                                      # or InvalidToken with a stable .code
"""

from __future__ import annotations

from bourse.adapters.auth.client import AuthRequestFailed, fetch_jwks, keep_keys_fresh, request_dev_token
from bourse.adapters.auth.keys import (
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
from bourse.adapters.auth.tokens import (
    InvalidToken,
    InvalidTokenCode,
    Principal,
    TokenIssuer,
    TokenVerifier,
    token_from_authorization,
)

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
    "keep_keys_fresh",
    "load_key_ring",
    "load_or_create_key_ring",
    "request_dev_token",
    "token_from_authorization",
]
