"""Schedules (celery-redbeat, two beat processes) and Flower, against real redis/worker processes."""

from __future__ import annotations

import base64
import calendar
import json
import math
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import redis
from redbeat import RedBeatSchedulerEntry

from pipeline.control import schedules
from pipeline.core.celery_app import make_app
from pipeline.core.settings import Settings
from tests.fault_env import wait_for
from tests.services import free_port, start_worker, stop_process
from tests.test_pipeline import BUCKET, cli, clips, env, redis_server, s3  # noqa: F401  (fixtures)

EVERY = 4  # seconds between firings of the --every schedule
LIST_EVERY = 10  # the --every schedule whose listed next runs are compared with beat's firings
MANIFEST = f"s3://{BUCKET}/manifests/nightly.jsonl"
CRON_SLOT = "%Y-%m-%dT%H:%MZ"  # pipeline.control.schedules.slot for cron schedules: the firing's minute


def _beat(env, log):
    return subprocess.Popen([sys.executable, "-m", "sam3v.cli", "beat", "--loglevel", "INFO"], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _scheduled_jobs(r: redis.Redis, name: str) -> dict[str, float]:
    """The jobs a schedule's firings created: job id -> creation time (the job's own record)."""
    out = {}
    for raw in r.zrange("sam3v:jobs", 0, -1):
        job = raw.decode()
        fields = r.hmget(f"sam3v:job:{job}", "name", "created")
        if fields[0] == f"{name} (scheduled)".encode():
            out[job] = float(fields[1])
    return out


def _slots(r: redis.Redis, name: str) -> dict[str, str]:
    """The firings' idempotency keys: slot -> the job that holds it."""
    prefix = f"sam3v:idem:schedule:{name}:"
    return {k.decode()[len(prefix):]: r.get(k).decode().split("|", 1)[0] for k in r.keys(prefix + "*")}


def _settled(r: redis.Redis, name: str) -> bool:
    """No task waiting or running (acks are late: a running task is in ``unacked``) and every
    claimed slot's job exists: nothing of the schedule is still on its way."""
    return r.llen("cpu") == 0 and r.hlen("unacked") == 0 and \
        set(_slots(r, name).values()) <= set(_scheduled_jobs(r, name))


def _put_manifest(s3) -> None:
    client, _ = s3
    client.put_object(Bucket=BUCKET, Key="manifests/nightly.jsonl",
                      Body=json.dumps({"video": f"s3://{BUCKET}/inputs/corrupt.mp4"}).encode() + b"\n")


def _logs(*paths) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}" for p in paths if p.exists())


def _entry(redis_url: str, name: str) -> RedBeatSchedulerEntry:
    """The schedule as RedBeat keeps it in Redis (definition and last run)."""
    app = make_app(Settings(broker_url=redis_url))
    schedules.configure(app, redis_url)
    return RedBeatSchedulerEntry.from_key(schedules.PREFIX + name, app=app)


def _next_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0) + timedelta(minutes=1)


