"""What Ollama speaks, in one place.

* ``api``: the typed HTTP client; every failure classified at the boundary (``ProbeReason``).
* ``routes``: the fixed route set (request metrics label by it; the simulator serves it).
* ``logparse``: pure, one log line in, one event out (gin, slog, runner output, timings).
* ``env``: the environment variables and Modelfile parameters Ollama really reads.
* ``names``: model names and manifests <-> blobs, the one reader of the store's layout.
* ``processes``: which process is the server and which a runner, by its argv.
"""
