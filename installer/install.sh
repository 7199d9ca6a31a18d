#!/usr/bin/env bash
# install.sh — the offline side of the ollama-watchdog installer. Runs as root, needs no network.
#
# Verifies the bundle made by make-bundle.sh against its SHA256SUMS before touching anything,
# then installs Ollama exactly as Ollama's own scripts/install.sh would (binary + lib/ollama in
# /usr/local, the `ollama` system user, render/video groups, the unit), the watchdog in a venv
# from the bundled wheelhouse, our units, drop-in, polkit rule, logrotate config, config (only
# if absent), dashboards, rules, the Alertmanager example and the docs, the bundled models, then
# starts both services and ends with
# `ollama-watchdog check`. Every step is logged to stdout and to $LOG_FILE. A second run changes
# nothing; --dry-run shows what a run would change; --uninstall removes it (models stay unless
# --purge).
set -eu -o pipefail
umask 022

PROG=install.sh
LOG_FILE=/var/log/ollama-watchdog-install.log
PREFIX=/usr/local
BINDIR=$PREFIX/bin
LIBDIR=$PREFIX/lib/ollama
OLLAMA_HOME=/usr/share/ollama
VENV_DIR=/opt/ollama-watchdog/venv
ETC_DIR=/etc/ollama-watchdog
CONFIG=$ETC_DIR/config.toml
SHARE_DIR=/usr/share/ollama-watchdog
UNIT_DIR=/etc/systemd/system
POLKIT_DIR=/etc/polkit-1/rules.d
LOGROTATE_DIR=/etc/logrotate.d
# The installer's own memory: what it installed (for --uninstall and edited-file detection) and
# which bundle parts are already in place (for idempotency). Not the service's StateDirectory.
STATE_DIR=/var/lib/ollama-watchdog-install
FILES_DB=$STATE_DIR/installed-files
WATCHDOG_STATE_DIR=/var/lib/ollama-watchdog
API_WAIT_S=120
# The runbook base every alert's runbook_url starts with (prometheus/alerts.yml): by default the
# exporter of the instance that fired serves it; --runbook-url sets one base for all, once.
# shellcheck disable=SC2016 # a Prometheus template, not a shell expansion
DEFAULT_RUNBOOK_BASE='http://{{ $labels.instance }}/runbook'
RUNBOOK_FILE=$STATE_DIR/runbook-url
RUNBOOK_URL=""
# shellcheck disable=SC2016 # a regex
URL_RE='^https?://[A-Za-z0-9._~:/?@!$()*+,;=%-]+$'

