"""Measure energy with Zeus's ZeusMonitor, and cap power, through zeusd (no NVML needed here).

Usage: pip install 'zeusd[zeus]'; ZEUSD_SOCK_PATH=/tmp/zeusd.sock python examples/zeus_monitor.py
"""

from __future__ import annotations

import time

import zeusd.zeus_backend


def main() -> None:
    gpus = zeusd.zeus_backend.install()  # before any Zeus object asks for GPUs

    from zeus.monitor import ZeusMonitor

    monitor = ZeusMonitor(cpu_indices=[])
    monitor.begin_window("work", sync_execution=False)
    time.sleep(0.5)  # your training step goes here
    result = monitor.end_window("work", sync_execution=False)
    print(
        f"{result.time:.2f} s, energy (J) per GPU:",
        {i: round(j, 1) for i, j in result.gpu_energy.items()},
    )

    gpus.set_power_management_limit(0, 300_000)  # Zeus's API, carried out by zeusd
    print("GPU 0 power limit (mW):", gpus.get_power_management_limit(0))
    gpus.reset_power_management_limit(0)


if __name__ == "__main__":
    main()
