"""The ``aigc-gateway`` command line. Only the CLI configures logging handlers."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from aigc_gateway.errors import GatewayError

T = TypeVar("T")

config_option = click.option(
    "--config", type=click.Path(path_type=Path, dir_okay=False), help="YAML or TOML settings file."
)
data_dir_option = click.option("--data-dir", type=click.Path(path_type=Path), help="Data root.")
dev_option = click.option(
    "--dev", is_flag=True, default=None, help="Demo mode: default secrets allowed."
)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except GatewayError as exc:
        raise click.ClickException(exc.message) from exc


def _settings(**overrides: Any) -> Any:
    from aigc_gateway.settings import load_settings

    config = overrides.pop("config", None)
    try:
        return load_settings(config, **overrides)
    except GatewayError as exc:
        raise click.ClickException(exc.message) from exc


@click.group()
@click.version_option(package_name="aigc-gateway")
def main() -> None:
    """AIGC Gateway: per-user AI engines on shared GPUs."""


@main.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8080; 0: any free port).")
@click.option(
    "--fd",
    type=int,
    help="Serve on this already bound, inherited TCP socket (socket activation); "
    "its address replaces --host and --port.",
)
@data_dir_option
@config_option
@dev_option
@click.option("--templates-dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--log-level", default="info", show_default=True)
def serve(log_level: str, fd: int | None, **options: Any) -> None:
    """Run the gateway."""
    import uvicorn

    from aigc_gateway.app import create_app
    from aigc_gateway.bootstrap import bootstrap
    from aigc_gateway.logs import configure
    from aigc_gateway.proxy.server import server_options

    configure(log_level)
    if fd is not None:
        listener = _inherited_socket(fd)
        options["host"], options["port"] = listener.getsockname()[:2]
        settings = _settings(**options)
    else:
        any_port = options.get("port") == 0  # --port 0: any free port, as the system picks it
        settings = _settings(**{**options, "port": None} if any_port else options)
        listener = _listen(settings.host, 0 if any_port else settings.port)
    # The port as bound: the links and messages below use the real one.
    settings = settings.model_copy(update={"port": listener.getsockname()[1]})
    first = _run(bootstrap(settings))
    url = served_url(settings)
    click.echo(
        f"AIGC Gateway {'(dev mode) ' if settings.dev else ''}on {url}  (API docs: {url}/docs)"
    )
    if first is not None:
        _print_first_admin(first, url)
    # The start-up heap (imports, catalog) lives as long as the process: keep the collector from
    # re-scanning it, and collect young objects less often (measured in bench/proxy).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    app = create_app(settings, migrated=True)  # bootstrap migrated the store: once per start
    try:
        server = server_options(app)  # the HTTP protocol, whose forwarding headers to believe
    except GatewayError as exc:  # e.g. a uvicorn the connection-level proxy was not tested with
        raise click.ClickException(exc.message) from exc
    config = uvicorn.Config(
        app,
        **server,
        log_level=log_level.lower(),
        log_config=None,  # uvicorn logs through the root handler and its redaction
        timeout_graceful_shutdown=5,
    )
    served = uvicorn.Server(config)
    served.run(sockets=[listener])
    if not served.started:
        sys.exit(3)  # uvicorn's start-up failure status


def _inherited_socket(fd: int) -> socket.socket:
    """The listening TCP socket inherited as ``fd`` (its family read from the socket itself, so
    that accepted connections get TCP_NODELAY as on a socket uvicorn binds)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise click.BadParameter(
            f"{fd} is not a TCP socket ({exc.strerror})", param_hint="--fd"
        ) from exc
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise click.BadParameter(f"{fd} is not a TCP socket", param_hint="--fd")
    return sock


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before anything is printed, so the printed
    address is the one served (and a taken port is a clear error, not a traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def served_url(settings: Any) -> str:
    """The gateway's address for people: ``public_url`` if set, else the bound host and port,
    with a wildcard address (``0.0.0.0``, ``::``) shown as this host's loopback address."""
    if settings.public_url:
        return str(settings.base_url)
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.port}"


def _print_first_admin(first: Any, url: str) -> None:
    click.echo("First start: created the administrator account (shown only this once):")
    click.echo(f"  user:     {first.name}")
    click.echo(f"  password: {first.password}")
    if first.token:
        click.echo(f"  API token: {first.token}")
        click.echo(f"  try: curl -H 'Authorization: Bearer {first.token}' {url}/api/instances")


