"""`sam3v segment`: one video, here and now, no broker or Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.core.errors import InputError
from sam3v.cli.common import (
    FrameBatchOption,
    ObjectBatchOption,
    err_console,
    progress_bar,
    user_errors,
)
from sam3v.cli.visual_flags import (
    BOX_FORM,
    EXEMPLAR_FORM,
    MASK_FORM,
    POINT_FORM,
    read_visual_flags,
)

app = typer.Typer()


def _parse_outputs(value: Optional[str]) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        from pipeline.core.specs import OUTPUT_NAMES

        raise InputError(f"--outputs: give at least one of {', '.join(OUTPUT_NAMES)}")
    return items


def _options(apply_mask, outputs, max_frames, chunk_frames, mask_opacity, start_frame, detection_threshold,
             overlay_style="fill", labels=False):
    """The spec's options from the flags, refused before the model loads."""
    from pipeline.core.specs import options_from_flags

    # The spec knows no "0: one chunk", so its message would be wrong for a negative value.
    if chunk_frames is not None and chunk_frames < 0:
        raise InputError(f"--chunk-frames {chunk_frames}: must be 0 (one chunk) or more")
    parsed_outputs = _parse_outputs(outputs)
    if not apply_mask and parsed_outputs and "overlay" in parsed_outputs:
        # --no-apply-mask asks for no overlay; writing one anyway would silently ignore it.
        raise InputError("--outputs overlay and --no-apply-mask contradict each other: drop --no-apply-mask, "
                         "or ask for --outputs mask")
    return options_from_flags(apply_mask=apply_mask, outputs=list(parsed_outputs) if parsed_outputs else None,
                              max_frames=max_frames, chunk_frames=chunk_frames or None, mask_opacity=mask_opacity,
                              start_frame=start_frame, detection_threshold=detection_threshold,
                              overlay_style=overlay_style, labels=labels)


def _check_prompt_count(prompts: list[str], visual, limit: int) -> None:
    """Refused before the model loads: each prompt and object costs model time on every frame, and
    the text encoder takes 32 tokens. ``visual``: the VisualFlags read."""
    from pipeline.core.prompt_tokens import prompt_problem
    from pipeline.core.specs import too_many_prompts
    from pipeline.core.visual_prompts import too_many

    if problem := too_many_prompts(len(prompts), limit):
        raise InputError(f"--prompt: {problem}")
    if problem := too_many(len(prompts), visual.objects, visual.exemplars, limit):
        flag = {"exemplars": "--exemplar", "objects": "--point/--box/--mask"}.get(problem[0], "--prompt")
        raise InputError(f"{flag}: {problem[1]}")
    for prompt in prompts:
        if prompt.strip() and (problem := prompt_problem(prompt.strip())):
            raise InputError(f"--prompt: {problem}")


def _spec(video: Path, prompts: list[str], visual, opts):
    """The request `sam3v segment` runs, as a job's would be: options, text and visual prompts."""
    from pipeline.core.specs import VideoSpec

    return VideoSpec(id="segment", video=str(video), prompts=[p.strip() for p in prompts], objects=visual.objects,
                     exemplars=visual.exemplars, **opts.model_dump())


def _print_summary(result) -> None:
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


