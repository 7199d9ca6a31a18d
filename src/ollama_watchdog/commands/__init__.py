"""The operator's commands besides ``run``: CLI glue over the rest of the package.

* ``check``: one probe round now, Nagios exit codes.
* ``doctor``: the troubleshooting checklist.
* ``demo``: the simulator and the daemon together.
* ``models``: ``models verify|backup|restore`` over ``ollama_watchdog.store``.
"""
