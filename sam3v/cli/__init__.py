"""`sam3v`: the command line, one sub-app per module merged into ``app``.

Commands import the data plane (``workers``, torch) inside their bodies, so `sam3v --help` and the
control-plane commands run in an image without torch."""

from __future__ import annotations

import logging

import typer

from sam3v.cli import api, export, jobs, model, report, run, schedule, segment, worker

app = typer.Typer(
    help="SAM 3 video segmentation at batch scale: find every instance of a text concept in a video, "
    "track each with a stable id, and write an overlay video, a mask video and per-frame COCO RLE masks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Without a name, a sub-app's commands become the root's own; `model` and `schedule` stay groups.
for sub in (segment.app, export.app, jobs.app, run.app, report.app, worker.app, api.app):
    app.add_typer(sub)
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(model.app, name="model")
app.add_typer(schedule.app, name="schedule")


def main() -> None:  # pragma: no cover - console entry
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The in-process broker has no host name; kombu warns about it on every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    from sam3v.cli.metavars import readable

    # Typer's own labels (`<list[str]>`, `<bool>`, `{video}`) replaced by readable ones in every --help.
    readable(typer.main.get_command(app))(prog_name="sam3v")
