"""docker-compose.yml cannot run here (no Docker engine), so check what can be checked without one:
it parses, it has the production pieces, and every METERGATE_* variable it sets on a Metergate service
is a real setting of that service (walking nested models with the `__` delimiter) with a valid value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from metergate.app import check_auth_binding
from metergate.settings import ApiServiceSettings, MigrateSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PREFIX = "METERGATE_"

SETTINGS_OF: dict[str, tuple[str, type[BaseSettings]]] = {
    "api": ("api", ApiServiceSettings),
    "ingest-worker": ("ingest-worker", WorkerSettings),
    "migrate": ("migrate", MigrateSettings),
}


# What an operator's .env holds (realistic values, not .env.example's placeholders, which are refused).
ENV_FIXTURE = {
    "METERGATE_API_KEYS": '{"k3y-0f-the-billing-team-5f9a2c71": "default"}',
    "CLICKHOUSE_PASSWORD": "ch-Secret-4711",
    "CLICKHOUSE_API_PASSWORD": "ch-Api-Secret-1",
    "CLICKHOUSE_WORKER_PASSWORD": "ch-Worker-Secret-2",
    "CLICKHOUSE_GRAFANA_PASSWORD": "ch-Grafana-Secret-3",
    "POSTGRES_PASSWORD": "pg-Secret-0815",
    "GRAFANA_ADMIN_PASSWORD": "gf-Secret-1234",
    "KAFKA_CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::\?(?P<message>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}` and `${VAR:?message}`: a missing required variable fails like compose does."""

    def value(m: re.Match[str]) -> str:
        if m["name"] in env:
            return env[m["name"]]
        raise AssertionError(f"compose would refuse to start: {m['message'] or m['name'] + ' is not set'}")

    return _VARIABLE.sub(value, text)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    """Compose interpolates the parsed document's string values, not the file's text."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: interpolated(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolated(v, env) for v in node]
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = interpolated(yaml.safe_load(COMPOSE.read_text()), ENV_FIXTURE)
    assert isinstance(document, dict)
    return document


def test_every_secret_comes_from_env_and_the_example_lists_them() -> None:
    text = COMPOSE.read_text()
    needed = {m["name"] for m in _VARIABLE.finditer(text)}
    example = (ROOT / ".env.example").read_text()
    listed = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert needed == listed == set(ENV_FIXTURE)
    assert all(m["message"] for m in _VARIABLE.finditer(text)), "every secret is required (${VAR:?message})"
    with pytest.raises(AssertionError, match=r"set POSTGRES_PASSWORD in \.env"):
        interpolate(text, {k: v for k, v in ENV_FIXTURE.items() if k != "POSTGRES_PASSWORD"})
    for literal in ("metergate:metergate@", "change-me", "PASSWORD: metergate"):
        assert literal not in text
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_example_api_key_is_refused_as_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and line[0] != "#"
    )
    monkeypatch.setenv("METERGATE_AUTH__API_KEYS", example["METERGATE_API_KEYS"])
    with pytest.raises(ValueError, match="placeholder"):
        ApiServiceSettings()


def test_every_long_running_service_restarts(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name != "migrate":
            assert service.get("restart") == "unless-stopped", name


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel a field holds, also through Optional/Union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = model_of(arg)
        if found is not None:
            return found
    return None


def resolve(settings_class: type[BaseModel], variable: str) -> str | None:
    """Why `variable` is not a field of `settings_class`, or None when it is."""
    if not variable.startswith(PREFIX):
        return f"{variable} does not start with {PREFIX}"
    parts = variable[len(PREFIX) :].lower().split("__")
    model: type[BaseModel] | None = settings_class
    for depth, part in enumerate(parts):
        if model is None:
            return f"{variable}: {'__'.join(parts[:depth])} is not a nested section"
        fields = model.model_fields
        if part not in fields:
            return f"{variable}: {model.__name__} has no field {part!r} (fields: {sorted(fields)})"
        model = model_of(fields[part].annotation) if depth < len(parts) - 1 else None
    return None


def test_compose_parses_and_has_the_production_pieces(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "clickhouse", "postgres", "api", "ingest-worker", "migrate"} <= set(services)
    assert "zookeeper" not in services
    kafka = environment(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server")
    assert services["postgres"]["image"].startswith("postgres")


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_metergate_services_run_their_command(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    command = service["command"]
    assert (command if isinstance(command, list) else command.split()) == [SETTINGS_OF[name][0]]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_every_variable_is_a_real_setting(compose: dict[str, Any], name: str) -> None:
    env = environment(compose["services"][name])
    assert env, f"{name} sets no environment"
    problems = [p for p in (resolve(SETTINGS_OF[name][1], v) for v in sorted(env)) if p]
    assert problems == []


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_the_values_validate(compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for variable in list(os.environ):
        if variable.startswith(PREFIX):
            monkeypatch.delenv(variable)
    env = environment(compose["services"][name])
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = SETTINGS_OF[name][1]()
    assert settings.kafka.bootstrap_servers == "kafka:9092"  # type: ignore[attr-defined]
    assert settings.clickhouse.url is not None  # type: ignore[attr-defined]
    assert "@clickhouse:" in settings.clickhouse.url  # type: ignore[attr-defined]
    if isinstance(settings, ApiServiceSettings):
        check_auth_binding(settings.auth, settings.host)  # listens on 0.0.0.0: auth must be on, with keys
        assert settings.database.url.startswith("postgresql+psycopg://")


def test_the_checker_rejects_what_it_should() -> None:
    assert resolve(ApiServiceSettings, "METERGATE_KAFKA__BOOTSTRAP_SERVERS") is None
    assert resolve(ApiServiceSettings, "METERGATE_AUTH__API_KEYS") is None
    assert resolve(ApiServiceSettings, "METERGATE_KAFKA__NOPE")
    assert resolve(ApiServiceSettings, "METERGATE_HOST__PORT")  # host is not a section
    assert resolve(WorkerSettings, "METERGATE_AUTH__API_KEYS")  # the worker has no auth
    assert resolve(MigrateSettings, "METERGATE_PORT")
    assert resolve(ApiServiceSettings, "KAFKA__BOOTSTRAP_SERVERS")


def test_the_api_scales_out_behind_the_proxy(compose: dict[str, Any]) -> None:
    """`docker compose up --scale api=3` needs the api without a fixed host port, and one proxy publishing it."""
    services = compose["services"]
    assert "ports" not in services["api"], "a fixed host port on api makes --scale api=N fail"
    proxy = services["proxy"]
    assert proxy["ports"] == ["8888:8888"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_pass $api" in conf
    assert "resolver 127.0.0.11" in conf
    mount = proxy["volumes"][0].split(":")[0]
    assert (ROOT / mount).resolve() == (ROOT / "deploy" / "nginx.conf").resolve()


def test_every_service_rotates_its_log_and_has_a_memory_limit(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["logging"]["options"]["max-size"], name
        if name != "migrate":
            assert service["deploy"]["resources"]["limits"]["memory"], name


def test_kafka_has_its_own_cluster_id_and_a_loopback_external_listener(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["environment"]["CLUSTER_ID"] == ENV_FIXTURE["KAFKA_CLUSTER_ID"]
    assert "EXTERNAL://127.0.0.1:29092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["ports"] == ["127.0.0.1:29092:29092"]  # no authentication: never beyond this host


def test_each_service_has_its_own_clickhouse_account(compose: dict[str, Any]) -> None:
    """migrate alone uses the admin account; api, worker and Grafana their own (deploy/clickhouse/initdb)."""
    services = compose["services"]
    urls = {name: environment(services[name])["METERGATE_CLICKHOUSE__URL"] for name in SETTINGS_OF}
    assert urls["migrate"].startswith(f"http://metergate:{ENV_FIXTURE['CLICKHOUSE_PASSWORD']}@")
    assert urls["api"].startswith(f"http://metergate_api:{ENV_FIXTURE['CLICKHOUSE_API_PASSWORD']}@")
    assert urls["ingest-worker"].startswith(f"http://metergate_worker:{ENV_FIXTURE['CLICKHOUSE_WORKER_PASSWORD']}@")
    clickhouse = services["clickhouse"]
    assert "./deploy/clickhouse/initdb:/docker-entrypoint-initdb.d:ro" in clickhouse["volumes"]
    for var in ("CLICKHOUSE_API_PASSWORD", "CLICKHOUSE_WORKER_PASSWORD", "CLICKHOUSE_GRAFANA_PASSWORD"):
        assert environment(clickhouse)[var] == ENV_FIXTURE[var]
    grafana = services["grafana"]
    assert "CLICKHOUSE_PASSWORD" not in environment(grafana)  # never the admin password
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yaml").read_text())
    ch = next(d for d in sources["datasources"] if d["type"] == "grafana-clickhouse-datasource")
    assert ch["jsonData"]["username"] == "metergate_grafana"
    assert ch["secureJsonData"]["password"] == "${CLICKHOUSE_GRAFANA_PASSWORD}"


def test_grafana_pins_its_plugin_and_keeps_its_data(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    name, version = environment(grafana)["GF_INSTALL_PLUGINS"].split(" ")
    assert name == "grafana-clickhouse-datasource"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert "grafana-data:/var/lib/grafana" in grafana["volumes"]
    assert "grafana-data" in compose["volumes"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/metergate.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in grafana["volumes"]


def test_prometheus_scrapes_every_worker(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    assert "prometheus-data:/prometheus" in prometheus["volumes"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    worker = compose["services"]["ingest-worker"]
    assert sd["names"] == ["ingest-worker"]
    assert str(sd["port"]) == environment(worker)["METERGATE_SINK__METRICS_PORT"]


def test_no_service_publishes_a_port_beyond_this_host_but_the_proxy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert name == "proxy" or str(port).startswith("127.0.0.1:"), (name, port)