usage() {
    cat <<EOF
Usage: $PROG [--bundle DIR] [--dry-run] [--no-start] [--verify] [--runbook-url URL]
       $PROG --uninstall [--purge] [--dry-run]

  --bundle DIR   the bundle made by make-bundle.sh (default: the directory of this script)
  --dry-run      verify the bundle and log what would change; change nothing
  --no-start     install and enable, but do not start services (GGUF models are then skipped:
                 creating them needs the running server)
  --verify       only verify the bundle against SHA256SUMS
  --runbook-url URL
                 base of every alert's runbook link in the installed prometheus/alerts.yml
                 (URL#alertname), e.g. an https exporter or a wiki page; remembered for later
                 runs. Default: the exporter of the instance that fired, http://INSTANCE/runbook
  --uninstall    stop, disable and remove what this installer installed; keeps models, users,
                 $ETC_DIR and edited files
  --purge        with --uninstall: also remove models ($OLLAMA_HOME), users, configuration
  -h, --help     this text
Log: $LOG_FILE
EOF
}

# ---------------------------------------------------------------------------------------------
# Logging, and the two ways a step touches the system.

LOG_TO_FILE=0
DRY_RUN=0
CHANGES=0

log() {
    local line
    line="$(date '+%Y-%m-%dT%H:%M:%S%z') $*"
    printf '%s\n' "$line"
    if [ "$LOG_TO_FILE" = 1 ]; then
        printf '%s\n' "$line" >>"$LOG_FILE"
    fi
}

die() {
    log "ERROR: $*"
    exit 1
}

on_exit() {
    local rc=$?
    [ -z "${TMP_OUT:-}" ] || rm -f "$TMP_OUT"
    if [ "$rc" -ne 0 ]; then
        log "FAILED (exit $rc); nothing after the failed step was done"
    fi
}
trap on_exit EXIT

# run: a command whose output goes to the log file only; on failure its last lines go to stderr
# and the step fails with a message naming the command. Use for external commands.
run() {
    local rc=0
    "$@" >"$TMP_OUT" 2>&1 || rc=$?
    if [ "$LOG_TO_FILE" = 1 ]; then
        cat "$TMP_OUT" >>"$LOG_FILE"
    fi
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$TMP_OUT" >&2
        log "ERROR: step failed (exit $rc): $*"
        return "$rc"
    fi
}

# change: one change to the system, counted, logged, and skipped under --dry-run.
change() {
    local what=$1
    shift
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then
        log "would: $what"
        return 0
    fi
    log "change: $what"
    run "$@" || die "$what failed"
}

unchanged() {
    log "ok: $*"
}

sha256_of() {
    sha256sum "$1" | cut -c1-64
}

# ---------------------------------------------------------------------------------------------
# Bundle verification: SHA256SUMS must name every file and every file must match. Nothing else
# is read from the bundle before this passes.

verify_bundle() {
    local sums=$BUNDLE/SHA256SUMS bad listed present extra
    [ -f "$sums" ] || die "$sums not found: not a bundle made by make-bundle.sh"
    # Only plain relative paths: no absolute names, no '..', nothing outside the bundle.
    bad=$(grep -nvE '^[0-9a-f]{64}  [A-Za-z0-9._+@=,:/-]+$' "$sums" || true)
    [ -z "$bad" ] || die "SHA256SUMS has malformed lines: $(printf '%s' "$bad" | head -n 3 | tr '\n' ' ')"
    if grep -qE '  (/|(.*/)?\.\.(/|$))' "$sums"; then
        die "SHA256SUMS names a path outside the bundle"
    fi
    # Links and special files could point anywhere; a bundle has plain files only.
    bad=$(cd "$BUNDLE" && find . ! -type f ! -type d -printf '%P\n' | head -n 3)
    [ -z "$bad" ] || die "bundle contains links or special files: $bad"
    listed=$(cut -c67- "$sums" | LC_ALL=C sort)
    present=$(cd "$BUNDLE" && find . -type f ! -path ./SHA256SUMS -printf '%P\n' | LC_ALL=C sort)
    # An unlisted file is refused too: pip --find-links would happily install a planted wheel.
    extra=$(LC_ALL=C comm -13 <(printf '%s\n' "$listed") <(printf '%s\n' "$present"))
    [ -z "$extra" ] || die "bundle has files not in SHA256SUMS: $(printf '%s' "$extra" | head -n 5 | tr '\n' ' ')"
    if ! bad=$(cd "$BUNDLE" && sha256sum --check --strict --quiet SHA256SUMS 2>&1); then
        die "bundle verification failed, refusing to install: $(printf '%s' "$bad" | head -n 5 | tr '\n' ' ')"
    fi
    log "ok: bundle verified ($(wc -l <"$sums") files match SHA256SUMS)"
}

bundle_json() {
    python3 - "$BUNDLE/bundle.json" "$1" <<'PYEOF'
import json
import sys

value = json.load(open(sys.argv[1], encoding="utf-8"))
for key in sys.argv[2].split("."):
    value = value[key]
if isinstance(value, list):
    print("\n".join(str(v) for v in value))
elif value is not None:
    print(value)
PYEOF
}

detect_format() {
    local magic
    magic=$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')
    case "$magic" in
        28b52ffd) echo tar.zst ;;
        1f8b*) echo tgz ;;
        7f454c46) echo binary ;;
        *) echo unknown ;;
    esac
}

uname_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) uname -m ;;
    esac
}

systemd_running() {
    local state
    state=$(systemctl is-system-running 2>/dev/null || true)
    [ "$state" = running ] || [ "$state" = degraded ]
}

# ---------------------------------------------------------------------------------------------
# Preflight: everything that can be checked without changing anything.

