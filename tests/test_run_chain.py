"""The run-manifest chain survives a run killed between storing its manifest and
moving the chain's head in the catalog: the next run chains after the stored manifest
instead of forking the chain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from archiver import config as config_mod
from archiver.app import Runtime, chain_id, open_catalog, write_run_manifest
from archiver.clock import ManualClock
from archiver.core.format import Layout
from archiver.core.images import sha256_hex
from archiver.core.signing import Signer
from archiver.results import RunSummary
from archiver.store.memory import MemoryStore
from archiver.verify import VerifyScope, run_verify

T0 = datetime(2026, 11, 26, 23, 50, tzinfo=UTC)


class Killed(Exception):
    """Stands for the process dying: nothing after it runs."""


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    cfg = tmp_path / "archiver.toml"
    cfg.write_text(
        f"""[storage]
bucket = "archive-bucket"
prefix = "archive"
kms_key_id = "archive-key"

[catalog]
url = "sqlite:///{tmp_path / "catalog.db"}"
"""
    )
    settings = config_mod.load(cfg, environ={})
    clock = ManualClock(T0)
    catalog = open_catalog(settings)
    store = MemoryStore(sse="aws:kms", kms_key_id="archive-key", clock=clock)
    yield Runtime(settings, catalog, store, clock)
    catalog.close()


def _summary(rt: Runtime, n: int) -> RunSummary:
    started = rt.clock.now()
    return RunSummary(
        run_id=f"{started:%Y%m%dT%H%M%SZ}-run{n:04d}",
        started_at=started,
        finished_at=started + timedelta(minutes=1),
    )


def _doc(rt: Runtime, key: str) -> dict[str, object]:
    doc = orjson.loads(rt.store.get(key))
    assert isinstance(doc, dict)
    return doc


def _killed_after_storing(rt: Runtime) -> Callable[[], None]:
    """Make the next chain_append die after its manifest is stored, before the head
    moves (the catalog's transaction is rolled back, as a dead process's would be)."""
    real = rt.catalog.chain_append

    def append(chain: str, write: Callable[[str | None, str | None], tuple[str, str]]):
        def write_then_die(prev_key: str | None, prev_sha: str | None) -> tuple[str, str]:
            write(prev_key, prev_sha)
            raise Killed()

        return real(chain, write_then_die)

    rt.catalog.chain_append = append  # type: ignore[method-assign]

    def restore() -> None:
        rt.catalog.chain_append = real  # type: ignore[method-assign]

    return restore


def _advance(rt: Runtime, delta: timedelta) -> None:
    assert isinstance(rt.clock, ManualClock)
    rt.clock.advance(delta)


def test_a_run_killed_before_the_head_moved_is_chained_not_forked(rt: Runtime) -> None:
    signer = Signer.generate()
    first, _ = write_run_manifest(rt, signer, _summary(rt, 1))

    _advance(rt, timedelta(minutes=5))
    restore = _killed_after_storing(rt)
    with pytest.raises(Killed):
        write_run_manifest(rt, signer, _summary(rt, 2))
    restore()
    orphan = Layout("archive").run(_summary(rt, 2).run_id, _summary(rt, 2).started_at)
    assert rt.store.head(orphan) is not None  # stored ...
    assert rt.catalog.chain_head(chain_id(rt.settings))[0] == first  # ... but not the head

    # the next run starts after midnight: the orphan is in the previous day's folder
    _advance(rt, timedelta(minutes=30))
    third, third_sha = write_run_manifest(rt, signer, _summary(rt, 3))

    assert _doc(rt, third)["previous"]["key"] == orphan  # type: ignore[index]
    assert _doc(rt, orphan)["previous"]["key"] == first  # type: ignore[index]
    assert rt.catalog.chain_head(chain_id(rt.settings)) == (third, third_sha)
    report = run_verify(
        rt.store, Layout("archive"), [signer.verifier], VerifyScope(everything=True)
    )
    assert report.run_manifests_checked == 3
    assert not [f for f in report.findings if f.kind.startswith("chain")], report.to_json()


def test_another_chains_newer_manifest_is_not_adopted(rt: Runtime) -> None:
    """A manifest of another chain (another worker id) stored after the head, even one
    naming the same previous, is left alone: only this chain's successor is adopted."""
    signer = Signer.generate()
    first, first_sha = write_run_manifest(rt, signer, _summary(rt, 1))
    _advance(rt, timedelta(minutes=1))
    other = dict(_doc(rt, first))
    other["chain_id"] = "worker-b"
    other["run_id"] = "20261126T235100Z-other"
    other["previous"] = {"key": first, "sha256": first_sha}
    data = orjson.dumps(other, option=orjson.OPT_SORT_KEYS)
    other_key = Layout("archive").run(other["run_id"], rt.clock.now())  # type: ignore[arg-type]
    rt.store.put(other_key, data, sha256=sha256_hex(data), content_type="application/json")

    _advance(rt, timedelta(minutes=1))
    second, _ = write_run_manifest(rt, signer, _summary(rt, 2))

    assert _doc(rt, second)["previous"]["key"] == first  # type: ignore[index]
