"""Loaded (through PYTHONPATH) by one test's GPU worker only: with SAM3V_TEST_OOM_MARK set, CUDA's
out-of-memory error at one place of the chunks' work (``oom_points``: SAM3V_TEST_OOM_AT, default
the tracker step of model frame SAM3V_TEST_OOM_FRAME), once per mark file. Nothing here is
imported by sam3v itself."""

import os

if os.environ.get("SAM3V_TEST_OOM_MARK"):
    from oom_points import install_from_environment

    install_from_environment()
