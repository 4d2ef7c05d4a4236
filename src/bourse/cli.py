"""The `bourse` command: `up` runs everything (supervised processes), `run` runs chosen services,
`services` lists them, `token` prints a member token for development, `db upgrade` migrates the
SQL database, `db reset` empties it (to rebuild it from the streams), `audit` checks it against
its ledger."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bourse.adapters import tracing
from bourse.config.production import ProductionSettingsRefused, check_production
from bourse.config.settings import Settings
from bourse.runtime.logs import configure_logging
from bourse.runtime.process import BourseProcess, print_links

LOCK_HELD = 3
"""Exit code of `rebuild` and `db reset` when the persistence lock is held (nothing was changed)."""
SETTINGS_REFUSED = 2
"""Exit code of `up` and `run` when production settings hold a development default (as for an
unknown service: the command cannot run as configured)."""


def _refused(settings: Settings) -> bool:
    """Print why production refuses these settings (every problem), before anything starts."""
    try:
        check_production(settings)
    except ProductionSettingsRefused as exc:
        print(f"bourse: {exc}", file=sys.stderr)
        return True
    return False


def _run_process(settings: Settings, names: list[str] | None, *, embedded: bool) -> int:
    from bourse.services import SERVICES, services_for

    if _refused(settings):
        return SETTINGS_REFUSED
    try:
        services = services_for(settings, names)
    except KeyError as exc:
        print(f"unknown service {exc.args[0]!r}; known: {', '.join(SERVICES)}", file=sys.stderr)
        return 2
    try:
        traces = tracing.install_from_env()
    except ValueError as exc:  # an OTEL_* variable bourse cannot honour
        print(f"bourse: {exc}", file=sys.stderr)
        return SETTINGS_REFUSED
    configure_logging(settings.log_level, settings.log_format)
    process = BourseProcess(settings, services, embedded_nats=embedded)
    try:
        _event_loop_runner(process.run(on_ready=print_links))
    except Exception as exc:
        print(f"bourse: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if traces is not None:
            traces.shutdown()  # export what is still queued
    return 0


def _event_loop_runner(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_up(args: argparse.Namespace) -> int:
    from bourse.runtime.supervisor import Supervisor, auto_processes, group_services, print_supervisor_links
    from bourse.services import services_for

    settings = Settings()
    if _refused(settings):
        return SETTINGS_REFUSED
    embedded = settings.nats_url is None
    processes = auto_processes() if args.processes == "auto" else int(args.processes)
    groups = group_services([service.name for service in services_for(settings)], processes)
    if len(groups) <= 1:
        return _run_process(settings, None, embedded=embedded)
    configure_logging(settings.log_level, settings.log_format)
    supervisor = Supervisor(settings, groups, embedded_nats=embedded)
    try:
        _event_loop_runner(supervisor.run(on_ready=print_supervisor_links))
    except Exception as exc:
        print(f"bourse: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _processes(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError("a number of processes (1 or more) or 'auto'")


def cmd_run(args: argparse.Namespace) -> int:
    return _run_process(Settings(), list(args.services), embedded=False)


def cmd_services(_args: argparse.Namespace) -> int:
    from bourse.services import SERVICES

    for name, service in SERVICES.items():
        print(f"{name:<14} {service.description}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from bourse.config.auth import issuer_for, key_ring_for, keys_dir

    settings = Settings()
    try:
        ring = key_ring_for(settings)
        token = issuer_for(settings, ring).issue(args.member_id, args.email, args.ttl)
    except (LookupError, ValueError) as exc:
        print(f"bourse token: {exc} (keys: {keys_dir(settings)})", file=sys.stderr)
        return 1
    print(token)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from bourse.adapters.sql.database import upgrade_url

    settings = Settings()
    url = settings.effective_sql_url
    try:
        revision = asyncio.run(upgrade_url(url, args.revision))
    except Exception as exc:
        print(f"bourse db upgrade: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"database at revision {revision}: {_safe_url(url)}")
    return 0


def cmd_db_reset(args: argparse.Namespace) -> int:
    from bourse.adapters.sql.lock import LockHeld
    from bourse.maintenance import reset_sql

    url = Settings().effective_sql_url
    if not args.yes:
        print(
            f"bourse db reset: this empties every table of {_safe_url(url)}; stop the persistence "
            "service first, then run again with --yes. On its next start the service refills the "
            "tables from the streams (they keep 7 days).",
            file=sys.stderr,
        )
        return 2
    try:
        revision = asyncio.run(reset_sql(url))
    except LockHeld as exc:
        print(f"bourse db reset: refused, nothing changed: {exc}", file=sys.stderr)
        return LOCK_HELD
    except Exception as exc:
        print(f"bourse db reset: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"database emptied, at revision {revision}: {_safe_url(url)}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from bourse.adapters.sql.lock import LockHeld
    from bourse.maintenance import rebuild_sql

    settings = Settings()
    url = settings.effective_sql_url
    if not args.yes:
        print(
            f"bourse rebuild: this replaces every table of {_safe_url(url)} by tables refilled from "
            "the streams; stop the persistence service first, then run again with --yes.",
            file=sys.stderr,
        )
        return 2
    try:
        report = asyncio.run(rebuild_sql(settings))
    except LockHeld as exc:
        print(f"bourse rebuild: refused, nothing changed: {exc}", file=sys.stderr)
        return LOCK_HELD
    except Exception as exc:
        print(f"bourse rebuild: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    print("ok: rebuilt, and the database agrees with its ledger" if report.ok else "DIFFERENCES FOUND")
    return 0 if report.ok else 1


def cmd_audit(_args: argparse.Namespace) -> int:
    from bourse.adapters.sql.audit import audit_url

    url = Settings().effective_sql_url
    print(f"bourse audit: {_safe_url(url)}")
    try:
        report = asyncio.run(audit_url(url))
    except Exception as exc:
        print(f"bourse audit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print("ok: the database agrees with its ledger" if report.ok else "DIFFERENCES FOUND")
    return 0 if report.ok else 1


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bourse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up",
        help="run every service, supervised in several processes (or one); starts an embedded NATS "
        "unless BOURSE_NATS_URL is set",
    )
    up.add_argument(
        "--processes",
        type=_processes,
        default="auto",
        metavar="N",
        help="processes to spread the services over (default: auto = cores + 1, at most 4; "
        "1 = everything in this process)",
    )
    up.set_defaults(func=cmd_up)
    run = commands.add_parser("run", help="run the named services against the configured servers")
    run.add_argument("services", nargs="+", metavar="SERVICE")
    run.set_defaults(func=cmd_run)
    commands.add_parser("services", help="list the services").set_defaults(func=cmd_services)
    token = commands.add_parser(
        "token", help="print a member token signed with the local key ring (development)"
    )
    token.add_argument("member_id", type=int, metavar="MEMBER_ID")
    token.add_argument(
        "--ttl", type=int, default=None, metavar="SECONDS", help="lifetime (default BOURSE_JWT_TTL_S)"
    )
    token.add_argument("--email", default=None, help="email claim")
    token.set_defaults(func=cmd_token)
    db = commands.add_parser("db", help="the SQL database of the persistence service (BOURSE_SQL_URL)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser(
        "upgrade", help="create or migrate the schema (BOURSE_SQL_URL; unset: SQLite in the data folder)"
    )
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    reset = db_commands.add_parser(
        "reset",
        help="replace every table by an empty one, at once (the persistence service refills them from "
        "the streams on start); refused (exit 3) while the persistence service runs",
    )
    reset.add_argument("--yes", action="store_true", help="really empty the tables")
    reset.set_defaults(func=cmd_db_reset)
    rebuild = commands.add_parser(
        "rebuild",
        help="refill new SQL tables from the streams, swap them in for the live ones, then audit them; "
        "refused (exit 3) while the persistence service runs",
    )
    rebuild.add_argument("--yes", action="store_true", help="really empty and refill the tables")
    rebuild.set_defaults(func=cmd_rebuild)
    commands.add_parser(
        "audit",
        help="check the SQL database against its ledger (balances, conservation, executed amounts); "
        "exit 1 on any difference",
    ).set_defaults(func=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
