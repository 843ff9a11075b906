"""Use zeusd from Python with its client (zeusd.client: standard library only, thread-safe).

Usage: ZEUSD_SOCK_PATH=/tmp/zeusd.sock python examples/zeusd_client.py
"""

from __future__ import annotations

from zeusd.client import InvalidParamsError, ZeusdClient


def main() -> None:
    # ZEUSD_SOCK_PATH, or ZEUSD_HOST_PORT for TCP; ZEUSD_TOKEN if the daemon wants one.
    with ZeusdClient.from_env() as zeusd:
        found = zeusd.discover()
        print(f"zeusd {found.version}: {len(found.gpus)} GPUs")
        constraints = zeusd.get_power_limit_constraints([0])[0]
        print("GPU 0 limits (mW):", constraints)
        zeusd.set_power_limit([0], constraints.min_power_limit_mw + 50_000)
        print("GPU 0 limit now:", zeusd.get_power_limit([0])[0])
        try:
            zeusd.set_power_limit([0], 1)
        except InvalidParamsError as exc:
            print(f"refused ({exc.code}): {exc.data['reason']}")
        zeusd.reset_power_limit([0], block=False)  # a notification: no reply awaited
        print("GPU 0 limit reset:", zeusd.get_power_limit([0])[0])


if __name__ == "__main__":
    main()