@main.command()
@data_dir_option
@config_option
@dev_option
def init(**options: Any) -> None:
    """Create the store and the first administrator (idempotent)."""
    from aigc_gateway.bootstrap import bootstrap

    settings = _settings(**options)
    first = _run(bootstrap(settings))
    if first is None:
        click.echo("already initialised")
    else:
        _print_first_admin(first, served_url(settings))


@main.command()
@data_dir_option
@config_option
@dev_option
def doctor(**options: Any) -> None:
    """Check settings, store, templates, runtime folder and GPUs; exit 1 on a problem."""
    from aigc_gateway.doctor import run_doctor

    ok = _run(run_doctor(_settings(**options), click.echo))
    sys.exit(0 if ok else 1)


@main.group()
def template() -> None:
    """Engine templates."""


@template.command("validate")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
def template_validate(directory: Path) -> None:
    """Validate every template file in DIRECTORY; exit 1 naming each invalid file."""
    from aigc_gateway.catalog.loader import load_dir

    catalog = load_dir(directory)
    for loaded in catalog.templates.values():
        note = "" if loaded.installed else f"  (not installed here: {loaded.install_problem})"
        click.echo(f"ok    {loaded.source}: {loaded.id} {loaded.template.version}{note}")
    for problem in catalog.problems:
        click.echo(f"error {problem}", err=True)
    sys.exit(1 if catalog.problems else 0)


@main.group()
def user() -> None:
    """User accounts."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@data_dir_option
@config_option
@dev_option
def user_add(name: str, admin: bool, password_stdin: bool, **options: Any) -> None:
    """Create a user."""
    from aigc_gateway.store.db import Database
    from aigc_gateway.store.users import create_user

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    if password_stdin and not password:
        raise click.ClickException("no password on standard input")
    settings = _settings(**options)

    async def add() -> None:
        from aigc_gateway.bootstrap import bootstrap

        await bootstrap(settings)
        db = Database(settings.sqlalchemy_url)
        try:
            async with db.write() as session:
                await create_user(session, name=name, password=password, is_admin=admin)
        finally:
            await db.close()

    _run(add())
    click.echo(f"created user {name}{' (admin)' if admin else ''}")


def _user_change(settings: Any, name: str, change: str, password: str | None = None) -> str:
    """Apply one admin change to a user straight in the store (for scripted set-ups and when no
    admin can sign in). Disabling or a new password also ends the user's sessions."""
    from datetime import UTC, datetime

    from aigc_gateway.auth.core.secrets import hash_password
    from aigc_gateway.auth.services.admin import check_password
    from aigc_gateway.store.db import Database
    from aigc_gateway.store.sessions import revoke_user_sessions
    from aigc_gateway.store.users import user_by_name

    async def apply() -> str:
        db = Database(settings.sqlalchemy_url)
        try:
            await db.migrate()
            async with db.write() as session:
                target = await user_by_name(session, name)
                now = datetime.now(UTC)
                if change == "disable":
                    target.disabled = True
                    await revoke_user_sessions(session, target.id, now)
                elif change == "enable":
                    target.disabled = False
                elif change in ("admin", "no-admin"):
                    target.is_admin = change == "admin"
                elif change == "password":
                    assert password is not None
                    target.password_hash = hash_password(check_password(password))
                    await revoke_user_sessions(session, target.id, now)
                return f"{name}: {change} done"
        finally:
            await db.close()

    return _run(apply())


@user.command("list")
@data_dir_option
@config_option
@dev_option
def user_list(**options: Any) -> None:
    """List users."""
    from sqlalchemy import select

    from aigc_gateway.store.db import Database
    from aigc_gateway.store.tables import User

    settings = _settings(**options)

    async def rows() -> list[User]:
        db = Database(settings.sqlalchemy_url)
        try:
            await db.migrate()
            async with db.read() as session:
                return list((await session.scalars(select(User).order_by(User.name))).all())
        finally:
            await db.close()

    for u in _run(rows()):
        flags = ",".join(
            f
            for f, on in (("admin", u.is_admin), ("disabled", u.disabled), ("sso", bool(u.issuer)))
            if on
        )
        click.echo(f"{u.name:32} {flags}")


def _user_command(change: str, help_text: str) -> None:
    @user.command(change, help=help_text)
    @click.argument("name")
    @data_dir_option
    @config_option
    @dev_option
    def command(name: str, **options: Any) -> None:
        click.echo(_user_change(_settings(**options), name, change))


for _change, _help in (
    ("disable", "Disable a user and end their sessions."),
    ("enable", "Enable a disabled user."),
    ("admin", "Make a user an administrator."),
    ("no-admin", "Remove a user's administrator role."),
):
    _user_command(_change, _help)


