"""The sandbox's in-memory state: passes, a settable clock and injected faults.

A :class:`PassRecord` is frozen; every change replaces the record in the store
under one lock, so a request handler that holds a record reads a consistent pass
without copying it. Personal data is never stored apart from the record: it is the
:class:`~archiver.sandbox.people.Persona` derived from the pass id (plus, for
registered passes, the ``requested_identity`` the caller supplied).
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from archiver.clock import Clock
from archiver.sandbox import cipher
from archiver.sandbox.people import Persona, make_persona
from archiver.sandbox.wire import SLOTS, STATUSES, TERMINAL_STATUSES, timestamp

OPEN_STATUSES = frozenset({"new", "opened", "in_progress"})
CONSENTED_STATUSES = frozenset({"in_progress", "complete", "failed"})
#: Slots an admin-created pass has when the caller names none.
DEFAULT_SLOTS: dict[str, tuple[str, ...]] = {
    "complete": (
        "probe",
        "document_1_front",
        "document_1_back",
        "document_1_photo",
        "id_photo",
        "id_photo_cropped",
    ),
    "failed": ("probe", "document_1_front", "document_1_back"),
}
REQUESTER_NAME = "Sandbox Lending Pty Ltd"
PRIVACY_POLICY_URL = "https://sandbox.invalid/privacy"


class SandboxError(Exception):
    """A request the sandbox refuses; the app turns it into the API's JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def not_found() -> SandboxError:
    return SandboxError(404, "pass_not_found", "no pass with this id")


# --- clock -------------------------------------------------------------------------


@runtime_checkable
class SettableClock(Clock, Protocol):
    """A clock the admin routes can move (``ManualClock`` and :class:`OffsetClock`)."""

    def advance(self, delta: timedelta) -> datetime: ...

    def set(self, when: datetime) -> None: ...


