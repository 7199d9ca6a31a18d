#!/usr/bin/env bash
# make-bundle.sh — the connected side of the offline installer.
#
# Gathers everything an air-gapped host needs into one directory (optionally one tarball):
# the Ollama release archive, a wheelhouse of ollama-watchdog and all its dependencies for the
# target Python and platform, our systemd units, polkit rule, logrotate config, dashboards and
# rules, the Alertmanager example, the docs (the runbook), optional models, and
# installer/install.sh. A SHA256SUMS manifest covers every file and
# bundle.json describes the contents. install.sh refuses the bundle if any file differs.
#
# Run `make-bundle.sh --help` for the options. Needs: bash, curl (for downloads), python3 with
# pip (for the wheelhouse), sha256sum, tar.
set -eu -o pipefail

PROG=make-bundle.sh
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

usage() {
    cat <<EOF
Usage: $PROG --output DIR [options]

Ollama:
  --ollama-version VER       Ollama release to fetch, e.g. 0.32.15 (recorded in bundle.json)
  --arch ARCH                amd64 | arm64 (default: this machine's)
  --ollama-archive FILE      use a local release file (.tar.zst, .tgz or bare binary) instead
                             of downloading; the format is detected from its magic bytes
  --ollama-url URL           download from this URL (an intranet mirror) instead of ollama.com
  --rocm                     also fetch the ROCm add-on archive (amd64, 0.3.7+)
  --ollama-extra-archive F   a local add-on archive extracted over the main one (repeatable)

Python (the wheelhouse):
  --python-version X.Y       target interpreter (default: 3.11, Debian 12)
  --glibc X.Y                target glibc for manylinux wheels (default: 2.36, Debian 12)
  --source DIR               ollama-watchdog source tree (default: $REPO_DIR)
  --python PY                python used to run pip here (default: python3)
  --wheelhouse DIR           take the wheels from DIR (made earlier, or from an internal
                             index) instead of building and downloading them; it must hold an
                             ollama_watchdog wheel and a pip wheel

Models (optional, repeatable):
  --gguf NAME=FILE           a GGUF file to create as model NAME on the target
  --modelfile NAME=FILE      its Modelfile (its FROM line is pointed at the bundled GGUF)
  --models-backup FILE       an archive made by 'ollama-watchdog models backup'
  --models-from DIR          back up the models store DIR now (all models, or --models-only)
  --models-only MODEL        with --models-from: only these models (repeatable)

Output:
  --output DIR               the bundle directory (must not exist or be empty)
  --tarball                  also write DIR.tar next to it
  -h, --help                 this text
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

# Progress goes to stderr: stdout of helpers is captured with $(...).
log() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

# Magic bytes decide the format; a file name can lie (and ollama.com's ?version= URLs have none).
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

is_gguf() {
    [ "$(head -c 4 "$1")" = "GGUF" ]
}

# Version comparison with sort -V: true when $1 < $2.
version_lt() {
    [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]
}

# The release file name follows the era (FACTS.md §4): bare binary up to 0.3.6, .tgz from 0.3.7,
# .tar.zst from 0.14.0.
release_asset() {
    local version=$1 arch=$2 suffix=${3:-}
    if version_lt "$version" 0.3.7; then
        echo "ollama-linux-${arch}${suffix}"
    elif version_lt "$version" 0.14.0; then
        echo "ollama-linux-${arch}${suffix}.tgz"
    else
        echo "ollama-linux-${arch}${suffix}.tar.zst"
    fi
}

# curl with timeouts: connect fast or fail, but allow a multi-GiB archive time to arrive; stall
# detection (--speed-limit/--speed-time) ends a hung transfer well before --max-time.
fetch_url() {
    local url=$1 dest=$2
    log "downloading $url"
    curl --fail --location --silent --show-error \
        --connect-timeout 30 --max-time 7200 --speed-limit 1024 --speed-time 120 \
        --retry 3 --retry-delay 5 \
        --output "$dest.part" "$url" && mv "$dest.part" "$dest"
}

fetch_release() {
    local version=$1 arch=$2 suffix=$3 dest_dir=$4 asset
    asset=$(release_asset "$version" "$arch" "$suffix")
    if [ -n "$OLLAMA_URL" ] && [ -z "$suffix" ]; then
        fetch_url "$OLLAMA_URL" "$dest_dir/$asset" && { echo "$dest_dir/$asset"; return 0; }
        die "download failed: $OLLAMA_URL"
    fi
    # ollama.com is what the official install.sh uses; GitHub releases is the fallback.
    if fetch_url "https://ollama.com/download/${asset}?version=${version}" "$dest_dir/$asset" \
        || fetch_url "https://github.com/ollama/ollama/releases/download/v${version}/${asset}" \
            "$dest_dir/$asset"; then
        echo "$dest_dir/$asset"
        return 0
    fi
    die "could not download $asset for Ollama $version from ollama.com or GitHub (offline? use --ollama-archive FILE)"
}

host_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) echo unsupported ;;
    esac
}

