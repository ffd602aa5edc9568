"""The `metergate` console script: dev, api, ingest-worker, migrate.

Settings come from METERGATE_* environment variables (metergate/settings.py), built once here and passed
down. `--check-config` builds and checks them, prints the outcome, and exits 0 (valid) or 1 (not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import structlog
import uvicorn
from clickhouse_connect.driver.exceptions import DatabaseError
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings.exceptions import SettingsError

from common.errors import Unavailable
from common.logging import configure_logging
from ingest.sink.signals import catch_early_signals, run_until_signalled
from metergate.app import ConfigError, check_auth_binding, check_frozen_clock, create_app
from metergate.migrate import clickhouse_schema_sql, run_migrations
from metergate.server import uvicorn_options
from metergate.settings import ApiServiceSettings, MigrateSettings, WorkerSettings
from metergate.wiring import build_services

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=BaseSettings)

ENV_PREFIX = "METERGATE_"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 1."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, named by its environment variable."""
    lines = []
    for error in exc.errors():
        loc = "__".join(str(part) for part in error["loc"]).upper()
        lines.append(f"  METERGATE_{loc}: {error['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


def setting_variables(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    """Every environment variable name a settings class reads, nested sections joined with `__`."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        names.add(variable)
        nested = next(
            (
                t
                for t in (info.annotation, *get_args(info.annotation))
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
            None,
        )
        if nested is not None:
            names |= setting_variables(nested, f"{variable}__")
    return names


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """METERGATE_* variables that no Metergate service reads: typos, silently ignored otherwise."""
    known = set().union(*(setting_variables(cls) for cls in (ApiServiceSettings, WorkerSettings, MigrateSettings)))
    problems = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name.upper() not in known:
            hint = difflib.get_close_matches(name.upper(), known, n=1)
            problems.append(f"  {name}: not a Metergate setting" + (f" (did you mean {hint[0]}?)" if hint else ""))
    return problems


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Settings from the environment; `overrides` (from command-line flags) take precedence."""
    unknown = unknown_variables(os.environ)
    if unknown:
        raise CliError("unknown settings:\n" + "\n".join(unknown))
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        raise CliError(f"invalid settings: {exc} (JSON values such as METERGATE_AUTH__API_KEYS must be JSON)") from None


def _nested_update(model: BaseModel, updates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    data = model.model_dump()
    for section, values in updates.items():
        data[section] = {**data[section], **values}
    return data


def dev_settings(args: argparse.Namespace) -> ApiServiceSettings:
    """Embedded defaults: loopback, chdb and SQLite under the data folder, no broker, auth off unless keys."""
    base = load_settings(ApiServiceSettings)
    updates: dict[str, dict[str, Any]] = {"kafka": {"bootstrap_servers": None}}
    if base.kafka.bootstrap_servers is not None:
        print("metergate dev ignores METERGATE_KAFKA__BOOTSTRAP_SERVERS: it runs without a broker", file=sys.stderr)
    if args.data_dir is not None:
        data_dir = Path(args.data_dir).resolve()
        updates["clickhouse"] = {"path": data_dir / "clickhouse"}
        updates["database"] = {"url": f"sqlite:///{data_dir / 'state.db'}"}
    updates["auth"] = {"enabled": bool(base.auth.api_keys)}
    data = _nested_update(base, updates)
    if args.host is not None:
        data["host"] = args.host
    if args.port is not None:
        data["port"] = args.port
    return load_settings(ApiServiceSettings, **data)


def api_settings(args: argparse.Namespace) -> ApiServiceSettings:
    settings = load_settings(
        ApiServiceSettings,
        **{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None},
    )
    if settings.kafka.bootstrap_servers is None:
        raise CliError(
            "metergate api publishes to Kafka: set METERGATE_KAFKA__BOOTSTRAP_SERVERS "
            "(or run `metergate dev` for everything in one process without a broker)"
        )
    return settings


def check_api(settings: ApiServiceSettings) -> None:
    try:
        check_auth_binding(settings.auth, settings.host)
        check_frozen_clock(
            settings.clock_frozen_at is not None, settings.auth, settings.host, allowed=settings.allow_frozen_clock
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def migrate_settings_from(settings: ApiServiceSettings) -> MigrateSettings:
    return MigrateSettings(
        clickhouse=settings.clickhouse,
        kafka=settings.kafka,
        database=settings.database,
        log=settings.log,
        meters_file=settings.meters_file,
    )


def dev_banner(settings: ApiServiceSettings) -> str:
    base = f"http://{settings.host}:{settings.port}"
    auth = (
        f"on: {len(settings.auth.api_keys)} API key(s) from METERGATE_AUTH__API_KEYS"
        if settings.auth.enabled
        else f'OFF (loopback only): every request acts in namespace "{settings.auth.default_namespace}"'
    )
    clock = f"frozen at {settings.clock_frozen_at.isoformat()}" if settings.clock_frozen_at else "off (system time)"
    header = "" if not settings.auth.enabled else " -H 'Authorization: Bearer <api key>'"
    event = (
        '{"specversion":"1.0","id":"evt-1","source":"demo","type":"tokens",'
        '"subject":"customer-1","time":"2025-01-01T12:00:00.000Z","data":{"tokens":42}}'
    )
    return "\n".join(
        [
            "Metergate dev: everything in one process",
            f"  HTTP API     {base}  (OpenAPI docs: {base}/docs)",
            "               OpenMeter v1: /api/v1/events, meters, features, subjects/{s}/entitlements, grants",
            f"  ClickHouse   embedded engine (chdb) in {settings.clickhouse.path}, "
            f"database {settings.clickhouse.database}",
            f"  State        {settings.database.url}",
            "  Ingest       HTTP -> in-process log -> sink -> ClickHouse (no Kafka broker)",
            f"  Auth         {auth}",
            f"  Test clock   {clock}",
            "Try it:",
            f"  curl -i -X POST {base}/api/v1/events{header} -H 'Content-Type: application/cloudevents+json' \\",
            f"       -d '{event}'",
            f"  curl -s {base}/api/v1/events{header}",
            "",
        ]
    )


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once it has stopped serving, which would kill the process before
    the services are closed (producer flushed, embedded log idle). Stop serving, then return normally."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def serve(settings: ApiServiceSettings, *, migrate_first: bool) -> None:
    from common.clickhouse import connect_clickhouse

    try:
        clickhouse = await asyncio.to_thread(connect_clickhouse, settings.clickhouse)
    except Unavailable as exc:
        if not settings.clickhouse.embedded:
            raise
        raise CliError(
            f"{exc.message}\n  The embedded engine allows one process per folder: is another metergate using "
            f"{settings.clickhouse.path}? Stop it, or give this one its own folder (--data-dir)."
        ) from None
    if migrate_first:
        await run_migrations(migrate_settings_from(settings), clickhouse)
    try:
        services = await build_services(settings, clickhouse=clickhouse)
    except DatabaseError as exc:
        if "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc):
            raise CliError(f"ClickHouse lacks Metergate's tables: run `metergate migrate` first ({exc})") from None
        raise
    try:
        if not settings.auth.enabled:
            log.warning(
                "auth_disabled",
                namespace=settings.auth.default_namespace,
                host=settings.host,
                note="every request acts in the default namespace; allowed on loopback only",
            )
        app = create_app(services, settings.auth, max_header_bytes=settings.server.max_header_bytes)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            **uvicorn_options(settings.server),
        )
        await GracefulServer(config).serve()
        log.info("api_stopped")
    finally:
        await services.close()


def cmd_dev(args: argparse.Namespace) -> int:
    settings = dev_settings(args)
    check_api(settings)
    if args.check_config:
        return report_ok("dev", settings)
    configure_logging(settings.log)
    print(dev_banner(settings), flush=True)
    asyncio.run(serve(settings, migrate_first=True))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    settings = api_settings(args)
    check_api(settings)
    if args.check_config:
        return report_ok("api", settings)
    configure_logging(settings.log)
    asyncio.run(serve(settings, migrate_first=False))
    return 0


def cmd_ingest_worker(args: argparse.Namespace) -> int:
    # A SIGTERM that arrives while the worker still starts (settings, imports, joining the group) must
    # mean "stop cleanly once started", not the default abrupt death: remember it until the loop runs.
    early = catch_early_signals()
    settings = load_settings(WorkerSettings)
    if settings.kafka.bootstrap_servers is None:
        raise CliError("the ingest worker consumes Kafka: set METERGATE_KAFKA__BOOTSTRAP_SERVERS")
    if args.check_config:
        return report_ok("ingest-worker", settings)
    configure_logging(settings.log)
    run_until_signalled(settings.clickhouse, settings.kafka, settings.sink, early)  # flushes, commits, returns
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(MigrateSettings)
    if args.check_config:
        return report_ok("migrate", settings)
    if args.print_sql:
        for stmt in clickhouse_schema_sql(settings.clickhouse.database):
            print(stmt.strip() + ";\n", flush=True)
        return 0
    configure_logging(settings.log)
    asyncio.run(run_migrations(settings))
    print("migrations applied", flush=True)
    return 0


def report_ok(command: str, settings: BaseSettings) -> int:
    print(f"configuration of `metergate {command}` is valid")
    shown = settings.model_dump(mode="json")
    auth = shown.get("auth")
    if isinstance(auth, dict) and auth.get("api_keys"):
        auth["api_keys"] = {"<hidden>": sorted(set(auth["api_keys"].values()))}
    for key, value in shown.items():
        print(f"  {key}: {mask_credentials(value)}")
    return 0


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@", re.I)


def mask_credentials(value: object) -> object:
    """Every URL in printed settings without its password (`scheme://user:***@host`), at any depth."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
    if isinstance(value, dict):
        return {k: mask_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_credentials(v) for v in value]
    return value


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "dev": ("everything in one process on embedded defaults (chdb, SQLite, no broker)", cmd_dev),
    "api": ("the HTTP API, publishing events to Kafka", cmd_api),
    "ingest-worker": ("the sink worker: Kafka -> ClickHouse, exactly once in effect", cmd_ingest_worker),
    "migrate": ("create ClickHouse tables, Kafka topics, rollups and the state schema", cmd_migrate),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--check-config", action="store_true", help="validate the settings and exit 0 or 1")
    parser = argparse.ArgumentParser(
        prog="metergate",
        description="Usage metering and entitlements. Settings: METERGATE_* environment variables.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if name in ("dev", "api"):
            p.add_argument("--host", help="address to listen on (METERGATE_HOST)")
            p.add_argument("--port", type=int, help="port to listen on (METERGATE_PORT)")
        if name == "migrate":
            p.add_argument(
                "--print-sql",
                action="store_true",
                help="print the ClickHouse schema statements migrate runs, for review, and exit (connects to nothing)",
            )
        if name == "dev":
            p.add_argument("--data-dir", help="folder for the embedded ClickHouse and SQLite (default .metergate)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # argparse lets the subcommand's default hide a --check-config given before the command.
    args.check_config = "--check-config" in argv
    try:
        return COMMANDS[args.command][1](args)
    except CliError as exc:
        print(f"metergate {args.command}: {exc}", file=sys.stderr)
        return 1
    except Unavailable as exc:  # a dependency is down at start: say which, no traceback
        print(f"metergate {args.command}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
