#!/usr/bin/env bash
# Installs the real programs the tests run (Debian bookworm). Idempotent; needs root.
set -euo pipefail
packages=(
  prometheus        # prometheus + promtool: rules, live scrapes
  logrotate         # rotation of followed log files
  nginx-light       # the load-balancer example
  debootstrap       # rootfs for the system tests
  systemd-container # systemd-nspawn
  shellcheck        # installer scripts
  curl              # TLS client in the exporter-security tests
  openssl           # certificates for the TLS tests
  zstd              # release archives (.tar.zst)
  systemd           # systemd-analyze verify/security, systemd-sysusers
  polkitd           # the polkit rule is run in polkitd's own JavaScript set-up
  util-linux        # setpriv: installer dry-runs as an unprivileged user
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian prometheus package starts a server on :9090 through its postinst (where systemd
# runs); the tests start their own on free ports and need none.
