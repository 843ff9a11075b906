"""Unmodified Zeus 0.16 (PyPI) and curl against the real zeusd over its HTTP dialect.

Zeus runs in a child Python with nothing but Zeus's own environment variables set
(``ZEUSD_SOCK_PATH``, ``ZEUSD_HOST_PORT``, ``ZEUSD_TOKEN``). Where Zeus reads a GPU locally
through pynvml, ``tests/sim_pynvml`` (first on ``PYTHONPATH``) serves it from zeusd's
simulated NVML, since these machines have no GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from fake_rapl import make_tree
from process_helpers import (
    DaemonProcess,
    issue_token,
    result_of,
    running_daemon,
    short_tempdir,
    write_token_key,
)

pytest.importorskip("zeus", reason="the zeus extra is not installed")
pytestmark = pytest.mark.process

SHIM = str(Path(__file__).parent / "sim_pynvml")
CURL = shutil.which("curl")


def run_zeus(script: str, *, shim: bool = False, timeout: float = 60, **env: str) -> Any:
    """Run *script* in a fresh Python with only *env* set; return what it prints as JSON."""
    environ = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    environ.update(env)
    if shim:
        environ["PYTHONPATH"] = SHIM
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def rapl_dir() -> Iterator[str]:
    directory = short_tempdir()
    make_tree(os.path.join(directory, "powercap"), [True, False])
    yield os.path.join(directory, "powercap")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def uds(rapl_dir: str) -> Iterator[DaemonProcess]:
    path = os.path.join(short_tempdir(), "zeusd.sock")
    with running_daemon(f"--rapl-root={rapl_dir}", socket_path=path) as daemon:
        yield daemon
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_zeusd_client_calls_every_method(uds: DaemonProcess) -> None:
    """Zeus's ZeusdClient, found through ZEUSD_SOCK_PATH alone, works for every method."""
    got = run_zeus(
        """
        import json
        from zeus.utils.zeusd import ZeusdClient
        c = ZeusdClient()
        out = {"ids": c.gpu_ids, "names": [g.name for g in c.gpus], "cpus": c.cpu_ids,
               "dram": c.dram_available,
               "can": [c.can_read_gpu, c.can_control_gpu, c.can_read_cpu, c.auth_required]}
        c.set_power_limit([0, 1], 300000)
        c.set_power_limit([2], 250000, block=False)
        out["limit"] = c.get_power_limit()
        out["constraints"] = c.get_power_limit_constraints([0])
        c.set_persistence_mode([1], True)
        out["persistence"] = c.get_persistence_mode([1])
        c.set_gpu_locked_clocks([0], 1005, 1500)
        c.reset_gpu_locked_clocks([0])
        c.set_mem_locked_clocks([0], 2619, 2619)
        c.reset_mem_locked_clocks([0], block=False)
        out["power"] = sorted(c.get_gpu_power().power_mw)
        out["energy"] = sorted(c.get_gpu_energy([0, 3]))
        out["cpu_energy"] = {k: [v.cpu_energy_uj is not None, v.dram_energy_uj]
                             for k, v in c.get_cpu_energy(dram=False).items()}
        out["cpu_power"] = sorted(c.get_cpu_power().power_mw)
        out["time"] = c.get_time() > 1e9
        print(json.dumps(out))
        """,
        ZEUSD_SOCK_PATH=uds.socket_path or "",
    )
    assert got["ids"] == [0, 1, 2, 3]
    assert got["names"] == ["NVIDIA H100 80GB HBM3"] * 4
    assert got["cpus"] == [0, 1]
    assert got["dram"] == [True, False]
    assert got["can"] == [True, True, True, False]
    assert got["limit"] == {"0": 300000, "1": 300000, "2": 250000, "3": 700000}
    assert got["constraints"] == {"0": [200000, 700000]}
    assert got["persistence"] == {"1": True}
    assert got["power"] == [0, 1, 2, 3]
    assert got["energy"] == [0, 3]
    assert got["cpu_energy"] == {"0": [True, None], "1": [True, None]}
    assert got["cpu_power"] == [0, 1]
    assert got["time"] is True
    with uds.connect() as conn:  # what JSON-RPC clients see is the same daemon state
        assert result_of(conn.call("gpu.get_power_limit", gpu_ids=[1])) == {
            "1": {"power_limit_mw": 300000}
        }


