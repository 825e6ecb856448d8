"""Errors that carry a message meant for the user, and the exit code the CLI gives them."""


class Sam3vError(Exception):
    """Base class. ``str(err)`` is one line a user can act on."""

    exit_code = 1


class InputError(Sam3vError):
    """The user's input is at fault (missing file, not a video, bad prompt, bad option): exit 2."""

    exit_code = 2


class ModelUnavailableError(InputError):
    """The model source cannot be loaded; the message says how to get one."""


class ProcessingError(Sam3vError):
    """Something failed while processing valid input (encoder crash, storage failure): exit 1."""


class Cancelled(Sam3vError):
    """Work stopped because it is no longer wanted (its job was cancelled, its video ended or was
    retried under a new attempt): it ends without a result, and its video is not failed for it."""


class WorkerFault(Sam3vError):
    """This worker cannot do any work (its model, GPU, disk or storage access is at fault), whatever
    the video: no video is failed for it; the task goes back to the queue and the worker stops."""


def field_path(where: tuple) -> str:
    """A field's name as messages give it: ("objects", 2, "box") -> "objects[2].box"."""
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class FieldError(InputError):
    """Bad input in one named field; ``where``: its path, for an entry point that names it in its
    own terms (a flag, a manifest column)."""

    def __init__(self, where: tuple, reason: str):
        super().__init__(f"{field_path(where)}: {reason}")
        self.where, self.reason = where, reason
