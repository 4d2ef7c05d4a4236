"""All settings, from environment variables prefixed `BOURSE_` (or a `.env` file).

Defaults are the embedded setup: NATS started from the bundled binary, SQLite in the data
folder, no Redis and no RabbitMQ (the services that need them are then not started).
`BOURSE_ENVIRONMENT=production` makes the services refuse development defaults
(`bourse.config.production`). Server URLs are `SecretUrl`s: they print with their password masked, and
`get_secret_value()` is called only where a connection is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bourse.application.catalog import Catalog, default_markets_file, load_catalog

MASK = "***"
_SECRET_QUERY_KEYS = ("pass", "token", "secret", "key")
"""Query parameters whose name contains one of these are masked too (`?password=...`)."""
_TOKEN_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
"""Schemes whose user part alone is a secret: `nats://<token>@host` authenticates by token."""


def mask_url(url: str) -> str:
    """`url` (or comma-separated URLs) with passwords, NATS tokens and secret query values
    replaced by `***`: safe for logs, banners and health output."""
    return ",".join(_mask_one(part) for part in url.split(","))


def _mask_one(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return MASK  # not a URL we can take apart: show nothing of it
    leading = url[: len(url) - len(url.lstrip())]
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _password = userinfo.partition(":")
        if has_password:
            userinfo = f"{user}:{MASK}"
        elif parts.scheme in _TOKEN_SCHEMES:
            userinfo = MASK
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(secret in key.lower() for key, _ in pairs for secret in _SECRET_QUERY_KEYS):
            masked = [
                (key, MASK if any(secret in key.lower() for secret in _SECRET_QUERY_KEYS) else value)
                for key, value in pairs
            ]
            query = urlencode(masked, safe="*")
    return leading + urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SecretUrl(SecretStr):
    """A server URL that may carry credentials: `str()`, `repr()` and JSON show it with its
    password masked (`mask_url`), so settings can be logged; `get_secret_value()` gives the URL to
    connect with."""

    def _display(self) -> str:
        return mask_url(self.get_secret_value())


SECRET_URL_FIELDS = frozenset({"nats_url", "sql_url", "redis_url", "rabbitmq_url"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BOURSE_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production`: every process refuses to start with development defaults (dev "
        "tokens, demo seed, a generated dev key, default credentials in a URL); "
        "see bourse.config.production.",
    )
    nats_url: SecretUrl | None = Field(
        default=None,
        description="NATS server URL(s), comma separated. Unset: `bourse up` starts an embedded server.",
    )
    namespace: str = Field(
        default="bourse",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Prefix of every subject, stream and bucket, so several deployments can share a NATS.",
    )
    sql_url: SecretUrl | None = Field(
        default=None, description="SQLAlchemy URL. Unset: SQLite in the data folder."
    )
    redis_url: SecretUrl | None = Field(default=None, description="Redis URL. Unset: no cache service.")
    rabbitmq_url: SecretUrl | None = Field(default=None, description="AMQP URL. Unset: no RabbitMQ ingress.")
    markets_file: Path = Field(default_factory=default_markets_file)
    data_dir: Path = Path("var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    health_port: int = Field(default=8001, description="Per-process health endpoint; 0 turns it off.")
    health_host: str = Field(
        default="127.0.0.1",
        description="Address the health port (`/healthz`, `/livez`, `/metrics`, the dashboard) binds, "
        "whatever `HTTP_HOST` is: loopback unless set, so opening the API does not open the "
        "process's internals; containers set 0.0.0.0 for their probes and Prometheus.",
    )
    instance: str | None = Field(
        default=None,
        description="This process's label in the nats.micro metadata of its services (`instance`, next to "
        "`host` and `pid`); `bourse up` gives each child its own, and knows the child is up when its "
        "services answer `$SRV.PING` with it. Unset: `<host>:<pid>`.",
    )

    embedded_nats_port: int = 14222
    embedded_nats_monitor_port: int = 18222
    stream_replicas: int = Field(default=1, ge=1, le=5)
    accounts_shards: int = Field(default=1, ge=1, le=64)
    accounts_shard_ids: list[int] | None = Field(
        default=None, description="Shards this process runs (JSON list); unset: all of them."
    )
    matching_markets: list[str] | None = Field(
        default=None, description="Markets this process matches (JSON list); unset: all of them."
    )
    pusher_host: str = "127.0.0.1"
    pusher_port: int = Field(
        default=8002, description="The pusher's WebSocket port (path /ws); 0: any free port."
    )
    pusher_max_buffered_bytes: int = Field(
        default=1 << 20,
        gt=0,
        description="Bytes waiting for one WebSocket client past which it is closed (4008 slow_consumer).",
    )
    pusher_max_subscriptions: int = Field(
        default=50, ge=1, description="Channels one WebSocket connection may hold."
    )
    pusher_connections_per_ip_per_s: int = Field(
        default=50,
        ge=1,
        description="New WebSocket connections one address may open per second (4029 past it).",
    )
    pusher_idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A WebSocket connection with no subscription, silent this long, is closed (4001).",
    )
    statistics_markets: list[str] | None = Field(
        default=None,
        description="Markets this statistics instance folds and publishes (JSON list), one instance per "
        "group; unset: all of them.",
    )
    max_open_orders_per_member: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Open orders one member may hold (market and IOC orders too, until they close); the "
        "accounts stage refuses a new one beyond it (422 `too_many_open_orders`). A cancel or a fill frees "
        "a place. Change it with the accounts stage stopped cleanly: it is configuration, not state.",
    )
    order_decision_timeout_s: float = Field(
        default=2.0, gt=0, description="How long POST /order waits for the accounts decision before a 202."
    )
    order_submit_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long the gateway and the RabbitMQ ingress try to make a command durable "
        "(JetStream ack) before answering that its outcome is unknown (504 outcome_unknown).",
    )
    clock_skew_max_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How far the clocks of the gateways and the NATS servers may disagree (NTP keeps "
        "them far closer): a command stored after its sender gave up plus this is refused as expired.",
    )
    gateway_hot_path: bool = Field(
        default=True,
        description="Serve POST /order without the framework (same code and schema; see api/hot_path.py).",
    )
    access_log_sample: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of REST requests the gateway writes an access-log line for (5xx always); "
        "0 turns the access log off.",
    )
    order_intake_linger_s: float = Field(
        default=0.002,
        ge=0,
        le=1,
        description="How long the gateway and the RabbitMQ ingress gather orders into one ORDERS "
        "message before publishing it: fewer, larger messages through every stage, that much more latency.",
    )
    accounts_linger_s: float = Field(
        default=0.003,
        ge=0,
        le=1,
        description="How long the accounts stage waits after an input message for more before "
        "processing: bigger batches, fewer MATCH messages per order, that much more latency.",
    )
    persistence_linger_s: float = Field(
        default=0.05,
        ge=0,
        le=5,
        description="How long persistence waits after an event for more, to write fewer, larger "
        "transactions: SQL lags the streams by about this much more, for several times less CPU.",
    )
    demo_seed: bool = Field(default=True, description="Credit the demo members of the markets file once.")

    # --- deadlines and recovery (docs/architecture.md: Persistence, Processes, RabbitMQ ingress) ---
    sql_read_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="Deadline of one gateway read from the persistence tables (pool checkout, connect and "
        "statements): past it the read is 503 `unavailable` and the next read model is asked.",
    )
    sql_transaction_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of one persistence transaction attempt; past it the attempt is abandoned "
        "(its connection closed) and retried with the usual backoff.",
    )
    consumer_stall_s: float = Field(
        default=10.0,
        gt=0,
        description="A stream consumer whose batch has been in its handler (or retrying) longer than this "
        "is reported stalled: its service is not ok on /healthz.",
    )
    restart_backoff_max_s: float = Field(
        default=4.0,
        gt=0,
        description="`bourse up` with several processes: the longest pause before a crashed child is "
        "started again (0.5 s, doubling up to this).",
    )
    restart_reset_after_s: float = Field(
        default=10.0,
        gt=0,
        description="`bourse up`: a child up (its services answering on NATS) this long has its restart "
        "backoff reset.",
    )

    # --- the gateway's reads (docs/architecture.md: Reading state, "Which source the gateway reads") ---
    read_max_lag_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="A read model (Redis, SQL, query service) answers the gateway's reads only if it has "
        "applied what the EVENTS and ACCOUNTS streams held this long ago; otherwise the next one does "
        "(the last one answers anyway, with a `Bourse-Read-Stale` header).",
    )
    read_check_interval_s: float = Field(
        default=0.25,
        gt=0,
        le=10,
        description="How often the gateway samples the streams' last sequences and each read model's "
        "watermark: answers lag the streams by at most `read_max_lag_s` plus this.",
    )
    read_breaker_failures: int = Field(
        default=5, ge=1, description="Failures in a row that open a read model's circuit breaker (skipped)."
    )
    read_breaker_reset_s: float = Field(
        default=5.0,
        gt=0,
        description="How long a read model's open circuit breaker skips it before one call tries it again.",
    )
    gateway_redis_timeout_s: float = Field(
        default=0.25,
        gt=0,
        description="Deadline of each connect, command and wait for a pooled connection of the gateway's "
        "Redis reads; past it the next read model answers.",
    )
    gateway_redis_max_connections: int = Field(
        default=32, ge=1, description="Bound of the gateway's Redis connection pool (per gateway process)."
    )

    # --- RabbitMQ ingress (`amqp-ingress`, runs only with `rabbitmq_url`); see docs/architecture.md ---
    amqp_exchange: str | None = Field(
        default=None,
        description="Direct exchange publishers send order commands to. Unset: `<namespace>.orders`.",
    )
    amqp_routing_key: str = Field(
        default="order", description="Routing key binding the exchange to the queue."
    )
    amqp_queue: str | None = Field(
        default=None, description="Quorum queue the ingress consumes. Unset: `<namespace>.orders.in`."
    )
    amqp_dead_letter_exchange: str | None = Field(
        default=None, description="Fanout exchange for refused messages. Unset: `<namespace>.orders.dlx`."
    )
    amqp_dead_letter_queue: str | None = Field(
        default=None, description="Queue keeping refused messages. Unset: `<namespace>.orders.dead`."
    )
    amqp_delivery_limit: int = Field(
        default=20,
        ge=1,
        description="`x-delivery-limit` of the queue: a message delivered this often without an ack (an "
        "ingress crashing on it, or that many NATS outages while it was in flight) is dead-lettered.",
    )
    amqp_prefetch: int = Field(
        default=512,
        ge=1,
        le=65535,
        description="Unacked messages per ingress instance: its concurrency, and the bound of what it "
        "holds while NATS is slow. More throughput: more instances on the same queue.",
    )
    amqp_allowed_users: list[str] | None = Field(
        default=None,
        description="RabbitMQ users (the `user_id` property, checked by RabbitMQ against the publishing "
        "connection) whose messages are accepted (JSON list). Unset: the user of `rabbitmq_url` only.",
    )
    amqp_require_token: bool = Field(
        default=False,
        description="Refuse order messages without a member JWT (`authorization` header) for their member.",
    )
    amqp_reply_timeout_s: float = Field(
        default=5.0, gt=0, description="How long a reply waits for the accounts decision and engine outcome."
    )
    amqp_heartbeat_s: int = Field(
        default=5,
        ge=1,
        le=600,
        description="AMQP heartbeat the ingress asks for: a connection whose server stopped answering "
        "(a black-holed route) is found dead after a few missed heartbeats (about 20 s at 5 s; the "
        "server's default of 60 s made it minutes), then reconnected.",
    )
    amqp_reconnect_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Pause between the ingress's attempts to reconnect to RabbitMQ (aio-pika's "
        "`reconnect_interval`): after RabbitMQ returns, consuming resumes within about this much.",
    )

    jwt_issuer: str = Field(default="bourse", description="`iss` of member tokens: issued and required.")
    jwt_audience: str = Field(default="bourse-api", description="`aud` of member tokens: issued, required.")
    jwt_keys_dir: Path | None = Field(
        default=None,
        description="ES256 keys (`<kid>.pem`, private or public; `*.jwks.json`). Unset: `<data_dir>/keys`.",
    )
    jwt_ttl_s: int = Field(default=3600, ge=1, description="Lifetime of the tokens bourse issues.")
    dev_tokens: bool = Field(
        default=True,
        description="Issue member tokens (auth `issue` endpoint, keys made on first use). "
        "Production: false, tokens come from its own auth server whose public keys are in `jwt_keys_dir`.",
    )

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.markets_file)

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def nats_servers(self) -> list[str]:
        """The NATS URLs to connect to, credentials included (print `mask_url` of them)."""
        if self.nats_url is None:
            return [f"nats://127.0.0.1:{self.embedded_nats_port}"]
        return [url.strip() for url in self.nats_url.get_secret_value().split(",") if url.strip()]

    @property
    def effective_sql_url(self) -> str:
        """The SQLAlchemy URL to connect to, password included (print `mask_url` of it)."""
        if self.sql_url:
            return self.sql_url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'bourse.db').resolve()}"

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """As pydantic's, but a plain `str` given for a URL field becomes a `SecretUrl`:
        `model_copy` skips validation, and a bare `str` there would print its password."""
        if update:
            update = {
                name: SecretUrl(value) if name in SECRET_URL_FIELDS and isinstance(value, str) else value
                for name, value in update.items()
            }
        return super().model_copy(update=update, deep=deep)
