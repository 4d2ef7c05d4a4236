"""The `bourse` command: `up` runs everything (supervised processes), `run` runs chosen services,
`services` lists them, `token` prints a member token for development, `db upgrade` migrates the
SQL database, `db reset` empties it (to rebuild it from the streams), `audit` checks it against
its ledger, `size plan` turns a measured profile into cores and instances for a target load,
`size measure` measures one, `size validate` checks a plan's prediction by running it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bourse.adapters import tracing
from bourse.config.production import ProductionSettingsRefused, check_production
from bourse.config.settings import Settings
from bourse.runtime.logs import configure_logging
from bourse.runtime.process import BourseProcess, print_links
from bourse.sizing.commands import add_measure, add_validate

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


NO_PROFILE = 2
"""Exit code of `size plan` when it has no profile to plan from (or a bad file, or bad options)."""


def _rewrite(value: str) -> tuple[str, float]:
    service, _, factor = value.partition("=")
    try:
        return service, float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError("SERVICE=FACTOR, e.g. gateway=0.1") from None


def cmd_size_plan(args: argparse.Namespace) -> int:
    from bourse.sizing.plan import make_plan, plan_scenario
    from bourse.sizing.profile import REFERENCE_PROFILE, load_profile
    from bourse.sizing.report import plan_lines
    from bourse.sizing.scenario import load_scenario

    path = Path(args.profile) if args.profile is not None else REFERENCE_PROFILE
    if not path.exists():
        shipped = "" if args.profile is not None else " (the reference machine's, which this checkout lacks)"
        print(
            f"bourse size plan: no profile at {path}{shipped}. A plan needs a measured profile: run "
            "`bourse size measure` on the machine to plan from (it writes one), then pass it with "
            "--profile FILE.",
            file=sys.stderr,
        )
        return NO_PROFILE
    try:
        profile = load_profile(path)
        base = load_scenario(args.scenario)
        scenario = plan_scenario(
            base, users=args.users, orders_per_s=args.orders_per_s, reads_per_s=args.reads_per_s
        )
        plan = make_plan(
            profile,
            scenario,
            headroom=args.headroom,
            open_orders=args.open_orders,
            hot_market_share=args.hot_market_share,
            rewrites=dict(args.rewrite),
            cores_per_machine=args.cores_per_machine,
        )
    except ValueError as exc:
        print(f"bourse size plan: {exc}", file=sys.stderr)
        return NO_PROFILE
    for line in plan_lines(plan, profile, str(path)):
        print(line)
    if args.html is not None:
        from bourse.sizing.report import html_report

        args.html.write_text(html_report(plan, profile, str(path)))
        print(f"report: {args.html}")
    return 0


def _add_size_plan(size: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = size.add_parser(
        "plan",
        help="cores, instances, shards and market groups per service for a target load, from a "
        "measured profile (default: the reference machine's); a table, and an HTML report with --html",
    )
    plan.add_argument("--orders-per-s", type=float, required=True, metavar="N", help="orders placed a second")
    plan.add_argument("--users", type=int, required=True, metavar="N", help="connected users")
    plan.add_argument(
        "--reads-per-s", type=float, metavar="N", help="REST reads a second in all (the scenario's mix kept)"
    )
    plan.add_argument(
        "--headroom", type=float, default=0.6, help="share of a core each instance is planned at (0.6)"
    )
    plan.add_argument("--scenario", metavar="FILE", help="user model (TOML; default: the brief's)")
    plan.add_argument("--profile", metavar="FILE", help="measured profile (default: the reference machine's)")
    plan.add_argument("--open-orders", type=int, metavar="N", help="open orders in all (10 per trader)")
    plan.add_argument(
        "--hot-market-share",
        type=float,
        metavar="S",
        help="share of the orders on the busiest market (default: an even split over the markets)",
    )
    plan.add_argument(
        "--rewrite",
        type=_rewrite,
        action="append",
        default=[],
        metavar="SERVICE=FACTOR",
        help="plan SERVICE rewritten off Python at FACTOR x its CPU (an assumption, e.g. gateway=0.1)",
    )
    plan.add_argument("--cores-per-machine", type=int, default=8, metavar="N", help="(8)")
    plan.add_argument("--html", type=Path, metavar="PATH", help="also write a self-contained HTML report")
    plan.set_defaults(func=cmd_size_plan)


SIZE_COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_size_plan,
    add_measure,
    add_validate,
)
"""`bourse size` subcommands: each function adds its parser (with `set_defaults(func=...)`) to
the group; a new subcommand is one more function here."""


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
    size = commands.add_parser(
        "size", help="the sizing demo: what each micro-action costs, and a plan for any load"
    )
    size_commands = size.add_subparsers(dest="size_command", required=True)
    for add in SIZE_COMMANDS:
        add(size_commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