def test_zeus_errors_are_zeusd_errors(uds: DaemonProcess) -> None:
    """An out-of-range limit comes back as Zeus's ZeusdError with zeusd's reason in it."""
    got = run_zeus(
        """
        import json
        from zeus.device.exception import ZeusdError
        from zeus.utils.zeusd import ZeusdClient
        try:
            ZeusdClient().set_power_limit([0], 5)
        except ZeusdError as exc:
            print(json.dumps(str(exc)))
        """,
        ZEUSD_SOCK_PATH=uds.socket_path or "",
    )
    assert "power_limit_mw" in got
    assert "-32602" in got


def test_tokens_over_tcp(tmp_path: Path) -> None:
    """Over TCP, Zeus with ZEUSD_TOKEN authenticates; scopes limit it; upstream's tokens work."""
    key = write_token_key(str(tmp_path))
    with running_daemon(
        "--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--signing-key-path", key
    ) as daemon:
        host_port = f"127.0.0.1:{daemon.tcp_port}"
        script = """
            import json
            from zeus.device.exception import ZeusdError
            from zeus.utils.zeusd import ZeusdClient
            c = ZeusdClient()
            out = {"auth": c.auth_required, "error": c.auth_error}
            out["scopes"] = sorted(c.granted_scopes)
            try:
                c.set_power_limit([0], 300000)
                out["write"] = "ok"
            except ZeusdError as exc:
                out["write"] = str(exc)
            try:
                out["read"] = c.get_power_limit([0])
            except ZeusdError as exc:
                out["read"] = str(exc)
            print(json.dumps(out))
        """
        full = run_zeus(
            script, ZEUSD_HOST_PORT=host_port, ZEUSD_TOKEN=issue_token(key, "gpu-control,gpu-read")
        )
        assert full == {
            "auth": True,
            "error": None,
            "scopes": ["gpu-control", "gpu-read"],
            "write": "ok",
            "read": {"0": 300000},
        }
        token = issue_token(key, "gpu-read")
        reader = run_zeus(script, ZEUSD_HOST_PORT=host_port, ZEUSD_TOKEN=token)
        assert "-32002" in reader["write"]
        assert reader["read"] == {"0": 300000}
        # What upstream's `zeusd token issue` makes: HS256 with sub, scopes, exp only.
        with open(key, "rb") as f:
            upstream = jwt.encode(
                {"sub": "bob", "scopes": ["gpu-read"], "exp": 2**31}, f.read(), "HS256"
            )
        theirs = run_zeus(script, ZEUSD_HOST_PORT=host_port, ZEUSD_TOKEN=upstream)
        assert theirs["error"] is None
        assert theirs["scopes"] == ["gpu-read"]
        anonymous = run_zeus(script, ZEUSD_HOST_PORT=host_port)
        assert "requires authentication" in anonymous["error"]
        assert "-32005" in anonymous["write"]


def test_power_streaming_client_reads_two_daemons(rapl_dir: str) -> None:
    """PowerStreamingClient streams GPU and CPU power from two daemons at once."""
    directory = short_tempdir()
    first, second = os.path.join(directory, "a.sock"), os.path.join(directory, "b.sock")
    with (
        running_daemon(f"--rapl-root={rapl_dir}", socket_path=first),
        running_daemon(socket_path=second, sim_gpus=2),
    ):
        got = run_zeus(
            f"""
            import json, time
            from zeus.monitor.power_streaming import PowerStreamingClient
            from zeus.utils.zeusd import ZeusdConfig
            client = PowerStreamingClient([ZeusdConfig.uds({first!r}), ZeusdConfig.uds({second!r})])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                readings = client.get_power()
                if len(readings) == 2 and all(r.gpu_power_w for r in readings.values()) and \\
                        readings[{first!r}].cpu_power_w:
                    break
                time.sleep(0.1)
            client.stop()
            print(json.dumps({{k: [sorted(r.gpu_power_w), sorted(r.cpu_power_w),
                                   min(r.gpu_power_w.values(), default=0) > 0]
                              for k, r in readings.items()}}))
            """
        )
    shutil.rmtree(directory, ignore_errors=True)
    assert got == {first: [[0, 1, 2, 3], [0, 1], True], second: [[0, 1], [], True]}


