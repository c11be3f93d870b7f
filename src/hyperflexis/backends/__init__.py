"""Where instance processes run: `local` (processes on this host), the worker inside each
(`worker`: the engine loop driven by commands) and what crosses between them (`messages`). The
server uses backends; nothing here imports the server."""
