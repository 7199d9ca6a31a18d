"""``ollama-watchdog models verify|backup|restore``: CLI glue over :mod:`ollama_watchdog.store`.

Parses the subcommands, runs the store operation and turns its report or error into the lines
and exit code an operator sees (0 done or sound, 1 problems or refused). ``restore`` also warns
when an Ollama server is running, found by the shared argv rule in ``/proc``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ollama_watchdog.ollama.processes import classify_argv
from ollama_watchdog.store import ModelStore, RestoreRefused, StoreError
from ollama_watchdog.store.backup import backup_store
from ollama_watchdog.store.progress import human_bytes
from ollama_watchdog.store.restore import restore_store
from ollama_watchdog.store.verify import VerifyReport, default_jobs, verify_store

if TYPE_CHECKING:
    from ollama_watchdog.config import Config


def running_ollama_servers(proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of running Ollama servers (the team's rule, ``classify_argv``), from ``proc_root``."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for entry in proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # exited meanwhile, or not ours to read
            argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
            if classify_argv(argv) == "server":
                pids.append(int(entry.name))
    return sorted(pids)


def add_arguments(
    parser: argparse.ArgumentParser,
    add_config: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Add the ``verify``, ``backup`` and ``restore`` subcommands to the ``models`` parser.

    ``add_config`` adds ``--config`` to each subcommand too, so ``models verify --config F``
    works as well as ``models --config F verify``.
    """
    sub = parser.add_subparsers(dest="models_command", metavar="{verify,backup,restore}")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        if add_config is not None:
            add_config(p)
        p.add_argument(
            "--models-dir",
            type=Path,
            default=None,
            help="Ollama's models directory (default: [ollama] models_dir)",
        )

    verify = sub.add_parser(
        "verify",
        help="hash every referenced blob; exit 1 when a blob is missing or corrupt",
        description="Hash every blob referenced by every manifest and report missing, corrupt "
        "and unreferenced blobs. Exit 0 when sound, 1 when problems were found.",
    )
    common(verify)
    verify.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"blobs hashed in parallel (default {default_jobs()})",
    )
    backup = sub.add_parser(
        "backup",
        help="write models and only the blobs they reference to a tar (zstd with .zst)",
        description="Back up the named models (all when none) into a tar archive with a digest "
        "index. A name ending in .zst or .tzst (or --zstd) compresses with zstd.",
    )
    common(backup)
    backup.add_argument("--output", "-o", type=Path, required=True, help="archive to write")
    backup.add_argument(
        "--zstd", action=argparse.BooleanOptionalAction, default=None, help="compress with zstd"
    )
    backup.add_argument("models", nargs="*", metavar="MODEL", help="model[:tag] (default: all)")
    restore = sub.add_parser(
        "restore",
        help="verify an archive, then place its blobs and manifests atomically",
        description="Check every digest in the archive before placing anything; never replaces "
        "an existing differing file. Exit 0 restored, 1 refused.",
    )
    common(restore)
    restore.add_argument("archive", type=Path, metavar="FILE", help="archive from `models backup`")


def main(args: argparse.Namespace, config: Config) -> int:
    """Run ``models verify|backup|restore``; returns the exit code."""
    models_dir: Path = args.models_dir or config.ollama.models_dir
    store = ModelStore(models_dir)
    out, err = sys.stdout, sys.stderr
    try:
        if args.models_command == "verify":
            if not store.manifests_dir.is_dir():
                print(f"no manifests directory in {models_dir}", file=err)
                return 1
            report = verify_store(store, jobs=args.jobs)
            return _print_verify(report, out)
        if args.models_command == "backup":
            result = backup_store(store, args.output, args.models, zstd=args.zstd)
            kind = "tar.zst" if result.compressed else "tar"
            print(
                f"backed up {len(result.models)} models, {result.blobs} blobs "
                f"({human_bytes(result.bytes)}) to {result.output} ({kind})",
                file=out,
            )
            return 0
        if args.models_command == "restore":
            for pid in running_ollama_servers():
                print(
                    f"warning: ollama is running (pid {pid}); restart it after the restore so it "
                    "lists the models, and not during it: at start-up it deletes blobs no "
                    "manifest references yet",
                    file=err,
                )
            restored = restore_store(store, args.archive)
            print(
                f"restored {len(restored.models)} models: {restored.blobs_placed} blobs placed "
                f"({human_bytes(restored.bytes_placed)}), {restored.blobs_present} already "
                f"present; {restored.manifests_placed} manifests placed, "
                f"{restored.manifests_present} already present",
                file=out,
            )
            return 0
    except RestoreRefused as exc:
        print(f"restore refused: {exc}", file=err)
        return 1
    except StoreError as exc:
        print(f"error: {exc}", file=err)
        return 1
    raise AssertionError(f"unknown models command {args.models_command!r}")


def _print_verify(report: VerifyReport, out: IO[str]) -> int:
    for bad in report.bad_manifests:
        print(f"bad manifest {bad.relpath}: {bad.error}", file=out)
    for problem in report.problems:
        print(problem.line(), file=out)
    missing, corrupt = len(report.of_kind("missing")), len(report.of_kind("corrupt"))
    unreferenced = len(report.of_kind("unreferenced"))
    summary = (
        f"{report.models} models, {report.blobs_checked} blobs, "
        f"{human_bytes(report.bytes_hashed)} hashed: {missing} missing, {corrupt} corrupt, "
        f"{unreferenced} unreferenced"
    )
    if report.bad_manifests:
        summary += f", {len(report.bad_manifests)} bad manifests"
    print(("OK: " if report.sound else "PROBLEMS: ") + summary, file=out)
    return 0 if report.sound else 1


__all__ = ["add_arguments", "main", "running_ollama_servers"]
