"""The object layout. Keys hold only opaque ids and slot names: never personal data.

{prefix}/passes/{pass_id}/images/{slot}.jpg
{prefix}/passes/{pass_id}/record.json
{prefix}/passes/{pass_id}/SHA256SUMS
{prefix}/passes/{pass_id}/manifest.json      written last: the commit marker
{prefix}/runs/{yyyy}/{mm}/{dd}/{run_id}.json
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

MANIFEST = "manifest.json"
RECORD = "record.json"
SUMS = "SHA256SUMS"


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = ""

    def _root(self) -> str:
        p = self.prefix.strip("/")
        return f"{p}/" if p else ""

    def pass_dir(self, pass_id: str) -> str:
        return f"{self._root()}passes/{pass_id}/"

    def image(self, pass_id: str, slot: str) -> str:
        return f"{self.pass_dir(pass_id)}images/{slot}.jpg"

    def sealed_image(self, pass_id: str, slot: str) -> str:
        """Passthrough mode: the encrypted payload of an image, as the API sent it."""
        return f"{self.pass_dir(pass_id)}images/{slot}.jpg.aes256gcm"

    def record(self, pass_id: str) -> str:
        return self.pass_dir(pass_id) + RECORD

    def sums(self, pass_id: str) -> str:
        return self.pass_dir(pass_id) + SUMS

    def manifest(self, pass_id: str) -> str:
        return self.pass_dir(pass_id) + MANIFEST

    def public_key(self, key_id: str) -> str:
        return f"{self._root()}keys/{key_id}.pub.pem"

    def runs_root(self) -> str:
        return f"{self._root()}runs/"

    def passes_root(self) -> str:
        return f"{self._root()}passes/"

    def run(self, run_id: str, started_at: datetime) -> str:
        d = started_at.astimezone(UTC)
        return f"{self._root()}runs/{d:%Y}/{d:%m}/{d:%d}/{run_id}.json"

    def relative(self, pass_id: str, key: str) -> str:
        """The key relative to the pass directory, as listed in SHA256SUMS."""
        base = self.pass_dir(pass_id)
        if not key.startswith(base):
            raise ValueError("key is outside the pass directory")
        return key[len(base) :]
