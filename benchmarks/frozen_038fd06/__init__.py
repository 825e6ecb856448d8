"""Main at 038fd06's per-frame tracker loop, frozen as bench_gpu.py's same-run baseline. Do not edit."""
