# One entry point for people and CI. Every target sets up what is missing first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
TINY   ?= models/tiny

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  echo "installing ffmpeg (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q ffmpeg; \
	  else sudo apt-get update -q && sudo apt-get install -y -q ffmpeg; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[worker,test]'
	touch $@

$(TINY)/config.json: $(VENV)/.installed
	$(BIN)/sam3v model tiny $(TINY)

# The main job: segment a real clip with the tiny (meaningless) model. For real weights see README.
demo: setup $(TINY)/config.json
	$(BIN)/sam3v segment $(SHARED)/videos/01_dog.mp4 --prompt dog --model $(TINY) \
	  --out out/demo --outputs overlay,mask,rle --max-frames 90

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.bench_decode
	$(BIN)/python -m benchmarks.bench_composite
	$(BIN)/python -m benchmarks.bench_overlap

clean:
	rm -rf out models .pytest_cache
