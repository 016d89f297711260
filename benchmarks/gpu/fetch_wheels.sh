#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, no internet): the runtime packages it lacks, into
# benchmarks/gpu/wheels/ (ignored by git; the device tool carries the folder when named in `carry`).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
pip download -q -d wheels --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  pyzmq msgpack fastapi uvicorn tokenizers safetensors pyyaml jinja2 httpx pytest hypothesis click
pip download -q -d wheels --no-deps --no-binary=:all: posix_ipc  # an sdist: built there with its compiler
ls wheels
