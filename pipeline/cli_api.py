"""`sam3v api`: the HTTP API (uvicorn). Registered from pipeline/cli.py with ``register_api(app, user_errors)``."""

from __future__ import annotations

from typing import Annotated

import typer


def register_api(app: typer.Typer, user_errors) -> None:
    @app.command()
    @user_errors
    def api(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ) -> None:
        """Serve the HTTP API (a drop-in for the hosted sam-3-video model; routes at /docs).

        Keys: SAM3V_API_KEYS (comma-separated) or SAM3V_API_KEYS_FILE (SHA-256 digests, one a line).
        Without SAM3V_BROKER_URL the API runs generations itself (embedded worker, local storage)."""
        import uvicorn

        from pipeline.api import create_app
        from pipeline.api.auth import load_key_digests

        if not load_key_digests():
            typer.echo("warning: no API keys (SAM3V_API_KEYS / SAM3V_API_KEYS_FILE): every request gets 401", err=True)
        uvicorn.run(create_app(), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
