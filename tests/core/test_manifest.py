import hashlib
from datetime import UTC, datetime

import orjson
import pytest

from archiver.core import manifest as mf
from archiver.core.format import (
    MANIFEST_SCHEMA,
    RUN_MANIFEST_SCHEMA,
    Layout,
    ObjectEntry,
    PassFacts,
    PassManifest,
    load_schema,
)
from archiver.errors import ArchiverError, FormatError

T = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
PID = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"


def _objects():
    lay = Layout("archive")
    return [
        ObjectEntry(
            "image",
            lay.image(PID, "probe"),
            10,
            "a" * 64,
            "image/jpeg",
            "v1",
            slot="probe",
            width=4,
            height=3,
        ),
        ObjectEntry("record", lay.record(PID), 5, "b" * 64, "application/json", None),
        ObjectEntry("checksums", lay.sums(PID), 7, "c" * 64, "text/plain", None),
    ]


def _doc(**over):
    objects = _objects()
    args = dict(
        pass_id=PID,
        run_id="r1",
        archived_at=T,
        archiver_version="0.1.0",
        facts=PassFacts("complete", "passed", T, T, 30, T),
        objects=objects,
        slots=mf.SlotReport(null_slots=("selfie",), absent_slots=("id_photo",), reads=2),
        decryption="server",
        sse="aws:kms",
        kms_key_id="k",
        signing_key_id="0123456789abcdef",
    )
    args.update(over)
    return mf.build_manifest(**args)


def test_canonical_json_is_sorted_compact_and_stable():
    """Canonical JSON sorts keys, has no whitespace, and is byte-stable."""
    a = mf.canonical_json({"b": 1, "a": [2, {"d": None, "c": "x"}]})
    assert a == b'{"a":[2,{"c":"x","d":null}],"b":1}'
    assert mf.canonical_json(orjson.loads(a)) == a


def test_canonical_json_refuses_floats():
    """Floats have no canonical form here, so they are refused."""
    with pytest.raises(TypeError):
        mf.canonical_json({"x": 0.1})


def test_manifest_bytes_validate_and_hash():
    """A built manifest validates against the schema and hashes its exact bytes."""
    data, digest = mf.manifest_bytes(_doc())
    assert digest == hashlib.sha256(data).hexdigest()
    manifest = PassManifest.parse(data)
    assert manifest.image_count == 1 and manifest.image_bytes == 10
    assert orjson.loads(data)["archived_at"] == "2026-05-04T03:02:01Z"
    assert manifest.archived_at == datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert [o.role for o in manifest.objects] == ["checksums", "image", "record"]
    assert manifest.pass_id == PID and manifest.signing_key_id == "0123456789abcdef"


def test_same_content_gives_same_bytes_regardless_of_object_order():
    """Objects are sorted by key, so input order does not change the bytes."""
    d1 = _doc()
    d2 = _doc(objects=list(reversed(_objects())))
    assert mf.canonical_json(d2) == mf.canonical_json(d1)


def test_unknown_version_is_rejected_on_read():
    """A manifest of an unknown version is refused, not half-read."""
    doc = _doc()
    doc["manifest_version"] = 3
    with pytest.raises(FormatError, match="manifest_version 3") as caught:
        PassManifest.parse(orjson.dumps(doc))
    assert isinstance(caught.value, ArchiverError) and not caught.value.retryable


def test_schema_violation_names_the_place():
    """A manifest that breaks the schema says where."""
    doc = _doc()
    doc["objects"][0]["sha256"] = "xyz"
    with pytest.raises(FormatError, match="objects/0/sha256"):
        mf.validate(doc)


def test_sha256sums_format_matches_coreutils():
    """SHA256SUMS lines are '<hex>  <path>' sorted by path, as sha256sum writes them."""
    out = mf.sha256sums([("record.json", "b" * 64), ("images/probe.jpg", "a" * 64)])
    assert out == ("a" * 64 + "  images/probe.jpg\n" + "b" * 64 + "  record.json\n").encode()


def test_published_schema_is_the_packaged_one():
    """config/schemas holds exactly the schema the archiver validates with."""
    from pathlib import Path

    for name in (MANIFEST_SCHEMA, RUN_MANIFEST_SCHEMA):
        published = Path(__file__).parents[2] / "config" / "schemas" / name
        assert orjson.loads(published.read_bytes()) == load_schema(name)


def test_layout_keys_hold_only_ids_and_slots():
    """Keys are built from the prefix, pass id, slot and fixed names only."""
    lay = Layout("/archive/")
    assert lay.image(PID, "probe") == f"archive/passes/{PID}/images/probe.jpg"
    assert lay.manifest(PID) == f"archive/passes/{PID}/manifest.json"
    assert lay.run("r1", T) == "archive/runs/2026/05/04/r1.json"
    assert lay.relative(PID, lay.image(PID, "probe")) == "images/probe.jpg"
    assert Layout("").record(PID) == f"passes/{PID}/record.json"


def test_version_2_tells_null_slots_from_absent_ones():
    """Version 2 lists the slots answered null apart from those never present."""
    data, _ = mf.manifest_bytes(_doc())
    manifest = PassManifest.parse(data)
    assert manifest.manifest_version == 2
    assert manifest.null_slots == ("selfie",) and manifest.absent_slots == ("id_photo",)
    assert manifest.reads == 2
    assert manifest.missing_slots == ("id_photo", "selfie")


def test_a_version_1_manifest_still_reads_with_null_or_absent_unknown():
    """A manifest written before version 2 is read as it is: its ``missing_slots``,
    and no claim about which of them were null."""
    doc = _doc()
    doc["manifest_version"] = 1
    del doc["null_slots"], doc["absent_slots"], doc["reads"]
    doc["missing_slots"] = ["id_photo", "selfie"]
    manifest = PassManifest.parse(mf.canonical_json(doc))
    assert manifest.manifest_version == 1
    assert manifest.missing_slots == ("id_photo", "selfie")
    assert manifest.null_slots is None and manifest.absent_slots is None
    assert manifest.reads is None


def test_version_2_slot_names_must_match_whole():
    """``probe\\n`` is not a slot name (Python's ``$`` would let it through)."""
    doc = _doc()
    doc["null_slots"] = ["probe\n"]
    with pytest.raises(FormatError, match="null_slots/0"):
        mf.validate(doc)
