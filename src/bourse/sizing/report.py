"""How a sizing plan is shown: the table `bourse size plan` prints, and its HTML report.

The report is one self-contained file (no CDN, no script: it must open on a machine that is
offline) with three plots drawn by matplotlib as inline SVG: what each micro-action costs each
service, latency against load and CPU against load with the knee marked. matplotlib rather than
the dashboard's vendored uPlot because these are static figures (a stacked bar chart, which uPlot
does not draw without a plugin; no live data, so no JavaScript needed), and SVG keeps the text
selectable and the file small. It is imported only when a report is written."""

from __future__ import annotations

import io
from collections.abc import Iterator
from html import escape
from typing import TYPE_CHECKING

from bourse.sizing.plan import Plan, Scaling, ServicePlan
from bourse.sizing.profile import METHOD, Profile

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES = ("cost-per-action", "latency-against-load", "cpu-against-load")
"""The ids of the report's plots, in page order."""


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _units(service: ServicePlan) -> str:
    return f"{service.units} {service.unit_name}"


def _cap(service: ServicePlan) -> str:
    if service.cap_orders_per_s is None:
        return "-"
    who = {Scaling.MARKET_GROUPS: "market", Scaling.MEMBER_SHARDS: "member"}.get(service.scaling, "all")
    return f"{who} {service.cap_orders_per_s:,.0f}/s"


def profile_label(profile: Profile, source: str) -> str:
    m = profile.machine
    return f"{source} (measured {m.measured_at} on {m.cpus} cores, {m.cpu_model}, commit {m.commit[:10]})"


def plan_lines(plan: Plan, profile: Profile, source: str) -> Iterator[str]:
    """The plan as text: the table, totals, loads on NATS/SQL/Redis, memory, storage, the
    transition ranking and every service's notes."""
    s = plan.scenario
    yield (
        f"plan for {plan.orders_per_s:,.0f} orders/s and {s.users:,} users "
        f"({s.traders:,} trading; scenario {s.name!r} scaled), headroom {plan.headroom:g}"
    )
    yield f"profile: {profile_label(profile, source)}"
    yield "actions/s: " + ", ".join(f"{action} {rate:,.0f}" for action, rate in plan.rates.items())
    if plan.unmeasured:
        yield "NOT IN THE PROFILE, left out of every figure below: " + ", ".join(
            f"{action} {rate:,.0f}/s" for action, rate in plan.unmeasured.items()
        )
    yield ""
    header = (
        f"{'service':<14} {'cores':>7} {'plan':>14} {'µs/order':>9} {'cap orders/s':>17} {'memory':>10}  ok"
    )
    yield header
    yield "-" * len(header)
    for service in plan.services:
        memory = _bytes(service.memory_bytes) if service.memory_bytes else "-"
        rewritten = "*" if service.rewrite is not None else " "
        yield (
            f"{service.service:<14} {service.cores:>6.2f}{rewritten} {_units(service):>14} "
            f"{service.us_per_order:>9,.0f} {_cap(service):>17} {memory:>10}  "
            f"{'yes' if service.fits else 'NO'}"
        )
    yield "-" * len(header)
    yield (
        f"{'total':<14} {plan.total_cores:>6.2f}  cores; {plan.provisioned_cores:.1f} to provision at "
        f"headroom {plan.headroom:g}: {plan.machines} machine(s) of {plan.cores_per_machine} cores"
    )
    if any(service.rewrite is not None for service in plan.services):
        yield "* rewritten off Python (--rewrite): cores at the factor given"
    yield ""
    ws = plan.websocket
    yield (
        f"NATS: {plan.nats_messages_per_s:,.0f} messages/s, {_bytes(plan.nats_bytes_per_s)}/s; "
        f"SQL: {plan.sql_rows_per_s:,.0f} rows/s; Redis: {plan.redis_writes_per_s:,.0f} writes/s"
    )
    channels = ", ".join(f"{channel} {count:,.0f}" for channel, count in ws.by_channel.items())
    yield (
        f"WebSocket: {ws.messages_per_s:,.0f} messages/s ({ws.market_data_per_s:,.0f} of market data: "
        f"{channels or 'no public channel'}; {ws.trades_per_s:,.0f} trades/s)"
    )
    if ws.unscaled and s.users != profile.crowd.users:
        yield (
            f"  NOT SCALED: the profile has no per-channel figures for {', '.join(ws.unscaled)}: their "
            f"messages are planned as measured with {profile.crowd.users:,} users, not {s.users:,}"
        )
    yield (
        f"hottest market: {plan.hot_market_share:.0%} of orders = {plan.hot_market_orders_per_s:,.0f} "
        f"orders/s (--hot-market-share; even split over {len(s.markets)} markets by default)"
    )
    yield (
        f"memory: {_bytes(plan.memory_bytes)} in all ({s.users:,} connections, "
        f"{plan.open_orders:,} open orders)"
    )
    yield (
        f"JetStream storage: {_bytes(plan.stream_bytes_per_day)} a day; "
        f"{_bytes(plan.stream_bytes_kept)} kept (the streams keep 7 days; per replica)"
    )
    yield ""
    factor = plan.savings[0].factor if plan.savings else 0.0
    yield (
        f"transition: cores saved by rewriting one service off Python at {factor:g}x its CPU "
        "(an assumption; set your own with --rewrite SERVICE=FACTOR), most first:"
    )
    for rank, saving in enumerate(plan.savings, 1):
        yield (
            f"  {rank:>2}. {saving.service:<14} {saving.cores_saved:>6.2f} cores "
            f"({saving.units_before} -> {saving.units_after} {plan.service(saving.service).unit_name})"
        )
    noted = [service for service in plan.services if service.notes]
    if noted:
        yield ""
        yield "notes:"
        for service in noted:
            for note in service.notes:
                yield f"  {service.service}: {note}"
    yield ""
    if not plan.fits:
        yield "DOES NOT FIT: see the notes in capitals"
    elif plan.unmeasured:
        yield "FITS, but for the actions the profile has no cost for (above)"
    else:
        yield "FITS"


