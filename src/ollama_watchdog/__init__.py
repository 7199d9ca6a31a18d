"""ollama-watchdog: Prometheus exporter and restart watchdog for Ollama."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ollama-watchdog")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
