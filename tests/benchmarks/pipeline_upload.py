"""(c) The boto3 upload ceiling: a bare thread-pool ``put_object`` loop.

    python -m tests.benchmarks.pipeline_upload --endpoint URL --bucket B --prefix P \\
        --kms-key-id K --index FILE --threads 16

``--index`` is the JSONL the benchmark wrote beside the decoded images (``path``, ``key``,
``sha256``): the Base64 was decoded and every SHA-256 computed before this starts. Each
put reads its file (from the page cache) and sends it exactly as the archiver's
``S3Store.put`` does: SSE-KMS with the key id, ``ChecksumSHA256``, ``If-None-Match: *``,
``Content-Type: image/jpeg``, one client with the store's botocore config
(``max_pool_connections`` 32, standard retries, checksums only when required, path
addressing). Prints one JSON line: seconds, objects, bytes. Credentials come from the
environment (``AWS_ACCESS_KEY_ID``...).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import orjson
from botocore.config import Config


def make_client(endpoint: str, pool: int = 32) -> Any:
    return boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        config=Config(
            region_name="us-east-1",
            max_pool_connections=pool,
            retries={"mode": "standard", "total_max_attempts": 5},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_upload")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--kms-key-id", required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    entries = [orjson.loads(line) for line in args.index.read_bytes().splitlines() if line]
    base = args.index.parent
    client = make_client(args.endpoint)

    def put(entry: dict[str, Any]) -> int:
        data = (base / entry["path"]).read_bytes()
        resp = client.put_object(
            Bucket=args.bucket,
            Key=f"{args.prefix}/{entry['key']}",
            Body=data,
            ContentType="image/jpeg",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(entry["sha256"])).decode(),
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=args.kms_key_id,
            IfNoneMatch="*",
        )
        assert resp.get("ServerSideEncryption") == "aws:kms"
        return len(data)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        nbytes = sum(pool.map(put, entries))
    seconds = time.perf_counter() - t0
    print(orjson.dumps({"seconds": seconds, "objects": len(entries), "bytes": nbytes}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