def _svg(figure: Figure) -> str:
    """The figure as an inline <svg> element (no XML prolog), text kept as text."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    start, end = text.find("<metadata>"), text.find("</metadata>")
    return text if start < 0 or end < 0 else text[:start] + text[end + len("</metadata>") :]


def _pyplot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "bourse"


def cost_figure(profile: Profile) -> str:
    """CPU µs per micro-action, stacked by service."""
    _pyplot()
    import matplotlib.pyplot as plt

    actions = list(profile.actions)
    services = profile.services
    figure, axes = plt.subplots(figsize=(10, 4.5))
    bottom = [0.0] * len(actions)
    for service in services:
        heights = [profile.actions[action].cpu_us.get(service, 0.0) for action in actions]
        if not any(heights):
            continue
        axes.bar([str(a) for a in actions], heights, bottom=bottom, label=service)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set_ylabel("CPU µs per action")
    axes.set_title("cost per micro-action, stacked by service")
    axes.tick_params(axis="x", labelrotation=20)
    axes.legend(fontsize="small", ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    return _svg(figure)


def _knee(profile: Profile, axes: Axes) -> None:
    knee = [step for step in profile.steps if step.load == profile.knee_load]
    if knee:
        axes.axvline(
            knee[0].orders_per_s, color="tab:green", linestyle="--", label=f"knee ({knee[0].load:g}x)"
        )
    elif profile.steps:
        axes.text(0.02, 0.95, "no step within the limits", transform=axes.transAxes, va="top")


def _no_steps(title: str) -> str:
    _pyplot()
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 2))
    axes.set_axis_off()
    axes.text(0.5, 0.5, f"{title}: this profile has no stepped runs", ha="center", va="center")
    return _svg(figure)


def latency_figure(profile: Profile) -> str:
    """POST p50 and p99 against the orders/s achieved at each step, the limit and the knee."""
    title = "latency against load"
    if not profile.steps:
        return _no_steps(title)
    _pyplot()
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4))
    xs = [step.orders_per_s for step in profile.steps]
    axes.plot(xs, [step.post_p50_ms for step in profile.steps], marker="o", label="POST p50")
    axes.plot(xs, [step.post_p99_ms for step in profile.steps], marker="o", label="POST p99")
    axes.axhline(profile.scenario.steps.max_p99_ms, color="tab:red", alpha=0.5, label="p99 limit")
    _knee(profile, axes)
    axes.set_xlabel("orders/s achieved")
    axes.set_ylabel("ms")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _svg(figure)


def cpu_figure(profile: Profile) -> str:
    """Measured CPU per service (stacked) and the profile's prediction against load, and the knee."""
    title = "CPU against load"
    if not profile.steps:
        return _no_steps(title)
    _pyplot()
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.5))
    xs = [step.orders_per_s for step in profile.steps]
    services = sorted({name for step in profile.steps for name in step.cores})
    axes.stackplot(
        xs, [[step.cores.get(name, 0.0) for step in profile.steps] for name in services], labels=services
    )
    predicted = [sum(step.predicted_cores.values()) for step in profile.steps]
    axes.plot(xs, predicted, color="black", linestyle=":", marker="x", label="predicted (sum)")
    _knee(profile, axes)
    axes.set_xlabel("orders/s achieved")
    axes.set_ylabel("CPU cores (measured, stacked)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return _svg(figure)


def _plan_table(plan: Plan) -> str:
    rows = "".join(
        "<tr>"
        f"<td>{escape(s.service)}</td><td>{escape(str(s.scaling))}</td><td>{s.cores:.2f}</td>"
        f"<td>{escape(_units(s))}</td><td>{s.us_per_order:,.0f}</td><td>{escape(_cap(s))}</td>"
        f"<td>{escape(_bytes(s.memory_bytes)) if s.memory_bytes else '-'}</td>"
        f"<td class='{'ok' if s.fits else 'no'}'>{'yes' if s.fits else 'NO'}</td>"
        f"<td>{'<br>'.join(escape(note) for note in s.notes)}</td>"
        "</tr>"
        for s in plan.services
    )
    return (
        "<table id='plan'><thead><tr><th>service</th><th>scales by</th><th>cores</th><th>plan</th>"
        "<th>µs/order</th><th>cap orders/s</th><th>memory</th><th>fits</th><th>notes</th></tr></thead>"
        f"<tbody>{rows}</tbody><tfoot><tr><td>total</td><td></td><td>{plan.total_cores:.2f}</td>"
        f"<td colspan='6'>{plan.provisioned_cores:.1f} cores at headroom {plan.headroom:g}: "
        f"{plan.machines} machine(s) of {plan.cores_per_machine} cores</td></tr></tfoot></table>"
    )


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:80em}pre{background:#f5f5f5;padding:1em;"
    "overflow-x:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
    "text-align:left;vertical-align:top}td.no{color:#b00;font-weight:bold}figure{margin:1em 0}"
    "svg{max-width:100%;height:auto}"
)


