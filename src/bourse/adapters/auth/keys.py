"""Token keys: ES256 (ECDSA P-256) key pairs named by a key id (`kid`), loaded from a folder.

The folder (`BOURSE_JWT_KEYS_DIR`, default `<data_dir>/keys`) holds:

- `<kid>.pem`: a private key (PKCS#8 or SEC1 PEM; signs and verifies) or a public key (verifies
  only), the file name without `.pem` being its kid;
- `*.json`: a JWKS document (`{"keys": [...]}`) of public keys, e.g. the one an external auth
  server publishes; its EC P-256 keys with a `kid` verify, others are ignored.

Every key verifies; the private key with the greatest kid signs. Generated kids are UTC
timestamps marked as development keys (`20260101T120000123456Z-dev`), so "greatest" is
"newest": rotate by adding a key, and drop the old one once the tokens it signed have expired.
bourse generates keys only for dev tokens; the `-dev` mark lets the production guard
(`bourse.config.production`) refuse a key ring that still holds one, and it travels with the key (file
name, JWKS, token header), so a dev key copied elsewhere is still recognised.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ALGORITHM = "ES256"

PublicKeys = Mapping[str, ec.EllipticCurvePublicKey]
"""Verification keys by kid."""

DEV_KID_SUFFIX = "-dev"
"""Ends the kid of every key bourse generates (for dev tokens): production refuses them."""


class KeyFileError(ValueError):
    """A key file or JWKS that cannot be used (wrong curve, unreadable, conflicting kid)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True, slots=True)
class KeyRing:
    signing_keys: tuple[SigningKey, ...] = ()
    """Private keys, oldest (smallest kid) first."""
    public_keys: PublicKeys = field(default_factory=dict)
    """Every key that verifies, by kid (including the public halves of `signing_keys`)."""

    @property
    def signing_key(self) -> SigningKey:
        """The newest private key: the one that signs."""
        if not self.signing_keys:
            raise LookupError("no private key in the key ring: this ring can verify but not sign")
        return self.signing_keys[-1]

    @property
    def dev_kids(self) -> list[str]:
        """The kids of generated development keys in this ring (`is_dev_kid`)."""
        return sorted(kid for kid in self.public_keys if is_dev_kid(kid))

    def jwks(self) -> dict[str, Any]:
        return jwks_document(self.public_keys)


def is_dev_kid(kid: str) -> bool:
    return kid.endswith(DEV_KID_SUFFIX)


def new_kid() -> str:
    """A dev key's kid: the UTC time (so the newest sorts last) and the dev mark."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + DEV_KID_SUFFIX


def generate_key(folder: Path, kid: str | None = None) -> SigningKey:
    """Make a P-256 key pair and write it as `<folder>/<kid>.pem` (owner-only permissions); the
    kid defaults to a marked dev kid (`new_kid`)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SigningKey(kid or new_kid(), ec.generate_private_key(ec.SECP256R1()))
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(folder / f"{key.kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key


def _read_pem(path: Path) -> tuple[ec.EllipticCurvePrivateKey | None, ec.EllipticCurvePublicKey]:
    data = path.read_bytes()
    try:
        key = (
            serialization.load_pem_private_key(data, password=None)
            if b"PRIVATE KEY" in data
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: unreadable key: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return None, key
    raise KeyFileError(f"{path}: not an EC P-256 key (ES256 needs one)")


def _add(public_keys: dict[str, ec.EllipticCurvePublicKey], kid: str, key: ec.EllipticCurvePublicKey) -> None:
    known = public_keys.get(kid)
    if known is not None and known.public_numbers() != key.public_numbers():
        raise KeyFileError(f"two different keys share the kid {kid!r}")
    public_keys[kid] = key


def load_key_ring(folder: Path) -> KeyRing:
    """Every key in `folder` (missing folder: an empty ring)."""
    signing: list[SigningKey] = []
    public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
    if not folder.is_dir():
        return KeyRing()
    for path in sorted(folder.glob("*.pem")):
        private_key, public_key = _read_pem(path)
        if private_key is not None:
            signing.append(SigningKey(path.stem, private_key))
        _add(public_keys, path.stem, public_key)
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except ValueError as exc:
            raise KeyFileError(f"{path}: not JSON: {exc}") from exc
        for kid, key in public_keys_from_jwks(document).items():
            _add(public_keys, kid, key)
    signing.sort(key=lambda key: key.kid)
    return KeyRing(tuple(signing), public_keys)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Serialise key generation between processes that share the folder (POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_or_create_key_ring(folder: Path, *, create: bool) -> KeyRing:
    """The key ring in `folder`; with `create`, first generate a key if it has no private key."""
    ring = load_key_ring(folder)
    if ring.signing_keys or not create:
        return ring
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _folder_lock(folder):
        ring = load_key_ring(folder)  # another process may have made one meanwhile
        if not ring.signing_keys:
            generate_key(folder)
            ring = load_key_ring(folder)
    return ring


def jwk(kid: str, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    document: dict[str, Any] = dict(ECAlgorithm.to_jwk(key, as_dict=True))
    document.update(kid=kid, use="sig", alg=ALGORITHM)
    return document


def jwks_document(public_keys: PublicKeys) -> dict[str, Any]:
    return {"keys": [jwk(kid, key) for kid, key in sorted(public_keys.items())]}


def public_keys_from_jwks(document: Mapping[str, Any]) -> dict[str, ec.EllipticCurvePublicKey]:
    """The ES256 verification keys of a JWKS document; other keys (RSA, no kid, private) are skipped."""
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise KeyFileError("not a JWKS document: no 'keys' list")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "EC" or entry.get("crv") != "P-256":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or entry.get("alg", ALGORITHM) != ALGORITHM or "d" in entry:
            continue
        try:
            key = ECAlgorithm.from_jwk(entry)
        except Exception as exc:
            raise KeyFileError(f"JWKS key {kid!r} unreadable: {exc}") from exc
        if isinstance(key, ec.EllipticCurvePublicKey):
            _add(keys, kid, key)
    return keys
