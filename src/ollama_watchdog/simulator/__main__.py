"""``python -m ollama_watchdog.simulator [options]``: run the simulator."""

from __future__ import annotations

import argparse
import sys

from ollama_watchdog.simulator import add_arguments, main


def run() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_watchdog.simulator",
        description="Simulate an Ollama server (API, logs, runner processes, faults).",
    )
    add_arguments(parser)
    return main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(run())
