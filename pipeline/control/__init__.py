"""The control plane: manifests, the producer and schedules. It reaches the data plane only
through Celery task names (``pipeline.core.celery_app``), never by import, and never imports torch."""
