"""Request-body validation for the sandbox: every rule the ID Pass API has about inputs.

Each helper raises :class:`~archiver.sandbox.state.SandboxError` (400) naming the
field and the rule, never echoing the value, which may be personal data. Unknown
fields are ignored, as a lenient API would.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import orjson

from archiver.sandbox.people import DOCUMENT_TYPES
from archiver.sandbox.state import (
    DEFAULT_SKEW_DAYS,
    IMAGE_FORMS,
    MISSING_SLOT_FORMS,
    RATE_KINDS,
    Fault,
    FaultRates,
    SandboxError,
    WireOptions,
)
from archiver.sandbox.wire import SLOTS, STATUSES

DOCUMENT_VERIFICATIONS = ("dvs", "basic", "idsp")
WEBHOOK_EVENTS = ("opened", "in_progress", "complete", "expired", "failed", "cancelled")
IDENTITY_FIELDS = ("first_name", "middle_name", "last_name", "date_of_birth")
FAULT_KINDS = (
    "status",
    "truncated",
    "corrupt_image",
    "delay",
    "drop",
    "invalid_base64",
    "truncated_base64",
    "not_jpeg",
    "wrong_content_type",
    "html_error",
    "invalid_json",
    "null_slot",
    "empty_images",
    "clock_skew",
    "cut_body",
    "error_envelope",
)
MAX_DAYS = 3650
MAX_COUNT = 10_000


def bad(field: str, rule: str, code: str = "invalid_field") -> SandboxError:
    return SandboxError(400, code, f"{field}: {rule}")


def read_object(body: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}`` if allowed)."""
    if allow_empty and not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SandboxError(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise SandboxError(400, "invalid_json", "request body must be a JSON object")
    return doc


def opt_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, "must be a boolean")
    return value


def opt_int(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, "must be an integer")
    if not lo <= value <= hi:
        raise bad(name, f"must be between {lo} and {hi}")
    return value


def opt_number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(name, "must be a number")
    if not lo <= value <= hi:
        raise bad(name, f"must be between {lo} and {hi}")
    return float(value)


def opt_str(body: dict[str, Any], name: str, *, choices: tuple[str, ...] = ()) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise bad(name, "must be a non-empty string")
    if choices and value not in choices:
        raise bad(name, f"must be one of {', '.join(choices)}")
    return value


def opt_url(body: dict[str, Any], name: str) -> str | None:
    value = opt_str(body, name)
    if value is not None and not value.startswith(("https://", "http://")):
        raise bad(name, "must be an http(s) URL")
    return value


