"""The Grafana dashboard's queries, and the metric contract they are held to: the table of
docs/architecture.md, Observability > Metrics (issue 14)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "bourse.json"

ARCHITECTURE = DEPLOY.parent / "docs" / "architecture.md"

# --- the metric contract ------------------------------------------------------------------------


def documented_metrics(text: str | None = None) -> set[str]:
    """The sample names of every metric in docs/architecture.md's table (Observability > Metrics):
    the contract between the services and the dashboards. A cell's names are as written there,
    with `{a,b}_total` alternatives and `_more` shorthands (after the row's first name, its first
    two words: `bourse_pusher_connections`, `_members`); a histogram row's name stands for its
    `_bucket`, `_sum` and `_count`."""
    text = ARCHITECTURE.read_text() if text is None else text
    start = text.index("\n### Metrics\n")
    end = text.find("\n## ", start)
    names: set[str] = set()
    for line in text[start:end].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 2:
            continue
        written = re.findall(r"`([a-z_:{},]+)`", cells[0])
        prefix = "_".join(written[0].split("_")[:2]) if written else ""
        for name in written:
            name = prefix + name if name.startswith("_") else name
            if match := re.fullmatch(r"(\w*)\{([\w,]+)\}(\w*)", name):
                expanded = [match[1] + part + match[3] for part in match[2].split(",")]
            else:
                expanded = [name]
            for one in expanded:
                histogram = "histogram" in cells[1] and not one.endswith("_total")
                names |= {one + suffix for suffix in (("_bucket", "_sum", "_count") if histogram else ("",))}
    return names


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def sample_names(families: dict[str, str]) -> set[str]:
    """The sample (series) names that metric families of these types expose."""
    return {name + suffix for name, kind in families.items() for suffix in SUFFIXES.get(kind, ("",))}


# --- PromQL -------------------------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
PROMQL_WORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords or
    label names (matchers, ranges, strings and `by (...)`-like label lists removed first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets") or []]


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's queries select."""
    return set().union(*(metric_names(expr) for expr in expressions(dashboard)))


def promql_for_prometheus(expr: str) -> str:
    """A dashboard expression with Grafana's interval variables replaced, as Grafana sends it."""
    return re.sub(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval)\}", "1m", expr)
