"""The OpenAI-compatible API server: HTTP front end, dispatch over instance processes, metrics.

`serve(ServerConfig(...))` runs it; `hyperflexis serve` is its command line. Importing this
package loads neither torch nor FastAPI; the modules that need them import them.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (streaming or not), `GET
/v1/models`, `GET /health`, `GET /metrics` (Prometheus text), `GET /debug/instances` (per
instance: running, waiting, KV blocks, dispatched), `GET /debug/stats` (open requests,
server overhead quantiles). With `--api-key`, the `/v1` routes and `/debug/*` need
`Authorization: Bearer KEY`; health stays open, and metrics too unless `--metrics-require-key`.
A body over `--max-request-bytes` is refused with 413.

Per-request SLO: body fields `slo_class`, `priority`, `ttft_ms`, `tpot_ms`, or the headers
`x-slo-class`, `x-priority`, `x-slo-ttft-ms`, `x-slo-tpot-ms` (the body wins). Every response
carries `x-slo-class` (the class applied) and `x-hyperflexis-server-overhead-ms` (the server's
own time for the request: body, parsing, tokenisation, SLO, dispatch; excludes the engine) and
`x-hyperflexis-instance` (the instance it was sent to).
"""

from hyperflexis.server.config import ServerConfig
from hyperflexis.server.serve import READY_LINE, serve

__all__ = ["READY_LINE", "ServerConfig", "serve"]