class OffsetClock:
    """Real time plus an offset: time keeps flowing, and tests can jump it."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._offset += delta
            return datetime.now(UTC) + self._offset

    def set(self, when: datetime) -> None:
        with self._lock:
            self._offset = when - datetime.now(UTC)

    def reset(self) -> None:
        with self._lock:
            self._offset = timedelta(0)


# --- passes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassRecord:
    """One pass as the sandbox knows it. ``repr`` shows no personal data or key."""

    id: str
    cipher_key: str = field(repr=False)
    api_reference: str
    config: Mapping[str, Any] = field(repr=False)
    persona: Persona = field(repr=False)
    status: str
    verification_status: str | None
    created_at: datetime
    consent_given_at: datetime | None
    completed_at: datetime | None
    slots: tuple[str, ...]
    requested_identity_mismatch: bool

    @property
    def seed(self) -> int:
        return uuid.UUID(self.id).int

    @property
    def image_retention_days(self) -> int:
        return int(self.config["image_retention_days"])

    def images_available(self, now: datetime) -> bool:
        """The documented retention rule: is ``now`` inside this pass's image window?"""
        if self.status not in ("complete", "failed") or not self.slots:
            return False
        if self.completed_at is None or self.image_retention_days == 0:
            return False
        return now < self.completed_at + timedelta(days=self.image_retention_days)

    def ledger_entry(self) -> dict[str, Any]:
        """What a customer's KYC system would have recorded about this pass."""
        return {
            "id": self.id,
            "cipher_key": self.cipher_key,
            "status": self.status,
            "created_at": timestamp(self.created_at),
            "completed_at": timestamp(self.completed_at) if self.completed_at else None,
            "image_retention_days": self.image_retention_days,
        }


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected failure, consumed by the next ``remaining`` matching public calls.

    ``kind`` is ``status`` (answer ``status`` with an error body, plus
    ``Retry-After: retry_after`` when set), ``truncated`` (cut the JSON body in half),
    ``corrupt_image`` (truncate the first image's JPEG before encoding), ``delay``
    (sleep ``seconds`` before answering normally), or one of the kinds that
    :class:`FaultRates` also draws: ``drop`` (send the headers and part of the body,
    then close the connection), ``invalid_base64`` / ``truncated_base64`` /
    ``not_jpeg`` (spoil the first image: a character outside the alphabet, cut to a
    length that is not a multiple of 4, or a PNG in its place), ``wrong_content_type``
    (the right JSON as ``text/plain``), ``html_error`` (a 502 HTML page, as a gateway
    would send) or ``invalid_json`` (a 200 whose JSON body does not parse).

    The transient kinds seen upstream, where a read right after gives the full answer:
    ``null_slot`` (slots that hold an image answer ``null``: those in ``slots``, or
    one or more drawn with ``seed``), ``empty_images`` (``images: {}`` inside the
    window), ``clock_skew`` (the window is judged, and ``Date`` sent, by a clock
    ``days`` ahead, default 31), ``cut_body`` (a 200 with the full ``Content-Length``,
    cut off in the middle of the first image, connection closed) and
    ``error_envelope`` (HTTP 200 carrying ``{"error": {"code": "internal", ...}}``).
    """

    kind: str
    remaining: int = 1
    status: int | None = None
    retry_after: float | None = None
    seconds: float | None = None
    path: str | None = None
    pass_id: str | None = None
    days: float | None = None
    seed: int | None = None
    slots: tuple[str, ...] | None = None

    def matches(self, path: str, pass_id: str | None) -> bool:
        if self.path is not None and self.path != path:
            return False
        return self.pass_id is None or self.pass_id == pass_id

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "remaining": self.remaining,
            "status": self.status,
            "retry_after": self.retry_after,
            "seconds": self.seconds,
            "path": self.path,
            "pass_id": self.pass_id,
            "days": self.days,
            "seed": self.seed,
            "slots": list(self.slots) if self.slots is not None else None,
        }


#: What :class:`FaultRates` can draw, as its ``rates`` keys. ``"429"``, ``"500"`` and
#: ``"503"`` answer that status (429 with ``Retry-After``); ``latency`` sleeps and then
#: answers normally; the others are :class:`Fault` kinds of the same name.
RATE_KINDS: tuple[str, ...] = (
    "429",
    "500",
    "503",
    "latency",
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
#: Kinds that only make sense on a response carrying images (``/idpass/details``):
#: they are applied while the details document is built.
IMAGE_KINDS = frozenset(
    {
        "invalid_base64",
        "truncated_base64",
        "not_jpeg",
        "corrupt_image",
        "null_slot",
        "empty_images",
        "clock_skew",
        "cut_body",
    }
)
#: How many days ahead a ``clock_skew`` clock runs unless told otherwise.
DEFAULT_SKEW_DAYS = 31.0


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Random faults: each public call (on ``paths``, or any) draws at most one kind,
    with the probabilities in ``rates`` (their sum is at most 1), from an RNG seeded
    with ``seed``, so a sequence of calls sees a reproducible sequence of faults.
    ``latency_seconds`` is the range a ``latency`` sleep is drawn from;
    ``retry_after`` is the ``Retry-After`` of a 429 (None: no header);
    ``skew_days`` how far ahead a ``clock_skew`` clock runs.
    """

    rates: Mapping[str, float]
    seed: int | None = None
    latency_seconds: tuple[float, float] = (1.0, 1.0)
    retry_after: float | None = 1.0
    paths: tuple[str, ...] | None = None
    skew_days: float = DEFAULT_SKEW_DAYS

    def applies_to(self, path: str) -> bool:
        return self.paths is None or path in self.paths

    def draw(self, rng: random.Random) -> tuple[str, Fault] | None:
        """One call's fault (or None) and the name of its kind, drawn from ``rng``."""
        roll = rng.random()
        for kind in RATE_KINDS:
            p = self.rates.get(kind, 0.0)
            if roll < p:
                return kind, self._fault(kind, rng)
            roll -= p
        return None

    def _fault(self, kind: str, rng: random.Random) -> Fault:
        if kind in ("429", "500", "503"):
            retry_after = self.retry_after if kind == "429" else None
            return Fault(kind="status", status=int(kind), retry_after=retry_after)
        if kind == "latency":
            lo, hi = self.latency_seconds
            return Fault(kind="delay", seconds=rng.uniform(lo, hi))
        if kind == "null_slot":
            return Fault(kind=kind, seed=rng.getrandbits(32))
        if kind == "clock_skew":
            return Fault(kind=kind, days=self.skew_days)
        return Fault(kind=kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rates": {k: self.rates[k] for k in RATE_KINDS if k in self.rates},
            "seed": self.seed,
            "latency_seconds": list(self.latency_seconds),
            "retry_after": self.retry_after,
            "paths": list(self.paths) if self.paths is not None else None,
            "skew_days": self.skew_days,
        }


#: ``image_form`` values: how ``images`` travels. ``map`` is ``{slot: Base64 | null}``;
#: ``data_uri`` the same with each image as ``data:image/jpeg;base64,...``;
#: ``image_list`` a list of ``{"slot": ..., "data": Base64 | null}``.
IMAGE_FORMS = ("map", "data_uri", "image_list")
#: ``missing_slots`` values: how a slot the pass never captured is answered.
#: ``mixed`` decides absent or ``null`` per pass from its id (a pass missing two or
#: more slots shows both); ``absent`` leaves it out; ``null`` answers it ``null``.
MISSING_SLOT_FORMS = ("mixed", "absent", "null")


@dataclass(frozen=True, slots=True)
class WireOptions:
    """Per-run choices of wire form the sandbox serves (``/_sandbox/options``).
    The same pass is answered the same way on every read under one setting."""

    image_form: str = "map"
    missing_slots: str = "mixed"

    def as_dict(self) -> dict[str, Any]:
        return {"image_form": self.image_form, "missing_slots": self.missing_slots}


def _consent_at(created: datetime, end: datetime) -> datetime:
    """When the user gave consent: shortly after the link was opened."""
    span = max(end - created, timedelta(0))
    return created + min(timedelta(minutes=1), span / 4)


def default_config(
    persona: Persona,
    rng: random.Random,
    *,
    image_retention_days: int,
    link_validity_days: int,
    slots: Sequence[str],
) -> tuple[dict[str, Any], bool]:
    """The registration an admin-created pass pretends to have had, and its mismatch flag.

    The requested identity is the persona's, sometimes without a middle name; about
    one pass in ten asks for a different middle name, so the identity mismatches.
    """
    middle: str | None = persona.middle_name
    mismatch = False
    roll = rng.random()
    if roll < 0.1:
        middle = make_persona(rng.getrandbits(64)).middle_name
        mismatch = middle != persona.middle_name
    elif roll < 0.3:
        middle = None
    with_id_photo = any(s.startswith("id_photo") for s in slots)
    config: dict[str, Any] = {
        "link_validity_days": link_validity_days,
        "image_retention_days": image_retention_days,
        "check_liveness": True,
        "document_1_allowed_types": ["licence", "passport"],
        "document_2_allowed_types": (
            ["passport", "medicare"] if any(s.startswith("document_2") for s in slots) else None
        ),
        "document_3_allowed_types": (
            ["medicare", "visa", "centrelink"]
            if any(s.startswith("document_3") for s in slots)
            else None
        ),
        "document_verification": "dvs",
        "require_id_photo": with_id_photo,
        "id_photo_purpose": "Staff access card" if with_id_photo else None,
        "webhook_url": None,
        "webhook_events": None,
        "return_url": None,
        "requested_identity": {
            "first_name": persona.first_name,
            "middle_name": middle,
            "last_name": persona.last_name,
            "date_of_birth": persona.date_of_birth,
        },
        "privacy_policy_url": PRIVACY_POLICY_URL,
        "requester_name": REQUESTER_NAME,
    }
    return config, mismatch


def slots_for_config(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The slots a flow with this registration captures."""
    out: list[str] = []
    if config.get("check_liveness"):
        out.append("probe")
    for n in (1, 2, 3):
        if n == 1 or config.get(f"document_{n}_allowed_types"):
            out += [f"document_{n}_front", f"document_{n}_back", f"document_{n}_photo"]
    if config.get("require_id_photo"):
        out += ["id_photo", "id_photo_cropped"]
    return tuple(s for s in SLOTS if s in out)


def _check_verification(status: str, verification_status: str | None) -> str | None:
    if status == "complete":
        return verification_status or "passed"
    if status == "failed":
        if verification_status not in (None, "failed"):
            raise SandboxError(400, "invalid_field", "a failed pass has verification_status failed")
        return "failed"
    if verification_status is not None:
        raise SandboxError(400, "invalid_field", "only a finished pass has a verification_status")
    return None


class SandboxState:
    """Every pass the sandbox knows, the clock it reads, and the faults it will inject.

    ``clock`` defaults to an :class:`OffsetClock`; pass a ``ManualClock`` to freeze
    time. ``seed`` makes pass ids (and so every persona) reproducible; cipher keys
    always come from :func:`archiver.sandbox.cipher.new_key`.
    """

    def __init__(self, clock: Clock | None = None, *, seed: int | None = None) -> None:
        self.clock: Clock = clock if clock is not None else OffsetClock()
        self._seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._passes: dict[str, PassRecord] = {}
        self._faults: list[Fault] = []
        self._rates: FaultRates | None = None
        self._rates_rng = random.Random()
        self._rate_calls = 0
        self._rate_injected: dict[str, int] = {}
        self.options = WireOptions()

    def now(self) -> datetime:
        return self.clock.now()

    def _new_id(self) -> str:
        if self._seed is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    # --- creating passes -----------------------------------------------------------

    def register(self, config: Mapping[str, Any]) -> PassRecord:
        """A pass created by ``/idpass/register`` with a validated, complete ``config``."""
        with self._lock:
            pass_id = self._new_id()
            persona = make_persona(uuid.UUID(pass_id).int)
            requested = config.get("requested_identity")
            if requested:
                overrides = {k: v for k, v in requested.items() if v}
                persona = replace(persona, **overrides)
            record = PassRecord(
                id=pass_id,
                cipher_key=cipher.new_key(),
                api_reference=str(uuid.uuid4()),
                config=dict(config),
                persona=persona,
                status="new",
                verification_status=None,
                created_at=self.clock.now(),
                consent_given_at=None,
                completed_at=None,
                slots=(),
                requested_identity_mismatch=False,
            )
            self._passes[pass_id] = record
            return record

    def create(
        self,
        *,
        status: str = "complete",
        image_retention_days: int = 30,
        link_validity_days: int = 7,
        completed_at: datetime | None = None,
        created_at: datetime | None = None,
        verification_status: str | None = None,
        slots: Sequence[str] | None = None,
        count: int = 1,
    ) -> list[PassRecord]:
        """Passes created directly in any status (the admin route ``/_sandbox/passes``)."""
        if status not in STATUSES:
            raise SandboxError(400, "invalid_field", "status is not a pass status")
        terminal = status in TERMINAL_STATUSES
        now = self.clock.now()
        if completed_at is not None and not terminal:
            raise SandboxError(400, "invalid_field", "only a terminal pass has completed_at")
        if terminal and completed_at is None:
            completed_at = now
        if created_at is None:
            created_at = completed_at - timedelta(minutes=10) if completed_at else now
        if completed_at is not None and completed_at < created_at:
            raise SandboxError(400, "invalid_field", "completed_at is before created_at")
        verification = _check_verification(status, verification_status)
        chosen = tuple(slots) if slots is not None else DEFAULT_SLOTS.get(status, ())
        chosen = tuple(s for s in SLOTS if s in chosen)
        consent = None
        if status in CONSENTED_STATUSES:
            consent = _consent_at(created_at, completed_at or max(now, created_at))

        out = []
        with self._lock:
            for _ in range(count):
                pass_id = self._new_id()
                seed = uuid.UUID(pass_id).int
                persona = make_persona(seed)
                config, mismatch = default_config(
                    persona,
                    random.Random(seed + 1),
                    image_retention_days=image_retention_days,
                    link_validity_days=link_validity_days,
                    slots=chosen,
                )
                record = PassRecord(
                    id=pass_id,
                    cipher_key=cipher.new_key(),
                    api_reference=str(uuid.uuid4()),
                    config=config,
                    persona=persona,
                    status=status,
                    verification_status=verification,
                    created_at=created_at,
                    consent_given_at=consent,
                    completed_at=completed_at,
                    slots=chosen,
                    requested_identity_mismatch=mismatch,
                )
                self._passes[pass_id] = record
                out.append(record)
        return out

    # --- reading and changing passes ----------------------------------------------

    def get(self, pass_id: str) -> PassRecord:
        record = self._passes.get(pass_id)
        if record is None:
            raise not_found()
        return record

    def passes(self) -> list[PassRecord]:
        """Every pass, oldest registration first."""
        with self._lock:
            return list(self._passes.values())

    def _update(self, pass_id: str, **changes: Any) -> PassRecord:
        record = self.get(pass_id)
        record = replace(record, **changes)
        self._passes[pass_id] = record
        return record

    def complete(
        self,
        pass_id: str,
        *,
        completed_at: datetime | None = None,
        verification_status: str | None = None,
        slots: Sequence[str] | None = None,
    ) -> PassRecord:
        """Finish an open pass as ``complete`` with captured images."""
        with self._lock:
            record = self.get(pass_id)
            if record.status not in OPEN_STATUSES:
                raise SandboxError(409, "pass_not_open", f"pass is already {record.status}")
            when = completed_at or self.clock.now()
            if when < record.created_at:
                raise SandboxError(400, "invalid_field", "completed_at is before created_at")
            chosen = slots_for_config(record.config) if slots is None else tuple(slots)
            return self._update(
                pass_id,
                status="complete",
                verification_status=_check_verification("complete", verification_status),
                completed_at=when,
                consent_given_at=record.consent_given_at or _consent_at(record.created_at, when),
                slots=tuple(s for s in SLOTS if s in chosen),
            )

    def set_status(self, pass_id: str, status: str) -> PassRecord:
        """Put a pass in any status, keeping its timestamps consistent with it."""
        if status not in STATUSES:
            raise SandboxError(400, "invalid_field", "status is not a pass status")
        with self._lock:
            record = self.get(pass_id)
            now = max(self.clock.now(), record.created_at)
            completed = (record.completed_at or now) if status in TERMINAL_STATUSES else None
            consent = record.consent_given_at
            if status in CONSENTED_STATUSES and consent is None:
                consent = _consent_at(record.created_at, completed or now)
            elif status in ("new", "opened"):
                consent = None
            verification = record.verification_status if status == "complete" else None
            return self._update(
                pass_id,
                status=status,
                completed_at=completed,
                consent_given_at=consent,
                verification_status=_check_verification(status, verification),
            )

    def cancel(self, pass_id: str) -> PassRecord:
        """``/idpass/cancel``: only an open pass can be cancelled."""
        with self._lock:
            record = self.get(pass_id)
            if record.status not in OPEN_STATUSES:
                raise SandboxError(
                    400, "pass_not_cancellable", f"a {record.status} pass cannot be cancelled"
                )
            now = max(self.clock.now(), record.created_at)
            return self._update(pass_id, status="cancelled", completed_at=now)

    def pii_strings(self) -> list[str]:
        """Every personal string and cipher key handed out, sorted and de-duplicated."""
        found: set[str] = set()
        for record in self.passes():
            found.add(record.cipher_key)
            found.update(record.persona.pii_strings())
            requested = record.config.get("requested_identity") or {}
            found.update(v for v in requested.values() if isinstance(v, str) and v)
        return sorted(found)

    # --- faults ------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, path: str, pass_id: str | None) -> Fault | None:
        """Consume one use of the first fault matching this call, if any."""
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.matches(path, pass_id):
                    if fault.remaining <= 1:
                        del self._faults[i]
                    else:
                        self._faults[i] = replace(fault, remaining=fault.remaining - 1)
                    return fault
        return None

    def set_fault_rates(self, rates: FaultRates | None) -> None:
        """Start drawing random faults with ``rates`` (None: stop); the RNG is seeded
        again and the counts start from zero."""
        with self._lock:
            self._rates = rates
            self._rates_rng = random.Random(rates.seed if rates is not None else None)
            self._rate_calls = 0
            self._rate_injected = {}

    def fault_rates(self) -> dict[str, Any]:
        """The random-fault settings, and how many calls drew and how many of each kind."""
        with self._lock:
            return {
                "fault_rates": self._rates.as_dict() if self._rates is not None else None,
                "calls": self._rate_calls,
                "injected": dict(sorted(self._rate_injected.items())),
                "faulted": sum(self._rate_injected.values()),
            }

    def draw_fault(self, path: str) -> Fault | None:
        """The random fault for one public call on ``path``, if rates are set."""
        with self._lock:
            rates = self._rates
            if rates is None or not rates.applies_to(path):
                return None
            self._rate_calls += 1
            drawn = rates.draw(self._rates_rng)
            if drawn is None:
                return None
            kind, fault = drawn
            self._rate_injected[kind] = self._rate_injected.get(kind, 0) + 1
            return fault

    def reset(self) -> None:
        """Forget every pass and fault (counted and random) and go back to the default
        :class:`WireOptions`; an :class:`OffsetClock` goes back to real time."""
        self.set_fault_rates(None)
        with self._lock:
            self._passes.clear()
            self._faults.clear()
            self._rng = random.Random(self._seed)
            self.options = WireOptions()
        if isinstance(self.clock, OffsetClock):
            self.clock.reset()


__all__ = [
    "DEFAULT_SKEW_DAYS",
    "DEFAULT_SLOTS",
    "IMAGE_FORMS",
    "IMAGE_KINDS",
    "MISSING_SLOT_FORMS",
    "RATE_KINDS",
    "Fault",
    "FaultRates",
    "OffsetClock",
    "PassRecord",
    "SandboxError",
    "SandboxState",
    "SettableClock",
    "WireOptions",
]
