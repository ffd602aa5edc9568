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


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


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
    assert not any(re.search(r"\$\{", v) for v in env.values()), "interpolation would need Docker to resolve"
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
