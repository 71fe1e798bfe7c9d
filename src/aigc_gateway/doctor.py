"""``aigc-gateway doctor``: what works on this host and what does not."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

from aigc_gateway.catalog.loader import load_dir
from aigc_gateway.settings import Settings
from aigc_gateway.store.db import Database


def gpu_summary() -> tuple[bool, str]:
    """Whether NVIDIA GPUs are usable here, and a line saying what was found."""
    try:
        import pynvml
    except ImportError:
        return False, "no NVIDIA management library (nvidia-ml-py): CPU templates only"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return False, f"no NVIDIA driver ({exc}): CPU templates only"
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)
        ]
    finally:
        pynvml.nvmlShutdown()
    return count > 0, f"{count} GPU(s): {', '.join(map(str, names))}" if count else "no GPU found"


def sandbox_report(settings: Settings, say: Callable[[str], None]) -> None:
    """Whether engines run sandboxed here, what the sandbox uses or lacks, and the warning."""
    from aigc_gateway.gateway import choose_isolation

    iso = choose_isolation(settings)
    if iso.sandboxed:
        say(f"ok    engine sandbox (sandbox: {settings.sandbox}): {iso.detail}")
        say(f"      uids {settings.sandbox_uid_range}, pids max {settings.sandbox_pids_max}")
        say(outbound_line(settings))
        return
    say(f"WARN  {iso.warning}")
    if iso.refusal:
        say(f"      engine starts are refused: {iso.refusal}")


def outbound_line(settings: Settings) -> str:
    """What ``network: outbound`` templates get here."""
    from aigc_gateway.runtime.sandbox.detect import probe

    missing = probe().outbound_missing()
    if missing:
        return f"WARN  network: outbound engines cannot start here: {'; '.join(missing)}"
    allowed = ", ".join(settings.sandbox_outbound_allow) or "none"
    return (
        "ok    network: outbound (pasta, nftables): the internet; host, private and metadata "
        f"addresses refused (allowed private networks: {allowed})"
    )


async def run_doctor(settings: Settings, say: Callable[[str], None]) -> bool:
    ok = True

    def report(good: bool, what: str) -> None:
        nonlocal ok
        ok = ok and good
        say(f"{'ok  ' if good else 'FAIL'}  {what}")

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    try:
        reachable = await db.ping()
        report(reachable, f"store {db.engine.url.render_as_string(hide_password=True)}")
        if reachable:
            await db.migrate()
            report(True, "store schema up to date")
    finally:
        await db.close()
    catalog = load_dir(settings.templates_dir)
    report(not catalog.problems, f"{len(catalog.templates)} templates in {settings.templates_dir}")
    for problem in catalog.problems:
        say(f"      {problem}")
    for loaded in catalog.templates.values():
        if not loaded.installed:
            say(f"note  {loaded.id}: {loaded.install_problem}")
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=settings.runtime_dir):
            pass
        report(True, f"runtime folder writable: {settings.runtime_dir}")
    except OSError as exc:
        report(False, f"runtime folder {settings.runtime_dir}: {exc.strerror}")
    if settings.oidc_enabled:
        say(f"note  single sign-on with {settings.oidc_issuer}; register at the provider:")
        say(f"        redirect URI:             {settings.oidc_redirect_uri}")
        say(f"        post-logout redirect URI: {settings.oidc_post_logout_redirect_uri}")
    sandbox_report(settings, say)
    has_gpus, gpus = gpu_summary()
    say(f"note  GPUs: {gpus}")
    mps = shutil.which(settings.mps_control)
    if mps:
        say(f"note  GPU memory shares are enforced with NVIDIA MPS ({mps})")
    elif has_gpus or settings.gpus:
        say(
            f"note  GPU memory shares are NOT enforced: {settings.mps_control} not found "
            "(install the NVIDIA driver's MPS tools or set AIGC_MPS_CONTROL)"
        )
    say(f"note  {os.cpu_count()} CPUs")
    return ok
