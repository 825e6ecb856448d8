"""`sam3v`: the command line. Commands import the data plane lazily, so `pipeline` stays light."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.core.errors import InputError, Sam3vError

app = typer.Typer(
    help="SAM 3 video segmentation at batch scale: find every instance of a text concept in a video, "
    "track each with a stable id, and write an overlay video, a mask video and per-frame COCO RLE masks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Manage models (build the tiny test model).", no_args_is_help=True)
app.add_typer(model_app, name="model")

err_console = Console(stderr=True)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn known errors into one line on stderr and an exit code; no traceback for the user."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Sam3vError as err:
            _fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:  # an internal error: say so, keep the traceback for SAM3V_DEBUG=1
            if os.environ.get("SAM3V_DEBUG"):
                raise
            _fail(f"internal error: {type(err).__name__}: {err} (set SAM3V_DEBUG=1 for a traceback)", 1)

    return wrapper


def _parse_outputs(value: Optional[str]) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise InputError("--outputs: give at least one of overlay, mask, rle")
    return items


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:.1f} frames/s"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=err_console, transient=False,
    )


@app.command()
@user_errors
def segment(
    video: Annotated[Path, typer.Argument(help="Input video file.")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Text concept to find; repeat for several.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created if missing).")],
    model: Annotated[str, typer.Option(help="Model directory (save_pretrained layout) or Hugging Face id.",
                                       envvar="SAM3V_MODEL")] = "facebook/sam3",
    apply_mask: Annotated[bool, typer.Option("--apply-mask/--no-apply-mask",
                                             help="Overlay colored masks on the video (default) or write the "
                                                  "white-on-black mask video.")] = True,
    outputs: Annotated[Optional[str], typer.Option(help="Comma-separated set of overlay, mask, rle. "
                                                        "Default: the one --apply-mask picks. masks.json is always written.")] = None,
    start_frame: Annotated[int, typer.Option(
        help="First frame to process (0-based index in the video). The output videos cover only the "
             "processed frames, starting at 0 s, with the audio cut to match; masks.json keeps the source's "
             "frame numbers and times.")] = 0,
    max_frames: Annotated[Optional[int], typer.Option(help="Process at most this many frames (from --start-frame).")] = None,
    chunk_frames: Annotated[Optional[int], typer.Option(
        help="Run the video as chunks of this many frames, carrying tracker memory from chunk to chunk "
             "through the state codec (as distributed workers do). 0 or absent: one chunk. "
             "Results are identical either way.")] = None,
    device: Annotated[str, typer.Option(help="auto (cuda when present), cpu or cuda.")] = "auto",
    mask_opacity: Annotated[float, typer.Option(help="Overlay opacity, 0-1.")] = 0.5,
    detection_threshold: Annotated[Optional[float], typer.Option(
        help="Detection score threshold, 0-1: detections scoring below it are dropped. The score a detection "
             "needs to start a new object moves with it (SAM 3: 0.5 and 0.7). Lower finds more, higher "
             "fewer. Default: the model's own.")] = None,
) -> None:
    """Segment one video: masks.json plus overlay.mp4 and/or mask.mp4 in --out."""
    if not video.exists():
        raise InputError(f"no such file: {video}")
    if video.is_dir():
        raise InputError(f"{video} is a directory, not a video file")
    from pipeline.core.storage import LocalStorage
    from workers.model import load_model
    from workers.segment import SegmentOptions, segment_video

    opts = SegmentOptions(prompts=prompt, apply_mask=apply_mask, outputs=_parse_outputs(outputs),
                          max_frames=max_frames, chunk_frames=chunk_frames, mask_opacity=mask_opacity,
                          start_frame=start_frame, detection_threshold=detection_threshold)
    opts.validate()  # reject bad options before loading anything
    loaded = load_model(model, device)
    if loaded.is_tiny:
        err_console.print("[yellow]warning:[/] tiny random test model: its masks are meaningless")
    with _progress() as bar:
        task = bar.add_task(video.name, total=None, fps=0.0)

        def report(done: int, total: Optional[int]) -> None:
            elapsed = bar.tasks[0].elapsed or 0.0
            bar.update(task, completed=done, total=total, fps=done / elapsed if elapsed else 0.0)

        result = segment_video(video, loaded, opts, LocalStorage(out), progress=report)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    t = result.timings
    err_console.print(
        f"{result.num_frames} frames, {result.num_objects} objects, {result.num_chunks} chunk(s); decoder {result.decoder}, "
        f"encoder {result.encoder}; busy s: decode {t['decode']:.1f} model {t['model']:.1f} "
        f"render {t['render']:.1f} state {t['state']:.1f} mux {t['mux']:.1f}, wall {t['wall']:.1f}"
    )
    for name, uri in result.outputs.items():
        typer.echo(f"{name}: {uri}")


@model_app.command("tiny")
@user_errors
def model_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to save the model (save_pretrained layout).")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Save a tiny randomly initialised SAM 3 video model. Its masks are MEANINGLESS: tests and demos only."""
    from workers.tiny_model import TINY_WARNING, save_tiny_model

    path = save_tiny_model(directory, seed)
    err_console.print(f"[yellow]warning:[/] {TINY_WARNING}")
    typer.echo(str(path))


from sam3v.cli import api as cli_api, jobs as cli_jobs  # noqa: E402  (register their commands on `app`)

cli_jobs.register(app, user_errors)
cli_jobs.register_schedules(app, user_errors)
cli_api.register_api(app, user_errors)


def main() -> None:  # pragma: no cover - console entry
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The in-process broker has no host name; kombu warns about it on every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
