"""The member-token settings turned into the key ring, the issuer and the verifier."""

from __future__ import annotations

from pathlib import Path

from bourse.adapters.auth import KeyRing, PublicKeys, TokenIssuer, TokenVerifier, load_or_create_key_ring
from bourse.config.settings import Settings


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
