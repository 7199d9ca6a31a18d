"""The exporter: what Prometheus and balancers talk to.

* ``http``: ``/metrics`` (rendered from the ``SnapshotBoard``, never measured on the scrape
  path), ``/healthz`` and a landing page, on a thread of its own.
* ``webconfig``: exporter-toolkit style TLS and basic auth (bcrypt) from ``web_config``.
"""
