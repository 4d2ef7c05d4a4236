"""The production guard: with `BOURSE_ENVIRONMENT=production` a process refuses to start, before
it connects to anything, while a development default is still in its settings.

The defaults exist so that `bourse up` works with no settings at all; each one is harmless on a
laptop and a hole in production:

- `BOURSE_DEV_TOKENS` on: the auth service issues a token for any member to whoever asks;
- `BOURSE_DEMO_SEED` on: the demo members of the markets file are credited money from nowhere;
- a generated dev key in the keys folder (kid ending `-dev`, `bourse.adapters.auth.DEV_KID_SUFFIX`):
  a key written to disk by a development run, that anyone with that disk can sign with;
- default credentials in a server URL: a password that is empty, equal to its user, or a
  well-known default (`guest`, `password`, ...), and a RabbitMQ URL without a user (the client
  then logs in as guest/guest).

Every problem is listed at once, so one failed start tells the operator all there is to fix.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from bourse.adapters.auth import KeyFileError, load_key_ring
from bourse.config.auth import keys_dir
from bourse.config.settings import Settings, mask_url

DEFAULT_PASSWORDS = frozenset(
    {"guest", "password", "secret", "changeme", "change-me", "admin", "root", "bourse", "test", "default"}
)
"""Passwords that ship as defaults or in examples (RabbitMQ's guest, this project's compose file)."""
PASSWORDLESS_DEFAULT_USERS = frozenset({"root", "guest", "admin", "default"})
"""Users that servers create without a password (MariaDB root, Redis ACL default)."""
NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


class ProductionSettingsRefused(RuntimeError):
    """The settings hold development defaults while `BOURSE_ENVIRONMENT=production`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"BOURSE_ENVIRONMENT=production, but the settings hold development defaults; "
            f"refusing to start:\n{lines}"
        )


def default_credentials(url: str) -> str | None:
    """Why `url` (one URL) carries default credentials, or None if it does not. A URL without
    credentials passes (the server may trust the network, TLS client certificates or a socket),
    except an AMQP one, which logs in as guest/guest; a NATS user part alone is a token."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme in ("amqp", "amqps") and not user:
        return "no user: the client logs in as guest/guest"
    if password is None:
        if user and user.lower() in PASSWORDLESS_DEFAULT_USERS and parts.scheme not in NATS_SCHEMES:
            return f"user {user!r} without a password"
        return None
    of_user = f" for user {user!r}" if user else ""
    if password == "":
        return f"an empty password{of_user}"
    if password.lower() in DEFAULT_PASSWORDS:
        return f"a well-known default password{of_user}"
    if user and password == user:
        return f"the password of user {user!r} is its name"
    return None


def production_problems(settings: Settings) -> list[str]:
    """What in `settings` is unfit for production (empty: nothing; checked whatever the
    environment, so a deployment can be checked before it is switched over)."""
    problems: list[str] = []
    if settings.dev_tokens:
        problems.append(
            "BOURSE_DEV_TOKENS is on (the default): the auth service would issue a token for any "
            "member; set BOURSE_DEV_TOKENS=false and put your auth server's public keys in the keys folder"
        )
    if settings.demo_seed:
        problems.append(
            "BOURSE_DEMO_SEED is on (the default): the demo members of the markets file would be "
            "credited; set BOURSE_DEMO_SEED=false"
        )
    folder = keys_dir(settings)
    try:
        ring = load_key_ring(folder)
    except KeyFileError as exc:
        problems.append(f"the keys folder {folder} holds an unusable key: {exc}")
    else:
        dev = ring.dev_kids
        if dev:
            problems.append(
                f"the keys folder {folder} holds generated development keys ({', '.join(dev)}): "
                "remove them; production keys come from your auth server"
            )
    for name in ("nats_url", "sql_url", "redis_url", "rabbitmq_url"):
        value = getattr(settings, name)
        if value is None:
            continue
        for url in value.get_secret_value().split(","):
            reason = default_credentials(url) if url.strip() else None
            if reason is not None:
                problems.append(
                    f"BOURSE_{name.upper()} ({mask_url(url.strip())}) has default credentials: {reason}"
                )
    return problems


def check_production(settings: Settings) -> None:
    """Raise `ProductionSettingsRefused` listing every problem if `settings` are production's
    and hold a development default; development settings pass unchecked."""
    if not settings.production:
        return
    problems = production_problems(settings)
    if problems:
        raise ProductionSettingsRefused(problems)
