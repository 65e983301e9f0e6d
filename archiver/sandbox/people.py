"""Synthetic personal data for sandbox passes: invented, distinctive, deterministic.

Every value is derived from a per-pass seed with :class:`random.Random`, so a pass
shows the same person on every read. The names, streets and suburbs are invented
from syllables that do not form common words, and document numbers carry letter
prefixes or are long, so a test that scans logs, manifests or object keys for these
strings (``GET /_sandbox/pii``) finds leaks and nothing else. Everything is ASCII,
so a string reads the same in any JSON encoder's output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

_FIRST_HEADS = (
    "Zeph", "Quil", "Orm", "Thal", "Bryn", "Isol", "Cael", "Vesp", "Ysol", "Merv",
    "Tams", "Oriel", "Jessa", "Prosp", "Lucan", "Wyst", "Elow", "Fenn",
)  # fmt: skip
_FIRST_TAILS = (
    "yrine", "andra", "evant", "orwyn", "ithe", "abelle", "uvian", "erolt", "osine",
    "adrick", "illow", "ameth", "orique", "ybald",
)  # fmt: skip
_LAST_HEADS = (
    "Quill", "Marrow", "Thistle", "Brack", "Wrenn", "Fennick", "Gorse", "Hollow",
    "Pikel", "Ashgrove", "Drumm", "Sallow", "Crane", "Oakhart", "Vellum",
)  # fmt: skip
_LAST_TAILS = (
    "feather", "by", "wick", "stone", "worth", "mantle", "thorpe", "ridge", "combe",
    "haven", "ingale",
)  # fmt: skip
_STREETS = (
    "Thistlewick", "Marrowgate", "Quorradine", "Fernhollow", "Brackenmoor", "Ysolde",
    "Wattlebrindle", "Gumbarrow", "Orlanthe", "Pemberquay",
)  # fmt: skip
_STREET_TYPES = ("Parade", "Crescent", "Esplanade", "Close", "Rise", "Circuit", "Lane")
_SUBURBS = (
    "Wombelano Heights", "Quindaroo", "Merrivale Flats", "Tarrabrook", "Yallingup Vale",
    "Kooringal Downs", "Bellamunda", "Oxlebury",
)  # fmt: skip
_STATES = (("NSW", 2), ("VIC", 3), ("QLD", 4), ("SA", 5), ("WA", 6), ("TAS", 7))

#: The document types of the API, in the order sandbox passes prefer them.
DOCUMENT_TYPES: tuple[str, ...] = ("licence", "passport", "medicare", "visa", "centrelink")


@dataclass(frozen=True, slots=True)
class Document:
    """One identity document of a persona, as OCR would read it."""

    document_type: str
    document_number: str
    card_number: str | None
    expiry: str
    issuer: str


@dataclass(frozen=True, slots=True)
class Persona:
    """The invented person behind one sandbox pass."""

    first_name: str
    middle_name: str
    last_name: str
    date_of_birth: str
    address: str
    ip_address: str
    documents: tuple[Document, ...]

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.middle_name} {self.last_name}"

    def document(self, document_type: str) -> Document:
        for doc in self.documents:
            if doc.document_type == document_type:
                return doc
        raise KeyError(document_type)

    def pii_strings(self) -> list[str]:
        """Every personal string this persona can put into a response."""
        out = [
            self.first_name,
            self.middle_name,
            self.last_name,
            self.full_name,
            self.date_of_birth,
            self.address,
            self.ip_address,
        ]
        for doc in self.documents:
            out.append(doc.document_number)
            if doc.card_number:
                out.append(doc.card_number)
        return out


def _name(rng: random.Random, heads: tuple[str, ...], tails: tuple[str, ...]) -> str:
    return rng.choice(heads) + rng.choice(tails)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(n))


def make_persona(seed: int) -> Persona:
    """The persona of the pass with this seed; the same seed gives the same person."""
    rng = random.Random(seed)
    first = _name(rng, _FIRST_HEADS, _FIRST_TAILS)
    middle = _name(rng, _FIRST_HEADS, _FIRST_TAILS)
    last = _name(rng, _LAST_HEADS, _LAST_TAILS)
    if rng.random() < 0.5:
        last = f"{last}-{_name(rng, _LAST_HEADS, _LAST_TAILS)}"
    dob = date(1940, 1, 1) + timedelta(days=rng.randrange(60 * 365))  # 1940 .. ~1999
    state, postcode_lead = rng.choice(_STATES)
    address = (
        f"{rng.randint(2, 399)} {rng.choice(_STREETS)} {rng.choice(_STREET_TYPES)}, "
        f"{rng.choice(_SUBURBS)} {state} {postcode_lead}{_digits(rng, 3)}"
    )
    ip = f"203.0.113.{rng.randint(10, 250)}"  # TEST-NET-3: never a real client

    def expiry() -> str:
        return (date(2027, 1, 1) + timedelta(days=rng.randrange(8 * 365))).isoformat()

    documents = (
        Document("licence", _letters(rng, 2) + _digits(rng, 7), _digits(rng, 10), expiry(), state),
        Document("passport", "P" + _letters(rng, 1) + _digits(rng, 7), None, expiry(), "AUS"),
        Document("medicare", _digits(rng, 10), None, expiry(), "AUS"),
        Document("visa", "VG" + _digits(rng, 11), None, expiry(), "AUS"),
        Document("centrelink", _digits(rng, 9) + _letters(rng, 1), None, expiry(), "AUS"),
    )
    return Persona(
        first_name=first,
        middle_name=middle,
        last_name=last,
        date_of_birth=dob.isoformat(),
        address=address,
        ip_address=ip,
        documents=documents,
    )
