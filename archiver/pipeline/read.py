"""Reading one pass: ``/idpass/details`` with images, classified and checked.

The result says how the pass goes on and carries what the read learned about it
(status, completion, retention, deadline, link expiry), which the catalog keeps
whatever the outcome:

* :class:`Ended`: the pass ends here (not complete yet, a status not archived, no
  images by design), or its answer cannot be archived as it is (a payload error, or a
  bug met while checking it): an outcome decided by the attempt count;
* :class:`Staged`: checked images (perhaps none) and the record, and the slots the
  answer had null: confirmation (:mod:`.confirm`) decides whether to read again, and
  the commit protocol stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

import orjson

from archiver.catalog import CatalogEntry, Outcome
from archiver.clock import Clock, isoformat
from archiver.core.format import PassFacts
from archiver.core.images import (
    Base64Text,
    CheckedImage,
    check_image,
    decode_base64,
    sealed_payload,
    valid_slot_name,
)
from archiver.core.retention import images_deadline
from archiver.errors import DecryptionError, ImageDecodeError, PayloadError, safe_token
from archiver.idpass import crypto
from archiver.idpass.client import PassRead
from archiver.idpass.models import PassDetails
from archiver.idpass.transport import BodySlot
from archiver.pipeline.commit import Offload
from archiver.pipeline.options import PipelineOptions
from archiver.results import Learned, PassResult


class DetailsReader(Protocol):
    """The details call as the pipeline makes it (the client, or a retry or
    rate-limit wrapper around it; see :meth:`archiver.idpass.client.IdPassClient.details`).

    ``body_slot``, when given, is taken before the response body is read (after the
    headers) and kept for the caller, which releases it; a reader that reads the body
    first takes it afterwards."""

    async def details(
        self,
        pass_id: str,
        cipher_key: str | None = None,
        *,
        images: bool = True,
        decrypt_locally_with: str | None = None,
        body_slot: BodySlot | None = None,
    ) -> PassRead: ...


#: Taken around the request: a request slot, and a stop check once it is held.
Gate = Callable[[], AbstractAsyncContextManager[None]]


@dataclass(frozen=True, slots=True)
class Ended:
    """The pass ends at the read: with its result, or with the error that decides
    its outcome by the attempt count (an answer that cannot be archived)."""

    outcome: PassResult | Exception
    learned: Learned


@dataclass(slots=True)
class Staged:
    """Checked images and the record, ready for the commit protocol."""

    facts: PassFacts
    record: bytes  # the record's canonical bytes
    images: list[CheckedImage]  # none when the answer had none (settled by confirmation)
    learned: Learned
    null_slots: list[str] = field(default_factory=list)  # answered null
    images_field_present: bool = True


ReadResult = Ended | Staged


@dataclass(kw_only=True)
class PassReader:
    """Reads and checks one pass; see the module docstring. ``key_lookup``:
    (key_ref, pass_id) -> cipher key, for keys kept in their source (blocking)."""

    api: DetailsReader
    opt: PipelineOptions
    clock: Clock
    offload: Offload
    key_lookup: Callable[[str, str], str | None] | None = None

    async def read(self, entry: CatalogEntry, slot: BodySlot, gate: Gate) -> ReadResult:
        """Read the pass inside ``gate``; the body is held under ``slot``, which the
        caller releases."""
        pid = entry.pass_id
        local = self.opt.decryption == "local"
        key = await self._cipher_key(entry)
        async with gate():
            read = await self.api.details(
                pid,
                None if local else key,
                images=True,
                decrypt_locally_with=key if local else None,
                body_slot=slot,
            )
        await slot.acquire()  # a reader that read the body first: take the slot now
        d = read.details
        learned = Learned(
            api_status=d.status,
            completed_at=d.completed_at,
            image_retention_days=d.image_retention_days,
            deadline=images_deadline(d.completed_at, d.image_retention_days),
        )
        try:
            return await self._classify(pid, read, key if local else None, learned)
        except Exception as exc:  # judged by the caller, with what was learned
            return Ended(exc, learned)
        finally:
            read.images.clear()  # the Base64 is no longer needed: free it

    async def _cipher_key(self, entry: CatalogEntry) -> str | None:
        if self.opt.decryption == "passthrough":
            return None
        if entry.cipher_key is not None or entry.key_ref is None or self.key_lookup is None:
            return entry.cipher_key
        # The key stays in the customer's source; it is read only now, into memory.
        key: str | None = await self.offload(self.key_lookup, entry.key_ref, entry.pass_id)
        return key

    async def _classify(
        self, pid: str, read: PassRead, local_key: str | None, learned: Learned
    ) -> ReadResult:
        d = read.details
        if not d.is_terminal:
            return self._not_ready(pid, d, learned)
        if d.status not in self.opt.archive_statuses:
            reason = f"status {safe_token(d.status)} is not archived by config"
            return Ended(PassResult(pid, Outcome.SKIPPED, reason), learned)
        if d.completed_at is None:
            raise PayloadError("terminal pass has no completed_at", pass_id=pid)
        if not read.images and learned.image_retention_days == 0:
            reason = "image_retention_days is 0"
            return Ended(PassResult(pid, Outcome.NO_IMAGES, reason), learned)
        images = await self._images(pid, read, local_key) if read.images else []
        return Staged(
            facts=_facts(d, learned.deadline),
            record=orjson.dumps(read.record, option=orjson.OPT_SORT_KEYS),
            images=images,
            learned=learned,
            # an unsafe name is not kept (nor repeated): only safe key segments
            null_slots=sorted({s for s in read.null_slots if valid_slot_name(s)}),
            images_field_present=read.images_field_present,
        )

    def _not_ready(self, pid: str, d: PassDetails, learned: Learned) -> Ended:
        """Not complete yet: check again later, but give up once the customer's link
        has long stopped working (it can no longer complete)."""
        waiting = PassResult(pid, Outcome.NOT_READY, f"status {safe_token(d.status)}")
        if d.created_at is None or d.link_validity_days is None:
            return Ended(waiting, learned)
        link_expires = d.created_at + timedelta(days=d.link_validity_days)
        learned = replace(learned, link_expires_at=link_expires)
        if self.clock.now() < link_expires + self.opt.not_ready_margin:
            return Ended(waiting, learned)
        reason = (
            f"still {safe_token(d.status)} {self.opt.not_ready_margin} after its link expired "
            f"at {isoformat(link_expires)}"
        )
        return Ended(PassResult(pid, Outcome.SKIPPED, reason), learned)

    async def _images(self, pid: str, read: PassRead, local_key: str | None) -> list[CheckedImage]:
        if read.encrypted and self.opt.decryption == "passthrough":
            return self._sealed(pid, read)
        if read.encrypted and local_key is None:
            raise DecryptionError(
                "images arrived encrypted: no cipher key is known for this pass "
                "(add it to the catalog, or use decryption = local with the key)",
                pass_id=pid,
            )
        return await self._checked(pid, read, local_key)

    async def _checked(self, pid: str, read: PassRead, local_key: str | None) -> list[CheckedImage]:
        raw_key = crypto.parse_key(local_key) if local_key is not None else None
        limit = self.opt.max_image_bytes

        def one(slot: str, text: Base64Text) -> CheckedImage:
            if raw_key is None:
                return check_image(slot, decode_base64(text, slot=slot, max_bytes=limit))
            data = crypto.decrypt_value(raw_key, text)
            if len(data) > limit:
                raise ImageDecodeError(f"image exceeds the size limit of {limit} bytes", slot=slot)
            return check_image(slot, data)

        def every() -> list[CheckedImage]:
            # one hand-off to a thread for the pass, not one per image: decoding,
            # checking and hashing release the GIL or are short, and other passes
            # keep the other core busy meanwhile
            return [_in_slot(pid, slot, one, text) for slot, text in read.images.items()]

        checked: list[CheckedImage] = await self.offload(every)
        return checked

    def _sealed(self, pid: str, read: PassRead) -> list[CheckedImage]:
        limit = self.opt.max_image_bytes

        def one(slot: str, token: Base64Text) -> CheckedImage:
            return sealed_payload(slot, token, max_bytes=limit)

        return [_in_slot(pid, slot, one, token) for slot, token in read.images.items()]


def _check_slot_name(pid: str, slot: str) -> None:
    if not valid_slot_name(slot):
        raise ImageDecodeError("image slot name is not a safe key segment", pass_id=pid)


def _in_slot(
    pid: str, slot: str, fn: Callable[[str, Base64Text], CheckedImage], text: Base64Text
) -> CheckedImage:
    """``fn(slot, text)``, its payload errors naming the slot (once the name is known
    to be a safe one: an unsafe name is not repeated)."""
    _check_slot_name(pid, slot)
    try:
        return fn(slot, text)
    except PayloadError as exc:
        raise type(exc)(f"slot {safe_token(slot)}: {exc.message}", pass_id=pid, slot=slot) from None


def _facts(d: PassDetails, deadline: datetime | None) -> PassFacts:
    """What the manifest records of the API's answer (field for field)."""
    facts = (d.status, d.verification_status, d.created_at, d.completed_at)
    return PassFacts(*facts, image_retention_days=d.image_retention_days, images_deadline=deadline)
