"""The options of `bourse size measure` and `bourse size validate`, kept apart from the modules
that run them: building the `bourse` parser must not import the measuring machinery (NATS,
HTTP and WebSocket clients, every service) for every other command."""

from __future__ import annotations

import argparse
from pathlib import Path


def _measure(args: argparse.Namespace) -> int:
    from bourse.sizing.measure import measure_command

    return measure_command(args)


def _validate(args: argparse.Namespace) -> int:
    from bourse.sizing.validate import validate_command

    return validate_command(args)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Servers to point the system at (default: its own NATS, SQLite, no Redis, no RabbitMQ)."""
    parser.add_argument(
        "--nats-url", metavar="URL", help="NATS to use (under a unique namespace; default: our own)"
    )
    parser.add_argument(
        "--nats-monitor-url", metavar="URL", help="its monitoring endpoint, for /varz (e.g. http://host:8222)"
    )
    parser.add_argument("--sql-url", metavar="URL", help="persistence database (default: SQLite)")
    parser.add_argument("--redis-url", metavar="URL", help="Redis: runs the cache service")
    parser.add_argument(
        "--rabbitmq-url", metavar="URL", help="RabbitMQ: runs amqp-ingress, and AMQP orders go there"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data folder (the services' logs)")


def add_measure(size: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = size.add_parser(
        "measure",
        help="measure what each micro-action costs each service on a running system under a scenario's "
        "user model, and step the load up to the knee; writes a profile (JSON) and its HTML report",
    )
    parser.add_argument("--scenario", metavar="FILE", help="user model (TOML; default: the brief's)")
    parser.add_argument(
        "--out", type=Path, metavar="PATH", help="profile to write (default: profile-<scenario>.json here)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look: 200 users, at most 150 orders/s, 5 s windows, two steps (about 2 minutes)",
    )
    parser.add_argument(
        "--window",
        type=float,
        metavar="S",
        help="measured seconds per phase (the scenario's step_s)",
    )
    add_server_options(parser)
    parser.set_defaults(func=_measure)


def add_validate(size: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = size.add_parser(
        "validate",
        help="run the plan's prediction on this machine (1000 orders/s and 10,000 users, or the largest "
        "load the profile held) and print predicted vs measured CPU per service",
    )
    parser.add_argument("--profile", type=Path, metavar="FILE", help="(default: the reference profile)")
    parser.add_argument("--orders-per-s", type=float, metavar="N", help="orders placed a second")
    parser.add_argument("--users", type=int, metavar="N", help="connected users")
    parser.add_argument(
        "--window", type=float, default=20.0, metavar="S", help="measured seconds per run (20)"
    )
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="runs; medians are compared (3)")
    add_server_options(parser)
    parser.set_defaults(func=_validate)
