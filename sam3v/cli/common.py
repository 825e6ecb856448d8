"""What every `sam3v` command shares: error reporting, consoles, progress bars, the control plane."""

from __future__ import annotations

import functools
import os
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.core.errors import InputError, Sam3vError

# Wider than any line we print: a log or a pipe must get whole lines (a job id cut to `2026…`, a
# path split in two are useless there); a terminal keeps its own width.
_NOT_A_TERMINAL_WIDTH = 100_000


# --frame-batch of the commands that run the model here (segment, run): one definition.
FrameBatchOption = Annotated[Optional[int], typer.Option(
    "--frame-batch", min=1, max=64, help="Frames per batched detector call (B); results do not depend on it. "
                                         "Default SAM3V_FRAME_BATCH (8).")]

# --object-batch/--no-object-batch of the commands that run the model (segment, run, worker): one definition.
ObjectBatchOption = Annotated[Optional[bool], typer.Option(
    "--object-batch/--no-object-batch", help="Track a frame's objects as batches (one pass per memory layout) "
                                             "or one at a time (transformers' loop); results do not depend on it. "
                                             "Default SAM3V_OBJECT_BATCH (on).")]


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, soft_wrap=True, width=_NOT_A_TERMINAL_WIDTH)


out_console = _console(stderr=False)
err_console = _console(stderr=True)


def is_terminal() -> bool:
    """Whether progress can be drawn live (stderr is a terminal); otherwise commands print lines."""
    return err_console.is_terminal


def fail(message: str, code: int) -> None:
    # The message is text, not markup: "[@ID]" or "[height, width]" would be read as a rich tag and
    # vanish, ":abc:" as an emoji code.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    raise typer.Exit(code)


def _debugging() -> bool:
    # A switch for whoever debugs the CLI, not a pipeline setting: it stays out of Settings.
    return bool(os.environ.get("SAM3V_DEBUG"))


def user_errors(fn):
    """Turn known errors into one line on stderr and an exit code; no traceback for the user."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Sam3vError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:  # an internal error: say so, keep the traceback for SAM3V_DEBUG=1
            if _debugging():
                raise
            if (hint := connection_hint(err)) is not None:
                fail(hint, 1)
            fail(f"internal error: {type(err).__name__}: {err} (set SAM3V_DEBUG=1 for a traceback)", 1)

    return wrapper


def connection_hint(err: BaseException) -> str | None:
    """A service out of reach, said with the setting that names it; None for any other error."""
    import redis
    from kombu.exceptions import OperationalError

    from pipeline.core.storage import StorageUnavailable

    if isinstance(err, redis.ConnectionError | redis.TimeoutError):
        return f"Redis unreachable: {err} (check {_redis_setting()})"
    if isinstance(err, OperationalError):
        return f"broker unreachable: {err} (check SAM3V_BROKER_URL)"
    if isinstance(err, StorageUnavailable) or type(err).__name__ in ("EndpointConnectionError", "ConnectTimeoutError"):
        return f"{err} (check SAM3V_STORAGE_URL and the S3 endpoint, AWS_ENDPOINT_URL)"
    return None


def _redis_setting() -> str:
    """The variable the Redis address came from: SAM3V_REDIS_URL when set, else the broker's."""
    # The names only: a URL may carry a password.
    if os.environ.get("SAM3V_REDIS_URL"):
        return "SAM3V_REDIS_URL"
    return "SAM3V_BROKER_URL, or SAM3V_REDIS_URL if Redis is elsewhere"


def progress_bar(detail: str) -> Progress:
    """A bar on stderr; ``detail`` is the column between the count and the times (a task field)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(detail),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console,
    )


def context():
    """(settings, Celery app, status store) of the control plane, from the environment."""
    from pipeline.core.celery_app import make_app
    from pipeline.core.redis_conn import connect
    from pipeline.core.settings import get_settings
    from pipeline.core.status import StatusStore

    settings = get_settings()
    return settings, make_app(settings), StatusStore(connect(settings))


def job_context(job: str):
    """``context()`` for a command about one job; a clear error when there is no such job."""
    settings, celery_app, store = context()
    if not store.job_exists(job):
        from sam3v.embedded_jobs import where_message

        raise InputError(where_message(settings, job) or (
            f"no such job: {job} (a job that ended is forgotten in Redis after SAM3V_JOB_RETENTION or by "
            f"`sam3v jobs prune`; its results stay in storage: {job}/results.jsonl under the workers' "
            "SAM3V_STORAGE_URL)"))
    return settings, celery_app, store


def schedules_app():
    """The control plane's Celery app with RedBeat configured (no data plane: beat runs in the control image)."""
    from pipeline.control import schedules
    from pipeline.core.celery_app import make_app
    from pipeline.core.settings import get_settings

    settings = get_settings()
    if not settings.effective_redis_url:
        raise InputError("schedules live in Redis: set SAM3V_REDIS_URL or a redis:// SAM3V_BROKER_URL")
    celery_app = make_app(settings)
    schedules.configure(celery_app, settings.effective_redis_url)
    return celery_app
