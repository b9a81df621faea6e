"""`alignatt serve`: one process loads the models once and serves many talks at a time over WebSocket.

- `session`: what one client asked for (language, preset, policy, latency unit), its cascade built around the
  shared models, and the text written so far with each unit's emission time.
- `scheduler`: one worker thread owns the models and steps every session whose next chunk is due, round robin.
- `server`: simulstream's WebSocket protocol, the web page over HTTP on the same port, the metrics log.
- `cli`: the flags (`alignatt serve --help`).

The engine's core never imports this package (setup.cfg's import-linter contracts).
"""
