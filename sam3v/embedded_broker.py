"""The embedded runner's in-process broker: kombu's memory transport, reading its queues in a fixed
order, cpu before gpu.

The memory transport round-robins the queues it consumes (``FairCycle``; unlike Redis it ignores
``queue_order_strategy``). With the one embedded worker thread that meant a probe, a chunk, a probe,
a chunk...: a video's finalize, queued behind every probe still waiting, ran long after its frames
were done (the bar read "3 running" for ~40 s with every frame done), a bad file at the end of the
manifest was found only after chunks of the good ones, and the frame total grew while frames were
segmented. Reading the cpu queues first runs every probe before any chunk (the frames are planned
and bad inputs reported at once) and each finalize as soon as its video's last chunk is done.
"""

from __future__ import annotations

from queue import Empty

from kombu.transport import memory
from kombu.utils.scheduling import FairCycle

#: ``broker_transport`` for Celery (kombu resolves "module:Class").
TRANSPORT = "sam3v.embedded_broker:Transport"

#: The order the embedded worker reads its queues in; any other queue comes after these.
ORDER = ("interactive-cpu", "cpu", "interactive-gpu", "gpu")


def _rank(queue: str) -> int:
    return ORDER.index(queue) if queue in ORDER else len(ORDER)


class InOrderCycle(FairCycle):
    """Every read tries the queues from the first (kombu's cycle interface, as ``FairCycle``)."""

    def get(self, callback, **kwargs):
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(memory.Channel):
    def _reset_cycle(self):
        self._active_queues.sort(key=_rank)  # kombu keeps this list; it holds queue names
        self._cycle = InOrderCycle(self._get_and_deliver, self._active_queues, Empty)


class Transport(memory.Transport):
    Channel = Channel
