"""Command line: ``ollama-watchdog run|check|doctor|models|maintenance|simulate|demo``.

Configuration problems exit with 78 (EX_CONFIG) and one line on stderr that names the key and the
fix, before anything is started; ``check``, a monitoring plugin, prints them as its
``OLLAMA UNKNOWN`` line and exits 3 instead.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

from ollama_watchdog import __version__
from ollama_watchdog.config import DEFAULT_CONFIG_PATH, EX_CONFIG, Config, ConfigError, load_config


def _add_config(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--config FILE``; ``nested`` for a sub-subcommand (``models verify --config F``), whose
    default must not overwrite a ``--config`` given before the sub-subcommand."""
    p.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS if nested else None,
        help=f"TOML config file; it must exist (without --config: {DEFAULT_CONFIG_PATH}, "
        "where a missing file means defaults)",
    )


def build_parser() -> argparse.ArgumentParser:
    from ollama_watchdog import simulator
    from ollama_watchdog.commands import check, doctor, maintenance, models

    parser = argparse.ArgumentParser(
        prog="ollama-watchdog",
        description="Prometheus exporter and restart watchdog for Ollama.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon (exporter + watchdog)")
    _add_config(run)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="decide, log and count restarts but do not run the restart command",
    )

    p = sub.add_parser("check", help="one probe round now; Nagios exit codes 0/1/2/3")
    _add_config(p)
    check.add_arguments(p)

    p = sub.add_parser("doctor", help="the troubleshooting checklist, each item with a fix")
    _add_config(p)
    doctor.add_arguments(p)

    p = sub.add_parser("models", help="verify, back up or restore Ollama's model store")
    _add_config(p)
    models.add_arguments(p, lambda sp: _add_config(sp, nested=True))

    p = sub.add_parser(
        "maintenance", help="on [--for D] [--reason T] | off | status: hands off Ollama"
    )
    _add_config(p)
    maintenance.add_arguments(p)

    p = sub.add_parser("simulate", help="run the Ollama simulator (a test double of Ollama)")
    simulator.add_arguments(p)

    p = sub.add_parser(
        "demo", help="simulator + daemon together; a live status line, --tour of four faults"
    )
    from ollama_watchdog.commands import demo

    demo.add_arguments(p)
    return parser


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        if args.command == "check":
            # a monitoring plugin: the state line on stdout and exit 3, not a sysexits code
            from ollama_watchdog.commands.check import config_error_line

            print(config_error_line(exc), file=sys.stdout)
            raise SystemExit(3) from None
        print(f"ollama-watchdog: config error: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def _deep_model_refusal(config: Config) -> str | None:
    """An embedding-only ``deep_model`` is a config error, when Ollama can tell us now; if it
    cannot (down at start), the deep probe checks on first contact and disables itself."""
    if not config.probe.deep_model:
        return None
    from ollama_watchdog.collectors.probe import generation_refusal
    from ollama_watchdog.ollama.api import OllamaClient, ProbeError

    client = OllamaClient(config.ollama.url, min(config.ollama.timeout, 3.0))
    try:
        caps = client.capabilities(config.probe.deep_model)
    except ProbeError:
        return None
    finally:
        client.close()
    return generation_refusal(config.probe.deep_model, caps)


def _run(args: argparse.Namespace) -> int:
    from ollama_watchdog.daemon import Daemon
    from ollama_watchdog.logging import configure_logging

    config = _load(args)
    refusal = _deep_model_refusal(config)
    if refusal is not None:
        print(f"ollama-watchdog: config error: {refusal}", file=sys.stderr)
        return EX_CONFIG
    configure_logging()
    try:
        daemon = Daemon(config, args.config, dry_run=args.dry_run)
    except ConfigError as exc:  # [fleet] prometheus_password_file is read when the view is built
        print(f"ollama-watchdog: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        daemon.prepare()
    except ConfigError as exc:  # web_config problems surface when the exporter is built
        print(f"ollama-watchdog: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        # the HAProxy agent's bind error carries its address as filename (Daemon.prepare)
        where = str(exc.filename) if exc.filename else config.exporter.listen
        key = "[fleet] agent_listen" if exc.filename else "[exporter] listen"
        if exc.errno == errno.EADDRINUSE:
            print(
                f"ollama-watchdog: cannot listen on {where}: address already in "
                f"use; stop the other process or set {key} to a free port",
                file=sys.stderr,
            )
        else:
            print(f"ollama-watchdog: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 1
    daemon.install_signal_handlers()
    return daemon.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "simulate":
        from ollama_watchdog import simulator

        return simulator.main(args)
    if args.command == "demo":
        from ollama_watchdog.commands.demo import run_demo

        return run_demo(args)
    config = _load(args)
    if args.command == "check":
        from ollama_watchdog.commands import check

        return check.main(args, config)
    if args.command == "doctor":
        from ollama_watchdog.commands import doctor

        return doctor.main(args, config)
    if args.command == "models":
        from ollama_watchdog.commands import models

        return models.main(args, config)
    if args.command == "maintenance":
        from ollama_watchdog.commands import maintenance

        return maintenance.main(args, config)
    parser.error(f"unknown command {args.command}")
    return 2


__all__ = ["build_parser", "main"]
