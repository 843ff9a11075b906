"""``rpc.discover`` validated against the official OpenRPC meta-schema, fetched from npm.

The schema is not vendored: ``npm pack`` fetches the published packages into a cache dir
(@open-rpc/meta-schema, and @json-schema-tools/meta-schema, which it references for every
JSON Schema inside the document). Offline, the test skips, except under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT7

from zeusd import __version__
from zeusd.core.methods import build_methods
from zeusd.rpc.openrpc import openrpc_document, with_rpc_discover


def _document() -> dict[str, Any]:
    return openrpc_document(__version__, with_rpc_discover(build_methods()))


OPENRPC_PACKAGE = "@open-rpc/meta-schema@1.14.9"
JSON_SCHEMA_PACKAGE = "@json-schema-tools/meta-schema@1.8.0"
JSON_SCHEMA_ID = "https://meta.json-schema.tools/"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zeusd-tests" / "npm"


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def _npm_package(spec: str) -> Path:
    """Fetch *spec* with ``npm pack`` (once) and unpack it; returns the package directory."""
    name = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-")
    target = CACHE / f"{name}-{spec.rsplit('@', 1)[1]}"
    if (target / "package" / "package.json").exists():
        return target / "package"
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is missing (scripts/test installs it)")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(npm), "pack", spec, "--pack-destination", str(target), "--silent"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        _unavailable(f"npm pack {spec} failed: {done.stderr.strip()[-500:]}")
    (tarball,) = target.glob("*.tgz")
    with tarfile.open(tarball) as archive:
        archive.extractall(target, filter="data")
    return target / "package"


def _exported_object(package: Path, export: str) -> Any:
    """The JSON value a CommonJS package exports under *export* (read with node)."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is missing (scripts/test installs it)")
    script = f"process.stdout.write(JSON.stringify(require({str(package)!r}).{export}))"
    done = subprocess.run(
        [str(node), "-e", script], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    meta = _exported_object(_npm_package(OPENRPC_PACKAGE), "openrpcDocument")
    json_schema = json.loads((_npm_package(JSON_SCHEMA_PACKAGE) / "schema.json").read_text())
    resource = DRAFT7.create_resource(json_schema)
    registry: Registry[Any] = Registry().with_resources(
        [(JSON_SCHEMA_ID, resource), (JSON_SCHEMA_ID.rstrip("/"), resource)]
    )
    return jsonschema.Draft7Validator(meta, registry=registry)


def test_rpc_discover_is_a_valid_openrpc_document(validator: jsonschema.Draft7Validator) -> None:
    """The document has no meta-schema violations."""
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(_document())
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("methods", 1, "bogus"), 1),  # an unknown member of a method object
        (("methods", 3, "params", 0, "schema", "type"), 5),  # a broken JSON Schema
        (("openrpc",), "9.9.9"),  # an OpenRPC version that does not exist
    ],
)
def test_meta_schema_catches_a_broken_document(
    validator: jsonschema.Draft7Validator, path: tuple[Any, ...], value: Any
) -> None:
    """The check has teeth: each kind of mistake alone makes the document invalid."""
    broken = json.loads(json.dumps(_document()))
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert not validator.is_valid(broken)


def test_every_param_and_result_schema_is_valid_json_schema() -> None:
    """Each schema in the method table is itself a valid draft-07 JSON Schema."""
    for spec in build_methods().values():
        for schema in [spec.result, *(p.schema for p in spec.params)]:
            jsonschema.Draft7Validator.check_schema(schema)
