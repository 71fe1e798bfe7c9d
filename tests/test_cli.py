"""The command line, run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.conftest import RunningGateway
from tests.support.gateway import REPO, Api


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
    return subprocess.run(
        [sys.executable, "-m", "aigc_gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
        check=False,
    )


def test_template_validate_names_the_invalid_file(tmp_path: Path) -> None:
    ok = cli("template", "validate", str(REPO / "templates"))
    assert ok.returncode == 0, ok.stderr
    assert "demo" in ok.stdout and "not installed here" in ok.stdout
    (tmp_path / "good.yaml").write_text((REPO / "templates" / "demo.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("id: Bad Id\nfamily: x\n")
    bad = cli("template", "validate", str(tmp_path))
    assert bad.returncode == 1
    assert "bad.yaml: id:" in bad.stderr
    assert "bad.yaml: version: Field required" in bad.stderr
    assert "good.yaml" in bad.stdout  # the valid file is still reported valid


def test_init_user_add_and_token_create(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = cli("init", "--dev", "--data-dir", data)
    assert first.returncode == 0, first.stderr
    assert "password:" in first.stdout
    again = cli("init", "--dev", "--data-dir", data)
    assert again.returncode == 0 and "already initialised" in again.stdout
    assert "password" not in again.stdout  # credentials are shown once only

    added = cli(
        "user",
        "add",
        "carol",
        "--admin",
        "--password-stdin",
        "--dev",
        "--data-dir",
        data,
        stdin="s3cret-pass\n",
    )
    assert added.returncode == 0, added.stderr
    dup = cli("user", "add", "carol", "--password-stdin", "--dev", "--data-dir", data, stdin="x\n")
    assert dup.returncode == 1 and "exists already" in dup.stderr
    empty = cli("user", "add", "dan", "--password-stdin", "--dev", "--data-dir", data, stdin="")
    assert empty.returncode == 1 and "no password" in empty.stderr
    nobody = cli("token", "create", "--user", "nobody", "--dev", "--data-dir", data)
    assert nobody.returncode == 1 and "no user named 'nobody'" in nobody.stderr
    bad_scope = cli(
        "token", "create", "--user", "carol", "--scopes", "root", "--dev", "--data-dir", data
    )
    assert bad_scope.returncode == 1 and "--scopes" in bad_scope.stderr


def test_user_admin_commands(gateway: RunningGateway) -> None:
    data = str(gateway.settings.data_dir)
    assert "alice" in cli("user", "list", "--dev", "--data-dir", data).stdout
    assert cli("user", "admin", "alice", "--dev", "--data-dir", data).returncode == 0
    me = httpx.get(
        f"{gateway.url}/api/me", headers={"Authorization": f"Bearer {gateway.alice}"}
    ).json()
    assert me["is_admin"] is True
    weak = cli(
        "user", "passwd", "alice", "--password-stdin", "--dev", "--data-dir", data, stdin="short\n"
    )
    assert weak.returncode == 1 and "at least 8" in weak.stderr
    assert (
        cli(
            "user",
            "passwd",
            "alice",
            "--password-stdin",
            "--dev",
            "--data-dir",
            data,
            stdin="a-new-password\n",
        ).returncode
        == 0
    )
    r = httpx.post(
        f"{gateway.url}/auth/login", data={"username": "alice", "password": "a-new-password"}
    )
    assert r.status_code == 303
    assert cli("user", "disable", "alice", "--dev", "--data-dir", data).returncode == 0
    r = httpx.get(f"{gateway.url}/api/me", headers={"Authorization": f"Bearer {gateway.alice}"})
    assert r.status_code == 401
    listed = cli("user", "list", "--dev", "--data-dir", data).stdout
    assert "disabled" in next(line for line in listed.splitlines() if line.startswith("alice"))
    assert cli("user", "enable", "alice", "--dev", "--data-dir", data).returncode == 0
    assert (
        httpx.get(
            f"{gateway.url}/api/me", headers={"Authorization": f"Bearer {gateway.alice}"}
        ).status_code
        == 200
    )
    missing = cli("user", "disable", "nobody", "--dev", "--data-dir", data)
    assert missing.returncode == 1 and "no user named" in missing.stderr


def test_token_from_the_cli_works_against_the_api(gateway: RunningGateway) -> None:
    data = str(gateway.settings.data_dir)
    made = cli("token", "create", "--user", "alice", "--dev", "--data-dir", data)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("agw_")
    r = httpx.get(f"{gateway.url}/api/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["name"] == "alice"
    read_only = cli(
        "token", "create", "--user", "alice", "--scopes", "read", "--dev", "--data-dir", data
    )
    headers = {"Authorization": f"Bearer {read_only.stdout.strip()}"}
    r = httpx.post(f"{gateway.url}/api/instances", json={"template": "tiny"}, headers=headers)
    assert r.status_code == 403  # a read-only token cannot create


async def test_instance_commands_through_the_api(gateway: RunningGateway, alice: Api) -> None:
    env = {"AIGC_URL": gateway.url, "AIGC_TOKEN": gateway.alice}
    made = cli("instance", "create", "tiny", "--name", "from-cli", env=env)
    assert made.returncode == 0, made.stderr
    listed = cli("instance", "ls", env=env)
    assert "from-cli" in listed.stdout
    inst = (await alice.client.get("/api/instances")).json()[0]
    await alice.wait_state(inst["id"], "running")
    paused = cli("instance", "pause", inst["id"], env=env)
    assert paused.returncode == 0 and "wants paused" in paused.stdout
    await alice.wait_state(inst["id"], "paused")
    logs = cli("instance", "logs", inst["id"], "--tail", "1", env=env)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.startswith("tiny engine starting, pid ") and logs.stdout.count("\n") == 1
    missing = cli("instance", "pause", "0" * 32, env=env)
    assert missing.returncode == 1 and "instance_not_found" in missing.stderr
    unreachable = cli("instance", "ls", env={**env, "AIGC_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 1 and "cannot reach the gateway" in unreachable.stderr


def test_serve_prints_the_address_it_serves(tmp_path: Path) -> None:
    """Not ``http://HOST:PORT``: the address bound (any free port here), usable as printed even
    when listening on every address."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
    args = ["serve", "--dev", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aigc_gateway", *args, "--templates-dir", str(REPO / "templates")],
        env={**base, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    drain = threading.Thread(target=proc.stderr.read, daemon=True)
    try:
        printed = [next(proc.stdout)]
        while "try: curl" not in printed[-1]:
            printed.append(next(proc.stdout))
        text = "".join(printed)
        assert "HOST:PORT" not in text
        url = printed[0].split(" on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), text
        token = next(line.split()[-1] for line in printed if "API token:" in line)
        assert f"Bearer {token}' {url}/api/instances" in printed[-1]
        logged = []
        for line in proc.stderr:  # uvicorn says so once the app's startup has completed
            logged.append(line)
            if "Application startup complete" in line:
                break
        # One start migrates the store once (bootstrap), not again when the app opens.
        migrations = [line for line in logged if "migrating the store" in line]
        assert len(migrations) == 1, "".join(logged)
        drain.start()
        r = httpx.get(f"{url}/api/instances", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if drain.is_alive():
            drain.join(30)  # the pipe's end, now that the gateway is gone
        proc.stdout.close()
        proc.stderr.close()


def test_serve_refuses_default_secret_outside_dev_mode(tmp_path: Path) -> None:
    out = cli("serve", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert "AIGC_SECRET_KEY" in out.stderr


def test_doctor_reports_what_works(tmp_path: Path) -> None:
    out = cli("doctor", "--dev", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "store schema up to date" in out.stdout
    assert "GPUs:" in out.stdout
    sso = cli(
        "doctor",
        "--dev",
        "--data-dir",
        str(tmp_path / "d"),
        env={
            "AIGC_PUBLIC_URL": "https://ai.example.com",
            "AIGC_OIDC_ISSUER": "https://idp.example",
            "AIGC_OIDC_CLIENT_ID": "c",
            "AIGC_OIDC_CLIENT_SECRET": "s",
        },
    )
    assert "https://ai.example.com/auth/oidc/callback" in sso.stdout
    assert "https://ai.example.com/auth/logged-out" in sso.stdout
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "x.yaml").write_text("nonsense: [")
    bad = cli(
        "doctor",
        "--dev",
        "--data-dir",
        str(tmp_path / "d"),
        env={"AIGC_TEMPLATES_DIR": str(broken)},
    )
    assert bad.returncode == 1 and "x.yaml" in bad.stdout
