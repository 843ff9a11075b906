"""GPU access: the NVML backend, per-GPU work lanes and the validated command objects."""