preflight() {
    local tool archive fmt want have dir
    [ "$(id -u)" = 0 ] || [ "$DRY_RUN" = 1 ] || die "run as root"
    for tool in python3 tar sha256sum systemctl useradd usermod getent install cmp od; do
        command -v "$tool" >/dev/null || die "required command not found: $tool"
    done
    python3 -c 'import json' 2>/dev/null || die "python3 cannot run"
    BUNDLE_ARCH=$(bundle_json ollama.arch)
    [ "$BUNDLE_ARCH" = "$(uname_arch)" ] \
        || die "bundle is for $BUNDLE_ARCH, this machine is $(uname -m)"
    OLLAMA_ARCHIVE=$BUNDLE/$(bundle_json ollama.archive)
    [ -f "$OLLAMA_ARCHIVE" ] || die "bundle.json names a missing archive: $OLLAMA_ARCHIVE"
    EXTRA_ARCHIVES=()
    while IFS= read -r archive; do
        [ -z "$archive" ] || EXTRA_ARCHIVES+=("$BUNDLE/$archive")
    done < <(bundle_json ollama.extra_archives)
    for archive in "$OLLAMA_ARCHIVE" "${EXTRA_ARCHIVES[@]+"${EXTRA_ARCHIVES[@]}"}"; do
        fmt=$(detect_format "$archive")
        case "$fmt" in
            tar.zst) command -v zstd >/dev/null || die "zstd is needed for $archive (apt-get install zstd)" ;;
            tgz | binary) ;;
            *) die "$archive: unknown format (not .tar.zst, .tgz or ELF)" ;;
        esac
    done
    WATCHDOG_VERSION=$(bundle_json watchdog.version)
    want=$(bundle_json watchdog.python_version)
    have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$want" = "$have" ] \
        || die "the wheelhouse is for Python $want but python3 here is $have (rebuild with --python-version $have)"
    # GGUF magic first: a truncated or wrong file must fail before anything is installed.
    for dir in "$BUNDLE"/models/gguf/*/; do
        [ -d "$dir" ] || continue
        if [ ! -f "$dir/name" ] || [ ! -f "$dir/model.gguf" ] || [ ! -f "$dir/Modelfile" ]; then
            die "$dir: expected name, model.gguf and Modelfile"
        fi
        [ "$(head -c 4 "$dir/model.gguf")" = GGUF ] \
            || die "$dir/model.gguf is not a GGUF file (its first 4 bytes are not 'GGUF')"
    done
    if [ "$NO_START" = 0 ] && ! systemd_running; then
        log "warning: systemd is not running here: services are installed and enabled, not started"
        NO_START=1
    fi
    log "ok: preflight (Ollama $(bundle_json ollama.version) $BUNDLE_ARCH, ollama-watchdog $WATCHDOG_VERSION, Python $have)"
}

# ---------------------------------------------------------------------------------------------
# Files. put_file installs a file we own (replaced when it differs); put_conffile keeps a file an
# admin edited after we installed it (dpkg's conffile rule). Both record what they installed.

file_recorded_hash() {
    [ -f "$FILES_DB" ] || return 0
    awk -v p="$1" 'substr($0, 67) == p { h = substr($0, 1, 64) } END { if (h) print h }' "$FILES_DB"
}

record_file() {
    [ "$DRY_RUN" = 0 ] || return 0
    local path=$1 tmp
    install -d -m 0755 "$STATE_DIR"
    tmp=$(mktemp "$STATE_DIR/.files.XXXXXX")
    if [ -f "$FILES_DB" ]; then
        awk -v p="$path" 'substr($0, 67) != p' "$FILES_DB" >"$tmp"
    fi
    printf '%s  %s\n' "$(sha256_of "$path")" "$path" >>"$tmp"
    mv "$tmp" "$FILES_DB"
}

same_file() {
    # Same content, mode and owner: anything else counts as a change to make.
    local src=$1 dst=$2 mode=$3 owner=$4
    [ -f "$dst" ] && cmp -s "$src" "$dst" || return 1
    [ "$(stat -c '%a %U:%G' "$dst")" = "$(printf '%o' "$((8#$mode))") $owner" ]
}

put_file() {
    local src=$1 dst=$2 mode=${3:-0644} owner=${4:-root:root}
    if same_file "$src" "$dst" "$mode" "$owner"; then
        unchanged "$dst"
        [ -n "$(file_recorded_hash "$dst")" ] || record_file "$dst"
        return 1
    fi
    change "install $dst" install -D -m "$mode" -o "${owner%%:*}" -g "${owner#*:}" "$src" "$dst"
    record_file "$dst"
}

put_conffile() {
    local src=$1 dst=$2 recorded
    if [ -f "$dst" ] && ! cmp -s "$src" "$dst"; then
        recorded=$(file_recorded_hash "$dst")
        if [ -z "$recorded" ] || [ "$recorded" != "$(sha256_of "$dst")" ]; then
            log "kept: $dst was edited locally; the bundle's version is $src"
            return 1
        fi
    fi
    put_file "$src" "$dst" 0644
}

# A directory tree we own entirely (dashboards, rules): replaced as a whole when it differs.
put_tree() {
    local src=$1 dst=$2
    if [ -d "$dst" ] && diff -r -q "$src" "$dst" >/dev/null 2>&1; then
        unchanged "$dst/"
        return 1
    fi
    if [ -e "$dst" ]; then
        change "remove old $dst" rm -rf "$dst"
    fi
    change "install $dst/" cp -R "$src" "$dst"
}

# ---------------------------------------------------------------------------------------------
# Ollama: the end state of Ollama's scripts/install.sh (FACTS.md §4).

OLLAMA_CHANGED=0
WATCHDOG_CHANGED=0
UNITS_CHANGED=0

ollama_bundle_id() {
    # The Ollama part of the bundle, as one hash: main archive plus add-ons, in order.
    grep -E '  ollama/' "$BUNDLE/SHA256SUMS" | sha256sum | cut -c1-64
}

extract_ollama() {
    # Runs only when not a dry run. Extracts into a staging dir on the same file system first,
    # so a broken archive never leaves a half-replaced installation.
    local stage archive
    install -d -m 0755 "$PREFIX/lib" || return 1
    stage=$(mktemp -d "$PREFIX/lib/.ollama-bundle.XXXXXX") || return 1
    for archive in "$OLLAMA_ARCHIVE" "${EXTRA_ARCHIVES[@]+"${EXTRA_ARCHIVES[@]}"}"; do
        case "$(detect_format "$archive")" in
            tar.zst) run tar --zstd -xf "$archive" -C "$stage" --no-same-owner || return 1 ;;
            tgz) run tar -xzf "$archive" -C "$stage" --no-same-owner || return 1 ;;
            binary) run install -D -m 0755 "$archive" "$stage/bin/ollama" || return 1 ;;
        esac
    done
    [ -f "$stage/bin/ollama" ] || { log "ERROR: archive has no bin/ollama"; return 1; }
    if [ -d "$LIBDIR" ]; then
        log "change: Cleaning up old version at $LIBDIR"
        run rm -rf "$LIBDIR" || return 1
    fi
    run install -o0 -g0 -m0755 -d "$BINDIR" "$PREFIX/lib" || return 1
    run install -o0 -g0 -m0755 "$stage/bin/ollama" "$BINDIR/ollama" || return 1
    if [ -d "$stage/lib/ollama" ]; then
        run mv "$stage/lib/ollama" "$LIBDIR" || return 1
    else
        run install -o0 -g0 -m0755 -d "$LIBDIR" || return 1
    fi
    run rm -rf "$stage"
}

install_ollama() {
    local id marker=$STATE_DIR/ollama-bundle.sha256
    id=$(ollama_bundle_id)
    if [ -x "$BINDIR/ollama" ] && [ -d "$LIBDIR" ] && [ -f "$marker" ] \
        && [ "$(cat "$marker")" = "$id" ]; then
        unchanged "Ollama from this bundle is installed in $PREFIX"
        return 0
    fi
    CHANGES=$((CHANGES + 1))
    OLLAMA_CHANGED=1
    if [ "$DRY_RUN" = 1 ]; then
        log "would: install Ollama $(bundle_json ollama.version) into $BINDIR/ollama and $LIBDIR"
        return 0
    fi
    log "change: installing Ollama $(bundle_json ollama.version) into $BINDIR/ollama and $LIBDIR"
    if ! extract_ollama; then
        rm -rf "$PREFIX"/lib/.ollama-bundle.*
        die "installing the Ollama archive failed"
    fi
    install -d -m 0755 "$STATE_DIR"
    printf '%s\n' "$id" >"$marker"
}

user_in_group() {
    id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"
}

create_users() {
    local group sysusers
    if getent passwd ollama >/dev/null; then
        unchanged "user ollama exists"
    else
        change "create system user ollama (home $OLLAMA_HOME)" \
            useradd -r -s /bin/false -U -m -d "$OLLAMA_HOME" ollama
    fi
    for group in render video; do
        getent group "$group" >/dev/null || continue
        if user_in_group ollama "$group"; then
            unchanged "ollama is in group $group"
        else
            change "add ollama to group $group" usermod -a -G "$group" ollama
        fi
    done
    # The shipped sysusers.d file is the definition of our user; useradd only where systemd
    # has no sysusers (the same user, group, home and shell).
    sysusers=$BUNDLE/assets/systemd/sysusers.d/ollama-watchdog.conf
    if [ -f "$sysusers" ]; then
        put_file "$sysusers" /etc/sysusers.d/ollama-watchdog.conf || true
    fi
    if getent passwd ollama-watchdog >/dev/null; then
        unchanged "user ollama-watchdog exists"
    elif [ -f "$sysusers" ] && command -v systemd-sysusers >/dev/null; then
        change "create system user ollama-watchdog (systemd-sysusers)" \
            systemd-sysusers "$sysusers"
    else
        change "create system user ollama-watchdog" \
            useradd -r -s /usr/sbin/nologin -U -M -d "$WATCHDOG_STATE_DIR" ollama-watchdog
    fi
    # Reading ollama.service's journal (the unit also sets SupplementaryGroups=systemd-journal;
    # the group matters for `sudo -u ollama-watchdog ollama-watchdog doctor` too).
    if getent group systemd-journal >/dev/null; then
        if user_in_group ollama-watchdog systemd-journal; then
            unchanged "ollama-watchdog is in group systemd-journal"
        else
            change "add ollama-watchdog to group systemd-journal" \
                usermod -a -G systemd-journal ollama-watchdog
        fi
    fi
}

# ---------------------------------------------------------------------------------------------
# The watchdog: a venv from the wheelhouse, never from an index.

install_watchdog() {
    local id marker=$VENV_DIR/.bundle-wheelhouse.sha256 pip_whl
    id=$(grep -E '  wheelhouse/' "$BUNDLE/SHA256SUMS" | sha256sum | cut -c1-64)
    if [ -x "$VENV_DIR/bin/ollama-watchdog" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$id" ]; then
        unchanged "ollama-watchdog $WATCHDOG_VERSION is installed in $VENV_DIR"
        return 0
    fi
    CHANGES=$((CHANGES + 1))
    WATCHDOG_CHANGED=1
    if [ "$DRY_RUN" = 1 ]; then
        log "would: install ollama-watchdog $WATCHDOG_VERSION into $VENV_DIR (pip --no-index)"
        return 0
    fi
    log "change: installing ollama-watchdog $WATCHDOG_VERSION into $VENV_DIR"
    pip_whl=$(find "$BUNDLE/wheelhouse" -maxdepth 1 -name 'pip-*.whl' | sort -V | tail -n1)
    [ -n "$pip_whl" ] || die "the wheelhouse has no pip wheel"
    # A venv is not relocatable, so it is built in place; the old one waits aside until the new
    # one works.
    rm -rf "$VENV_DIR.old"
    [ ! -d "$VENV_DIR" ] || mv "$VENV_DIR" "$VENV_DIR.old"
    install -d -m 0755 "$(dirname "$VENV_DIR")"
    # --without-pip + pip run from its wheel: no need for Debian's python3-venv (ensurepip).
    # PIP_CONFIG_FILE=/dev/null: a host pip.conf must not add an index or constraints.
    if run python3 -m venv --without-pip "$VENV_DIR" \
        && run env PIP_CONFIG_FILE=/dev/null "$VENV_DIR/bin/python" "$pip_whl/pip" install \
            --no-index --find-links "$BUNDLE/wheelhouse" --no-cache-dir \
            --disable-pip-version-check --no-input --no-warn-script-location \
            pip "ollama-watchdog==$WATCHDOG_VERSION" \
        && run "$VENV_DIR/bin/ollama-watchdog" --version; then
        printf '%s\n' "$id" >"$marker"
        rm -rf "$VENV_DIR.old"
    else
        rm -rf "$VENV_DIR"
        [ ! -d "$VENV_DIR.old" ] || mv "$VENV_DIR.old" "$VENV_DIR"
        die "installing ollama-watchdog from the wheelhouse failed (previous venv restored)"
    fi
}

# ---------------------------------------------------------------------------------------------
# Units, drop-in, polkit, logrotate, config, dashboards.

install_assets() {
    local assets=$BUNDLE/assets f
    for f in "$assets"/systemd/*.service; do
        [ -f "$f" ] || continue
        if put_file "$f" "$UNIT_DIR/$(basename "$f")"; then
            UNITS_CHANGED=1
            case "$(basename "$f")" in
                ollama.service | ollama@.service) OLLAMA_CHANGED=1 ;;
                *) WATCHDOG_CHANGED=1 ;;
            esac
        fi
    done
    # Only the tuning drop-in: the others in that folder (file-logging.conf) are opt-in examples.
    f=$assets/systemd/ollama.service.d/tuning.conf
    if [ -f "$f" ] && put_conffile "$f" "$UNIT_DIR/ollama.service.d/tuning.conf"; then
        UNITS_CHANGED=1
        OLLAMA_CHANGED=1
    fi
    for f in "$assets"/systemd/polkit/*.rules; do
        [ -f "$f" ] || continue
        put_file "$f" "$POLKIT_DIR/$(basename "$f")" || true
    done
    if ! command -v pkaction >/dev/null && [ ! -d /usr/share/polkit-1 ]; then
        log "warning: polkit is not installed: the watchdog user cannot restart ollama.service (apt-get install polkitd)"
    fi
    for f in "$assets"/logrotate/*; do
        [ -f "$f" ] || continue
        put_file "$f" "$LOGROTATE_DIR/$(basename "$f")" || true
    done
    if [ -f "$CONFIG" ]; then
        # Never overwritten: the admin's configuration wins, even over a newer example.
        unchanged "$CONFIG exists (kept as it is)"
    else
        change "create $ETC_DIR" install -d -m 0755 "$ETC_DIR"
        change "create $CONFIG from config.example.toml" \
            install -m 0640 -o root -g ollama-watchdog "$assets/config.example.toml" "$CONFIG"
        WATCHDOG_CHANGED=1
    fi
    for f in grafana prometheus alertmanager docs; do
        [ -d "$assets/$f" ] || continue
        if [ ! -d "$SHARE_DIR" ]; then
            change "create $SHARE_DIR" install -d -m 0755 "$SHARE_DIR"
        fi
        if [ "$f" = prometheus ]; then
            put_rules "$assets/$f" "$SHARE_DIR/$f" || true
        else
            put_tree "$assets/$f" "$SHARE_DIR/$f" || true
        fi
    done
    # Keep the installer itself, so --uninstall works once the bundle is gone.
    put_file "$BUNDLE/install.sh" "$SHARE_DIR/install.sh" 0755 || true
}

# The rules with their runbook links pointed at the chosen base (--runbook-url, else the one
# remembered from an earlier run, else the default): staged, then installed as a tree, so a
# second run with the same base changes nothing.
put_rules() {
    local src=$1 dst=$2 stage base=$DEFAULT_RUNBOOK_BASE rc=0
    if [ -n "$RUNBOOK_URL" ]; then
        base=$RUNBOOK_URL
    elif [ -f "$RUNBOOK_FILE" ]; then
        base=$(cat "$RUNBOOK_FILE")
    fi
    stage=$(mktemp -d)
    cp -R "$src" "$stage/rules"
    if [ "$base" != "$DEFAULT_RUNBOOK_BASE" ]; then
        # validated in main(): no | & \ or spaces, so it is safe in the replacement
        sed -i "s|runbook_url: \"http://{{ \$labels.instance }}/runbook#|runbook_url: \"$base#|" \
            "$stage/rules/alerts.yml"
    fi
    log "ok: runbook links in $dst/alerts.yml: $base#<alertname>"
    put_tree "$stage/rules" "$dst" || rc=$?
    rm -rf "$stage"
    if [ -n "$RUNBOOK_URL" ] && [ "$DRY_RUN" = 0 ]; then
        install -d -m 0755 "$STATE_DIR"
        printf '%s\n' "$RUNBOOK_URL" >"$RUNBOOK_FILE"
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# Services and models.

# What the ollama unit really runs with (drop-ins included), e.g. OLLAMA_MODELS, OLLAMA_HOST.
unit_env() {
    local value=""
    if systemd_running; then
        value=$(systemctl show -p Environment --value ollama.service 2>/dev/null \
            | tr ' ' '\n' | sed -n "s/^$1=//p" | tail -n1)
    fi
    if [ -z "$value" ] && [ -d "$UNIT_DIR/ollama.service.d" ]; then
        value=$(cat "$UNIT_DIR"/ollama.service.d/*.conf 2>/dev/null \
            | sed -n "s/^[[:space:]]*Environment=\"\{0,1\}$1=\([^\" ]*\).*/\1/p" | tail -n1)
    fi
    printf '%s\n' "${value:-$2}"
}

