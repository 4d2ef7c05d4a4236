"""Traces, metrics and dashboards in the deploy files are complete and consistent (issue 14).

- Traces: every bourse container of `deploy/compose.yaml` and every bourse pod of `deploy/k8s/` gets
  the OTEL_* variables (OTLP over HTTP/protobuf, the parent-based ratio sampler with its ratio as
  a setting), and the endpoint's host is the Jaeger v2 of the same file (a compose service, or a
  Kubernetes Service selecting a Jaeger Deployment) on its OTLP port for that protocol.
- Metrics: `deploy/prometheus/prometheus.yml` scrapes every bourse container of compose on its
  health port; `deploy/k8s/prometheus.yml` keeps the pods annotated `prometheus.io/scrape`, and
  every bourse pod carries the annotations with its health port; both pass `promtool check config`.
- Dashboard: `deploy/grafana/dashboards/bourse.json` is a Grafana dashboard (uid, title, panels
  with ids, positions and targets on the Prometheus data source variable), has a panel for each
  thing the issue asks, its PromQL passes `promtool check rules`, and it names only the metric
  families of the metrics table in docs/architecture.md (Observability > Metrics, the contract
  with the services). That they are really exposed is checked by
  tests/deploy/test_deploy_files.py, which scrapes every process it starts.

promtool comes with Debian's `prometheus` package (.ci/run installs it); without it those two
checks skip and say so.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.dashboard import (
    DASHBOARD,
    GRAFANA,
    dashboard_metrics,
    documented_metrics,
    expressions,
    load_dashboard,
    metric_names,
    panels,
    promql_for_prometheus,
)
from tests.deploy.test_deploy_files import (
    COMPOSE,
    DEPLOY,
    K8S,
    SHARED,
    VARIABLES,
    bourse_containers,
    environment,
    load_compose,
    load_k8s,
    run_services,
)

PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
K8S_PROMETHEUS = K8S / "prometheus.yml"


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(bourse_http_request_duration_seconds_bucket"
        '{method="POST", route=~"/api/v3/order.*"}[$__rate_interval]))) / on (instance) group_left (services)'
        " max without (le) (bourse_process_info) > bool 0 or vector(1) unless up offset 5m"
    )
    assert metric_names(expr) == {"bourse_http_request_duration_seconds_bucket", "bourse_process_info", "up"}


def test_the_documented_metrics_are_read_from_the_table() -> None:
    table = (
        "### Metrics\n\n| name | type | labels | meaning |\n| --- | --- | --- | --- |\n"
        "| `process_cpu_seconds_total`, `process_open_fds` | counter, gauge | | x |\n"
        "| `bourse_sql_write_seconds` | histogram | `service` | x |\n"
        "| `bourse_pusher_connections`, `_members` | gauges | | x |\n"
        "| `bourse_persistence_{rows,items}_total` | counters | `stream` | x |\n\n"
        "`bourse_not_in_the_table` is prose.\n\n## Next\n| `bourse_elsewhere` | gauge | | x |\n"
    )
    assert documented_metrics(f"# doc\n{table}") == {
        "process_cpu_seconds_total",
        "process_open_fds",
        "bourse_sql_write_seconds_bucket",
        "bourse_sql_write_seconds_sum",
        "bourse_sql_write_seconds_count",
        "bourse_pusher_connections",
        "bourse_pusher_members",
        "bourse_persistence_rows_total",
        "bourse_persistence_items_total",
    }
    assert {"bourse_orders_total", "bourse_consumer_batch_size_bucket"} <= documented_metrics()


# --- the dashboard ------------------------------------------------------------------------------


def dashboard_problems(dashboard: dict[str, Any]) -> list[str]:
    """What keeps the JSON from being a Grafana dashboard with working Prometheus panels."""
    problems = [f"no {key}" for key in ("uid", "title", "panels", "schemaVersion") if not dashboard.get(key)]
    variables = {var.get("name"): var for var in (dashboard.get("templating") or {}).get("list", [])}
    source = variables.get("datasource") or {}
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("no Prometheus data source variable `datasource`")
    ids: list[int] = []
    for panel in panels(dashboard):
        title = panel.get("title", "?")
        ids.append(panel.get("id", -1))
        grid = panel.get("gridPos") or {}
        if not panel.get("type") or not panel.get("title") or not all(k in grid for k in "hwxy"):
            problems.append(f"panel {title}: a panel needs type, title and gridPos h, w, x, y")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"panel {title}: wider than the 24-column grid")
        if panel.get("type") in {"row", "text"}:
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {title}: no targets")
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"panel {title}: not on the data source variable")
        refs = [target.get("refId") for target in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            problems.append(f"panel {title}: targets need distinct refIds")
        for target in targets:
            if not target.get("expr"):
                problems.append(f"panel {title}: target {target.get('refId')} has no expr")
    if len(set(ids)) != len(ids):
        problems.append("panel ids are not unique")
    known = documented_metrics()
    for name in sorted(dashboard_metrics(dashboard) - known):
        problems.append(f"{name}: not in docs/architecture.md's metrics table")
    return problems


def test_dashboard_is_a_grafana_dashboard_on_the_metric_contract() -> None:
    assert dashboard_problems(load_dashboard()) == []


def test_dashboard_shows_what_issue_14_asks() -> None:
    """A query for each: orders by source and outcome, HTTP by route and code, POST latency and
    order-to-trade quantiles, CPU per process, memory, consumer lag and batch size, snapshot age,
    SQL and Redis writes, pusher connections and messages; and NATS' monitoring endpoint named."""
    dashboard = load_dashboard()
    exprs = expressions(dashboard)

    def has(*parts: str) -> bool:
        return any(all(part in expr for part in parts) for expr in exprs)

    wanted = {
        "orders/s by source and outcome": has("bourse_orders_total", "source", "outcome", "rate("),
        "HTTP by route and code": has("bourse_http_requests_total", "route", "code"),
        "POST p50": has("histogram_quantile(0.5", "bourse_http_request_duration_seconds_bucket", "POST"),
        "POST p99": has("histogram_quantile(0.99", "bourse_http_request_duration_seconds_bucket", "POST"),
        "order to trade p50": has("histogram_quantile(0.5", "bourse_order_to_trade_seconds_bucket"),
        "order to trade p99": has("histogram_quantile(0.99", "bourse_order_to_trade_seconds_bucket"),
        "CPU per process": has("rate(process_cpu_seconds_total", "instance"),
        "memory": has("process_resident_memory_bytes"),
        "consumer lag": has("bourse_consumer_lag_messages", "service", "consumer"),
        "batch size": has("bourse_consumer_batch_size_bucket", "service", "consumer"),
        "snapshot age": has("bourse_snapshot_age_seconds"),
        "SQL writes": has("bourse_sql_write_seconds_bucket"),
        "Redis writes": has("bourse_redis_write_seconds_bucket"),
        "connected users": has("sum(bourse_pusher_connections)"),
        "pusher messages": has("bourse_pusher_messages_delivered_total"),
    }
    assert [what for what, found in wanted.items() if not found] == []
    text = json.dumps([panel.get("options") for panel in panels(dashboard)] + dashboard.get("links", []))
    assert "8222" in text, "the NATS monitoring endpoint is named"
    assert "/jsz" in text, "the NATS monitoring endpoint is named"