@app.command()
@user_errors
def segment(
    video: Annotated[Path, typer.Argument(help="Input video file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created if missing).")],
    prompt: Annotated[Optional[list[str]], typer.Option(
        "--prompt", "-p", help="Text concept to find; repeat for several. Needed unless --point, --box or --mask "
                               "is given (--exemplar needs it).")] = None,
    point: Annotated[Optional[list[str]], typer.Option(
        metavar=POINT_FORM,
        help="A click on the object to track, on source frame FRAME at pixel X,Y of the displayed frame; LABEL 1 "
             "(default) includes the spot, 0 excludes it. Repeat for several; clicks with the same FRAME and @ID "
             "(or none) are one object, with a --box or --mask of the same FRAME and @ID too. "
             "E.g. --point 40:320,200 --point 40:300,260:0")] = None,
    box: Annotated[Optional[list[str]], typer.Option(
        metavar=BOX_FORM,
        help="A box around the object to track on source frame FRAME: X,Y its top-left corner, W,H its size, in "
             "pixels of the displayed frame (as bbox in masks.json). The same @ID on other frames refines the same "
             "object. E.g. --box 0:120,40,200,180@1")] = None,
    mask: Annotated[Optional[list[str]], typer.Option(
        metavar=MASK_FORM,
        help="The object to track as a PNG of the frame's size (any non-black pixel is the object) on source frame "
             "FRAME. E.g. --mask 0:dog.png@1")] = None,
    exemplar: Annotated[Optional[list[str]], typer.Option(
        metavar=EXEMPLAR_FORM,
        help="A box around an example of the --prompt concept on source frame FRAME, or with :neg around "
             "something that is not one; it sharpens --prompt on that frame and needs it. "
             "E.g. --exemplar 0:120,40,200,180")] = None,
    model: Annotated[str, typer.Option(help="Model directory (save_pretrained layout) or Hugging Face id.",
                                       envvar="SAM3V_MODEL")] = "facebook/sam3",
    apply_mask: Annotated[bool, typer.Option("--apply-mask/--no-apply-mask",
                                             help="Overlay colored masks on the video (default) or write the "
                                                  "white-on-black mask video.")] = True,
    outputs: Annotated[Optional[str], typer.Option(help="Comma-separated set of overlay, mask, rle, and the exports "
                                                        "coco, ytvis, davis, mot, objects (README, Formats). "
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
    overlay_style: Annotated[str, typer.Option(
        help="How the overlay draws each object: fill (translucent, the default), outline (its edge, opaque) "
             "or both.")] = "fill",
    labels: Annotated[bool, typer.Option("--labels/--no-labels",
                                         help="Write each object's id and prompt beside it on the overlay, "
                                              "in its colour.")] = False,
    frame_batch: FrameBatchOption = None,
    object_batch: ObjectBatchOption = None,
) -> None:
    """Segment one video: masks.json plus overlay.mp4 and/or mask.mp4 in --out."""
    if not video.exists():
        raise InputError(f"no such file: {video}")
    if video.is_dir():
        raise InputError(f"{video} is a directory, not a video file")
    opts = _options(apply_mask, outputs, max_frames, chunk_frames, mask_opacity, start_frame, detection_threshold,
                    overlay_style, labels)
    from pipeline.core.errors import FieldError
    from pipeline.core.settings import get_settings
    from sam3v.local_checks import check_prompts, check_segment

    settings = get_settings()
    prompt = prompt or []
    visual = read_visual_flags(point or [], box or [], mask or [], exemplar or [])
    check_prompts(prompt, bool(visual.objects), bool(visual.exemplars))
    _check_prompt_count(prompt, visual, settings.max_prompts)
    spec = _spec(video, prompt, visual, opts)
    try:
        check_segment(video, spec, model, device)  # before torch and the model load
    except FieldError as err:  # a visual prompt the video cannot hold: say which flag
        raise visual.flag_error(err) from None
    from pipeline.core.storage import LocalStorage
    from workers.chunks.video_steps import segment_video
    from workers.model.loading import load_model

    loaded = load_model(model, device, settings.torch_threads,
                        settings.object_batch if object_batch is None else object_batch)
    if loaded.is_tiny:
        err_console.print("[yellow]warning:[/] tiny random test model: its masks are meaningless")
    with progress_bar("{task.fields[fps]:.1f} frames/s") as bar:
        task = bar.add_task(video.name, total=None, fps=0.0)

        def report(done: int, total: Optional[int]) -> None:
            elapsed = bar.tasks[0].elapsed or 0.0
            bar.update(task, completed=done, total=total, fps=done / elapsed if elapsed else 0.0)

        # The spec is the options (a VideoOptions) with the visual prompts (spec.objects, spec.exemplars).
        result = segment_video(video, loaded, spec, prompt, LocalStorage(out), progress=report,
                               part_frames=settings.part_frames, decoder=settings.decoder,
                               frame_batch=frame_batch or settings.frame_batch, max_batch=settings.max_batch)
    _print_summary(result)
