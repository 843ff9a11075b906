#!/bin/sh
# Slurm Prolog: start each job with its GPUs at their defaults (whatever the last job left).
exec "$(dirname "$0")/zeusd-reset-gpus" prolog
