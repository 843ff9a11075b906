"""The container image (Dockerfile) and the Kubernetes DaemonSet: valid, least privilege, and
consistent with the daemon they run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from process_helpers import running_daemon, short_tempdir
from zeusd.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "zeusd-daemonset.yaml"
DOCKERFILE = ROOT / "Dockerfile"
#: Kubernetes releases whose schemas the manifest must satisfy (kubernetes-validate bundles
#: them): the oldest still common in clusters, and the newest it knows.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def manifest() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def daemonset() -> dict[str, Any]:
    (found,) = [doc for doc in manifest() if doc["kind"] == "DaemonSet"]
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = daemonset()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return only


def socket_path_in(args: list[str]) -> str:
    parsed = build_parser().parse_args(args)
    assert parsed.socket_path, args
    return str(parsed.socket_path)


def state_dir_in(args: list[str]) -> str:
    parsed = build_parser().parse_args(args)
    assert parsed.state_dir, args
    return str(parsed.state_dir)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifest_is_valid_kubernetes(version: str) -> None:
    """Every object validates strictly (unknown fields too) against the Kubernetes schema."""
    docs = manifest()
    assert [doc["kind"] for doc in docs] == ["Namespace", "DaemonSet"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_misspelt_field_is_caught_by_the_schema_check() -> None:
    """The check is not vacuous: a typo in the security context fails it."""
    doc = daemonset()
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_container_keeps_only_cap_sys_admin() -> None:
    """Root with CAP_SYS_ADMIN only: all else dropped, not privileged, no escalation, no host
    namespaces, read-only root, no service account token."""
    ctx = container()["securityContext"]
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert ctx["privileged"] is False
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["runAsUser"] == 0
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    spec = pod_spec()
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host_namespace), host_namespace
    assert spec["automountServiceAccountToken"] is False
    namespace = manifest()[0]
    assert namespace["metadata"]["name"] == daemonset()["metadata"]["namespace"]


def test_socket_lives_in_the_host_directory_workloads_mount() -> None:
    """zeusd's socket is in a hostPath volume, and the probes ask that socket."""
    c = container()
    path = socket_path_in(c["args"])
    (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == "/run/zeusd"
    assert not mount.get("readOnly")
    for probe in ("livenessProbe", "readinessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[:3] == ["zeusctl", "--socket-path", path], probe


def test_the_probe_command_passes_against_zeusd_run_with_the_manifests_args() -> None:
    """zeusd accepts the DaemonSet's args, and the liveness probe's command succeeds on it."""
    c = container()
    directory = short_tempdir()
    here = os.path.join(directory, "zeusd.sock")
    path = socket_path_in(c["args"])
    state = state_dir_in(c["args"])
    assert os.path.dirname(state) == os.path.dirname(path)
    args = [
        a.replace(path, here).replace(state, os.path.join(directory, "state")) for a in c["args"]
    ]
    try:
        with running_daemon(*args) as daemon:
            assert daemon.address == f"unix:{here}"
            assert os.stat(here).st_mode & 0o777 == 0o666
            assert os.stat(os.path.join(directory, "state")).st_mode & 0o777 == 0o700
            command = [a.replace(path, here) for a in c["livenessProbe"]["exec"]["command"]]
            zeusctl = shutil.which("zeusctl") or str(Path(daemon.args[0]).with_name("zeusctl"))
            done = subprocess.run(
                [zeusctl, *command[1:]], capture_output=True, text=True, timeout=30, check=False
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout)["timestamp_ms"], int)


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_image_runs_zeusd_on_the_socket_the_manifest_mounts() -> None:
    """The image's default command serves the same socket path the DaemonSet passes, inside
    its declared volume, as root (NVML needs it), from a two-stage build."""
    steps = _instructions()
    final = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    assert sum(word == "FROM" for word, _ in steps) == 2
    last = dict(steps[final:])
    assert json.loads(last["ENTRYPOINT"]) == ["zeusd"]
    cmd = json.loads(last["CMD"])
    path = socket_path_in(cmd)
    assert path == socket_path_in(container()["args"])
    (volume,) = json.loads(last["VOLUME"])
    assert os.path.dirname(path) == volume
    # Restore records outlive the container, in a directory apart from the socket's.
    state = state_dir_in(cmd)
    assert state == state_dir_in(container()["args"])
    assert os.path.dirname(state) == volume
    assert last["USER"] == "0:0"
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=utility\b", last["ENV"])


def test_build_context_is_only_what_the_image_needs() -> None:
    """.dockerignore lets in only pyproject.toml, README.md and src/ (what the COPYs use)."""
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "src"}
    copied = set()
    for word, rest in _instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    assert copied == allowed