def html_report(plan: Plan, profile: Profile, source: str) -> str:
    """The whole report as one HTML page."""
    figures = dict(
        zip(FIGURES, (cost_figure(profile), latency_figure(profile), cpu_figure(profile)), strict=True)
    )
    captions = {
        "cost-per-action": "CPU µs each micro-action costs each service (one action at a time over an "
        "idle system holding the crowd; for an order command, the marginal cost over each service's "
        "active floor, which is paid once per process while orders flow)",
        "latency-against-load": "POST /order latency at each load step; the dashed line is the knee, "
        "the last step within the limits",
        "cpu-against-load": "CPU per service measured at each step (stacked), and the profile's "
        "prediction for the rates achieved (dotted)",
    }
    body = "".join(
        f"<figure id='{name}'>{svg}<figcaption>{escape(captions[name])}</figcaption></figure>"
        for name, svg in figures.items()
    )
    text = "\n".join(plan_lines(plan, profile, source))
    title = f"bourse sizing plan: {plan.orders_per_s:,.0f} orders/s, {plan.scenario.users:,} users"
    return (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style><h1>{escape(title)}</h1>"
        f"<p>Profile: {escape(profile_label(profile, source))}. Method: {escape(METHOD)}.</p>"
        f"<h2>The plan</h2>{_plan_table(plan)}<h2>In full</h2><pre>{escape(text)}</pre>"
        f"<h2>The profile</h2>{body}</html>\n"
    )
