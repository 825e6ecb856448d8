"""``health``: is this server able to run what it accepts? Open without a key (load balancers and
probes call it); it names no host, only whether each interactive queue has a live worker and why a
worker took itself out of service (its model, GPU, disk or storage: ``workers.jobs.service``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from pipeline.core import worker_registry

router = APIRouter(tags=["health"])


@router.get("/health", summary="Whether live workers serve the interactive queues")
def health(request: Request):
    gens = request.app.state.gens
    if not gens.settings.broker_url:  # embedded: this process runs every queue itself
        return {"status": "ok", "problems": []}
    try:
        problem = worker_registry.interactive_warning(gens.r)
        # A worker that took itself out of service (its model, GPU, disk or storage) says why.
        problems = worker_registry.out_of_service_warnings(worker_registry.live_workers(gens.r))
    except Exception as err:  # Redis down: a health route reports it rather than answering 500
        problem, problems = f"Redis unreachable: {type(err).__name__}", []
    problems = ([problem] if problem else []) + problems
    return {"status": "degraded" if problems else "ok", "problems": problems}
