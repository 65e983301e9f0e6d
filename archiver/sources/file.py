"""The ``file`` source: a JSONL or CSV export of the customer's own pass ledger.

Columns / keys: ``id`` (required, a UUID), ``cipher_key`` (optional, Base64 of 32
bytes), ``completed_at`` (optional, ISO 8601 with a timezone),
``image_retention_days`` (optional, 0..5000). Other keys are ignored. A bad line is
reported by line number and field, never by its content, and does not stop the
import of the others.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from archiver.catalog import PassUpsert
from archiver.sources.records import (
    normalise_pass_id,
    parse_cipher_key,
    parse_retention,
    parse_timestamp,
)

__all__ = ["LineError", "detect_format", "normalise_pass_id", "parse_record", "read_file"]


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    reason: str


def parse_record(record: Any, source: str) -> PassUpsert:
    if not isinstance(record, dict):
        raise ValueError("line is not an object")
    return PassUpsert(
        pass_id=normalise_pass_id(record.get("id")),
        source=source,
        cipher_key=parse_cipher_key(record.get("cipher_key")),
        completed_at=parse_timestamp(record.get("completed_at"), "completed_at"),
        image_retention_days=parse_retention(record.get("image_retention_days")),
    )


def _records(text: str, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield n, orjson.loads(line)
            except orjson.JSONDecodeError:
                yield n, ValueError("line is not valid JSON")
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "id" not in [f.strip() for f in reader.fieldnames]:
            yield 1, ValueError("CSV header has no 'id' column")
            return
        for row in reader:
            cleaned = {(k or "").strip(): v for k, v in row.items()}
            yield reader.line_num, cleaned


def detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def read_file(
    path: Path, *, source: str = "file", fmt: str | None = None
) -> tuple[list[PassUpsert], list[LineError]]:
    """Parse a whole export. Duplicate ids keep the first line and report the others."""
    text = path.read_text(encoding="utf-8-sig")
    fmt = fmt or detect_format(path, text)
    good: list[PassUpsert] = []
    bad: list[LineError] = []
    seen: set[str] = set()
    for n, record in _records(text, fmt):
        if isinstance(record, ValueError):
            bad.append(LineError(n, str(record)))
            continue
        try:
            item = parse_record(record, source)
        except ValueError as exc:
            bad.append(LineError(n, str(exc)))
            continue
        if item.pass_id in seen:
            bad.append(LineError(n, "duplicate id (first occurrence kept)"))
            continue
        seen.add(item.pass_id)
        good.append(item)
    return good, bad
