"""``GET /healthz``: 200 when the store and the runtime are up."""

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
    return JSONResponse(
        {"ok": ok, "version": __version__, "checks": checks}, status_code=200 if ok else 503
    )