# ---------------------------------------------------------------------------------------------
OLLAMA_VERSION=""
ARCH=""
OLLAMA_ARCHIVE=""
OLLAMA_URL=""
ROCM=0
EXTRA_ARCHIVES=()
PY_VERSION=3.11
GLIBC=2.36
SOURCE=$REPO_DIR
PYTHON=python3
WHEELHOUSE=""
GGUFS=()
MODELFILES=()
BACKUPS=()
MODELS_FROM=""
MODELS_ONLY=()
OUTPUT=""
TARBALL=0

need_arg() {
    [ "$#" -ge 2 ] || die "$1 needs a value"
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --ollama-version) need_arg "$@"; OLLAMA_VERSION=${2#v}; shift 2 ;;
        --arch) need_arg "$@"; ARCH=$2; shift 2 ;;
        --ollama-archive) need_arg "$@"; OLLAMA_ARCHIVE=$2; shift 2 ;;
        --ollama-url) need_arg "$@"; OLLAMA_URL=$2; shift 2 ;;
        --rocm) ROCM=1; shift ;;
        --ollama-extra-archive) need_arg "$@"; EXTRA_ARCHIVES+=("$2"); shift 2 ;;
        --python-version) need_arg "$@"; PY_VERSION=$2; shift 2 ;;
        --glibc) need_arg "$@"; GLIBC=$2; shift 2 ;;
        --source) need_arg "$@"; SOURCE=$2; shift 2 ;;
        --python) need_arg "$@"; PYTHON=$2; shift 2 ;;
        --wheelhouse) need_arg "$@"; WHEELHOUSE=$2; shift 2 ;;
        --gguf) need_arg "$@"; GGUFS+=("$2"); shift 2 ;;
        --modelfile) need_arg "$@"; MODELFILES+=("$2"); shift 2 ;;
        --models-backup) need_arg "$@"; BACKUPS+=("$2"); shift 2 ;;
        --models-from) need_arg "$@"; MODELS_FROM=$2; shift 2 ;;
        --models-only) need_arg "$@"; MODELS_ONLY+=("$2"); shift 2 ;;
        --output) need_arg "$@"; OUTPUT=$2; shift 2 ;;
        --tarball) TARBALL=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ -n "$OUTPUT" ] || die "--output DIR is required"
[ -n "$ARCH" ] || ARCH=$(host_arch)
case "$ARCH" in
    amd64) PIP_ARCH=x86_64 ;;
    arm64) PIP_ARCH=aarch64 ;;
    *) die "unsupported architecture '$ARCH' (Ollama ships amd64 and arm64)" ;;
esac
[ -n "$OLLAMA_ARCHIVE" ] || [ -n "$OLLAMA_VERSION" ] \
    || die "give --ollama-version VER (to download) or --ollama-archive FILE"
[[ "$PY_VERSION" =~ ^3\.[0-9]+$ ]] || die "--python-version must look like 3.11"
[[ "$GLIBC" =~ ^2\.[0-9]+$ ]] || die "--glibc must look like 2.36"
[ -f "$SOURCE/pyproject.toml" ] || die "--source $SOURCE is not the ollama-watchdog source tree"
if [ -e "$OUTPUT" ] && [ -n "$(ls -A "$OUTPUT")" ]; then
    die "--output $OUTPUT exists and is not empty"
fi