def test_every_schedule_fires_once_per_slot_at_its_interval_with_two_beats(env, s3, clips, redis_server, tmp_path):
    _put_manifest(s3)
    add = cli(env, "schedule", "add", "every4", "--every", EVERY, "--manifest", MANIFEST, "--prompt", "dog")
    assert add.returncode == 0, add.stderr
    assert "every4" in cli(env, "schedule", "list").stdout
    r = redis.Redis.from_url(redis_server.url)
    logs = [tmp_path / "worker.log", tmp_path / "beat1.log", tmp_path / "beat2.log"]
    worker = start_worker(env, "cpu", "sched", logs[0])
    beats = [_beat(env, logs[1]), _beat(env, logs[2])]
    try:
        # Beat start-up (imports, the RedBeat lock) takes seconds on a loaded machine: wait for the
        # slots. Five, so that a schedule firing at half its rate would miss the bound below.
        wait_for(lambda: len(_slots(r, "every4")) >= 5, 120,
                 lambda: f"fewer than 5 slots fired: {_slots(r, 'every4')}\n{_logs(*logs)}", poll=0.5)
        assert all(b.poll() is None for b in beats), f"both beats ran throughout\n{_logs(*logs)}"
        for b in beats:
            stop_process(b)
        assert cli(env, "schedule", "remove", "every4").returncode == 0
        # A firing sent just before the beats stopped may still be queued or running.
        wait_for(lambda: _settled(r, "every4"), 60,
                 lambda: f"firings still on their way: slots {_slots(r, 'every4')}, jobs {_scheduled_jobs(r, 'every4')}, "
                         f"cpu queue {r.llen('cpu')}, unacked {r.hlen('unacked')}", poll=0.2)
    finally:
        for b in beats:
            stop_process(b)
        stop_process(worker)
        cli(env, "schedule", "remove", "every4")
    slots, jobs = _slots(r, "every4"), _scheduled_jobs(r, "every4")
    assert all(int(s) % EVERY == 0 for s in slots), slots
    # One job per slot, and no job outside the slots: two beats never made a second job for a slot.
    assert sorted(slots.values()) == sorted(set(slots.values())) == sorted(jobs), (slots, jobs)
    # As many jobs as the interval fits in the time they were made over (each firing makes a job,
    # so this bounds the firings: a schedule firing too often, or too rarely, falls outside).
    created = sorted(jobs.values())
    window = created[-1] - created[0]
    assert math.floor(window / EVERY) - 1 <= len(jobs) <= math.ceil(window / EVERY) + 1, \
        f"{len(jobs)} jobs over {window:.1f} s at one every {EVERY} s: {jobs}"
    assert "every4" not in cli(env, "schedule", "list").stdout


def test_cron_schedule_is_saved_listed_and_checked(env, s3, redis_server):
    _put_manifest(s3)  # schedule add refuses a manifest that does not exist
    add = cli(env, "schedule", "add", "minutely", "--cron", "* * * * *", "--manifest", MANIFEST, "--prompt", "dog")
    try:
        assert add.returncode == 0 and "saved" in add.stderr, add.stderr
        listed = cli(env, "schedule", "list")
        assert listed.returncode == 0, listed.stderr
        row = next(x for x in listed.stdout.splitlines() if "minutely" in x)
        assert "* * * * *" in row, listed.stdout
        entry = _entry(redis_server.url, "minutely")
        assert entry.args == ["minutely", MANIFEST, "dog", "* * * * *", None]
        assert entry.task == schedules.SCHEDULED_SUBMIT
        for bad in ("61 * * * *", "* * *", "* * * * * *", "* * 0 * *"):
            done = cli(env, "schedule", "add", "badcron", "--cron", bad, "--manifest", MANIFEST)
            assert done.returncode == 2 and "--cron" in done.stderr, (bad, done.returncode, done.stderr)
        both = cli(env, "schedule", "add", "badcron", "--cron", "* * * * *", "--every", "4", "--manifest", MANIFEST)
        assert both.returncode == 2 and "--cron" in both.stderr, both.stderr
        assert "badcron" not in cli(env, "schedule", "list").stdout
    finally:
        cli(env, "schedule", "remove", "minutely")


def test_new_cron_schedule_is_first_due_at_its_next_cron_time(env, s3, redis_server):
    """A nightly schedule added in the afternoon runs at night: its first run is the cron's next
    time, not the moment it is added (RedBeat runs an entry with no last run at once)."""
    _put_manifest(s3)
    before = datetime.now(timezone.utc)
    # --prompt: the manifest's line has none, and schedule add refuses a manifest with no valid line.
    add = cli(env, "schedule", "add", "at2", "--cron", "0 2 * * *", "--manifest", MANIFEST, "--prompt", "dog")
    try:
        assert add.returncode == 0, add.stderr
        entry = _entry(redis_server.url, "at2")
        today = before.replace(hour=2, minute=0, second=0, microsecond=0)
        want = today if today > before else today + timedelta(days=1)
        assert entry.last_run_at is not None and entry.last_run_at >= before, entry.last_run_at
        assert not entry.is_due()[0]
        # Where the beats will find it: RedBeat's sorted set, scored with the next run's time.
        score = redis.Redis.from_url(redis_server.url).zscore(entry.app.redbeat_conf.schedule_key, entry.key)
        assert score == pytest.approx(want.timestamp(), abs=1), (score, want)
    finally:
        cli(env, "schedule", "remove", "at2")


