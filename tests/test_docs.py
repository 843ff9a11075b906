"""The docs stay in step with the code: docs/protocol.md against rpc.discover, README links."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from zeusd import __version__
from zeusd.core.methods import build_methods
from zeusd.rpc.dispatch import notification_line
from zeusd.rpc.openrpc import openrpc_document, with_rpc_discover
from zeusd.stream.outbox import PowerSample


def _document() -> dict[str, Any]:
    return openrpc_document(__version__, with_rpc_discover(build_methods()))


ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
_OVERVIEW_ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]+) \| ([^|]+) \|", re.MULTILINE)
_METHOD_NAME = re.compile(r"`((?:gpu|cpu|session)\.[a-z_]+|discover|time|rpc\.discover)`")
_HEADING = re.compile(r"^#{3,4} (.+)$", re.MULTILINE)


def served() -> dict[str, dict[str, object]]:
    """Every method ``rpc.discover`` describes, by name."""
    return {m["name"]: m for m in _document()["methods"]}


def overview() -> dict[str, tuple[str, list[str]]]:
    """The Methods overview table of protocol.md: method -> (group, params as written)."""
    table = PROTOCOL.split("### Overview", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for name, group, params in _OVERVIEW_ROW.findall(table):
        written = [] if params.strip() == "none" else re.findall(r"`([a-z_]+\??)`", params)
        rows[name] = (group.strip(), written)
    return rows


def test_overview_lists_exactly_the_served_methods() -> None:
    """Every served method is in the overview table, and the table names no other method."""
    assert sorted(overview()) == sorted(served())


def test_overview_params_and_groups_match() -> None:
    """Each row names the method's params (``?`` exactly on optional ones) and its group."""
    for name, method in served().items():
        group, written = overview()[name]
        params = method["params"]
        assert isinstance(params, list)
        expected = [p["name"] + ("" if p["required"] else "?") for p in params]
        assert written == expected, name
        assert group == method.get("x-api-group", "—"), name


def test_every_method_has_a_section_naming_its_params() -> None:
    """Each method appears in a heading, and each of its params appears in the page."""
    headings = "\n".join(_HEADING.findall(PROTOCOL))
    for name, method in served().items():
        assert f"`{name}`" in headings, f"no section for {name}"
        params = method["params"]
        assert isinstance(params, list)
        for param in params:
            assert f"`{param['name']}`" in PROTOCOL, f"{name}: param {param['name']} undocumented"


def _notification_methods() -> set[str]:
    """Methods the daemon sends (subscription notifications), as named where hubs are made."""
    app = (ROOT / "src" / "zeusd" / "app.py").read_text(encoding="utf-8")
    kinds = re.findall(r'PowerHub\(\s*"([a-z]+)"', app)
    lines = [notification_line(PowerSample(kind, "s", 0, {})) for kind in kinds]
    return {json.loads(line)["method"] for line in lines}


def test_no_documented_method_that_does_not_exist() -> None:
    """Method names in backticks are served or sent by the daemon (planned ones excepted)."""
    assert _notification_methods() == {"gpu.power", "cpu.power"}
    paragraphs = PROTOCOL.split("\n\n")
    current = "\n\n".join(p for p in paragraphs if not p.startswith("Planned"))
    unknown = set(_METHOD_NAME.findall(current)) - set(served()) - _notification_methods()
    assert unknown == set()


def test_readme_links_every_doc_and_example() -> None:
    """The README links each page under docs/ and each file under examples/ and deploy/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([^)#]+)", readme))
    wanted = {
        str(path.relative_to(ROOT))
        for pattern in ("docs/*.md", "examples/*", "deploy/systemd/*")
        for path in ROOT.glob(pattern)
    }
    assert wanted - linked == set()