# Validate every input before the (slow) downloads, so a typo fails in a second.
declare -A MODELFILE_OF=()
for spec in "${MODELFILES[@]+"${MODELFILES[@]}"}"; do
    [[ "$spec" == *=* ]] || die "--modelfile needs NAME=FILE, got '$spec'"
    MODELFILE_OF[${spec%%=*}]=${spec#*=}
    [ -f "${spec#*=}" ] || die "Modelfile not found: ${spec#*=}"
done
for spec in "${GGUFS[@]+"${GGUFS[@]}"}"; do
    [[ "$spec" == *=* ]] || die "--gguf needs NAME=FILE, got '$spec'"
    name=${spec%%=*} file=${spec#*=}
    [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._/:-]*$ ]] || die "invalid model name '$name'"
    [ -f "$file" ] || die "GGUF file not found: $file"
    is_gguf "$file" || die "$file is not a GGUF file (its first 4 bytes are not 'GGUF')"
done
for name in "${!MODELFILE_OF[@]}"; do
    printf '%s\n' "${GGUFS[@]+"${GGUFS[@]}"}" | grep -q "^${name}=" \
        || die "--modelfile $name has no matching --gguf $name=FILE"
done
for file in "${BACKUPS[@]+"${BACKUPS[@]}"}"; do
    [ -f "$file" ] || die "models backup not found: $file"
done
[ -z "$MODELS_FROM" ] || [ -d "$MODELS_FROM/manifests" ] \
    || die "--models-from $MODELS_FROM has no manifests/ directory (not an Ollama models store)"
if [ -n "$WHEELHOUSE" ]; then
    ls "$WHEELHOUSE"/ollama_watchdog-*.whl >/dev/null 2>&1 \
        || die "--wheelhouse $WHEELHOUSE has no ollama_watchdog wheel"
    ls "$WHEELHOUSE"/pip-*.whl >/dev/null 2>&1 || die "--wheelhouse $WHEELHOUSE has no pip wheel"
fi
[ -n "$OLLAMA_ARCHIVE" ] || command -v curl >/dev/null || die "curl is needed to download Ollama"

mkdir -p "$OUTPUT"
OUTPUT=$(cd "$OUTPUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUTPUT/ollama" "$OUTPUT/wheelhouse" "$OUTPUT/assets" "$OUTPUT/models/gguf" \
    "$OUTPUT/models/store"

# --- Ollama ----------------------------------------------------------------------------------
if [ -n "$OLLAMA_ARCHIVE" ]; then
    [ -f "$OLLAMA_ARCHIVE" ] || die "Ollama archive not found: $OLLAMA_ARCHIVE"
    src=$OLLAMA_ARCHIVE
else
    src=$(fetch_release "$OLLAMA_VERSION" "$ARCH" "" "$WORK")
fi
FORMAT=$(detect_format "$src")
case "$FORMAT" in
    tar.zst) main_name="ollama-linux-${ARCH}.tar.zst" ;;
    tgz) main_name="ollama-linux-${ARCH}.tgz" ;;
    binary) main_name="ollama-linux-${ARCH}" ;;
    *) die "$src is neither a .tar.zst, a .tgz nor an ELF binary (magic bytes unknown)" ;;
esac
if [ "$FORMAT" != binary ]; then
    # A release archive must carry bin/ollama; catching a wrong file here beats failing offline.
    case "$FORMAT" in
        tar.zst) lister=(tar --zstd -tf "$src") ;;
        tgz) lister=(tar -tzf "$src") ;;
    esac
    "${lister[@]}" | sed 's#^\./##' | grep -qx 'bin/ollama' \
        || die "$src has no bin/ollama entry: not an Ollama release archive"
fi
cp "$src" "$OUTPUT/ollama/$main_name"
log "ollama: $main_name ($FORMAT)"

extras=()
if [ "$ROCM" = 1 ]; then
    [ -n "$OLLAMA_VERSION" ] || die "--rocm needs --ollama-version"
    extras+=("$(fetch_release "$OLLAMA_VERSION" "$ARCH" -rocm "$WORK")")
fi
extras+=("${EXTRA_ARCHIVES[@]+"${EXTRA_ARCHIVES[@]}"}")
if [ "${#extras[@]}" -gt 0 ]; then
    mkdir -p "$OUTPUT/ollama/extra"
    i=0
    for extra in "${extras[@]}"; do
        [ -f "$extra" ] || die "extra archive not found: $extra"
        fmt=$(detect_format "$extra")
        case "$fmt" in
            tar.zst | tgz) ;;
            *) die "$extra is not a .tar.zst or .tgz archive" ;;
        esac
        i=$((i + 1))
        # A numeric prefix keeps the extraction order the order given here.
        cp "$extra" "$OUTPUT/ollama/extra/$(printf '%02d' "$i")-$(basename "$extra")"
    done
