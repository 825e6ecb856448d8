"""`sam3v api`: the HTTP API (uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from sam3v.cli.common import user_errors

app = typer.Typer()


def _interactive_warning(settings) -> str | None:
    """Checked once at start (GET /health reports it live)."""
    from pipeline.core.redis_conn import connect
    from pipeline.core.worker_registry import interactive_warning

    try:
        return interactive_warning(connect(settings))
    except Exception as err:  # Redis down: the API starts anyway; its routes report the outage
        return f"cannot check for workers ({type(err).__name__}: {err})"


@app.command()
@user_errors
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    workers: Annotated[int, typer.Option(min=1, help="API processes sharing the port (needs a broker: "
                                                      "SAM3V_BROKER_URL). One process holds 1,000 SSE "
                                                      "connections and ~1,000 polls/s.")] = 1,
    keep_alive: Annotated[int, typer.Option(help="Seconds an idle HTTP connection stays open. Longer than "
                                                 "a poller's pause (the documented loop sleeps 5 s), so it "
                                                 "is reused rather than raced against its close.")] = 75,
) -> None:
    """Serve the HTTP API (a drop-in for the hosted sam-3-video model; routes at /docs).

    Keys: SAM3V_API_KEYS (comma-separated) or SAM3V_API_KEYS_FILE (SHA-256 digests, one a line).
    Without SAM3V_BROKER_URL the API runs generations itself (embedded worker, local storage)."""
    import uvicorn

    from pipeline.core.settings import get_settings
    from sam3v.api.auth import load_key_digests

    if not load_key_digests():
        typer.echo("warning: no API keys (SAM3V_API_KEYS / SAM3V_API_KEYS_FILE): every request gets 401", err=True)
    settings = get_settings()
    if settings.broker_url and (problem := _interactive_warning(settings)):
        typer.echo(f"warning: {problem}", err=True)
    if workers > 1 and not settings.broker_url:
        raise typer.BadParameter("embedded mode (no SAM3V_BROKER_URL) runs the pipeline inside the API "
                                 "process: it needs --workers 1", param_hint="--workers")
    # An import string, so that each of several processes builds its own app.
    uvicorn.run("sam3v.api:create_app", factory=True, host=host, port=port, log_level=log_level,
                workers=workers, backlog=4096, timeout_keep_alive=keep_alive, timeout_graceful_shutdown=5)
