"""The order in which a worker reads its queues: interactive ones first, batch ones round-robin.

kombu's Redis transport sends one BRPOP over every queue a worker consumes and Redis answers from
the first non-empty key in the order given. kombu builds that order with a "cycle" named by the
``queue_order_strategy`` transport option (``kombu.utils.scheduling.cycle_by_name``, which also takes
a dotted path): the default, round-robin, moves the queue just read to the end, so a worker that
consumes ``gpu`` and ``interactive-gpu`` serves a waiting API generation only every other task.
``priority`` always keeps the given order, which would starve a batch ``cpu`` queue behind ``gpu``
(a video's finalize waits behind every chunk of the batch). This cycle does both: interactive
queues always first, batch queues fair among themselves as before.
"""

from __future__ import annotations

from kombu.utils.scheduling import round_robin_cycle

INTERACTIVE_PREFIX = "interactive-"

#: The ``queue_order_strategy`` value that names this cycle.
STRATEGY = "pipeline.core.queue_order:InteractiveFirstCycle"


def is_interactive(queue: str) -> bool:
    return queue.startswith(INTERACTIVE_PREFIX)


class InteractiveFirstCycle(round_robin_cycle):
    """kombu's cycle interface (``update``, ``consume``, ``rotate``)."""

    def consume(self, n: int) -> list[str]:
        items = self.items[:n]
        return [q for q in items if is_interactive(q)] + [q for q in items if not is_interactive(q)]

    def rotate(self, last_used: str) -> str:
        # Interactive queues keep their place at the front; only batch reads move to the back.
        if is_interactive(last_used):
            return last_used
        return super().rotate(last_used)