fi

# --- Wheelhouse ------------------------------------------------------------------------------
# Pass 1 builds our wheel and wheels for every dependency with the local interpreter: this turns
# sdist-only dependencies (pure Python) into wheels. Pass 2 resolves the same requirement for the
# target interpreter and platform, binary-only, taking pass 1's wheels where they fit.
if [ -n "$WHEELHOUSE" ]; then
    cp "$WHEELHOUSE"/*.whl "$OUTPUT/wheelhouse/"
    WATCHDOG_VERSION=$(find "$OUTPUT/wheelhouse" -name 'ollama_watchdog-*.whl' -printf '%f\n' \
        | sort -V | tail -n1 | cut -d- -f2)
else
    pip_quiet=(--disable-pip-version-check --no-input --quiet)
    log "building the ollama-watchdog wheel and its dependencies"
    "$PYTHON" -m pip wheel "${pip_quiet[@]}" --timeout 60 --wheel-dir "$WORK/pool" "$SOURCE" \
        || die "pip wheel failed for $SOURCE"
    our_wheel=$(find "$WORK/pool" -maxdepth 1 -name 'ollama_watchdog-*.whl' | head -n1)
    [ -n "$our_wheel" ] || die "pip did not produce an ollama_watchdog wheel"
    WATCHDOG_VERSION=$(basename "$our_wheel" | cut -d- -f2)

    platforms=()
    minor=${GLIBC#2.}
    for ((m = minor; m >= 5; m--)); do
        platforms+=(--platform "manylinux_2_${m}_${PIP_ARCH}")
    done
    # Wheels published with only the legacy tag names still fit (2014 = 2.17, 2010 = 2.12, 1 = 2.5).
    [ "$minor" -ge 17 ] && platforms+=(--platform "manylinux2014_${PIP_ARCH}")
    [ "$minor" -ge 12 ] && platforms+=(--platform "manylinux2010_${PIP_ARCH}")
    platforms+=(--platform "manylinux1_${PIP_ARCH}")
    log "resolving wheels for CPython $PY_VERSION, glibc $GLIBC, $PIP_ARCH"
    # pip itself travels along: install.sh runs it from its wheel, so the target needs no
    # python3-venv/ensurepip package.
    "$PYTHON" -m pip download "${pip_quiet[@]}" --timeout 60 --dest "$OUTPUT/wheelhouse" \
        --only-binary=:all: "${platforms[@]}" --python-version "$PY_VERSION" --implementation cp \
        --find-links "$WORK/pool" "ollama-watchdog==$WATCHDOG_VERSION" pip \
        || die "pip download failed: some dependency has no wheel for CPython $PY_VERSION/$PIP_ARCH"
    # Take our own wheel from this build, never a same-version one from an index.
    rm -f "$OUTPUT"/wheelhouse/ollama_watchdog-*.whl
    cp "$our_wheel" "$OUTPUT/wheelhouse/"
fi
log "wheelhouse: $(find "$OUTPUT/wheelhouse" -name '*.whl' | wc -l) wheels"

# --- Assets ----------------------------------------------------------------------------------
# Copied as they are in the repository; install.sh knows where each goes.
for asset in systemd logrotate grafana prometheus alertmanager docs; do
    if [ -d "$SOURCE/$asset" ]; then
        cp -R "$SOURCE/$asset" "$OUTPUT/assets/$asset"
    else
        log "warning: $SOURCE/$asset missing, not bundled"
    fi
done
[ -f "$SOURCE/config.example.toml" ] && cp "$SOURCE/config.example.toml" "$OUTPUT/assets/"
for required in systemd/ollama.service systemd/ollama-watchdog.service config.example.toml \
    docs/operations.md; do
    [ -f "$OUTPUT/assets/$required" ] || die "$SOURCE/$required is missing: cannot build a bundle"
done
cp "$SCRIPT_DIR/install.sh" "$OUTPUT/install.sh"
chmod 0755 "$OUTPUT/install.sh"
[ -f "$SCRIPT_DIR/README.md" ] && cp "$SCRIPT_DIR/README.md" "$OUTPUT/README.md"

# --- Models ----------------------------------------------------------------------------------
model_names=()
for spec in "${GGUFS[@]+"${GGUFS[@]}"}"; do
    name=${spec%%=*} file=${spec#*=}
    dir="$OUTPUT/models/gguf/$(printf '%s' "$name" | tr '/:' '__')"
    [ ! -e "$dir" ] || die "two --gguf entries map to the same directory: $name"
    mkdir -p "$dir"
    printf '%s\n' "$name" >"$dir/name"
    cp "$file" "$dir/model.gguf"
    if [ -n "${MODELFILE_OF[$name]+set}" ]; then
        # Point the first FROM at the bundled file; everything else in the Modelfile stays.
        awk 'BEGIN { done = 0 }
             !done && toupper($1) == "FROM" { print "FROM ./model.gguf"; done = 1; next }
             { print }
             END { if (!done) print "FROM ./model.gguf" }' \
            "${MODELFILE_OF[$name]}" >"$dir/Modelfile"
    else
        printf 'FROM ./model.gguf\n' >"$dir/Modelfile"
    fi
    model_names+=("$name")
done
for file in "${BACKUPS[@]+"${BACKUPS[@]}"}"; do
    cp "$file" "$OUTPUT/models/store/$(basename "$file")"
done
if [ -n "$MODELS_FROM" ]; then
    command -v ollama-watchdog >/dev/null \
        || die "--models-from needs the ollama-watchdog command on PATH (pip install ollama-watchdog)"
    log "backing up models from $MODELS_FROM"
    ollama-watchdog models backup --models-dir "$MODELS_FROM" \
        --output "$OUTPUT/models/store/models-from-store.tar" "${MODELS_ONLY[@]+"${MODELS_ONLY[@]}"}" \
        || die "ollama-watchdog models backup failed"
fi

# --- bundle.json and SHA256SUMS --------------------------------------------------------------
# Python writes the JSON so names with quotes or backslashes cannot break it.
BUNDLE_OLLAMA_VERSION=$OLLAMA_VERSION BUNDLE_ARCH=$ARCH BUNDLE_FORMAT=$FORMAT \
BUNDLE_MAIN=ollama/$main_name BUNDLE_WD_VERSION=$WATCHDOG_VERSION BUNDLE_PY=$PY_VERSION \
BUNDLE_GLIBC=$GLIBC BUNDLE_DIR=$OUTPUT \
    "$PYTHON" - "${model_names[@]+"${model_names[@]}"}" <<'PYEOF'
import datetime
import json
import os
import pathlib
import sys

out = pathlib.Path(os.environ["BUNDLE_DIR"])
env = os.environ
bundle = {
    "bundle_format": 1,
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "ollama": {
        "version": env["BUNDLE_OLLAMA_VERSION"] or None,
        "arch": env["BUNDLE_ARCH"],
        "format": env["BUNDLE_FORMAT"],
        "archive": env["BUNDLE_MAIN"],
        "extra_archives": sorted(
            str(p.relative_to(out)) for p in (out / "ollama" / "extra").glob("*") if p.is_file()
        ),
    },
    "watchdog": {
        "version": env["BUNDLE_WD_VERSION"],
        "python_version": env["BUNDLE_PY"],
        "glibc": env["BUNDLE_GLIBC"],
        "wheels": sorted(p.name for p in (out / "wheelhouse").glob("*.whl")),
    },
    "models": {
        "gguf": sys.argv[1:],
        "store_archives": sorted(p.name for p in (out / "models" / "store").iterdir()),
    },
}
(out / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")
PYEOF

(
    cd "$OUTPUT"
    # Every file, sorted, relative: install.sh also rejects files that are not listed here.
    find . -type f ! -path ./SHA256SUMS -printf '%P\n' | LC_ALL=C sort \
        | xargs -d '\n' sha256sum >"$WORK/SHA256SUMS"
)
mv "$WORK/SHA256SUMS" "$OUTPUT/SHA256SUMS"
chmod 0644 "$OUTPUT/SHA256SUMS"
log "wrote $OUTPUT ($(wc -l <"$OUTPUT/SHA256SUMS") files in SHA256SUMS)"

if [ "$TARBALL" = 1 ]; then
    # Uncompressed: the big members (Ollama archive, GGUF, wheels) are compressed already.
    tar -C "$(dirname "$OUTPUT")" -cf "$OUTPUT.tar" "$(basename "$OUTPUT")"
    log "wrote $OUTPUT.tar"
fi