@user.command("passwd")
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    required=True,
    help="Read the new password from standard input.",
)
@data_dir_option
@config_option
@dev_option
def user_passwd(name: str, password_stdin: bool, **options: Any) -> None:
    """Set a user's password (ends their sessions)."""
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise click.ClickException("no password on standard input")
    click.echo(_user_change(_settings(**options), name, "password", password))


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--user", "user_name", required=True)
@click.option("--name", default="cli", show_default=True)
@click.option("--scopes", default="", help="Comma list of read,manage,admin (default: all).")
@data_dir_option
@config_option
@dev_option
def token_create(user_name: str, name: str, scopes: str, **options: Any) -> None:
    """Create an API token and print it (it is not shown again)."""
    from aigc_gateway.auth.core.principal import parse_scopes
    from aigc_gateway.store.db import Database
    from aigc_gateway.store.users import create_token, user_by_name

    try:
        parse_scopes(scopes)
    except ValueError as exc:
        raise click.ClickException(f"--scopes: {exc}; use read, manage or admin") from exc
    settings = _settings(**options)

    async def create() -> str:
        db = Database(settings.sqlalchemy_url)
        try:
            await db.migrate()
            async with db.write() as session:
                owner = await user_by_name(session, user_name)
                return await create_token(session, user=owner, name=name, scopes=scopes)
        finally:
            await db.close()

    click.echo(_run(create()))


# -- instance commands talk to a running gateway over its API -----------------------------------

url_option = click.option(
    "--url", envvar="AIGC_URL", default="http://127.0.0.1:8080", show_default=True
)
token_option = click.option(
    "--token", envvar="AIGC_TOKEN", required=True, help="API token ($AIGC_TOKEN)."
)


def _api(url: str, token_value: str, method: str, path: str, **kwargs: Any) -> Any:
    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token_value}"}
        ) as client:
            response = client.request(method, path, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the gateway at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            body = response.json()
            message = f"{body.get('message')} ({body.get('code')})"
        except ValueError:
            message = response.text
        raise click.ClickException(message)
    ctype = response.headers.get("content-type", "")
    return response.json() if ctype.startswith("application/json") else response.text


@main.group()
def instance() -> None:
    """Instances (through a running gateway's API)."""


@instance.command("ls")
@url_option
@token_option
@click.option("--all", "all_users", is_flag=True, help="Everyone's (admins).")
@click.option("--json", "as_json", is_flag=True)
def instance_ls(url: str, token: str, all_users: bool, as_json: bool) -> None:
    rows = _api(url, token, "GET", "/api/instances", params={"all": str(all_users).lower()})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'ID':32}  {'NAME':20} {'TEMPLATE':16} {'STATE':10} REASON")
    for r in rows:
        click.echo(
            f"{r['id']:32}  {r['name']:20} {r['template_id']:16} {r['state']:10} {r['reason']}"
        )


@instance.command("create")
@click.argument("template_id")
@click.option("--name")
@url_option
@token_option
def instance_create(template_id: str, name: str | None, url: str, token: str) -> None:
    body = {"template": template_id, "name": name, "request_id": os.urandom(8).hex()}
    click.echo(json.dumps(_api(url, token, "POST", "/api/instances", json=body), indent=2))


def _action_command(action: str) -> None:
    @instance.command(action, help=f"{action.capitalize()} an instance.")
    @click.argument("instance_id")
    @url_option
    @token_option
    def command(instance_id: str, url: str, token: str) -> None:
        row = _api(url, token, "POST", f"/api/instances/{instance_id}/{action}")
        click.echo(f"{row['id']}: {row['state']} (wants {row['desired_state']})")


for _action in ("start", "pause", "resume", "restart"):
    _action_command(_action)


@instance.command("delete")
@click.argument("instance_id")
@click.option("--delete-data", is_flag=True, help="Also delete the data folder.")
@url_option
@token_option
def instance_delete(instance_id: str, delete_data: bool, url: str, token: str) -> None:
    params = {"delete_data": str(delete_data).lower()}
    row = _api(url, token, "DELETE", f"/api/instances/{instance_id}", params=params)
    click.echo(f"{row['id']}: deleting{' with data' if delete_data else ', data kept'}")


@instance.command("logs")
@click.argument("instance_id")
@click.option(
    "--tail",
    "-n",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="How many of the last lines to show.",
)
@url_option
@token_option
def instance_logs(instance_id: str, tail: int, url: str, token: str) -> None:
    """The engine's last lines of output."""
    path = f"/api/instances/{instance_id}/logs"
    click.echo(_api(url, token, "GET", path, params={"tail": tail}), nl=False)
