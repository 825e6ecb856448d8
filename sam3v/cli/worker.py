"""Long-running processes of a deployment: the Celery worker, the scheduler (beat) and Flower."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.core.errors import InputError
from sam3v.cli.common import ObjectBatchOption, schedules_app, user_errors

app = typer.Typer()


def _settings_with_broker(why: str):
    """The environment's settings; ``why`` tells the user what the missing broker is needed for."""
    from pipeline.core.settings import get_settings

    settings = get_settings()
    if not settings.broker_url:
        raise InputError(f"SAM3V_BROKER_URL is not set: {why}")
    return settings


@app.command()
@user_errors
def worker(
    queues: Annotated[str, typer.Option(
        help="Queues to consume, of gpu, cpu and the HTTP API's interactive-gpu, interactive-cpu "
             "(read interactive first). Default: all four.")] = "interactive-gpu,interactive-cpu,gpu,cpu",
    concurrency: Annotated[int, typer.Option(help="Processes (one per GPU for the gpu queue).")] = 1,
    max_tasks_per_child: Annotated[int, typer.Option(help="Recycle a process after this many tasks.")] = 200,
    loglevel: Annotated[str, typer.Option("--log-level", "--loglevel", help="Celery log level.")] = "INFO",
    hostname: Annotated[Optional[str], typer.Option(help="Celery node name.")] = None,
    streams: Annotated[Optional[int], typer.Option(
        min=1, max=64, help="Chunks run at once in one process around one model (K), their detector frames batched "
                            "together. Above 1: one process with a threads pool of K (use one worker per GPU). "
                            "Default SAM3V_STREAMS, else 2 with CUDA, 1 on CPU.")] = None,
    frame_batch: Annotated[Optional[int], typer.Option(
        min=1, max=64, help="Frames per batched detector call (B) of the videos this worker plans; recorded per "
                            "video, so all its chunks share it. Default SAM3V_FRAME_BATCH (8).")] = None,
    object_batch: ObjectBatchOption = None,
) -> None:
    """Start a Celery worker. With one stream: prefork; the model loads once per process, in the child,
    before it takes a task (a new process has SAM3V_WORKER_START_TIMEOUT to get ready). With K streams:
    one process, K threads, the model loaded once before the worker takes a task; the engine batches
    the streams' detector frames and enforces each chunk's time limit itself."""
    settings = _settings_with_broker("a worker needs a broker (redis://... or amqp://...)")
    if frame_batch:
        settings = settings.model_copy(update={"frame_batch": frame_batch})
    if object_batch is not None:
        settings = settings.model_copy(update={"object_batch": object_batch})
    from sam3v.worker_start import start_checks
    from workers.jobs import service
    from workers.jobs.app import worker_app

    started = start_checks(settings, queues, concurrency, hostname)  # refuses to start naming the setting
    k = _streams(streams or settings.streams, started.runs_model)
    if k > 1 and concurrency != 1:
        raise InputError(f"--streams {k} runs one process with {k} threads: leave --concurrency at 1 "
                         "(start one worker per GPU)")
    celery_app = worker_app(settings, preload_model=started.runs_model and k == 1)
    pool = ["-P", "threads", "-c", str(k)] if k > 1 else ["-P", "prefork", "-c", str(concurrency),
                                                          "--max-tasks-per-child", str(max_tasks_per_child)]
    argv = ["worker", "-Q", ",".join(started.queues), *pool, "-E", "--loglevel", loglevel]
    if hostname:
        argv += ["-n", hostname]
    service.begin(settings, started.record)
    try:
        if started.runs_model and k == 1:  # prefork: consume once a child has loaded the weights
            celery_app.steps["consumer"].add(service.ReadyGate)
        # A threads pool has no worker_process_init: its one model loads here, before Celery starts.
        if not started.runs_model or k == 1 or _load_model_here(settings):
            celery_app.worker_main(argv)
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = 0
    finally:
        started.stop.set()
        reason = service.end()
    if reason is not None:  # a supervisor restarts the worker or alerts; the log says why
        typer.echo(f"error: worker out of service: {reason}", err=True)
        raise SystemExit(service.EXIT_OUT_OF_SERVICE)
    raise SystemExit(code)


def _load_model_here(settings) -> bool:
    """A threads pool's one model; False (the worker out of service, saying why) if it cannot load."""
    from workers.jobs import service
    from workers.jobs.blame import worker_fault
    from workers.jobs.context import model

    try:
        model()
        return True
    except Exception as err:
        service.record_fault(worker_fault(err, settings.model) or f"SAM3V_MODEL={settings.model}: {err}")
        return False


def _streams(asked: int | None, runs_model: bool) -> int:
    """K: as asked, else 2 on a machine with CUDA (not yet measured on a GPU), else 1."""
    if asked:
        return asked
    if not runs_model:
        return 1
    import torch

    return 2 if torch.cuda.is_available() else 1


@app.command()
@user_errors
def beat(loglevel: Annotated[str, typer.Option("--log-level", "--loglevel", help="Log level.")] = "INFO") -> None:
    """Run the scheduler (celery beat with RedBeat; several may run, one holds the lock)."""
    from pipeline.control.schedules import HeartbeatScheduler

    schedules_app().start(["beat", "-S", f"{HeartbeatScheduler.__module__}:{HeartbeatScheduler.__name__}",
                           "--loglevel", loglevel])


@app.command()
@user_errors
def flower(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 5555,
    address: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    basic_auth: Annotated[Optional[str], typer.Option(
        envvar="FLOWER_BASIC_AUTH", show_envvar=False,
        help="user:password for the UI and API (better from the environment, FLOWER_BASIC_AUTH: an option is "
             "visible in ps). Without it (and without FLOWER_UNAUTHENTICATED_API=true on a loopback address) a "
             "password is generated and printed once.")] = None,
    state: Annotated[Path, typer.Option(help="Flower's state file (--persistent): task history survives a "
                                             "restart.")] = Path("flower.db"),
    generate_password: Annotated[bool, typer.Option(
        help="Generate a password when none is set (without one, Flower's API answers 401).")] = True,
) -> None:
    """Flower, the Celery monitor, against the configured broker (workers send events, -E). The
    broker URL and the credentials reach Flower through its environment, never its command line."""
    from sam3v.flower_launch import flower_launch

    _settings_with_broker("Flower watches a broker")
    launch = flower_launch(port, address, basic_auth, state.expanduser().absolute(), generate_password)
    for notice in launch.notices:
        typer.echo(notice, err=True)
    sys.stderr.flush()
    os.execve(sys.executable, launch.argv, launch.env)
