#!/usr/bin/env bash
# Download, as CPython 3.12 manylinux wheels, the gateway's runtime dependencies (the whole
# closure, at the versions installed here) minus what the GPU machine's image already holds (it has
# PyTorch, httpx, aiohttp, jinja2, pyyaml, psutil, nvidia-ml-py...; no network). They land in
# .whl/ (ignored by git) for `run ... carry: [".whl"]`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
$PY - > /tmp/aigc-gpu-wheels.txt <<'PYEOF'
import re
from importlib.metadata import distribution, PackageNotFoundError

ON_DEVICE = {
    "aiohttp", "aiosignal", "anyio", "attrs", "certifi", "click", "h11", "httpcore", "httpx",
    "idna", "jinja2", "markupsafe", "multidict", "propcache", "frozenlist", "yarl", "psutil",
    "nvidia-ml-py", "pyyaml", "typing-extensions", "uvloop", "aiohappyeyeballs", "sniffio",
    "packaging", "protobuf", "importlib-metadata", "zipp", "setuptools", "wrapt", "requests",
    "urllib3", "charset-normalizer", "pygments", "rich", "markdown-it-py", "mdurl",
}
# The gateway's own extras in use: uvicorn[standard], sqlalchemy[asyncio].
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
seen, todo = {}, ["aigc-gateway"]
while todo:
    name = todo.pop()
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        continue
    for req in dist.requires or []:
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", req)
        if extra and extra.group(1) not in ("standard", "asyncio"):
            continue
        dep = norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
        if dep not in seen:
            try:
                seen[dep] = distribution(dep).version
            except PackageNotFoundError:
                continue
            todo.append(dep)
for dep, version in sorted(seen.items()):
    if dep not in ON_DEVICE and dep != "asyncpg":
        print(f"{dep}=={version}")
PYEOF
cat /tmp/aigc-gpu-wheels.txt | tr '\n' ' '; echo
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r /tmp/aigc-gpu-wheels.txt
ls .whl | wc -l; du -sh .whl