ollama_address() {
    local host
    host=$(unit_env OLLAMA_HOST 127.0.0.1:11434)
    host=${host#http://}
    host=${host%/}
    case "$host" in
        0.0.0.0:* | :*) host=127.0.0.1:${host##*:} ;;
        *:*) ;;
        0.0.0.0 | "") host=127.0.0.1:11434 ;;
        *) host=$host:11434 ;;
    esac
    printf '%s\n' "$host"
}

daemon_reload() {
    if [ "$UNITS_CHANGED" = 1 ]; then
        if systemd_running || [ "$DRY_RUN" = 1 ]; then
            change "systemctl daemon-reload" systemctl daemon-reload
        fi
    fi
}

models_dir() {
    unit_env OLLAMA_MODELS "$OLLAMA_HOME/.ollama/models"
}

restore_models() {
    # Before Ollama (re)starts: its start-up prunes every blob no manifest references (FACTS §5).
    local models archive marker
    models=$(models_dir)
    if [ -d "$models" ]; then
        unchanged "models directory $models exists"
    else
        # Ollama's own ~/.ollama holds its key pair too: owned by ollama like the models.
        if [ "$models" = "$OLLAMA_HOME/.ollama/models" ] && [ ! -d "$OLLAMA_HOME/.ollama" ]; then
            change "create $OLLAMA_HOME/.ollama" \
                install -d -m 0755 -o ollama -g ollama "$OLLAMA_HOME/.ollama"
        fi
        change "create models directory $models" install -d -m 0755 -o ollama -g ollama "$models"
    fi
    for archive in "$BUNDLE"/models/store/*; do
        [ -f "$archive" ] || continue
        marker=$STATE_DIR/store-$(sha256_of "$archive").restored
        if [ -f "$marker" ]; then
            unchanged "models from $(basename "$archive") restored earlier"
            continue
        fi
        if [ "$DRY_RUN" = 1 ]; then
            change "restore models from $(basename "$archive") into $models" true
            continue
        fi
        change "restore models from $(basename "$archive") into $models" \
            "$VENV_DIR/bin/ollama-watchdog" models restore --models-dir "$models" "$archive"
        change "give $models to ollama" chown -R ollama:ollama "$models"
        OLLAMA_CHANGED=1
        install -d -m 0755 "$STATE_DIR"
        : >"$marker"
    done
}

enable_services() {
    local unit
    for unit in ollama.service ollama-watchdog.service; do
        if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            unchanged "$unit enabled"
        else
            change "enable $unit" systemctl enable "$unit"
        fi
    done
}

# start or restart a unit: start when inactive, restart when something it runs changed.
start_unit() {
    local unit=$1 changed=$2
    if ! systemctl is-active --quiet "$unit"; then
        change "start $unit" systemctl start "$unit"
    elif [ "$changed" = 1 ]; then
        change "restart $unit" systemctl restart "$unit"
    else
        unchanged "$unit active"
    fi
}

# Python, not curl: curl need not exist on the offline host, the venv's Python always does.
api_python() {
    "$VENV_DIR/bin/python" - "$@" <<'PYEOF'
import json
import sys
import time
import urllib.error
import urllib.request

command, address = sys.argv[1], sys.argv[2]
if command == "wait":
    deadline = time.monotonic() + float(sys.argv[3])
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/api/version", timeout=5) as resp:
                print(json.load(resp)["version"])
                sys.exit(0)
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                sys.exit(1)
            time.sleep(1)
elif command == "has-model":
    name = sys.argv[3]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    with urllib.request.urlopen(f"http://{address}/api/tags", timeout=10) as resp:
        names = {m.get("name") for m in json.load(resp).get("models", [])}
    sys.exit(0 if name in names else 1)
PYEOF
}

create_gguf_models() {
    local dir name id marker address
    address=$(ollama_address)
    for dir in "$BUNDLE"/models/gguf/*/; do
        [ -d "$dir" ] || continue
        dir=${dir%/}
        name=$(cat "$dir/name")
        id=$(grep -E "  models/gguf/$(basename "$dir")/" "$BUNDLE/SHA256SUMS" | sha256sum | cut -c1-64)
        marker=$STATE_DIR/gguf-$(printf '%s' "$name" | tr '/:' '__').sha256
        if [ "$DRY_RUN" = 0 ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$id" ] \
            && api_python has-model "$address" "$name"; then
            unchanged "model $name exists"
            continue
        fi
        if [ "$NO_START" = 1 ]; then
            log "skipped: model $name (ollama create needs the running server; run again without --no-start)"
            continue
        fi
        # Relative FROM ./model.gguf: the CLI resolves it against the working directory.
        change "create model $name (ollama create)" \
            env -C "$dir" OLLAMA_HOST="$address" "$BINDIR/ollama" create "$name" -f Modelfile
        if [ "$DRY_RUN" = 0 ]; then
            printf '%s\n' "$id" >"$marker"
        fi
    done
}

final_check() {
    local rc=0 tries=0
    if [ "$DRY_RUN" = 1 ] || [ "$NO_START" = 1 ]; then
        return 0
    fi
    # The server may still be settling after a restart: a few tries, then the verdict.
    while :; do
        rc=0
        "$VENV_DIR/bin/ollama-watchdog" check --config "$CONFIG" >"$TMP_OUT" 2>&1 || rc=$?
        [ "$LOG_TO_FILE" = 0 ] || cat "$TMP_OUT" >>"$LOG_FILE"
        if [ "$rc" -eq 0 ] || [ "$tries" -ge 10 ]; then
            break
        fi
        tries=$((tries + 1))
        sleep 3
    done
    case "$rc" in
        0) log "ok: ollama-watchdog check: $(tail -n1 "$TMP_OUT")" ;;
        1) log "warning: ollama-watchdog check: $(tail -n1 "$TMP_OUT")" ;;
        *) die "ollama-watchdog check failed (exit $rc): $(tail -n1 "$TMP_OUT")" ;;
    esac
}