def test_cron_schedule_fires_through_beat_and_worker(env, s3, clips, redis_server, tmp_path):
    """The cron path end to end without waiting for a minute: the entry is set as last run over a
    minute ago (a beat that was down over a boundary), so the beat fires it at once; the job is
    keyed by the firing's minute, and the entry then reports the next minute boundary as its run."""
    _put_manifest(s3)
    add = cli(env, "schedule", "add", "cronfire", "--cron", "* * * * *", "--manifest", MANIFEST, "--prompt", "dog")
    assert add.returncode == 0, add.stderr
    r = redis.Redis.from_url(redis_server.url)
    entry = _entry(redis_server.url, "cronfire")
    rewound = datetime.now(timezone.utc) - timedelta(seconds=90)
    entry.reschedule(last_run_at=rewound)
    logs = [tmp_path / "worker.log", tmp_path / "beat.log"]
    worker = start_worker(env, "cpu", "cron", logs[0])
    beat = _beat(env, logs[1])
    try:
        wait_for(lambda: _scheduled_jobs(r, "cronfire"), 120,
                 lambda: f"the cron schedule made no job\n{_logs(*logs)}", poll=0.5)
        fired = _entry(redis_server.url, "cronfire")
        score = r.zscore(fired.app.redbeat_conf.schedule_key, fired.key)
    finally:
        stop_process(beat)
        cli(env, "schedule", "remove", "cronfire")
        wait_for(lambda: _settled(r, "cronfire"), 60, lambda: f"firings still on their way\n{_logs(*logs)}", poll=0.2)
        stop_process(worker)
    slots, jobs = _slots(r, "cronfire"), _scheduled_jobs(r, "cronfire")
    assert sorted(slots.values()) == sorted(jobs), (slots, jobs)
    for slot, job in slots.items():  # the slot is the minute the firing ran in, just before the job was made
        made = jobs[job]
        assert slot in {time.strftime(CRON_SLOT, time.gmtime(made - d)) for d in (0, 1)}, (slot, made)
    # The beat recorded the run; the next is the following minute boundary, where RedBeat's
    # schedule (the sorted set the beats poll) has it.
    assert fired.last_run_at > rewound, (fired.last_run_at, rewound)
    assert score == pytest.approx(_next_minute(fired.last_run_at).timestamp(), abs=1), (score, fired.last_run_at)


@pytest.mark.slow
def test_cron_schedule_fires_at_the_minute_boundary(env, s3, clips, redis_server, tmp_path):
    """A fresh "* * * * *" schedule under a real beat and worker makes a job in the minute after the
    boundary that follows it being added (waits up to a minute and a half)."""
    _put_manifest(s3)
    add = cli(env, "schedule", "add", "minute", "--cron", "* * * * *", "--manifest", MANIFEST, "--prompt", "dog")
    assert add.returncode == 0, add.stderr
    boundary = _next_minute(datetime.now(timezone.utc))
    r = redis.Redis.from_url(redis_server.url)
    logs = [tmp_path / "worker.log", tmp_path / "beat.log"]
    worker = start_worker(env, "cpu", "minute", logs[0])
    beat = _beat(env, logs[1])
    at_boundary = boundary.strftime(CRON_SLOT)
    try:
        wait_for(lambda: at_boundary in _slots(r, "minute"), 150,
                 lambda: f"no firing in the minute from {boundary}: {_slots(r, 'minute')}\n{_logs(*logs)}", poll=0.5)
    finally:
        stop_process(beat)
        cli(env, "schedule", "remove", "minute")
        wait_for(lambda: _settled(r, "minute"), 60, lambda: f"firings still on their way\n{_logs(*logs)}", poll=0.2)
        stop_process(worker)
    jobs = _scheduled_jobs(r, "minute")
    assert jobs[_slots(r, "minute")[at_boundary]] >= calendar.timegm(boundary.timetuple())


