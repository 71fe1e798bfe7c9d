"""``GET /healthz``: 200 when the store and the runtime are up; ``details.sandbox`` says whether
engines are isolated here (an unsandboxed host is healthy, and says it loudly)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aigc_gateway import __version__
from aigc_gateway.api.deps import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(gw: GatewayDep) -> JSONResponse:
    store = await gw.db.ping()
    runtime_ok = gw.settings.runtime_dir.is_dir()
    checks = {"store": store, "runtime": runtime_ok, "controller": gw.controller.alive}
    ok = all(checks.values())
    iso = gw.isolation
    details = {
        "sandbox": {
            "isolated": iso.sandboxed,
            "detail": iso.detail,
            **({"warning": iso.warning} if iso.warning else {}),
        }
    }
    return JSONResponse(
        {"ok": ok, "version": __version__, "checks": checks, "details": details},
        status_code=200 if ok else 503,
    )