def test_show_env_finds_the_daemon(uds: DaemonProcess) -> None:
    """python -m zeus.show_env reports zeusd's GPUs, CPUs and capabilities."""
    environ = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    environ |= {"ZEUSD_SOCK_PATH": uds.socket_path or "", "PYTHONPATH": SHIM}
    done = subprocess.run(
        [sys.executable, "-m", "zeus.show_env"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Endpoint: {uds.socket_path}" in out
    assert "GPUs: [(0, 'NVIDIA H100 80GB HBM3')" in out
    assert "can_control_gpu: True" in out
    assert "can_read_cpu: True" in out
    assert "Clock offset:" in out


def test_zeus_monitor_and_a_power_limit_write_through_zeusd(uds: DaemonProcess) -> None:
    """get_gpus() makes ZeusdNVIDIAGPUs; ZeusMonitor measures; a limit write reaches zeusd."""
    got = run_zeus(
        """
        import json, time
        from zeus.device import get_gpus
        from zeus.monitor import ZeusMonitor
        gpus = get_gpus()
        kinds = sorted({type(g).__name__ for g in gpus.gpus})
        monitor = ZeusMonitor(gpu_indices=[0, 1])
        monitor.begin_window("w", sync_execution=False)
        time.sleep(0.2)
        m = monitor.end_window("w", sync_execution=False)
        gpus.set_power_management_limit(0, 320000)
        gpus.set_persistence_mode(1, True)
        joules = min(m.gpu_energy.values()) > 0
        print(json.dumps({"kinds": kinds, "energy": sorted(m.gpu_energy), "joules": joules}))
        """,
        shim=True,
        ZEUSD_SOCK_PATH=uds.socket_path or "",
    )
    assert got == {"kinds": ["ZeusdNVIDIAGPU"], "energy": [0, 1], "joules": True}
    with uds.connect() as conn:
        assert result_of(conn.call("gpu.get_power_limit", gpu_ids=[0])) == {
            "0": {"power_limit_mw": 320000}
        }
        assert result_of(conn.call("gpu.get_persistence_mode", gpu_ids=[1])) == {
            "1": {"enabled": True}
        }


# --- curl --------------------------------------------------------------------------------


def curl(*args: str) -> tuple[int, str]:
    assert CURL, "curl is installed by scripts/test"
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def test_curl_over_unix_socket(uds: DaemonProcess) -> None:
    """curl --unix-socket gets JSON, writes with POST, and the contract's statuses."""
    sock = ["--unix-socket", uds.socket_path or ""]
    code, body = curl(*sock, "http://localhost/discover")
    assert code == 200
    assert json.loads(body)["backend"] == "sim"
    code, body = curl(
        *sock, "-X", "POST", "http://localhost/gpu/set_power_limit?gpu_ids=0&power_limit_mw=280000"
    )
    assert (code, json.loads(body)) == (200, {"applied": [0]})
    code, body = curl(*sock, "http://localhost/gpu/get_power_limit?gpu_ids=0")
    assert json.loads(body) == {"0": {"power_limit_mw": 280000}}
    code, body = curl(*sock, "http://localhost/gpu/get_power_limit?gpu_ids=0,x")
    assert code == 400
    assert json.loads(body)["error"]["data"]["param"] == "gpu_ids"
    assert curl(*sock, "http://localhost/nope")[0] == 404
    assert curl(*sock, "http://localhost/gpu/set_power_limit")[0] == 405
    request = b'{"jsonrpc":"2.0","method":"time","id":1}'
    code, body = curl(
        *sock,
        "-H",
        "content-type: application/json",
        "--data-binary",
        request.decode(),
        "http://localhost/rpc",
    )
    assert code == 200
    assert "timestamp_ms" in json.loads(body)["result"]


def test_curl_streams_and_tcp(tmp_path: Path) -> None:
    """Over TCP curl reads the SSE stream; a token is needed past /discover and /time."""
    key = write_token_key(str(tmp_path))
    with running_daemon(
        "--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", key
    ) as daemon:
        base = f"http://127.0.0.1:{daemon.tcp_port}"
        assert curl(f"{base}/time")[0] == 200
        code, body = curl(f"{base}/gpu/get_power")
        assert code == 401
        assert json.loads(body)["error"]["code"] == -32005
        auth = ["-H", f"Authorization: Bearer {issue_token(key, 'gpu-read')}"]
        code, body = curl(*auth, f"{base}/auth/whoami")
        assert code == 200
        assert json.loads(body)["sub"] == "alice"
        assert curl(*auth, "-X", "POST", f"{base}/gpu/reset_power_limit?gpu_ids=0")[0] == 403
        done = subprocess.run(
            [
                CURL or "curl",
                "-sSN",
                "--max-time",
                "1",
                *auth,
                f"{base}/gpu/stream_power?gpu_ids=0,2",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 28, done.stderr  # 28: stopped by --max-time, as meant
        events = [
            json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("data: ")
        ]
        assert len(events) >= 10
        assert {e["gpu_id"] for e in events} == {0, 2}