def _wait_flower(base: str, log) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, lambda: f"Flower did not answer\n{_logs(log)}", poll=0.5)


def _flower(env, port: int, log, extra: dict, cwd=None) -> subprocess.Popen:
    """`sam3v flower --port P`, as the README's recipe starts it, in ``cwd`` (its state file,
    flower.db, goes there; by default beside the log)."""
    return subprocess.Popen([sys.executable, "-m", "sam3v.cli", "flower", "--port", str(port)],
                            env={**env, **extra}, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=cwd or log.parent)


def _basic(credentials: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _generated_password(log) -> str:
    found = wait_for(lambda: re.search(r"user sam3v, password (\S+) ", log.read_text(errors="replace")), 60,
                     lambda: f"no password printed\n{_logs(log)}", poll=0.2)
    return found.group(1)


def _job_tasks(base: str, auth: dict, job: str) -> dict[str, dict]:
    """Flower's tasks whose arguments name ``job`` (every sam3v task's first argument is its job id)."""
    tasks = httpx.get(f"{base}/api/tasks", params={"search": job}, headers=auth, timeout=10).json()
    return {uuid: t for uuid, t in tasks.items() if job in (t.get("args") or "")}


def test_flower_sees_our_workers_and_tasks(env, redis_server, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = [tmp_path / "flower.log", tmp_path / "worker.log"]
    flower = _flower(env, port, logs[0], {"FLOWER_UNAUTHENTICATED_API": "true"})
    worker = start_worker(env, "cpu", "flowerw", logs[1])
    try:
        _wait_flower(base, logs[0])
        # /metrics is fed by events: once it counts our worker online, Flower receives its events.
        wait_for(lambda: 'flower_worker_online{worker="flowerw@' in httpx.get(f"{base}/metrics", timeout=5).text, 90,
                 lambda: f"Flower never saw the worker's events\n{_logs(*logs)}", poll=0.5)
        missing = tmp_path / "missing.jsonl"
        missing.write_text(json.dumps({"video": f"s3://{BUCKET}/inputs/nope.mp4"}) + "\n")
        # --check-inputs none: submit refuses a manifest whose inputs are all missing; this test
        # wants its probe task to run (and fail the video).
        job = cli(env, "submit", missing, "--prompt", "dog", "--check-inputs", "none").stdout.strip().splitlines()[-1]

        def task_names() -> set:
            return {t.get("name") for t in httpx.get(f"{base}/api/tasks", timeout=5).json().values()}

        wait_for(lambda: "sam3v.probe" in task_names(), 60, lambda: f"tasks seen: {task_names()}\n{_logs(*logs)}",
                 poll=0.5)

        def inspected() -> dict:
            # refresh=1 asks the workers over the broker and waits Flower's inspect timeout (1 s): a
            # worker busy starting its process may answer late, and Flower then lists nobody.
            return httpx.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=10).json()

        workers = wait_for(lambda: (found := inspected()) and any(w.startswith("flowerw@") for w in found) and found,
                           60, lambda: f"Flower's inspect never listed flowerw@: {inspected()}\n{_logs(*logs)}",
                           poll=1)
        assert any(w.startswith("flowerw@") for w in workers), workers
        assert cli(env, "status", job, "--json").returncode == 0
    finally:
        stop_process(worker)
        stop_process(flower)


def test_flower_basic_auth(env, redis_server, tmp_path):
    """FLOWER_BASIC_AUTH: the API answers 401 without the credentials (or with wrong ones) and 200 with them."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "flower.log"
    flower = _flower(env, port, log, {"FLOWER_BASIC_AUTH": "ops:s3cret-pw"})
    try:
        _wait_flower(base, log)

        def basic(credentials: str) -> dict:
            return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}

        for path in ("/api/workers", "/api/tasks", "/"):
            assert httpx.get(f"{base}{path}", timeout=10).status_code == 401, path
            assert httpx.get(f"{base}{path}", headers=basic("ops:wrong"), timeout=10).status_code == 401, path
            assert httpx.get(f"{base}{path}", headers=basic("ops:s3cret-pw"), timeout=10).status_code == 200, path
    finally:
        stop_process(flower)


def test_the_recipes_flower_lists_a_jobs_tasks_keeps_them_and_shows_no_secret(env, redis_server, tmp_path):
    """The README's recipe (`sam3v flower --port 5555 > flower.log 2>&1 &`, no FLOWER_* setting): the
    API opens with the password printed once in flower.log; /api/tasks lists the job's tasks by
    name, with the job id in their args, and ends them in Flower's states; a restart on the same
    state file still lists them; neither the password nor the broker URL is on Flower's command line."""
    recipe_env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = [tmp_path / "flower.log", tmp_path / "worker.log"]
    flower = _flower(recipe_env, port, logs[0], {})
    worker = start_worker(env, "cpu", "recipew", logs[1])
    try:
        _wait_flower(base, logs[0])
        auth = _basic(f"sam3v:{_generated_password(logs[0])}")
        assert httpx.get(f"{base}/api/tasks", timeout=10).status_code == 401, "the API is not open to anyone"
        cmdline = Path(f"/proc/{flower.pid}/cmdline").read_bytes().decode().replace("\0", " ")
        assert "celery" in cmdline and "flower" in cmdline and "--persistent=True" in cmdline, cmdline
        assert _generated_password(logs[0]) not in cmdline and env["SAM3V_BROKER_URL"] not in cmdline, cmdline
        assert "basic" not in cmdline.lower() and "redis://" not in cmdline, cmdline
        wait_for(lambda: 'flower_worker_online{worker="recipew@' in
                 httpx.get(f"{base}/metrics", headers=auth, timeout=5).text, 90,
                 lambda: f"Flower never saw the worker's events\n{_logs(*logs)}", poll=0.5)
        missing = tmp_path / "missing.jsonl"
        missing.write_text(json.dumps({"video": f"s3://{BUCKET}/inputs/nope.mp4"}) + "\n")
        job = cli(env, "submit", missing, "--prompt", "dog", "--check-inputs", "none").stdout.strip().splitlines()[-1]
        wait_for(lambda: cli(env, "status", job, "--json").stdout.count('"failed"') > 0, 120,
                 lambda: f"the job did not end\n{_logs(*logs)}", poll=1)
        ended = wait_for(lambda: [t for t in _job_tasks(base, auth, job).values() if t.get("state") == "FAILURE"],
                         60, lambda: f"Flower lists {_job_tasks(base, auth, job)}\n{_logs(*logs)}", poll=0.5)
        assert [t["name"] for t in ended] == ["sam3v.probe"], ended
    finally:
        stop_process(worker)
        stop_process(flower)
    assert (tmp_path / "flower.db").exists() or list(tmp_path.glob("flower.db*")), "the state file"
    again = _flower(recipe_env, port, logs[0], {})
    try:
        _wait_flower(base, logs[0])
        auth = _basic(f"sam3v:{_generated_password_after(logs[0], 2)}")
        kept = _job_tasks(base, auth, job)
        assert [t["name"] for t in kept.values()] == ["sam3v.probe"], kept
    finally:
        stop_process(again)


def _generated_password_after(log, nth: int) -> str:
    """The password the ``nth`` start printed (each start generates its own)."""
    found = wait_for(lambda: (all_ := re.findall(r"user sam3v, password (\S+) ", log.read_text(errors="replace")))
                     and len(all_) >= nth and all_, 60, lambda: f"no password printed\n{_logs(log)}", poll=0.2)
    return found[nth - 1]


def test_flower_refuses_an_open_api_off_loopback_and_warns_when_locked(env, tmp_path):
    open_api = cli({**env, "FLOWER_UNAUTHENTICATED_API": "true"}, "flower", "--address", "0.0.0.0",
                   "--state", tmp_path / "f.db", timeout=60)
    assert open_api.returncode == 2 and "loopback address only" in open_api.stderr, open_api.stderr
    port = free_port()
    log = tmp_path / "locked.log"
    proc = subprocess.Popen([sys.executable, "-m", "sam3v.cli", "flower", "--port", str(port), "--no-generate-password"],
                            env={k: v for k, v in env.items() if not k.startswith("FLOWER_")}, cwd=tmp_path,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "answers 401 to everyone" in log.read_text(errors="replace"), 60, lambda: _logs(log), poll=0.2)
    finally:
        stop_process(proc)


def _listed(env, name: str) -> tuple[dict, str]:
    done = cli(env, "schedule", "list", "--json")
    assert done.returncode == 0, done.stderr
    return next(e for e in json.loads(done.stdout) if e["name"] == name), done.stderr


def test_schedule_list_names_beats_own_firing_times_and_warns_without_beat(env, s3, redis_server, tmp_path):
    """`schedule list --json`'s next run, read mid-interval, is the time a real beat then fires the
    schedule (its recorded run, within beat's tick latency), for --every and cron; with no beat
    ticking for two of its intervals, `schedule add` and `schedule list` warn."""
    own = type(redis_server)(tmp_path)  # a Redis of its own: its firings reach no other test's worker
    own.start()
    local = {**env, "SAM3V_BROKER_URL": own.url}
    _put_manifest(s3)
    log = tmp_path / "beat.log"
    beat = None
    try:
        add = cli(local, "schedule", "add", "every10", "--every", LIST_EVERY, "--manifest", MANIFEST, "--prompt", "dog")
        assert add.returncode == 0 and "no `sam3v beat` has been seen" in add.stderr, add.stderr
        assert cli(local, "schedule", "add", "minutely", "--cron", "* * * * *", "--manifest", MANIFEST,
                   "--prompt", "dog").returncode == 0
        beat = _beat(local, log)
        wait_for(lambda: "no `sam3v beat`" not in _listed(local, "every10")[1], 120,
                 lambda: f"the beat never published its heartbeat\n{_logs(log)}", poll=0.5)
        # The cron's next run is read first: its minute boundary passes while the --every rounds
        # below run (about 35 s, well under a minute: the boundary after it is not reached).
        cron = _listed(local, "minutely")[0]
        cron_predicted = datetime.fromisoformat(cron["next_run_at"])
        assert cron_predicted.second == 0 and cron_predicted.microsecond == 0 and not cron["overdue"], cron
        runs = _entry(own.url, "every10").total_run_count
        wait_for(lambda: _entry(own.url, "every10").total_run_count > runs, 30, lambda: _logs(log), poll=0.05)
        for _ in range(3):  # each round starts at a firing seen as it happened (the last round's, after the first)
            time.sleep(LIST_EVERY / 2)  # mid-interval: an estimate from "now" would be off by the time since the firing
            listed, warning = _listed(local, "every10")  # a CLI call: seconds on a loaded host, less than the interval
            assert not listed["overdue"] and "no `sam3v beat`" not in warning, (listed, warning)
            predicted = datetime.fromisoformat(listed["next_run_at"])
            fired = wait_for(lambda: (e := _entry(own.url, "every10")).total_run_count > listed["runs"] and e, 30,
                             lambda: _logs(log), poll=0.05)
            assert fired.total_run_count == listed["runs"] + 1, "the firing after the listing, read as it happened"
            assert abs((fired.last_run_at - predicted).total_seconds()) < 0.5, (fired.last_run_at, predicted)
        fired = wait_for(lambda: (e := _entry(own.url, "minutely")).total_run_count > cron["runs"] and e, 90,
                         lambda: _logs(log), poll=0.5)
        assert fired.total_run_count == cron["runs"] + 1, "the firing after the listing"
        assert timedelta(0) <= fired.last_run_at - cron_predicted < timedelta(seconds=1), (fired.last_run_at, cron_predicted)
        stop_process(beat)
        wait_for(lambda: "no `sam3v beat` has been seen" in cli(local, "schedule", "list").stderr,
                 2 * schedules.BEAT_INTERVAL_S + 10, lambda: "no warning after the beat stopped", poll=1)
    finally:
        if beat is not None:
            stop_process(beat)
        own.stop()
