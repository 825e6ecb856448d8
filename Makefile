# One entry point for people and CI. Every target sets up what is missing first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
TINY   ?= models/tiny

.PHONY: setup demo demo-segment test bench bench-gpu-smoke clean flower

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@missing=""; \
	command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing="$$missing ffmpeg"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing (ffmpeg for video; redis-server, jq, curl for the tests; chromium opens report.html in tests/test_report.py)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $$missing; \
	  else sudo apt-get update -q && sudo apt-get install -y -q $$missing; fi; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[worker,test]'
# Test-only: Meta's sam3 package, for its reference post-processing (sam3.perflib, compared with
# workers/model/cv_utils.py in tests/test_cv_utils.py). Without its declared dependencies: they pin
# numpy < 2.4 and pull timm -> torchvision -> another torch; the perflib modules the tests
# import need only torch, numpy and scikit-image (the test extra).
	$(BIN)/python -m pip install -q --no-deps 'sam3==0.1.4'
	touch $@

$(TINY)/config.json: $(VENV)/.installed
	$(BIN)/sam3v model tiny $(TINY)

# The main job: a small manifest over ../shared/videos, run by the embedded pipeline (in-process
# broker and worker, local storage; no Redis or S3) with the tiny (meaningless) model.
demo: setup $(TINY)/config.json
	$(BIN)/sam3v run examples/demo.jsonl --out out/demo --model $(TINY)

# One video through `sam3v segment` (the single-video path).
demo-segment: setup $(TINY)/config.json
	$(BIN)/sam3v segment $(SHARED)/videos/01_dog.mp4 --prompt dog --model $(TINY) \
	  --out out/segment --outputs overlay,mask,rle --max-frames 90

test: setup
	$(BIN)/python -m pytest -q --durations=40

bench: setup
	@command -v wrk >/dev/null || { echo "installing wrk (bench_api's load generator)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q wrk; else sudo apt-get install -y -q wrk; fi; }
	$(BIN)/python -m benchmarks.bench_decode
	$(BIN)/python -m benchmarks.bench_composite
	$(BIN)/python -m benchmarks.bench_overlap
	$(BIN)/python -m benchmarks.bench_chunk_memory
	$(BIN)/python -m benchmarks.bench_pipeline
	$(BIN)/python -m benchmarks.bench_api
	$(BIN)/python -m benchmarks.bench_limits
	$(BIN)/python -m benchmarks.bench_worker_memory
	$(BIN)/python -m benchmarks.bench_ops

# GPU throughput (benchmarks/bench_gpu.py), its reduced matrix on CPU with the tiny model; the full
# matrix on a GPU machine: benchmarks/run_bench_gpu_device.sh (README, Internals and performance).
bench-gpu-smoke: setup
	$(BIN)/python -m benchmarks.bench_gpu --smoke

# Flower against SAM3V_BROKER_URL (set FLOWER_BASIC_AUTH=user:password to enable its API).
flower: setup
	$(BIN)/sam3v flower

clean:
	rm -rf out models .pytest_cache
