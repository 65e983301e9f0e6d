"""FORMAT.md, the archive format, stays in step with the code and the schemas.

Every field of every published schema is described; the object layout table gives
the keys and content types the code writes; the canonical JSON rules are those of the
writer; the sample manifest is a valid version-2 manifest in canonical form.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from archiver.clock import isoformat
from archiver.core import format as fmt
from archiver.core.manifest import canonical_json

ROOT = Path(__file__).parents[1]
SCHEMAS = ROOT / "archiver" / "schemas"
FORMAT = SCHEMAS / "FORMAT.md"


def _text() -> str:
    return FORMAT.read_text(encoding="utf-8")


def _property_names(schema: Any) -> set[str]:
    """Every property name a schema declares, at any depth."""
    names: set[str] = set()
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            names |= set(props)
        for value in schema.values():
            names |= _property_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names |= _property_names(value)
    return names


@pytest.mark.parametrize("schema", sorted(p.name for p in SCHEMAS.glob("*.schema.json")))
def test_every_schema_and_field_is_described(schema):
    text = _text()
    assert f"({schema})" in text, f"FORMAT.md does not link {schema}"
    doc = json.loads((SCHEMAS / schema).read_text())
    undescribed = {n for n in _property_names(doc) if f"`{n}`" not in text}
    assert undescribed == set(), f"{schema}: fields FORMAT.md does not describe"


def _layout_rows() -> dict[str, str]:
    """The object layout table: key pattern → content type."""
    section = _text().split("## Object layout", 1)[1].split("\n\n**", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.MULTILINE)
    return dict(rows)


def test_the_layout_table_is_what_the_code_writes():
    layout = fmt.Layout("{prefix}")
    p = "{pass_id}"
    written = {
        layout.image(p, "{slot}"): fmt.JPEG_TYPE,
        layout.image(p, "{slot}", sealed=True): fmt.OCTET_TYPE,
        layout.record(p): fmt.JSON_TYPE,
        layout.sums(p): fmt.SUMS_TYPE,
        fmt.signature_key(layout.manifest(p)): fmt.OCTET_TYPE,
        layout.manifest(p): fmt.JSON_TYPE,
        layout.runs_root() + "{yyyy}/{mm}/{dd}/{run_id}.json": fmt.JSON_TYPE,
        fmt.signature_key(layout.runs_root() + "{yyyy}/{mm}/{dd}/{run_id}.json"): fmt.OCTET_TYPE,
        layout.public_key("{key_id}"): fmt.PEM_TYPE,
    }
    assert _layout_rows() == written
    day = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    assert layout.run("R", day) == "{prefix}/runs/2026/11/25/R.json"
    text = _text()
    assert f"`{fmt.AGE_SUFFIX}`" in text and f"`{fmt.AGE_TYPE}`" in text
    assert f'`"{fmt.SEALED_PAYLOAD}"`' in text


def test_the_canonical_json_rules_are_the_writers():
    """The bytes FORMAT.md's rules give: sorted keys, no whitespace, UTF-8 as is,
    control characters escaped, integers only, no trailing newline."""
    doc = {"b": '\x01\x1f\n\t"\\/é', "a": [1, -2, True, False, None], "A": {}}
    assert canonical_json(doc) == (
        '{"A":{},"a":[1,-2,true,false,null],"b":"\\u0001\\u001f\\n\\t\\"\\\\/é"}'.encode()
    )
    with pytest.raises(TypeError):
        canonical_json({"x": [1.5]})
    assert isoformat(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    assert (
        isoformat(datetime(2026, 1, 2, 3, 4, 5, 120, tzinfo=UTC)) == "2026-01-02T03:04:05.000120Z"
    )
    text = _text()
    assert "`YYYY-MM-DDTHH:MM:SSZ`" in text and "`YYYY-MM-DDTHH:MM:SS.ffffffZ`" in text


def test_the_sample_manifest_is_a_valid_canonical_v2_manifest():
    block = _text().split("A sample (pretty-printed", 1)[1].split("```json\n", 1)[1]
    sample = json.loads(block.split("\n```", 1)[0])
    data = canonical_json(sample)
    manifest = fmt.PassManifest.parse(data)  # validates against the v2 schema
    assert manifest.manifest_version == fmt.MANIFEST_VERSION == 2
    assert b" " not in data.replace(b"; charset", b"") and b"\n" not in data
    assert manifest.image_count == sum(1 for o in manifest.objects if o.role == "image")
    assert manifest.image_bytes == sum(o.size for o in manifest.objects if o.role == "image")
    assert [o.key for o in manifest.objects] == sorted(o.key for o in manifest.objects)
