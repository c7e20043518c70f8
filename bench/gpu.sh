#!/bin/sh
# The GPU run in one command (see bench/gpu.py): results under bench/results/gpu.{json,md}.
cd "$(dirname "$0")/.." && exec python bench/gpu.py "$@"
