"""The healing side: deciding and acting, kept apart.

* ``policy``: the pure state machine, signals and time in, decisions out (no I/O, no threads).
* ``actions``: what it can do to Ollama (today: restart the server), each bounded, never raising.
* ``watchdog``: binds the two to the daemon: one structured log event per decision, the
  "Watchdog itself" metric families, the action on a worker thread.

Signals come from the collectors through one queue (``ollama_watchdog.signals``).
"""
