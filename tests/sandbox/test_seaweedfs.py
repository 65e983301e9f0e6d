"""The S3 test bed: SeaweedFS started with the settings the archiver's S3 features need.

These tests prove the test bed, not the archiver: object lock works, and the server
never outlives the code that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from archiver.sandbox.seaweedfs import SeaweedFS, SeaweedFSError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie left to an init that does not reap counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return gone(pid)


def test_object_lock_compliance_refuses_to_delete_a_locked_version(seaweedfs: SeaweedFS) -> None:
    """In an object-lock bucket, a COMPLIANCE-retained version cannot be deleted."""
    bucket = f"lock-{uuid.uuid4().hex[:16]}"
    seaweedfs.create_bucket(bucket, object_lock=True)
    s3 = seaweedfs.client()
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)

    put = s3.put_object(
        Bucket=bucket,
        Key="locked.json",
        Body=b"{}",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId="archive-key",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
        ChecksumSHA256="RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=",  # sha256 of b"{}"
    )
    retention = s3.get_object_retention(
        Bucket=bucket, Key="locked.json", VersionId=put["VersionId"]
    )
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key="locked.json", VersionId=put["VersionId"])

    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert retention["Retention"]["Mode"] == "COMPLIANCE"
    assert retention["Retention"]["RetainUntilDate"] == until
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert seaweedfs.versions_per_key(bucket) == {"locked.json": 1}
    assert s3.get_object(Bucket=bucket, Key="locked.json")["Body"].read() == b"{}"


def test_buckets_are_not_created_by_a_put(seaweedfs: SeaweedFS) -> None:
    """A put into a bucket that does not exist fails, as on AWS (no auto-creation)."""
    with pytest.raises(ClientError) as refused:
        seaweedfs.client().put_object(Bucket="never-created", Key="k", Body=b"x")

    assert refused.value.response["Error"]["Code"] == "NoSuchBucket"


@linux_only
@pytest.mark.integration
def test_stop_leaves_no_process_and_no_sockets(tmp_path: Path) -> None:
    """stop() ends the weed process and removes the sockets it left in /tmp; twice is fine."""
    server = SeaweedFS(tmp_path / "s3").start()
    pid, ports = server.pid, dict(server.ports)
    assert pid is not None and server.running
    assert server.startup_seconds is not None and server.startup_seconds < 30

    server.stop()
    server.stop()

    assert gone(pid) and not server.running
    numbers = [*ports.values(), *(port + 10_000 for port in ports.values())]  # gRPC too
    assert not [p for n in numbers for p in Path("/tmp").glob(f"seaweedfs-*-{n}.sock")]


def test_a_weed_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    """If weed exits while starting, SeaweedFSError says so and quotes the end of its log."""
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fake weed: cannot open the volume directory' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(SeaweedFSError, match="exited with status 3") as caught:
        SeaweedFS(tmp_path / "s3", weed_binary=fake).start()

    assert "fake weed: cannot open the volume directory" in str(caught.value)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from archiver.sandbox.seaweedfs import SeaweedFS

    server = SeaweedFS(Path(sys.argv[1])).start()
    print(server.pid, *server.ports.values(), flush=True)
    if sys.argv[2] == "sleep":
        time.sleep(300)
    """
)


@linux_only
@pytest.mark.integration
@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_weed_does_not_outlive_the_process_that_started_it(tmp_path: Path, ending: str) -> None:
    """A process without a terminal that exits without stop(), or is killed, takes weed along."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(tmp_path / "s3"),
            "exit" if ending == "exit" else "sleep",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line, child.stderr.read() if child.stderr else ""
        weed_pid, *ports = map(int, line)
        if ending == "sigkill":
            assert not gone(weed_pid)
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()

    assert wait_gone(weed_pid), f"weed {weed_pid} outlived its parent"
    for port in ports:  # a killed parent cannot remove the sockets weed leaves in /tmp
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            path.unlink(missing_ok=True)
        for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + 10_000}.sock"):
            path.unlink(missing_ok=True)