start_services() {
    local address version
    enable_services
    if [ "$NO_START" = 1 ]; then
        log "skipped: starting services (--no-start, or systemd not running)"
        create_gguf_models
        return 0
    fi
    start_unit ollama.service "$OLLAMA_CHANGED"
    if [ "$DRY_RUN" = 0 ]; then
        address=$(ollama_address)
        version=$(api_python wait "$address" "$API_WAIT_S") \
            || die "Ollama did not answer on http://$address/api/version within ${API_WAIT_S}s (journalctl -u ollama)"
        log "ok: Ollama $version answers on $address"
    fi
    create_gguf_models
    start_unit ollama-watchdog.service "$WATCHDOG_CHANGED"
    final_check
}

# ---------------------------------------------------------------------------------------------
# Uninstall.

uninstall() {
    local unit path recorded
    [ "$(id -u)" = 0 ] || [ "$DRY_RUN" = 1 ] || die "run as root"
    for unit in $(systemctl list-units --all --plain --no-legend 'ollama-watchdog@*' 2>/dev/null \
        | awk '{print $1}') ollama-watchdog.service ollama.service; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then
            change "stop $unit" systemctl stop "$unit"
        fi
        if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            change "disable $unit" systemctl disable "$unit"
        fi
    done
    if [ -f "$FILES_DB" ]; then
        while IFS= read -r line; do
            recorded=${line:0:64}
            path=${line:66}
            [ -f "$path" ] || continue
            if [ "$PURGE" = 0 ] && [ "$(sha256_of "$path")" != "$recorded" ]; then
                log "kept: $path was edited locally (--purge removes it)"
                continue
            fi
            change "remove $path" rm -f "$path"
        done <"$FILES_DB"
    fi
    path=$UNIT_DIR/ollama.service.d
    if [ -d "$path" ] && [ -z "$(ls -A "$path")" ]; then
        change "remove empty $path" rmdir "$path"
    fi
    for path in "$BINDIR/ollama" "$LIBDIR" "$(dirname "$VENV_DIR")" "$SHARE_DIR"; do
        if [ -e "$path" ]; then
            change "remove $path" rm -rf "$path"
        fi
    done
    if systemd_running; then
        change "systemctl daemon-reload" systemctl daemon-reload
    fi
    if [ "$PURGE" = 1 ]; then
        for path in "$OLLAMA_HOME" "$ETC_DIR" "$WATCHDOG_STATE_DIR" "$STATE_DIR"; do
            if [ -e "$path" ]; then
                change "remove $path" rm -rf "$path"
            fi
        done
        for unit in ollama-watchdog ollama; do
            if getent passwd "$unit" >/dev/null; then
                change "remove user $unit" userdel "$unit"
            fi
            if getent group "$unit" >/dev/null; then
                change "remove group $unit" groupdel "$unit"
            fi
        done
    else
        if [ -f "$STATE_DIR/ollama-bundle.sha256" ] && [ "$DRY_RUN" = 0 ]; then
            rm -f "$STATE_DIR"/ollama-bundle.sha256 "$STATE_DIR"/gguf-*.sha256
        fi
        log "kept: models in $OLLAMA_HOME, users ollama and ollama-watchdog, $ETC_DIR (--purge removes them)"
    fi
}

