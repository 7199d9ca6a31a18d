#!/usr/bin/env bash
# Installs the real programs the tests run (Debian bookworm). Idempotent; needs root.
set -euo pipefail
packages=(
  prometheus        # prometheus + promtool: rules, live scrapes
  logrotate         # rotation of followed log files
  nginx-light       # the load-balancer example
  libnginx-mod-http-js # njs: the API-key gateway example (nginx/gateway.js)
  haproxy           # the HAProxy example: /ready health checks and the agent-check
  debootstrap       # rootfs for the system tests
  systemd-container # systemd-nspawn
  shellcheck        # installer scripts
  curl              # TLS client in the exporter-security tests
  openssl           # certificates for the TLS tests
  zstd              # release archives (.tar.zst)
  systemd           # systemd-analyze verify/security, systemd-sysusers
  polkitd           # the polkit rule is run in polkitd's own JavaScript set-up
  util-linux        # setpriv: installer dry-runs as an unprivileged user
  cmake             # llama.cpp's llama-server, the real v0.30+ runner (build-llama-server.sh)
  g++               # its C++17 compiler
  make              # cmake's default generator
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# build-llama-server.sh downloads its sdist with "$PYTHON -m pip"; Debian's python3 lacks pip.
"${PYTHON:-python3}" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian prometheus and haproxy packages start a server through their postinst (where
# systemd runs); the tests start their own on free ports and need none.

# A real llama-server (CPU) for the real-runner tests: built once into the user's cache (about
# 6 min on 2 cores), a no-op when cached. Tests take $LLAMA_SERVER when set (then nothing is
# built), else ask build-llama-server.sh --print-path (tests/support/llama.py).
if [ -z "${LLAMA_SERVER:-}" ]; then
  "$(dirname "$0")/build-llama-server.sh" >/dev/null
fi
