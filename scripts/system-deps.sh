#!/usr/bin/env bash
# System packages the test suite needs: a real PostgreSQL server, nginx, Chromium, the engine
# sandbox's tools (Debian's packages), and the
# node modules of the test OIDC provider (tests/oidc, pinned by its package-lock.json).
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
# nginx in front of instances (deploy/nginx/, tests/support/nginx.py), with njs for its redirect.
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing+=(libnginx-mod-http-js)
# A real browser for the dashboard tests (Playwright drives it with executable_path).
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The engine sandbox (src/aigc_gateway/runtime/sandbox/): namespaces, the uid drop (util-linux),
# and the Unix-socket forwarder into each engine's network namespace.
[ -x /usr/bin/bwrap ] || missing+=(bubblewrap)
[ -x /usr/bin/setpriv ] || missing+=(util-linux)
[ -x /usr/bin/socat ] || missing+=(socat)
# network: outbound (runtime/sandbox/network.py): named namespaces, a user-mode network stack,
# and the nftables rules that refuse the host and private ranges in each engine's namespace.
[ -x /usr/sbin/ip ] || [ -x /usr/bin/ip ] || missing+=(iproute2)
[ -x /usr/bin/pasta ] || missing+=(passt)
[ -x /usr/sbin/nft ] || missing+=(nftables)
# Volumes on btrfs get enforced quotas (qgroups); the tests make a loop-mounted one.
[ -x /usr/bin/mkfs.btrfs ] || [ -x /usr/sbin/mkfs.btrfs ] || [ -x /sbin/mkfs.btrfs ] || missing+=(btrfs-progs)
# A CJK font, so the Chinese dashboard's screenshots (test artifacts) show their text.
[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || missing+=(fonts-wqy-zenhei)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages for the tests: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own servers: keep the packages' post-install scripts from starting
  # system services (which fail, or take ports, in containers without an init system).
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -d tests/oidc/node_modules/oidc-provider ] || npm ci --prefix tests/oidc --no-audit --no-fund