def test_the_dashboard_checks_catch_a_broken_dashboard() -> None:
    dashboard = load_dashboard()
    graphs = [panel for panel in panels(dashboard) if panel.get("targets")]
    unknown = copy.deepcopy(dashboard)
    next(p for p in panels(unknown) if p.get("targets"))["targets"][0]["expr"] = (
        "rate(bourse_made_up_total[1m])"
    )
    no_uid = {key: value for key, value in dashboard.items() if key != "uid"}
    no_targets = copy.deepcopy(dashboard)
    next(p for p in panels(no_targets) if p["id"] == graphs[0]["id"])["targets"] = []
    for variant in (unknown, no_uid, no_targets):
        assert dashboard_problems(variant)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found (Debian's `prometheus` package has it; .ci/run installs it)")
    return found


def test_dashboard_promql_passes_promtool(tmp_path: Path) -> None:
    """Every query as Grafana sends it, a recording rule for `promtool check rules` (PromQL syntax)."""
    rules = [
        {"record": f"dashboard:query_{index}", "expr": promql_for_prometheus(expr)}
        for index, expr in enumerate(expressions(load_dashboard()))
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_loads_the_dashboard_from_prometheus() -> None:
    """The data source is compose's `prometheus` with the uid the dashboard defaults to, and the
    dashboards provider reads the folder compose mounts the dashboards into."""
    compose = load_compose()
    grafana = compose["services"]["grafana"]
    mounts = {
        str(volume).split(":")[1]: (COMPOSE.parent / str(volume).split(":")[0]).resolve()
        for volume in grafana["volumes"]
        if str(volume).startswith(".")
    }
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == (GRAFANA / "provisioning").resolve()
    datasources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.yaml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert [source["type"] for source in datasources] == ["prometheus"]
    url = urlsplit(datasources[0]["url"])
    assert str(compose["services"][url.hostname]["image"]).startswith("prom/prometheus"), url.hostname
    assert url.port == 9090
    default = next(var for var in load_dashboard()["templating"]["list"] if var["name"] == "datasource")
    assert default["current"]["value"] == datasources[0]["uid"]
    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.yaml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    folders = {provider["options"]["path"] for provider in providers}
    assert any(mounts.get(folder) == DASHBOARD.parent.resolve() for folder in folders), (folders, mounts)
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    assert home.rsplit("/", 1)[0] in folders
    assert home.endswith(DASHBOARD.name)


# --- Prometheus ---------------------------------------------------------------------------------


def compose_scrape_problems(compose: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The bourse job scrapes every bourse container that runs services, on its health port, one
    target per replica (DNS service discovery), and `prometheus` runs that file."""
    problems: list[str] = []
    targets: dict[str, set[int]] = {}
    for job in config.get("scrape_configs", []):
        path = job.get("metrics_path", "/metrics")
        for sd in job.get("dns_sd_configs") or []:
            if sd.get("type", "SRV") != "A" or path != "/metrics":
                problems.append(f"job {job['job_name']}: A records and /metrics expected")
            for name in sd.get("names", []):
                targets.setdefault(name, set()).add(int(sd["port"]))
        for static in job.get("static_configs") or []:
            for target in static.get("targets", []):
                host, _, number = str(target).rpartition(":")
                targets.setdefault(host, set()).add(int(number))
    for name, spec in bourse_containers(compose).items():
        if not run_services(spec):
            continue
        port = int(environment(spec).get("BOURSE_HEALTH_PORT", "8001"))
        if port not in targets.get(name, set()):
            problems.append(f"{name}: its health port {port} is not scraped")
    services = compose.get("services", {})
    for name in targets:
        if name not in services and name != "localhost":
            problems.append(f"scrapes {name}, which is not a compose service")
    prometheus = [
        spec for spec in services.values() if str(spec.get("image", "")).startswith("prom/prometheus")
    ]
    mounted = [str(volume) for spec in prometheus for volume in spec.get("volumes") or []]
    if not any(volume.startswith("./prometheus/prometheus.yml:") for volume in mounted):
        problems.append("no prometheus service runs deploy/prometheus/prometheus.yml")
    return problems


def test_prometheus_scrapes_every_compose_container() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert compose_scrape_problems(load_compose(), config) == []
    missing = copy.deepcopy(config)
    missing["scrape_configs"][0]["dns_sd_configs"][0]["names"].remove("gateway")
    assert compose_scrape_problems(load_compose(), missing) == [
        "gateway: its health port 8001 is not scraped"
    ]


def test_prometheus_configs_pass_promtool(tmp_path: Path) -> None:
    """Both files, the Kubernetes one with its pod discovery swapped for a static list (Debian's
    Prometheus build has no Kubernetes discovery); the relabelling is checked as written."""
    tool = promtool()
    k8s = yaml.safe_load(K8S_PROMETHEUS.read_text())
    for job in k8s["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["pod:8001"]}]
    swapped = tmp_path / "k8s-prometheus.yml"
    swapped.write_text(yaml.safe_dump(k8s))
    for path in (PROMETHEUS, swapped):
        result = subprocess.run([tool, "check", "config", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_job_and_workload_labels_come_from_both_scrape_configs() -> None:
    """The dashboard selects `job="..."` and groups by `workload`: both Prometheus configs (compose,
    Kubernetes) name that job and set that label on its targets."""
    exprs = " ".join(expressions(load_dashboard()))
    jobs = set(re.findall(r'job="([^"]+)"', exprs))
    assert jobs
    for path in (PROMETHEUS, K8S_PROMETHEUS):
        config = yaml.safe_load(path.read_text())
        named = {job["job_name"]: job for job in config["scrape_configs"]}
        assert jobs <= named.keys(), path
        for job in jobs:
            targets = {rule.get("target_label") for rule in named[job].get("relabel_configs", [])}
            assert "workload" not in exprs or "workload" in targets, path


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def all_k8s_docs() -> list[dict[str, Any]]:
    """Every object of the kustomization's resources (RBAC too)."""
    return [
        doc
        for resource in kustomization()["resources"]
        for doc in yaml.safe_load_all((K8S / resource).read_text())
        if doc
    ]


def k8s_scrape_problems(docs: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    """Pods are kept by the scrape annotation, addressed by the port annotation, in the namespace;
    every bourse Deployment's pods carry the annotations with their health port; Prometheus runs the
    generated ConfigMap of this file with a service account that may list and watch pods."""
    problems: list[str] = []
    namespace = kustomization()["namespace"]
    job = next((job for job in config["scrape_configs"] if job.get("kubernetes_sd_configs")), None)
    if job is None:
        return ["no kubernetes_sd_configs job"]
    sd = job["kubernetes_sd_configs"][0]
    if sd.get("role") != "pod" or namespace not in (sd.get("namespaces") or {}).get("names", []):
        problems.append(f"pod discovery in the namespace {namespace} expected")
    relabel = job.get("relabel_configs") or []
    keeps = [
        rule
        for rule in relabel
        if rule.get("action") == "keep"
        and rule.get("source_labels") == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
        and rule.get("regex") == "true"
    ]
    address = [
        rule
        for rule in relabel
        if rule.get("target_label") == "__address__"
        and "__meta_kubernetes_pod_annotation_prometheus_io_port" in rule.get("source_labels", [])
    ]
    if not keeps or not address:
        problems.append("pods must be kept by prometheus.io/scrape and addressed by prometheus.io/port")
    settings = next(
        doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "bourse-settings"
    )
    health = settings["data"].get("BOURSE_HEALTH_PORT", "8001")
    for doc in docs:
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        pod = doc["spec"]["template"]
        containers = {container["name"]: container for container in pod["spec"]["containers"]}
        if "bourse" not in containers:
            continue
        name = doc["metadata"]["name"]
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        ports = {str(port["containerPort"]) for port in containers["bourse"].get("ports") or []}
        if annotations.get("prometheus.io/scrape") != "true":
            problems.append(f'k8s {name}: pods lack prometheus.io/scrape: "true"')
        if annotations.get("prometheus.io/port") != health or health not in ports:
            problems.append(f"k8s {name}: prometheus.io/port is not the health port {health}")
        if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
            problems.append(f"k8s {name}: prometheus.io/path is not /metrics")
    generated = {
        generator["name"]: generator.get("files", [])
        for generator in kustomization().get("configMapGenerator", [])
    }
    if K8S_PROMETHEUS.name not in generated.get("prometheus-config", []):
        problems.append("kustomization.yaml does not generate prometheus-config from prometheus.yml")
    prometheus = [
        doc
        for doc in docs
        if doc["kind"] == "Deployment"
        and any(
            c["image"].startswith("prom/prometheus") for c in doc["spec"]["template"]["spec"]["containers"]
        )
    ]
    if len(prometheus) != 1:
        return [*problems, "no Prometheus Deployment"]
    pod = prometheus[0]["spec"]["template"]["spec"]
    maps = {(volume.get("configMap") or {}).get("name") for volume in pod.get("volumes", [])}
    if "prometheus-config" not in maps:
        problems.append("the Prometheus Deployment does not mount prometheus-config")
    account = pod.get("serviceAccountName")
    roles = {
        doc["metadata"]["name"]
        for doc in docs
        if doc["kind"] == "Role"
        and any(
            "pods" in rule["resources"] and {"list", "watch"} <= set(rule["verbs"]) for rule in doc["rules"]
        )
    }
    bound = any(
        doc["kind"] == "RoleBinding"
        and doc["roleRef"]["name"] in roles
        and {"kind": "ServiceAccount", "name": account} in doc["subjects"]
        for doc in docs
    )
    if not bound:
        problems.append(f"the service account {account} may not list and watch pods")
    return problems


def test_prometheus_scrapes_every_kubernetes_pod() -> None:
    config = yaml.safe_load(K8S_PROMETHEUS.read_text())
    docs = all_k8s_docs()
    assert k8s_scrape_problems(docs, config) == []
    unannotated = copy.deepcopy(docs)
    gateway = next(
        doc for doc in unannotated if doc["metadata"]["name"] == "gateway" and doc["kind"] == "Deployment"
    )
    del gateway["spec"]["template"]["metadata"]["annotations"]
    assert k8s_scrape_problems(unannotated, config) != []


# --- traces -------------------------------------------------------------------------------------

OTLP_PORTS = {"http/protobuf": 4318, "grpc": 4317}
JAEGER_IMAGE = re.compile(r"^jaegertracing/jaeger:2(\.|$)")


def otel_problems(where: str, env: dict[str, str]) -> list[str]:
    """The OTEL_* variables of one bourse container; the endpoint's host is checked by the caller."""
    problems = []
    expected = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    }
    for key, value in expected.items():
        if env.get(key) != value:
            problems.append(f"{where}: {key}={env.get(key)!r}, expected {value!r}")
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", ""))
    except ValueError:
        ratio = -1.0
    if not 0 < ratio <= 1:
        problems.append(
            f"{where}: OTEL_TRACES_SAMPLER_ARG={env.get('OTEL_TRACES_SAMPLER_ARG')!r} is no ratio"
        )
    if "OTEL_SERVICE_NAME" in env:
        problems.append(f"{where}: OTEL_SERVICE_NAME is bourse's to set, per service")
    endpoint = urlsplit(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    port = OTLP_PORTS.get(env.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""))
    if endpoint.scheme != "http" or not endpoint.hostname or endpoint.port != port:
        problems.append(
            f"{where}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint.geturl()!r} is not http://<jaeger>:{port}"
        )
    return problems


def compose_trace_problems(compose: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    services = compose.get("services", {})
    for name, spec in bourse_containers(compose).items():
        env = environment(spec)
        problems += otel_problems(name, env)
        host = urlsplit(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).hostname or ""
        if not JAEGER_IMAGE.match(str(services.get(host, {}).get("image", ""))):
            problems.append(f"{name}: the OTLP endpoint's host {host!r} is no Jaeger v2 service")
    return problems


def test_every_compose_container_traces_into_jaeger() -> None:
    compose = load_compose()
    assert compose_trace_problems(compose) == []
    assert compose[SHARED]["OTEL_TRACES_SAMPLER_ARG"] == 0.01  # the default under load
    every = load_compose({**VARIABLES, "OTEL_TRACES_SAMPLER_ARG": "1"})  # the ratio is a setting
    assert {environment(spec)["OTEL_TRACES_SAMPLER_ARG"] for spec in bourse_containers(every).values()} == {
        "1"
    }
    wrong_host = copy.deepcopy(compose)
    gateway = wrong_host["services"]["gateway"]
    gateway["environment"] = {**environment(gateway), "OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318"}
    assert compose_trace_problems(wrong_host) == [
        "gateway: the OTLP endpoint's host 'tempo' is no Jaeger v2 service"
    ]


def k8s_trace_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every bourse workload's environment (the ConfigMap and Secret it loads, its own `env`) has
    the OTEL_* variables; the endpoint's host is a Service of the namespace selecting a Jaeger v2
    pod, whose container has the port the Service's port targets."""
    problems: list[str] = []
    maps = {
        doc["metadata"]["name"]: {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
        for doc in docs
        if doc["kind"] in {"ConfigMap", "Secret"}
    }
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    pods = [doc["spec"]["template"] for doc in docs if doc["kind"] in {"Deployment", "StatefulSet"}]
    for doc in docs:
        if doc["kind"] not in {"Deployment", "StatefulSet", "Job"}:
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["name"] != "bourse":
                continue
            name = doc["metadata"]["name"]
            env: dict[str, str] = {}
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef") or source.get("secretRef") or {}
                env.update({key: str(value) for key, value in maps.get(ref.get("name", ""), {}).items()})
            env.update({item["name"]: str(item.get("value")) for item in container.get("env") or []})
            problems += otel_problems(f"k8s {name}", env)
            endpoint = urlsplit(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
            service = services.get((endpoint.hostname or "").split(".")[0])
            if service is None:
                problems.append(f"k8s {name}: no Service {endpoint.hostname!r} for the OTLP endpoint")
                continue
            port = next((p for p in service["spec"]["ports"] if p["port"] == endpoint.port), None)
            selected = [
                pod
                for pod in pods
                if service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
            ]
            reachable = port is not None and any(
                JAEGER_IMAGE.match(c["image"])
                and any(
                    port.get("targetPort") in (p.get("name"), p["containerPort"]) for p in c.get("ports", [])
                )
                for pod in selected
                for c in pod["spec"]["containers"]
            )
            if not reachable:
                problems.append(
                    f"k8s {name}: Service {service['metadata']['name']} does not reach a Jaeger v2 OTLP port"
                )
    return problems


def test_every_kubernetes_pod_traces_into_jaeger() -> None:
    docs = load_k8s()
    assert k8s_trace_problems(docs) == []
    no_jaeger = [doc for doc in docs if doc["metadata"]["name"] != "jaeger"]
    assert k8s_trace_problems(no_jaeger)


def test_kustomization_lists_every_file_of_the_folder() -> None:
    """A manifest left out of kustomization.yaml is never applied."""
    listed = set(kustomization()["resources"])
    assert {path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml"} == listed
