"""The Celery app Flower loads (``celery -A sam3v.flower_app flower``): built from the environment's
settings in Flower's own process, so the broker URL (and any Redis password in it) never appears on
a command line (``sam3v.flower_launch``)."""

from pipeline.core.celery_app import make_app
from pipeline.core.settings import get_settings

app = make_app(get_settings())
