"""The `metergate` console script's settings handling: --check-config, dev defaults, readable errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metergate.cli import build_parser, dev_settings, main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("METERGATE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "argv",
    [
        ["dev", "--check-config"],
        ["--check-config", "dev"],
        ["migrate", "--check-config"],
    ],
)
def test_check_config_valid_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "is valid" in capsys.readouterr().out


def test_check_config_hides_api_keys(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("METERGATE_AUTH__API_KEYS", '{"super-secret-key-0123456789": "acme"}')
    assert main(["dev", "--check-config"]) == 0
    out = capsys.readouterr().out
    assert "super-secret" not in out
    assert "acme" in out


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"METERGATE_PORT": "99999"}, ["dev", "--check-config"], "METERGATE_PORT"),
        ({"METERGATE_AUTH__API_KEYS": '{"short": "ns"}'}, ["dev", "--check-config"], "METERGATE_AUTH__API_KEYS"),
        ({"METERGATE_AUTH__API_KEYS": "not json"}, ["dev", "--check-config"], "must be JSON"),
        ({"METERGATE_LOG__LEVEL": "LOUD"}, ["migrate", "--check-config"], "METERGATE_LOG__LEVEL"),
        ({"METERGATE_NO_SUCH_SETTING": "1"}, ["migrate", "--check-config"], "METERGATE_NO_SUCH_SETTING"),
        ({"METERGATE_CLICKHOUSE_URL": "http://x"}, ["dev", "--check-config"], "did you mean METERGATE_CLICKHOUSE__URL"),
        ({}, ["dev", "--host", "0.0.0.0", "--check-config"], "loopback"),
        ({}, ["api", "--check-config"], "METERGATE_KAFKA__BOOTSTRAP_SERVERS"),
        ({"METERGATE_KAFKA__BOOTSTRAP_SERVERS": "k:9092"}, ["api", "--check-config"], "no API keys"),
        ({}, ["ingest-worker", "--check-config"], "METERGATE_KAFKA__BOOTSTRAP_SERVERS"),
    ],
)
def test_invalid_config_exits_1_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_setting_of_another_service_is_not_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERGATE_SINK__BATCH_SIZE", "500")  # the worker's; migrate does not read it
    monkeypatch.setenv("METERGATE_AUTH__API_KEYS", '{"prod-key-0123456789abcdef": "acme"}')  # the api's
    assert main(["migrate", "--check-config"]) == 0


def test_api_with_broker_and_keys_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERGATE_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("METERGATE_HOST", "0.0.0.0")
    monkeypatch.setenv("METERGATE_AUTH__API_KEYS", '{"prod-key-0123456789abcdef": "acme"}')
    assert main(["api", "--check-config"]) == 0


def test_dev_defaults_are_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERGATE_KAFKA__BOOTSTRAP_SERVERS", "ignored:9092")
    args = build_parser().parse_args(["dev", "--data-dir", str(tmp_path / "d"), "--port", "9999"])
    settings = dev_settings(args)
    assert settings.kafka.bootstrap_servers is None
    assert settings.auth.enabled is False
    assert settings.clickhouse.url is None
    assert settings.clickhouse.path == tmp_path / "d" / "clickhouse"
    assert settings.database.url == f"sqlite:///{tmp_path / 'd' / 'state.db'}"
    assert (settings.host, settings.port) == ("127.0.0.1", 9999)


def test_dev_turns_auth_on_when_keys_are_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERGATE_AUTH__API_KEYS", '{"dev-key-0123456789abcdef": "team"}')
    settings = dev_settings(build_parser().parse_args(["dev"]))
    assert settings.auth.enabled is True
    assert settings.auth.api_keys == {"dev-key-0123456789abcdef": "team"}


def test_check_config_masks_passwords_in_every_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METERGATE_CLICKHOUSE__URL", "http://metergate:ch%40Secret-4711@clickhouse:8123")
    monkeypatch.setenv("METERGATE_DATABASE__URL", "postgresql+psycopg://metergate:pg-Secret-0815@postgres:5432/m")
    monkeypatch.setenv("METERGATE_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    assert main(["migrate", "--check-config"]) == 0
    out = capsys.readouterr().out
    assert "Secret" not in out
    assert "http://metergate:***@clickhouse:8123" in out
    assert "postgresql+psycopg://metergate:***@postgres:5432/m" in out


def test_a_frozen_clock_is_refused_where_tenants_could_move_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METERGATE_CLOCK_FROZEN_AT", "2025-01-01T00:00:00Z")
    monkeypatch.setenv("METERGATE_AUTH__API_KEYS", '{"k3y-0f-the-billing-team-5f9a2c71": "acme"}')
    monkeypatch.setenv("METERGATE_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    assert main(["api", "--host", "0.0.0.0", "--check-config"]) == 1
    assert "test-only" in capsys.readouterr().err
    assert main(["api", "--host", "127.0.0.1", "--check-config"]) == 0  # loopback: a test setup
    monkeypatch.setenv("METERGATE_ALLOW_FROZEN_CLOCK", "true")
    assert main(["api", "--host", "0.0.0.0", "--check-config"]) == 0
