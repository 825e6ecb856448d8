"""SAM3V_MAX_REDELIVERIES with real repeated kills: a chunk whose prefork child is SIGKILLed (as the
OOM killer does) every time it starts fails its video after the limit, with the "never finished"
message, and the job's other video succeeds. Real redis-server, moto S3, `sam3v worker`
processes and the tiny model (tests/test_pipeline.py's fixtures, tests/fault_env.py's helpers)."""

from __future__ import annotations

import signal

import pytest

from pipeline.core.layout import VideoKeys
from tests.fault_env import FINISH_TIMEOUT, Jobs, Worker, wait_for
from tests.test_pipeline import clips, env, redis_server, s3  # noqa: F401  (module fixtures)

LIMIT = 2  # SAM3V_MAX_REDELIVERIES: the third start of a chunk fails its video
DOOMED, HEALTHY = "dog", "bedroom"


@pytest.fixture
def jobs(env, redis_server, s3, clips, tmp_path) -> Jobs:  # noqa: F811
    return Jobs({**env, "SAM3V_MAX_REDELIVERIES": str(LIMIT)}, redis_server.url, s3[0], tmp_path)


def test_a_chunk_killed_at_every_start_fails_its_video_after_the_limit(jobs):
    gpu = Worker.start(jobs.env, "gpu", "gpu-limit", jobs.workdir)
    cpu = Worker.start(jobs.env, "cpu", "cpu-limit", jobs.workdir)

    def logs() -> str:
        return gpu.tail() + cpu.tail()

    try:
        job = jobs.submit([DOOMED, HEALTHY])
        killed: list[int] = []
        for start in range(1, LIMIT + 1):
            # The n-th start of one of DOOMED's chunks is counted (the task is in its body): kill the
            # child running it, a new child each time (the master replaces the one killed before).
            counted = wait_for(lambda: [k for k, n in jobs.deliveries(job, DOOMED).items() if n == start], 180,
                               lambda: f"start {start} of a {DOOMED} chunk never came: "
                                       f"{jobs.deliveries(job, DOOMED)} {jobs.video(job, DOOMED)}\n{logs()}",
                               poll=0.01)
            assert start == 1 or counted == [k], f"start {start} was of chunk {counted}, not {k} again"
            k = counted[0]
            child = gpu.child()
            assert child not in killed, f"child {child} was killed already"
            gpu.kill(child, signal.SIGKILL)
            killed.append(child)
            # The kill landed mid-work: the chunk had started (counted) and had not finished.
            assert (jobs.video(job, DOOMED).get("chunks_done") or 0) <= k, jobs.video(job, DOOMED)
            assert not jobs.exists(VideoKeys(job, DOOMED).work.done(k)), f"chunk {k} finished before the kill"
        doc = jobs.wait_finished(job, FINISH_TIMEOUT, logs)
        assert gpu.alive(), "the same worker master ran to the end"
    finally:
        gpu.stop()
        cpu.stop()

    videos = {v["id"]: v for v in doc["videos"]}
    assert doc["status"] == "partial", doc
    assert videos[HEALTHY]["status"] == "succeeded", videos[HEALTHY]
    doomed = videos[DOOMED]
    assert doomed["status"] == "failed", doomed
    assert f"chunk {k} " in doomed["error"] and f"started {LIMIT} times and never finished" in doomed["error"], doomed
    assert jobs.deliveries(job, DOOMED) == {k: LIMIT + 1}, "killed twice, failed at the third start"
    assert jobs.exists(f"{job}/{HEALTHY}/masks.json") and not jobs.exists(f"{job}/{DOOMED}/masks.json")
