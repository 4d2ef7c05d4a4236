"""Member tokens: what is accepted, everything that must be refused (with its code), rotation, cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bourse.adapters.auth import (
    InvalidToken,
    KeyFileError,
    KeyRing,
    TokenIssuer,
    TokenVerifier,
    generate_key,
    load_key_ring,
    load_or_create_key_ring,
    token_from_authorization,
)
from bourse.adapters.auth.keys import SigningKey, jwks_document, public_keys_from_jwks
from bourse.cli import main

ISSUER = "bourse"
AUDIENCE = "bourse-api"


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def ring(keys_dir: Path) -> KeyRing:
    generate_key(keys_dir)
    return load_key_ring(keys_dir)


@pytest.fixture
def issuer(ring: KeyRing) -> TokenIssuer:
    return TokenIssuer(ring.signing_key, issuer=ISSUER, audience=AUDIENCE, ttl_s=600)


@pytest.fixture
def verifier(ring: KeyRing) -> TokenVerifier:
    return TokenVerifier(ring.public_keys, ISSUER, AUDIENCE, leeway_s=0)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "7",
        "uid": 7,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": uuid.uuid4().hex,
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(key: SigningKey, payload: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(payload, key.private_key, algorithm="ES256", headers={"kid": kid or key.kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(verifier: TokenVerifier, token: str | None) -> str:
    with pytest.raises(InvalidToken) as failure:
        verifier.verify(token)
    return failure.value.code


def test_issued_token_is_accepted_with_its_claims(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(42, "ada@example.com", ttl_s=120)
    principal = verifier.verify(token)
    assert (principal.member_id, principal.email) == (42, "ada@example.com")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": issuer.key.kid, "typ": "JWT"}
    body = jwt.decode(token, options={"verify_signature": False})
    assert body["sub"] == "42"
    assert body["uid"] == 42
    assert (body["iss"], body["aud"]) == (ISSUER, AUDIENCE)
    assert body["exp"] - body["iat"] == 120
    assert body["nbf"] == body["iat"]
    assert principal.expires_at == body["exp"]
    assert len(body["jti"]) == 32
    assert issuer.issue(42) != issuer.issue(42)  # distinct jti


def test_token_without_email_has_no_email(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    assert verifier.verify(issuer.issue(5)).email is None


def test_expired_token_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    past = int(time.time()) - 100
    token = sign(ring.signing_key, claims(iat=past - 60, nbf=past - 60, exp=past))
    assert refused(verifier, token) == "expired_token"


def test_token_not_valid_before_a_future_nbf_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    token = sign(ring.signing_key, claims(nbf=int(time.time()) + 300))
    assert refused(verifier, token) == "not_yet_valid"


def test_leeway_accepts_a_token_that_expired_within_it(ring: KeyRing) -> None:
    token = sign(ring.signing_key, claims(exp=int(time.time()) - 2))
    assert TokenVerifier(ring.public_keys, ISSUER, AUDIENCE, leeway_s=30).verify(token).member_id == 7


def test_token_signed_by_another_key_under_a_known_kid_is_refused(
    ring: KeyRing, verifier: TokenVerifier, tmp_path: Path
) -> None:
    impostor = generate_key(tmp_path / "other")
    token = sign(impostor, claims(), kid=ring.signing_key.kid)
    assert refused(verifier, token) == "bad_signature"


def test_tampered_payload_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    header, _, signature = issuer.issue(7).split(".")
    forged = b64(json.dumps(claims(sub="1", uid=1)).encode())
    assert refused(verifier, f"{header}.{forged}.{signature}") == "bad_signature"


def test_unsigned_alg_none_token_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": ring.signing_key.kid}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    assert refused(verifier, token) == "alg_not_allowed"


def test_hs256_token_keyed_with_the_public_key_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    """Algorithm confusion: an attacker HMACs a token with the (public) verification key."""
    public_pem = ring.signing_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": ring.signing_key.kid}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert refused(verifier, f"{header}.{payload}.{b64(signature)}") == "alg_not_allowed"


def test_token_for_another_audience_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    assert refused(verifier, sign(ring.signing_key, claims(aud="another-api"))) == "wrong_audience"


def test_token_from_another_issuer_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    assert refused(verifier, sign(ring.signing_key, claims(iss="someone-else"))) == "wrong_issuer"


def test_token_with_an_unknown_or_missing_kid_is_refused(
    ring: KeyRing, verifier: TokenVerifier, tmp_path: Path
) -> None:
    stranger = generate_key(tmp_path / "other", kid="stranger")
    assert refused(verifier, sign(stranger, claims())) == "unknown_key"
    no_kid = jwt.encode(claims(), ring.signing_key.private_key, algorithm="ES256")
    assert refused(verifier, no_kid) == "unknown_key"


@pytest.mark.parametrize("token", ["abc", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30", "..."])
def test_malformed_token_is_refused(verifier: TokenVerifier, token: str) -> None:
    assert refused(verifier, token) == "malformed_token"


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": None},
        {"iat": None},
        {"sub": None},
        {"sub": "ada"},
        {"sub": "007"},
        {"sub": "-1"},
        {"sub": 7},
        {"email": ["ada"]},
        {"exp": "tomorrow"},
    ],
    ids=["no-exp", "no-iat", "no-sub", "sub-not-a-number", "sub-leading-zero", "sub-negative", "sub-int",
         "email-not-text", "exp-not-a-number"],
)  # fmt: skip
def test_token_with_missing_or_bad_claims_is_refused(
    ring: KeyRing, verifier: TokenVerifier, changes: dict[str, Any]
) -> None:
    # the claims are made when the test runs: made at collection, they expired in a long suite
    payload = claims(**changes)
    assert refused(verifier, sign(ring.signing_key, payload)) == "malformed_token"


@pytest.mark.parametrize("missing", ["iss", "aud"])
def test_token_without_issuer_or_audience_is_refused(
    ring: KeyRing, verifier: TokenVerifier, missing: str
) -> None:
    assert refused(verifier, sign(ring.signing_key, claims(**{missing: None}))) == "malformed_token"


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_refused_as_missing(verifier: TokenVerifier, token: str | None) -> None:
    assert refused(verifier, token) == "missing_token"


@pytest.mark.parametrize(
    ("header", "token"), [("Bearer abc", "abc"), ("bearer  abc ", "abc"), (None, None), ("Basic abc", None)]
)
def test_bearer_token_is_read_from_the_authorization_header(header: str | None, token: str | None) -> None:
    if token is None:
        with pytest.raises(InvalidToken, match="missing_token"):
            token_from_authorization(header)
    else:
        assert token_from_authorization(header) == token


def test_rotation_new_key_signs_old_key_verifies_until_removed(keys_dir: Path, ring: KeyRing) -> None:
    old_token = TokenIssuer(ring.signing_key, issuer=ISSUER, audience=AUDIENCE).issue(1)
    new_key = generate_key(keys_dir)
    rotated = load_key_ring(keys_dir)
    assert rotated.signing_key.kid == new_key.kid > ring.signing_key.kid
    new_token = TokenIssuer(rotated.signing_key, issuer=ISSUER, audience=AUDIENCE).issue(2)
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid
    verifier = TokenVerifier(rotated.public_keys, ISSUER, AUDIENCE)
    assert verifier.verify(old_token).member_id == 1
    assert verifier.verify(new_token).member_id == 2

    (keys_dir / f"{ring.signing_key.kid}.pem").unlink()
    verifier.update_keys(load_key_ring(keys_dir).public_keys)
    assert refused(verifier, old_token) == "unknown_key"  # the cache was cleared with the keys
    assert verifier.verify(new_token).member_id == 2


def test_refreshing_keys_keeps_the_cache_unless_a_key_goes(keys_dir: Path, issuer: TokenIssuer) -> None:
    verifier = TokenVerifier(load_key_ring(keys_dir).public_keys, ISSUER, AUDIENCE)
    token = issuer.issue(3)
    verifier.verify(token)
    verifier.update_keys(load_key_ring(keys_dir).public_keys)  # same keys, fetched again
    generate_key(keys_dir)
    verifier.update_keys(load_key_ring(keys_dir).public_keys)  # a key added
    verifier.verify(token)
    assert verifier.verifications == 1
    verifier.update_keys({})
    assert refused(verifier, token) == "unknown_key"


def test_cache_returns_the_same_principal_without_verifying_again(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.issue(9)
    first = verifier.verify(token)
    assert verifier.verify(token) is first
    assert (verifier.verifications, verifier.cache_hits) == (1, 1)


def test_cached_token_is_verified_again_once_its_exp_has_passed(issuer: TokenIssuer, ring: KeyRing) -> None:
    now = [time.time()]
    verifier = TokenVerifier(ring.public_keys, ISSUER, AUDIENCE, leeway_s=5, clock=lambda: now[0])
    token = issuer.issue(9, ttl_s=60)
    principal = verifier.verify(token)
    now[0] = principal.expires_at + 4.9  # within the leeway: still served from the cache
    verifier.verify(token)
    assert verifier.verifications == 1
    now[0] = principal.expires_at + 5.0
    verifier.verify(token)  # not from the cache (PyJWT, on the real clock, still accepts it)
    assert verifier.verifications == 2


def test_cached_token_expires_with_the_token(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue(9, ttl_s=1)
    principal = verifier.verify(token)
    time.sleep(max(0.0, principal.expires_at - time.time()) + 0.05)
    assert refused(verifier, token) == "expired_token"
    assert refused(verifier, token) == "expired_token"  # refusals are not cached as principals


def test_cache_is_bounded_and_drops_the_least_recently_used(issuer: TokenIssuer, ring: KeyRing) -> None:
    verifier = TokenVerifier(ring.public_keys, ISSUER, AUDIENCE, cache_size=2)
    a, b, c = (issuer.issue(member) for member in (1, 2, 3))
    verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now the most recently used
    verifier.verify(c)  # evicts b
    verifier.verify(a)
    assert verifier.verifications == 3
    verifier.verify(b)
    assert verifier.verifications == 4


def test_key_folder_accepts_public_pems_and_jwks_files(tmp_path: Path, ring: KeyRing) -> None:
    folder = tmp_path / "verify-only"
    folder.mkdir()
    signer = ring.signing_key
    (folder / "pem-key.pem").write_bytes(
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    other = generate_key(tmp_path / "elsewhere", kid="jwks-key")
    document = jwks_document({"jwks-key": other.public_key})
    document["keys"].append({"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"})  # not ES256: skipped
    (folder / "auth-server.json").write_text(json.dumps(document))
    verify_only = load_key_ring(folder)
    assert verify_only.signing_keys == ()
    assert sorted(verify_only.public_keys) == ["jwks-key", "pem-key"]
    with pytest.raises(LookupError):
        _ = verify_only.signing_key
    verifier = TokenVerifier(verify_only.public_keys, ISSUER, AUDIENCE)
    assert verifier.verify(sign(other, claims(sub="3"))).member_id == 3
    assert verifier.verify(sign(signer, claims(sub="4"), kid="pem-key")).member_id == 4


def test_jwks_round_trips_and_holds_no_private_part(ring: KeyRing) -> None:
    document = ring.jwks()
    assert all("d" not in key and key["alg"] == "ES256" for key in document["keys"])
    keys = public_keys_from_jwks(json.loads(json.dumps(document)))
    assert {kid: key.public_numbers() for kid, key in keys.items()} == {
        kid: key.public_numbers() for kid, key in ring.public_keys.items()
    }


def test_key_on_another_curve_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    tmp_path.joinpath("p384.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match="P-256"):
        load_key_ring(tmp_path)


def test_dev_key_is_made_once_on_first_use(keys_dir: Path) -> None:
    assert load_or_create_key_ring(keys_dir, create=False).public_keys == {}
    first = load_or_create_key_ring(keys_dir, create=True)
    again = load_or_create_key_ring(keys_dir, create=True)
    assert first.signing_key.kid == again.signing_key.kid
    assert len(list(keys_dir.glob("*.pem"))) == 1
    assert (keys_dir / f"{first.signing_key.kid}.pem").stat().st_mode & 0o077 == 0


def test_cli_prints_a_token_signed_by_the_local_key_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOURSE_DATA_DIR", str(tmp_path))
    assert main(["token", "12", "--ttl", "90", "--email", "ada@example.com"]) == 0
    token = capsys.readouterr().out.strip()
    ring = load_key_ring(tmp_path / "keys")
    principal = TokenVerifier(ring.public_keys, ISSUER, AUDIENCE).verify(token)
    assert (principal.member_id, principal.email) == (12, "ada@example.com")
    assert principal.expires_at - int(time.time()) in range(85, 91)