def opt_list(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise bad(name, "must be a non-empty array")
    if any(item not in choices for item in value):
        raise bad(name, f"items must be among {', '.join(choices)}")
    if len(set(value)) != len(value):
        raise bad(name, "must not repeat items")
    return list(value)


def opt_datetime(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise bad(name, "must be an ISO 8601 timestamp with a timezone")
    return parsed


def pass_id(value: Any, name: str = "id") -> str:
    """A pass id in canonical form; anything but a UUID string is a bad request."""
    if not isinstance(value, str):
        raise bad(name, "must be a UUID string", "invalid_id")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise bad(name, "must be a UUID string", "invalid_id") from None


def requested_identity(value: Any) -> dict[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("requested_identity", "must be an object")
    out: dict[str, str | None] = {}
    for key in IDENTITY_FIELDS:
        out[key] = opt_str(value, key)
    if not (out["first_name"] or out["last_name"]):
        raise bad("requested_identity", "needs first_name or last_name")
    dob = out["date_of_birth"]
    if dob is not None:
        try:
            date.fromisoformat(dob)
        except ValueError:
            raise bad("requested_identity.date_of_birth", "must be YYYY-MM-DD") from None
    return out


def parse_register(body: dict[str, Any]) -> dict[str, Any]:
    """The complete configuration of a pass registered with ``body`` (defaults filled)."""
    require_id_photo = opt_bool(body, "require_id_photo", False)
    purpose = opt_str(body, "id_photo_purpose")
    if require_id_photo and purpose is None:
        raise bad("id_photo_purpose", "is required when require_id_photo is true")
    webhook_url = opt_url(body, "webhook_url")
    webhook_events = opt_list(body, "webhook_events", WEBHOOK_EVENTS)
    if webhook_events and webhook_url is None:
        raise bad("webhook_events", "needs webhook_url")
    return {
        "link_validity_days": opt_int(body, "link_validity_days", 7, 1, 14),
        "image_retention_days": opt_int(body, "image_retention_days", 0, 0, 5000),
        "check_liveness": opt_bool(body, "check_liveness", True),
        "document_1_allowed_types": (
            opt_list(body, "document_1_allowed_types", DOCUMENT_TYPES) or ["licence", "passport"]
        ),
        "document_2_allowed_types": opt_list(body, "document_2_allowed_types", DOCUMENT_TYPES),
        "document_3_allowed_types": opt_list(body, "document_3_allowed_types", DOCUMENT_TYPES),
        "document_verification": (
            opt_str(body, "document_verification", choices=DOCUMENT_VERIFICATIONS) or "dvs"
        ),
        "require_id_photo": require_id_photo,
        "id_photo_purpose": purpose,
        "webhook_url": webhook_url,
        "webhook_events": webhook_events,
        "return_url": opt_url(body, "return_url"),
        "requested_identity": requested_identity(body.get("requested_identity")),
        "privacy_policy_url": opt_url(body, "privacy_policy_url"),
        "requester_name": opt_str(body, "requester_name"),
    }


def opt_slots(body: dict[str, Any]) -> list[str] | None:
    value = body.get("slots")
    if value is None:
        return None
    if not isinstance(value, list) or any(s not in SLOTS for s in value):
        raise bad("slots", "must be an array of slot names")
    return list(value)


def _transient_fields(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """``days`` of a ``clock_skew`` fault; ``seed`` and ``slots`` of a ``null_slot``
    fault (without ``slots``, the slots are drawn with ``seed``)."""
    if kind == "clock_skew":
        days = opt_number(body, "days", -MAX_DAYS, MAX_DAYS)
        return {"days": DEFAULT_SKEW_DAYS if days is None else days}
    if kind == "null_slot":
        slots = opt_slots(body)
        return {"seed": _opt_seed(body), "slots": tuple(slots) if slots else None}
    return {}


def opt_status(body: dict[str, Any], name: str = "status") -> str | None:
    return opt_str(body, name, choices=STATUSES)


def opt_verification(body: dict[str, Any]) -> str | None:
    return opt_str(body, "verification_status", choices=("passed", "failed"))


def parse_fault(body: dict[str, Any]) -> Fault:
    kind = opt_str(body, "kind", choices=FAULT_KINDS)
    if kind is None:
        raise bad("kind", f"is required: one of {', '.join(FAULT_KINDS)}")
    status = opt_int(body, "status", 503, 400, 599) if kind == "status" else None
    seconds = opt_number(body, "seconds", 0, 600)
    if kind == "delay" and seconds is None:
        raise bad("seconds", "is required for a delay")
    target = body.get("pass_id")
    path = opt_str(body, "path")
    if path is not None and not path.startswith("/idpass/"):
        raise bad("path", "must be a public route such as /idpass/details")
    return Fault(
        kind=kind,
        remaining=opt_int(body, "count", 1, 1, 1_000_000),
        status=status,
        retry_after=opt_number(body, "retry_after", 0, 86_400),
        seconds=seconds,
        path=path,
        pass_id=pass_id(target, "pass_id") if target is not None else None,
        **_transient_fields(body, kind),
    )


def _public_path(path: object, name: str) -> str:
    if not isinstance(path, str) or not path.startswith("/idpass/"):
        raise bad(name, "must be a public route such as /idpass/details")
    return path


def _rate_probabilities(body: dict[str, Any]) -> dict[str, float]:
    """``rates``: a probability for each kind named (known kinds only), adding up to 1
    at most."""
    rates = body.get("rates")
    if not isinstance(rates, dict) or not rates:
        raise bad("rates", f"is required: an object of probabilities for {', '.join(RATE_KINDS)}")
    parsed: dict[str, float] = {}
    for kind in rates:
        if kind not in RATE_KINDS:
            raise bad("rates", f"unknown kind; expected one of {', '.join(RATE_KINDS)}")
        value = opt_number(rates, kind, 0, 1)
        if value is None:
            raise bad(f"rates.{kind}", "must be a number between 0 and 1")
        parsed[kind] = value
    if sum(parsed.values()) > 1 + 1e-9:
        raise bad("rates", "the probabilities add up to more than 1")
    return parsed


def _opt_seed(body: dict[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad("seed", "must be an integer")
    return seed


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _latency_range(body: dict[str, Any]) -> tuple[float, float]:
    """``latency_seconds``: seconds, or ``[low, high]``, between 0 and 600 (default 1)."""
    latency = body.get("latency_seconds", 1.0)
    if _is_seconds(latency):
        latency = [latency, latency]
    if (
        not isinstance(latency, list)
        or len(latency) != 2
        or not all(_is_seconds(x) for x in latency)
        or not 0 <= latency[0] <= latency[1] <= 600
    ):
        raise bad("latency_seconds", "must be seconds, or [low, high], between 0 and 600")
    return float(latency[0]), float(latency[1])


def _opt_paths(body: dict[str, Any]) -> tuple[str, ...] | None:
    paths = body.get("paths")
    if paths is None:
        return None
    if not isinstance(paths, list) or not paths:
        raise bad("paths", "must be a non-empty list of public routes")
    return tuple(_public_path(p, "paths") for p in paths)


def parse_fault_rates(body: dict[str, Any]) -> FaultRates:
    """``{"rates": {kind: probability}, "seed", "latency_seconds", "retry_after",
    "paths", "skew_days"}``: see :class:`~archiver.sandbox.state.FaultRates`."""
    rates = _rate_probabilities(body)
    seed = _opt_seed(body)
    latency = _latency_range(body)
    retry_after = opt_number(body, "retry_after", 0, 86_400) if "retry_after" in body else 1.0
    return FaultRates(
        rates=rates,
        seed=seed,
        latency_seconds=latency,
        retry_after=retry_after,
        paths=_opt_paths(body),
        skew_days=_opt_skew(body),
    )


def _opt_skew(body: dict[str, Any]) -> float:
    days = opt_number(body, "skew_days", -MAX_DAYS, MAX_DAYS)
    return DEFAULT_SKEW_DAYS if days is None else days


def parse_options(body: dict[str, Any], current: WireOptions) -> WireOptions:
    """``{"image_form", "missing_slots"}``: the fields given replace ``current``'s."""
    return WireOptions(
        image_form=opt_str(body, "image_form", choices=IMAGE_FORMS) or current.image_form,
        missing_slots=(
            opt_str(body, "missing_slots", choices=MISSING_SLOT_FORMS) or current.missing_slots
        ),
    )
