"""The deployment files are complete and consistent, proven without a Docker engine.

`deploy/compose.yaml` is parsed (merge keys resolved, `${VAR:?}` interpolated with test values) and
checked statically: every bourse service runs in some container; every bourse container carries the
whole shared settings map (a service's own `environment` merges it, never replaces it) and what its
services need; accounts containers cover every member shard once and matching containers every
market once, each as a single writer; gateway, query and pusher are scaled; health checks ask
/healthz on the health port; only the gateway's HTTP port and the pusher's WebSocket port are
published (and Grafana's and the Jaeger UI's, on the host's loopback only); persistence waits for
`db upgrade`;
every URL names a server of the file with its credentials; every container's settings parse and
pass the production guard (`BOURSE_ENVIRONMENT=production`). `deploy/k8s/` must have a workload per
bourse container with the same command and settings keys, single writers with one replica and the
Recreate strategy, probes on /healthz, a `db upgrade` Job and a three-node JetStream NATS.

Then every bourse container is started as a local process, `python -m bourse run ...` (and
`bourse db upgrade`), with that container's environment, the servers' URLs mapped to this
machine's (NATS :4222, MariaDB :3306 in a fresh database, Redis :6379, RabbitMQ :5672), a fresh
namespace, free ports, one stream replica (one local NATS server, not a cluster) and the guard off
(these servers have default credentials), the auth server's public key in a folder, in the order
the `depends_on` conditions give; every process must answer /healthz 200, then two funded members
trade through one gateway, and the trade reaches SQL. Nothing else of the environment is changed:
a setting missing from a container is missing from its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import nats
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bourse.adapters.amqp import delete as delete_amqp_topology
from bourse.adapters.auth import SigningKey, TokenIssuer
from bourse.application.catalog import load_catalog
from bourse.config.amqp import amqp_topology
from bourse.config.production import production_problems
from bourse.config.settings import Settings
from bourse.contracts.messages import AccountsBatch, Deposit, encode
from bourse.contracts.subjects import ORDERS, member_shard
from bourse.domain.values import MemberId
from bourse.services import SERVICES
from otlp_sink import OtlpSink  # bench/ (pytest pythonpath)
from tests.amqp.helpers import RABBITMQ_URL
from tests.conftest import SYSTEM_NATS_URL, free_port
from tests.deploy.dashboard import dashboard_metrics, load_dashboard, sample_names
from tests.e2e.harness import delete_namespace
from tests.faults.system import REDIS_URL, ServiceProc
from tests.persistence.helpers import fresh_database, scalar

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"

SHARED = "x-bourse-env"
"""The compose extension holding the settings every bourse container gets."""
VARIABLES = {
    "MARIADB_PASSWORD": "db-secret",
    "RABBITMQ_PASSWORD": "mq-secret",
    "GRAFANA_PASSWORD": "gf-secret",
}
"""What an operator supplies to `docker compose` (the file requires them)."""
EVERY_SERVICE_NEEDS = {
    "BOURSE_NATS_URL",
    "BOURSE_STREAM_REPLICAS",
    "BOURSE_ACCOUNTS_SHARDS",
    "BOURSE_HEALTH_PORT",
    "BOURSE_HEALTH_HOST",  # loopback by default: probes and Prometheus come over the network
}
NEEDS = {
    "persistence": {"BOURSE_SQL_URL"},
    "cache": {"BOURSE_REDIS_URL"},
    "amqp-ingress": {"BOURSE_RABBITMQ_URL"},
    "gateway": {"BOURSE_SQL_URL", "BOURSE_REDIS_URL"},  # its read models after the query service
    "auth": {"BOURSE_JWT_KEYS_DIR"},
}
"""Settings without which a service runs wrong or not at all (beyond `EVERY_SERVICE_NEEDS`)."""
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LOOPBACK_UIS = {"grafana/grafana": "3000", "jaegertracing/jaeger": "16686"}
"""Images whose UI port compose may publish, on the host's loopback only (127.0.0.1:port:port)."""
SINGLE_WRITERS = {"accounts", "matching", "persistence", "cache", "statistics"}
SCALED = {"gateway", "query", "pusher"}
CATALOG = load_catalog()


