#!/bin/sh
# Slurm Epilog: put the job's GPUs back to their defaults when the job ends.
exec "$(dirname "$0")/zeusd-reset-gpus" epilog
