"""The bucket inspector (doctor's bucket-level operations) on SeaweedFS."""

from __future__ import annotations

import hashlib
import uuid
from contextlib import closing
from datetime import UTC, datetime

import pytest

from archiver.config import StorageSettings
from archiver.errors import StoreAccessDenied
from archiver.sandbox.seaweedfs import SeaweedFS
from archiver.store.bucket import BucketInspector
from archiver.store.s3 import S3Store


def test_the_state_of_a_locked_bucket_and_its_default_encryption(
    seaweedfs: SeaweedFS, s3_settings: StorageSettings
) -> None:
    """An Object Lock bucket is versioned; its default encryption shows once set; the
    server's clock comes from its Date header."""
    with closing(BucketInspector(s3_settings, credentials=seaweedfs.credentials)) as bucket:
        bucket.check()
        before = bucket.state()
        seaweedfs.client().put_bucket_encryption(
            Bucket=s3_settings.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        after = bucket.state()

    assert (before.object_lock, before.versioning, before.default_encryption) == (
        True,
        "Enabled",
        None,
    )
    assert after.default_encryption == "AES256"
    assert after.server_time is not None
    assert abs((datetime.now(UTC) - after.server_time).total_seconds()) < 60


def test_the_state_of_a_plain_bucket(seaweedfs: SeaweedFS, s3_settings: StorageSettings) -> None:
    """A bucket made without Object Lock: no lock, no default mode, not versioned."""
    name = f"plain-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    settings = s3_settings.model_copy(update={"bucket": name})
    with closing(BucketInspector(settings, credentials=seaweedfs.credentials)) as bucket:
        state = bucket.state()

    assert (state.object_lock, state.default_lock_mode) == (False, None)
    assert state.versioning in (None, "Suspended")


def test_delete_removes_the_scratch_version(
    seaweedfs: SeaweedFS, s3_settings: StorageSettings
) -> None:
    """delete with a version id removes that version: the store no longer finds it."""
    data = b"doctor's scratch object"
    key = "test/.doctor/scratch"
    with (
        S3Store(s3_settings, credentials=seaweedfs.credentials) as store,
        closing(BucketInspector(s3_settings, credentials=seaweedfs.credentials)) as bucket,
    ):
        put = store.put(key, data, sha256=hashlib.sha256(data).hexdigest(), content_type="x")
        bucket.delete(key, version_id=put.version_id)

        assert store.head(key, version_id=put.version_id) is None
        assert store.head(key) is None
    assert seaweedfs.versions_per_key(s3_settings.bucket, key) == {}


def test_a_missing_bucket_or_refused_credentials_are_access_denied(
    seaweedfs: SeaweedFS, s3_settings: StorageSettings
) -> None:
    """check() and state() name a bucket that does not exist; a wrong secret is refused."""
    missing = s3_settings.model_copy(update={"bucket": "no-such-bucket-here"})
    with closing(BucketInspector(missing, credentials=seaweedfs.credentials)) as bucket:
        with pytest.raises(StoreAccessDenied, match="no-such-bucket-here does not exist"):
            bucket.check()
        with pytest.raises(StoreAccessDenied, match="does not exist"):
            bucket.state()
    wrong = (seaweedfs.access_key, "wrong-secret")
    with closing(BucketInspector(s3_settings, credentials=wrong)) as bucket:
        for call in (bucket.check, bucket.state, lambda: bucket.delete("test/k")):
            with pytest.raises(StoreAccessDenied) as caught:
                call()
            assert caught.value.systemic and "wrong-secret" not in str(caught.value)
