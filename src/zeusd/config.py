"""The daemon's settings, as parsed from the command line."""

from __future__ import annotations

import os

import attrs

DEFAULT_SOCKET_PATH = "/var/run/zeusd.sock"
DEFAULT_TCP_BIND_ADDRESS = "127.0.0.1:4938"
DEFAULT_MAX_LINE_BYTES = 1024 * 1024
DEFAULT_SIM_GPUS = 4
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_QUEUED_PER_GPU = 65536
DEFAULT_MAX_QUEUED_PER_CLIENT = 1024
DEFAULT_CLIENT_TIMEOUT_S = 30.0
DEFAULT_MAX_SUBSCRIPTIONS = 1024
DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION = 32
DEFAULT_AUTH_TIMEOUT_S = 10.0
DEFAULT_RAPL_ROOT = "/sys/class/powercap"
DEFAULT_GPU_POWER_POLL_HZ = 20.0
DEFAULT_CPU_POWER_POLL_HZ = 10.0
DEFAULT_STATE_DIR = "/run/zeusd"


@attrs.frozen(kw_only=True)
class Config:
    mode: str = "uds"
    socket_path: str = DEFAULT_SOCKET_PATH
    socket_permissions: int = 0o666
    socket_uid: int | None = None
    socket_gid: int | None = None
    tcp_host: str = "127.0.0.1"
    tcp_port: int = 4938
    allow_unprivileged: bool = False
    num_workers: int = attrs.field(factory=lambda: os.cpu_count() or 1)
    #: auto, nvml, amdsmi or sim.
    gpu_backend: str = "auto"
    #: The simulated library for --gpu-backend sim: nvidia (NVML) or amd (amdsmi).
    sim_vendor: str = "nvidia"
    #: --gpu-command-overrides: the TOML file of site commands for gpu-control methods.
    gpu_command_overrides: str | None = None
    sim_gpus: int = DEFAULT_SIM_GPUS
    sim_config: str | None = None
    #: --sim-state: where simulated GPUs keep their settings across daemon runs.
    sim_state: str | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    log_level: str = "info"
    log_format: str = "text"
    control_uids: frozenset[int] = frozenset()
    control_gids: frozenset[int] = frozenset()
    token_key_file: str | None = None
    #: The signing key read from --token-key (checked and loaded at start-up).
    token_key: bytes | None = attrs.field(default=None, repr=False)
    allow_insecure_tcp: bool = False
    restore_on_exit: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_batch: int = DEFAULT_MAX_BATCH
    max_queued_per_gpu: int = DEFAULT_MAX_QUEUED_PER_GPU
    max_queued_per_client: int = DEFAULT_MAX_QUEUED_PER_CLIENT
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT_S
    #: Samples per second of the HTTP power streams (GET /gpu/stream_power, /cpu/...).
    gpu_power_poll_hz: float = DEFAULT_GPU_POWER_POLL_HZ
    cpu_power_poll_hz: float = DEFAULT_CPU_POWER_POLL_HZ
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_subscriptions_per_connection: int = DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION
    #: Where a token is required: how long a connection may stay unauthenticated.
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT_S
    #: API groups named by --enable; None: every group the node can serve.
    enable: tuple[str, ...] | None = None
    rapl_root: str = DEFAULT_RAPL_ROOT
    #: --state-dir: restore records that outlive the daemon. None (embedding, unit tests):
    #: the ledger stays in memory only. The command line's default is DEFAULT_STATE_DIR.
    state_dir: str | None = None
