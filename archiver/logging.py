"""Logging: structlog, configured once at the entry point.

JSON lines when stdout is not a terminal, a readable console renderer when it is.
Events are snake_case; pass and run ids are bound; one summary event per run.
:class:`RedactPersonalData` runs before rendering and drops any field whose name is
personal or secret, and masks values that look like Base64 blobs or keys, as a
second line of defence behind code that never logs such data in the first place.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_NAMES = frozenset(
    {
        "cipher_key",
        "token",
        "api_token",
        "authorization",
        "password",
        "secret",
        "first_name",
        "middle_name",
        "last_name",
        "name",
        "full_name",
        "date_of_birth",
        "dob",
        "address",
        "ip_address",
        "document_number",
        "licence_number",
        "images",
        "image",
        "record",
        "verified_identity",
        "requested_identity",
        "ocr",
        "documents",
    }
)
# 40+ Base64 characters in a row: image data, keys, tokens. (Object keys and UUIDs
# break such runs with '-' and '.', so they stay readable.)
_BLOB = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
# An object key's day folders (.../runs/2026/11/30/20261130T...) make such a run
# too, with '/'; random Base64 holding "/yyyy/mm/dd/" is vanishingly unlikely.
_DAY_PATH = re.compile(r"(?:^|/)\d{4}/\d{2}/\d{2}/")
REDACTED = "[redacted]"


class RedactPersonalData:
    """A structlog processor: drop personal/secret fields, mask blob-like values."""

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key.lower() in _SECRET_NAMES:
                event_dict[key] = REDACTED
                continue
            value = event_dict[key]
            if isinstance(value, str) and len(value) >= 40:
                event_dict[key] = _mask(value)
        return event_dict


def _mask(value: str) -> str:
    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        # Keep hex digests (sha256) and UUID-like ids: they are ours, not personal.
        if re.fullmatch(r"[0-9a-f]{40,64}", text):
            return text
        # Keep an object key's path: day folders, each part shorter than a blob.
        if _DAY_PATH.search(text) and all(len(p) < 40 for p in text.split("/")):
            return text
        return REDACTED

    return _BLOB.sub(repl, value)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            RedactPersonalData(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