# ---------------------------------------------------------------------------------------------

main() {
    local mode=install
    TMP_OUT=$(mktemp)
    BUNDLE=$(cd "$(dirname "$0")" && pwd)
    NO_START=0
    PURGE=0
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --bundle)
                [ "$#" -ge 2 ] || { usage >&2; exit 2; }
                BUNDLE=$2
                shift 2
                ;;
            --dry-run) DRY_RUN=1; shift ;;
            --no-start) NO_START=1; shift ;;
            --verify) mode=verify; shift ;;
            --runbook-url)
                [ "$#" -ge 2 ] || { usage >&2; exit 2; }
                RUNBOOK_URL=${2%/}
                shift 2
                [[ "$RUNBOOK_URL" =~ $URL_RE ]] || {
                    printf '%s: --runbook-url must be an http:// or https:// URL without spaces, quotes, "|", "&" or "#" (got %s)\n' "$PROG" "$RUNBOOK_URL" >&2
                    exit 2
                }
                ;;
            --uninstall) mode=uninstall; shift ;;
            --purge) PURGE=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; printf '%s: unknown option: %s\n' "$PROG" "$1" >&2; exit 2 ;;
        esac
    done
    [ "$PURGE" = 0 ] || [ "$mode" = uninstall ] || { echo "$PROG: --purge goes with --uninstall" >&2; exit 2; }
    # The log file is the one thing written before verification: it records refusals too.
    if [ "$DRY_RUN" = 0 ] && [ "$mode" != verify ] && { : >>"$LOG_FILE"; } 2>/dev/null; then
        LOG_TO_FILE=1
    fi
    log "$PROG $mode started (dry run: $([ "$DRY_RUN" = 1 ] && echo yes || echo no), bundle: $BUNDLE)"
    case "$mode" in
        verify)
            [ -d "$BUNDLE" ] || die "bundle directory not found: $BUNDLE"
            BUNDLE=$(cd "$BUNDLE" && pwd)
            verify_bundle
            return 0
            ;;
        uninstall)
            uninstall
            log "done: uninstall, $CHANGES changes$([ "$DRY_RUN" = 1 ] && echo ' (dry run: none made)')"
            return 0
            ;;
    esac
    [ -d "$BUNDLE" ] || die "bundle directory not found: $BUNDLE"
    BUNDLE=$(cd "$BUNDLE" && pwd)
    verify_bundle
    preflight
    install_ollama
    create_users
    install_watchdog
    install_assets
    daemon_reload
    restore_models
    start_services
    log "done: $CHANGES changes$([ "$DRY_RUN" = 1 ] && echo ' (dry run: none made)')"
}

main "$@"
