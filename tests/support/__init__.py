"""Shared test support: real-tool lookup, free ports, the simulator process."""