# --- reading the files --------------------------------------------------------------------------


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`, from `variables` only."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in variables and (variables[name] or op is None):
            return variables[name]
        if op == ":-":
            return arg or ""
        raise AssertionError(f"compose needs ${name}: {arg or 'unset'}")

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", value, text)


def load_compose(variables: dict[str, str] = VARIABLES) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), variables))
    return loaded


def load_k8s() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") and doc.get("apiVersion", "").startswith(("v1", "apps/", "batch/"))
    ]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment (map or `KEY=value` list), values as strings."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def is_bourse(service: dict[str, Any]) -> bool:
    """Built from deploy/Dockerfile, or its image."""
    image = str(service.get("image", ""))
    return "Dockerfile" in str((service.get("build") or {}).get("dockerfile", "")) or image.startswith(
        "bourse"
    )


def bourse_containers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose.get("services", {}).items() if is_bourse(spec)}


def run_services(spec: dict[str, Any]) -> list[str]:
    """The services a container's command runs (`["run", ...]`); none for another command."""
    command = [str(part) for part in spec.get("command") or []]
    return command[1:] if command[:1] == ["run"] else []


def replicas(spec: dict[str, Any]) -> int:
    return int((spec.get("deploy") or {}).get("replicas", 1))


def depends_on(spec: dict[str, Any]) -> dict[str, str]:
    raw = spec.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (cond or {}).get("condition", "service_started") for name, cond in raw.items()}


def json_list(value: str | None) -> list[Any]:
    parsed = json.loads(value) if value else None
    return parsed if isinstance(parsed, list) else []


# --- static checks ------------------------------------------------------------------------------


def compose_problems(compose: dict[str, Any]) -> list[str]:
    """Everything wrong with a parsed compose file (empty: complete and consistent)."""
    problems: list[str] = []
    services = compose.get("services", {})
    containers = bourse_containers(compose)
    shared = {key: str(value) for key, value in (compose.get(SHARED) or {}).items()}
    running = {name: run_services(spec) for name, spec in containers.items()}

    for service in SERVICES:
        if not any(service in names for names in running.values()):
            problems.append(f"no container runs {service}")
    for name, spec in containers.items():
        env = environment(spec)
        if missing := sorted(key for key in shared if env.get(key) != shared[key]):
            problems.append(f"{name}: environment lacks the shared {missing} (replaced, not merged?)")
        for dependency in depends_on(spec):
            if dependency not in services:
                problems.append(f"{name}: depends on {dependency}, which is not a service")
        names = running[name]
        if not names:
            continue
        needs = EVERY_SERVICE_NEEDS.union(*(NEEDS.get(service, set()) for service in names))
        if missing := sorted(needs - env.keys()):
            problems.append(f"{name}: {names} need {missing}")
        health = spec.get("healthcheck") or {}
        port = env.get("BOURSE_HEALTH_PORT")
        if health.get("disable") or f"127.0.0.1:{port}/healthz" not in " ".join(health.get("test") or []):
            problems.append(f"{name}: no health check on /healthz at port {port}")
        if env.get("BOURSE_HEALTH_HOST", "127.0.0.1") in LOOPBACK:
            problems.append(f"{name}: health port on loopback, out of Prometheus's reach")
        if SINGLE_WRITERS & set(names) and replicas(spec) != 1:
            problems.append(f"{name}: {names} is a single writer, has {replicas(spec)} replicas")
        if SCALED & set(names) and replicas(spec) < 2:
            problems.append(f"{name}: {names} should be scaled (replicas >= 2)")
    for name, spec in services.items():
        published = [str(port) for port in spec.get("ports") or []]
        env = environment(spec)
        allowed = {
            env.get("BOURSE_HTTP_PORT", "8000") if "gateway" in running.get(name, []) else None,
            env.get("BOURSE_PUSHER_PORT", "8002") if "pusher" in running.get(name, []) else None,
        }
        image = str(spec.get("image", ""))
        ui = next((port for prefix, port in LOOPBACK_UIS.items() if image.startswith(prefix)), None)
        for port in published:
            if port.rsplit(":", 1)[-1] in allowed:
                continue
            if ui is not None and port == f"127.0.0.1:{ui}:{ui}":
                continue  # an observability UI, on the host's loopback only
            problems.append(
                f"{name}: publishes {port} (only the gateway's HTTP and the pusher's port may be, "
                "and Grafana's and the Jaeger UI's on 127.0.0.1)"
            )

    problems += shard_problems(compose)
    problems += upgrade_problems(compose)
    problems += url_problems(compose)
    return problems


def shard_problems(compose: dict[str, Any]) -> list[str]:
    """Accounts containers cover every member shard once, matching and statistics containers every
    market once."""
    problems: list[str] = []
    shards: list[int] = []
    markets: list[str] = []
    statistics: list[str] = []
    counts: set[str] = set()
    for name, spec in bourse_containers(compose).items():
        env, names = environment(spec), run_services(spec)
        if names:
            counts.add(env.get("BOURSE_ACCOUNTS_SHARDS", "1"))
        if "accounts" in names:
            if not json_list(env.get("BOURSE_ACCOUNTS_SHARD_IDS")):
                problems.append(f"{name}: accounts without BOURSE_ACCOUNTS_SHARD_IDS (every shard in one)")
            shards += json_list(env.get("BOURSE_ACCOUNTS_SHARD_IDS"))
        if "matching" in names:
            if not json_list(env.get("BOURSE_MATCHING_MARKETS")):
                problems.append(f"{name}: matching without BOURSE_MATCHING_MARKETS (every market in one)")
            markets += json_list(env.get("BOURSE_MATCHING_MARKETS"))
        if "statistics" in names:
            statistics += json_list(env.get("BOURSE_STATISTICS_MARKETS")) or list(CATALOG.markets)
    if len(counts) != 1:
        problems.append(f"containers disagree on BOURSE_ACCOUNTS_SHARDS: {sorted(counts)}")
    else:
        expected = list(range(int(counts.pop())))
        if sorted(shards) != expected:
            problems.append(f"accounts shards run {sorted(shards)}, expected each of {expected} once")
    if sorted(markets) != sorted(CATALOG.markets):
        problems.append(f"matching runs {sorted(markets)}, expected each of {sorted(CATALOG.markets)} once")
    if sorted(statistics) != sorted(CATALOG.markets):
        problems.append(
            f"statistics runs {sorted(statistics)}, expected each of {sorted(CATALOG.markets)} once"
        )
    return problems


def upgrade_problems(compose: dict[str, Any]) -> list[str]:
    containers = bourse_containers(compose)
    upgrades = [name for name, spec in containers.items() if spec.get("command") == ["db", "upgrade"]]
    if len(upgrades) != 1:
        return [f"expected one `db upgrade` container, found {upgrades}"]
    problems = []
    for name, spec in containers.items():
        waits = depends_on(spec).get(upgrades[0]) == "service_completed_successfully"
        if "persistence" in run_services(spec) and not waits:
            problems.append(f"{name}: persistence does not wait for {upgrades[0]} to succeed")
    return problems


def url_problems(compose: dict[str, Any]) -> list[str]:
    """Every server URL names a service of the file, on its port, with its credentials."""
    services = compose.get("services", {})
    problems: list[str] = []

    def check(where: str, url: str, port: int, image: str, expected: tuple[str, ...] = ()) -> None:
        """`expected`: the server's environment keys of user, password and database (or vhost)."""
        parts = urlsplit(url.strip())
        spec = services.get(parts.hostname or "")
        if spec is None or not str(spec.get("image", "")).startswith(image) or (parts.port or port) != port:
            problems.append(f"{where}={url}: no {image} service {parts.hostname}:{port}")
        elif expected:
            server = environment(spec)
            wanted = [server.get(key, "").strip("/") for key in expected]
            if [parts.username or "", parts.password or "", parts.path.strip("/")] != wanted:
                problems.append(f"{where}: user, password or database differ from {parts.hostname}'s")

    for name, spec in bourse_containers(compose).items():
        env = environment(spec)
        for nats_url in filter(None, env.get("BOURSE_NATS_URL", "").split(",")):
            check(f"{name} BOURSE_NATS_URL", nats_url, 4222, "nats")
        if url := env.get("BOURSE_SQL_URL"):
            mariadb = ("MARIADB_USER", "MARIADB_PASSWORD", "MARIADB_DATABASE")
            check(f"{name} BOURSE_SQL_URL", url, 3306, "mariadb", mariadb)
        if url := env.get("BOURSE_REDIS_URL"):
            check(f"{name} BOURSE_REDIS_URL", url, 6379, "redis")
        if url := env.get("BOURSE_RABBITMQ_URL"):
            rabbitmq = ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS", "RABBITMQ_DEFAULT_VHOST")
            check(f"{name} BOURSE_RABBITMQ_URL", url, 5672, "rabbitmq", rabbitmq)
    return problems


def k8s_problems(compose: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """deploy/k8s/ has the compose layout: same workloads, commands and settings keys."""
    problems: list[str] = []
    config_keys: dict[str, set[str]] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            config_keys[doc["metadata"]["name"]] = set(doc.get("data") or {})
        elif doc["kind"] == "Secret":
            secret = set(doc.get("stringData") or {}) | set(doc.get("data") or {})
            config_keys[doc["metadata"]["name"]] = secret
    workloads: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "bourse":
                    workloads[doc["metadata"]["name"]] = (doc, container)

    containers = bourse_containers(compose)
    if sorted(workloads) != sorted(containers):
        problems.append(f"k8s workloads {sorted(workloads)} != compose containers {sorted(containers)}")
    for name in sorted(set(workloads) & set(containers)):
        doc, container = workloads[name]
        spec = containers[name]
        if container.get("args") != spec.get("command"):
            problems.append(f"k8s {name}: args {container.get('args')} != compose {spec.get('command')}")
        keys = {item["name"] for item in container.get("env") or []}
        for source in container.get("envFrom") or []:
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            keys |= config_keys.get(ref.get("name", ""), set())
        env = environment(spec)
        if keys != env.keys():
            problems.append(f"k8s {name}: settings keys differ from compose: {sorted(keys ^ env.keys())}")
        values = {item["name"]: item.get("value") for item in container.get("env") or []}
        for key in ("BOURSE_ACCOUNTS_SHARD_IDS", "BOURSE_MATCHING_MARKETS", "BOURSE_STATISTICS_MARKETS"):
            if json_list(values.get(key)) != json_list(env.get(key)):
                problems.append(f"k8s {name}: {key} {values.get(key)} != compose {env.get(key)}")
        names = run_services(spec)
        if doc["kind"] == "Job" or not names:
            continue
        count = doc["spec"].get("replicas", 1)
        if SINGLE_WRITERS & set(names):
            strategy = doc["spec"].get("strategy", {}).get("type")
            recreate = doc["kind"] == "StatefulSet" or strategy == "Recreate"
            if count != 1 or not recreate:
                problems.append(f"k8s {name}: single writer needs 1 replica and Recreate (or a StatefulSet)")
        if SCALED & set(names) and count != replicas(spec):
            problems.append(f"k8s {name}: {count} replicas, compose has {replicas(spec)}")
        probe = (container.get("readinessProbe") or {}).get("httpGet") or {}
        if probe.get("path") != "/healthz":
            problems.append(f"k8s {name}: no readiness probe on /healthz")
    nats_sets = [doc for doc in docs if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "nats"]
    nats_conf = " ".join(
        str(value) for doc in docs if doc["kind"] == "ConfigMap" for value in (doc.get("data") or {}).values()
    )
    if not nats_sets or nats_sets[0]["spec"].get("replicas") != 3 or "jetstream" not in nats_conf:
        problems.append("k8s: no three-node NATS StatefulSet with JetStream")
    return problems


def dockerfile_environment() -> dict[str, str]:
    """The image's `ENV` (what every container starts with); checks its entrypoint is `bourse`."""
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["bourse"\]$', text, re.M), "the image's entrypoint must be bourse"
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", text, re.M):
        env.update(pair.split("=", 1) for pair in line.split())
    return env


def test_compose_file_is_complete_and_consistent() -> None:
    assert compose_problems(load_compose()) == []


def test_every_container_passes_the_production_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each container's settings parse, are production's, and hold no development default."""
    for name, spec in bourse_containers(load_compose()).items():
        for key in [key for key in os.environ if key.startswith("BOURSE_")]:
            monkeypatch.delenv(key)
        for key, value in {**dockerfile_environment(), **environment(spec)}.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)
        assert settings.production, name
        assert production_problems(settings) == [], name


def test_kubernetes_files_have_the_compose_layout() -> None:
    assert k8s_problems(load_compose(), load_k8s()) == []


def test_the_checks_catch_incomplete_files() -> None:
    """The checks above fail on what issue 11 found, and on a missing service or shard."""
    compose = load_compose()
    variants: dict[str, dict[str, Any]] = {}
    old_gateway = copy.deepcopy(compose)
    old_gateway["services"]["gateway"]["environment"] = {
        "BOURSE_NATS_URL": compose[SHARED]["BOURSE_NATS_URL"],
        "BOURSE_HEALTH_PORT": "8001",
    }
    variants["gateway environment replaced"] = old_gateway
    loopback_health = copy.deepcopy(compose)
    loopback_health["services"]["gateway"]["environment"]["BOURSE_HEALTH_HOST"] = "127.0.0.1"
    variants["gateway's health port on loopback"] = loopback_health
    for name in ("cache", "accounts-1", "matching-2", "statistics-2", "db-upgrade"):
        variants[f"{name} missing"] = copy.deepcopy(compose)
        del variants[f"{name} missing"]["services"][name]
    no_sql = copy.deepcopy(compose)
    for spec in bourse_containers(no_sql).values():
        spec["environment"] = {k: v for k, v in environment(spec).items() if k != "BOURSE_SQL_URL"}
    del no_sql[SHARED]["BOURSE_SQL_URL"]
    variants["no SQL URL"] = no_sql
    wrong_password = copy.deepcopy(compose)
    wrong_password["services"]["mariadb"]["environment"]["MARIADB_PASSWORD"] = "other"
    variants["SQL password differs"] = wrong_password
    for what, variant in variants.items():
        assert compose_problems(variant), what
    assert k8s_problems(variants["cache missing"], load_k8s())
    with pytest.raises(AssertionError, match="MARIADB_PASSWORD"):
        load_compose({})


# --- running the containers as local processes --------------------------------------------------


@dataclass
class Local:
    """This machine's servers and the test's private names, standing in for the compose network."""

    namespace: str
    workdir: Path
    sql_url: str
    keys_dir: Path
    otlp: OtlpSink
    """Stands in for compose's Jaeger: where the processes' traces go."""

    def environment(self, name: str, env: dict[str, str], base: dict[str, str]) -> dict[str, str]:
        """A container's environment for a local process: the image's ENV, then the container's,
        with each server URL, port and path mapped here; a setting the container lacks stays out."""
        mapped = {
            "BOURSE_NATS_URL": SYSTEM_NATS_URL,
            "BOURSE_SQL_URL": self.sql_url,
            "BOURSE_REDIS_URL": f"{REDIS_URL}/0",
            "BOURSE_RABBITMQ_URL": RABBITMQ_URL,
            "BOURSE_STREAM_REPLICAS": "1",  # one local server, not a cluster
            "BOURSE_JWT_KEYS_DIR": str(self.keys_dir),  # the mounted secret
            "BOURSE_HTTP_HOST": "127.0.0.1",
            "BOURSE_HEALTH_HOST": "127.0.0.1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp.endpoint,  # compose's http://jaeger:4318
            "OTEL_TRACES_SAMPLER_ARG": "1",  # every order traced, to find this test's
            # This machine's servers use default credentials (MariaDB root, RabbitMQ guest), which
            # the guard refuses; the compose values pass it (test_every_container_passes_...).
            "BOURSE_ENVIRONMENT": "development",
        }
        merged = {**base, **env}
        result = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
        result.update({key: mapped.get(key, value) for key, value in merged.items()})
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        result.update(
            BOURSE_NAMESPACE=self.namespace,
            BOURSE_DATA_DIR=str(folder),  # the container's own file system
            BOURSE_HTTP_PORT=str(free_port()),
            BOURSE_PUSHER_PORT=str(free_port()),
        )
        return result


class Launch:
    """Every bourse container of the compose file as local processes, started as soon as their
    `depends_on` conditions on other bourse containers hold (in parallel otherwise)."""

    def __init__(self, compose: dict[str, Any], local: Local) -> None:
        self.containers = bourse_containers(compose)
        self.local = local
        self.base = dockerfile_environment()
        self.procs: dict[str, list[ServiceProc]] = {}
        self.done: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.containers}
        self.healthy: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.containers}

    def gateways(self) -> list[ServiceProc]:
        return [proc for procs in self.procs.values() for proc in procs if "gateway" in proc.services]

    async def start_all(self, http: httpx.AsyncClient) -> None:
        # a dozen containers as processes on 2 cores: ~40 s when other work shares them
        async with asyncio.timeout(120):
            await asyncio.gather(*(self.start(name, http) for name in self.containers))

    async def start(self, name: str, http: httpx.AsyncClient) -> None:
        spec = self.containers[name]
        for dependency, condition in depends_on(spec).items():
            if dependency in self.containers:
                event = self.done if condition == "service_completed_successfully" else self.healthy
                await event[dependency].wait()
        services = run_services(spec)
        if not services:  # a one-shot command (`db upgrade`): it must succeed
            env = self.local.environment(name, environment(spec), self.base)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bourse", *spec["command"], env=env, cwd=self.local.workdir,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await process.communicate()
            assert process.returncode == 0, f"{name} failed:\n{output.decode(errors='replace')}"
            self.done[name].set()
            return
        # Each replica is the same container; two of a scaled one show they run side by side.
        count = min(replicas(spec), 2)
        procs = [
            ServiceProc(
                f"{name}.{index}",
                services,
                self.local.environment(f"{name}.{index}", environment(spec), self.base),
                self.local.workdir,
            )
            for index in range(count)
        ]
        self.procs[name] = procs
        for proc in procs:
            proc.start()
        await asyncio.gather(*(proc.healthy(http, timeout_s=45.0) for proc in procs))
        self.healthy[name].set()

    def stop(self) -> None:
        procs = [proc for group in self.procs.values() for proc in group]
        for proc in procs:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            if proc.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.process.wait(max(0.1, deadline - time.monotonic()))
            proc.kill()


def token_issuer(folder: Path) -> TokenIssuer:
    """The exchange's own auth server: a private key that signs, its public half in the folder
    mounted into the auth container."""
    key = SigningKey("deploy-test-1", ec.generate_private_key(ec.SECP256R1()))
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    folder.mkdir(parents=True)
    (folder / f"{key.kid}.pem").write_bytes(key.public_key.public_bytes(serialization.Encoding.PEM, public))
    defaults = Settings(_env_file=None)
    return TokenIssuer(key, issuer=defaults.jwt_issuer, audience=defaults.jwt_audience)


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Local]:
    namespace = f"deploy{uuid.uuid4().hex[:8]}"
    with OtlpSink() as otlp:
        async with fresh_database("mariadb", str(tmp_path)) as sql_url:
            yield Local(namespace, tmp_path, sql_url, tmp_path / "jwt-keys", otlp)
    nc = await nats.connect(servers=[SYSTEM_NATS_URL])
    with contextlib.suppress(Exception):
        await delete_namespace(nc, namespace)
    await nc.close()
    with contextlib.suppress(Exception):
        redis = Redis.from_url(f"{REDIS_URL}/0")
        try:
            keys = [key async for key in redis.scan_iter(match=f"{namespace}:*", count=1000)]
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            topology = amqp_topology(Settings(namespace=namespace, _env_file=None))
            await delete_amqp_topology(await connection.channel(), topology)


async def deposit(namespace: str, shards: int, member: int, currency: str, amount: int) -> None:
    """Money in as a wallet service would put it: a deposit with its reference, on the member's shard."""
    units = amount * 10 ** CATALOG.currencies[currency].precision
    nc = await nats.connect(servers=[SYSTEM_NATS_URL])
    try:
        ref = f"deploy-test:{member}:{currency}"
        await nc.jetstream().publish(
            ORDERS.subject(namespace, member_shard(member, shards)),
            encode(AccountsBatch([Deposit(MemberId(member), currency, units, ref)])),
            headers={"Nats-Msg-Id": ref},
        )
    finally:
        await nc.close()


async def test_every_container_runs_as_a_local_process_and_trades(local: Local) -> None:
    compose = load_compose()
    assert compose_problems(compose) == []
    shards = int(compose[SHARED]["BOURSE_ACCOUNTS_SHARDS"])
    seller, buyer = 2, 1  # on shards 0 and 1 of two
    issuer = token_issuer(local.keys_dir)
    launch = Launch(compose, local)
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            await launch.start_all(http)
            await deposit(local.namespace, shards, seller, "btc", 1)
            await deposit(local.namespace, shards, buyer, "usd", 1000)
            gateway = launch.gateways()[-1]
            api = f"http://127.0.0.1:{gateway.env['BOURSE_HTTP_PORT']}/api/v3"
            order = {"market": "btc_usd", "type": "limit", "amount": "0.01", "price": "50000"}
            sell = await place(http, api, issuer.issue(seller), {**order, "side": "sell"})
            assert sell["status"] == "submitted", sell
            buy = await place(http, api, issuer.issue(buyer), {**order, "side": "buy"})
            assert buy["status"] == "executed", buy
            await until_in_sql(local.sql_url, buy["id"])
            await until_dashboard_metrics_exposed(http, launch)
            await until_traced(local.otlp, buy["id"])
    finally:
        launch.stop()


async def place(http: httpx.AsyncClient, api: str, token: str, body: dict[str, str]) -> dict[str, Any]:
    """POST /order, retried while the deposit is still on its way (refused for funds)."""
    deadline = time.monotonic() + 10
    while True:
        response = await http.post(f"{api}/order", json=body, headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 201 or time.monotonic() > deadline:
            assert response.status_code == 201, response.text
            order: dict[str, Any] = response.json()
            return order
        await asyncio.sleep(0.2)


async def until_in_sql(sql_url: str, order_id: str) -> None:
    """Persistence wrote the executed order and its trade to the database db-upgrade made."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(Exception):
            status = await scalar(sql_url, f"SELECT status FROM orders WHERE id = {int(order_id)}")
            trades = await scalar(sql_url, "SELECT COUNT(*) FROM trades")
            if status == "executed" and trades == 1:
                return
        assert time.monotonic() < deadline, "the trade never reached SQL"
        await asyncio.sleep(0.2)


async def until_dashboard_metrics_exposed(http: httpx.AsyncClient, launch: Launch) -> None:
    """Every metric the Grafana dashboard queries is served by some process's /metrics, as
    Prometheus scrapes them (a labelled family counts once declared, before its first sample)."""
    wanted = dashboard_metrics(load_dashboard())
    deadline = time.monotonic() + 15
    while True:
        families: dict[str, str] = {}
        for proc in (proc for procs in launch.procs.values() for proc in procs):
            response = await http.get(f"http://127.0.0.1:{proc.health_port}/metrics")
            assert response.status_code == 200, f"{proc.name}: /metrics {response.status_code}"
            families.update(
                (family.name, family.type) for family in text_string_to_metric_families(response.text)
            )
        missing = sorted(wanted - sample_names(families))
        if not missing:
            return
        assert time.monotonic() < deadline, f"the dashboard queries metrics no process serves: {missing}"
        await asyncio.sleep(0.5)


async def until_traced(otlp: OtlpSink, order_id: str) -> None:
    """The order's trace reached compose's Jaeger (the stand-in on its OTLP/HTTP port), over
    http/protobuf, with spans of more than one service, found by the `bourse.order_id` attribute."""
    deadline = time.monotonic() + 15  # the SDK's batch processor exports every 5 s
    while True:
        services = {span.service for span in otlp.trace_of("bourse.order_id", order_id)}
        if len(services) > 1:
            break
        assert time.monotonic() < deadline, (
            f"order {order_id}: trace services {sorted(services)}, {len(otlp.spans)} spans received; "
            f"requests {otlp.requests[:5]}"
        )
        await asyncio.sleep(0.5)
    assert {(method, path) for method, path, _ in otlp.requests} == {("POST", "/v1/traces")}
    assert {kind for _, _, kind in otlp.requests} == {"application/x-protobuf"}
