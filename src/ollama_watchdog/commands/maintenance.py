"""``ollama-watchdog maintenance on [--for 2h] [--reason TEXT] | off | status``.

Sets, clears or shows the maintenance mark in ``[logs] state_dir`` (``healing.maintenance``):
while it is in force the daemon does no remediation at all. The daemon picks a change up within
a second, without a restart. Exit status: 0 done (``status``: 0 with a mark in force, 1 without,
so scripts can test it), 73 when the mark cannot be written (the message names the fix), 78 on a
configuration error, 64 on a bad ``--for``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ollama_watchdog.config import Config, format_duration, human_duration, parse_duration
from ollama_watchdog.healing.maintenance import (
    DEFAULT_DURATION,
    MAX_DURATION,
    REASON_LIMIT,
    Mark,
    MarkError,
    clear_mark,
    mark_path,
    operator,
    read_mark,
    write_mark,
)
from ollama_watchdog.oneline import one_line

EX_USAGE = 64
EX_CANTCREAT = 73


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="maintenance_command", metavar="on|off|status", required=True)
    on = sub.add_parser("on", help="stop all remediation until the mark expires or is cleared")
    on.add_argument(
        "--for",
        dest="duration",
        default=format_duration(DEFAULT_DURATION),
        help=f"how long (default %(default)s, at most {format_duration(MAX_DURATION)})",
    )
    on.add_argument("--reason", default="", help="why, shown in logs and systemctl status")
    sub.add_parser("off", help="clear the mark: remediation resumes (after a start-up grace)")
    status = sub.add_parser("status", help="show the mark; exit 0 if one is in force, else 1")
    status.add_argument("--json", action="store_true", help="print JSON")
    for parser in sub.choices.values():
        # `maintenance on --config F` as well as `maintenance --config F on`
        parser.add_argument(
            "--config", type=Path, default=argparse.SUPPRESS,
            help="TOML config file (its [logs] state_dir holds the mark)",
        )  # fmt: skip


def main(args: argparse.Namespace, config: Config) -> int:
    state_dir = config.logs.state_dir
    now = time.time()
    try:
        if args.maintenance_command == "on":
            try:
                seconds = parse_duration(args.duration)
            except ValueError as exc:
                print(f"ollama-watchdog: --for {args.duration!r}: expected {exc}", file=sys.stderr)
                return EX_USAGE
            if not 0 < seconds <= MAX_DURATION:
                print(
                    f"ollama-watchdog: --for {args.duration}: must be more than 0 and at most "
                    f"{format_duration(MAX_DURATION)} (a mark always expires); set it again "
                    "to extend",
                    file=sys.stderr,
                )
                return EX_USAGE
            mark = Mark(now + seconds, one_line(args.reason, REASON_LIMIT), operator(), now)
            path = write_mark(state_dir, mark)
            until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(mark.until))
            print(f"maintenance on until {until} ({human_duration(seconds)}); mark {path}")
            return 0
        if args.maintenance_command == "off":
            had = clear_mark(state_dir)
            print("maintenance off" if had else "maintenance was not on")
            return 0
        current = read_mark(state_dir, now, remove_expired=False)
    except MarkError as exc:
        print(f"ollama-watchdog: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    if args.json:
        body: dict[str, object] = {
            "active": current is not None,
            "path": str(mark_path(state_dir)),
        }
        if current is not None:
            body.update(current.as_json())
        print(json.dumps(body, sort_keys=True))
    elif current is None:
        print("maintenance off")
    else:
        print(current.sentence(now))
    return 0 if current is not None else 1


__all__ = ["add_arguments", "main"]
