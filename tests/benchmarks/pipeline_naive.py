"""(d) The naive baseline: a straightforward sequential script, one pass at a time.

    python -m tests.benchmarks.pipeline_naive --url URL --ledger FILE --endpoint URL \\
        --bucket B --prefix P --kms-key-id K

What someone would write first, doing the archiver's work with the same requests and
no concurrency: per pass, HEAD its manifest (rerun safety), read details (sync httpx,
stdlib ``json``), then per image decode the Base64 (stdlib), check it with Pillow, hash
it, and put it; then ``record.json``, ``SHA256SUMS``, the manifest's Ed25519 signature
and the manifest: 17 S3 requests a pass like the archiver's, each put with SSE-KMS,
``ChecksumSHA256`` and ``If-None-Match: *``, one after another. Prints one JSON line:
seconds, passes, images, bytes. Token: ``$BENCH_API_TOKEN``; S3 credentials from the
environment.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from tests.benchmarks.pipeline_upload import make_client


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_naive")
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--kms-key-id", required=True)
    args = parser.parse_args()
    passes = [json.loads(line) for line in args.ledger.read_text().splitlines() if line]
    s3 = make_client(args.endpoint)
    key = Ed25519PrivateKey.generate()
    http = httpx.Client(
        base_url=args.url,
        headers={"Authorization": f"Bearer {os.environ['BENCH_API_TOKEN']}"},
        timeout=60,
    )

    def put(key_name: str, data: bytes, content_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).digest()
        resp = s3.put_object(
            Bucket=args.bucket,
            Key=key_name,
            Body=data,
            ContentType=content_type,
            ChecksumSHA256=base64.b64encode(digest).decode(),
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=args.kms_key_id,
            IfNoneMatch="*",
        )
        assert resp.get("ServerSideEncryption") == "aws:kms"
        return {"key": key_name, "sha256": digest.hex(), "size": len(data)}

    t0 = time.perf_counter()
    images = nbytes = 0
    for p in passes:
        base = f"{args.prefix}/passes/{p['id']}"
        try:
            s3.head_object(Bucket=args.bucket, Key=f"{base}/manifest.json")
            continue  # archived by an earlier run
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                raise
        response = http.post(
            "/idpass/details",
            json={
                "id": p["id"],
                "return_images": True,
                "return_documents": False,
                "return_logs": False,
                "cipher_key": p["cipher_key"],
            },
        )
        response.raise_for_status()
        doc = response.json()
        objects = []
        for slot, text in (doc.pop("images", None) or {}).items():
            if text is None:
                continue
            data = base64.b64decode(text, validate=True)
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
                width, height = img.size
            entry = put(f"{base}/images/{slot}.jpg", data, "image/jpeg")
            objects.append({**entry, "slot": slot, "width": width, "height": height})
            images += 1
            nbytes += len(data)
        record = json.dumps(doc, sort_keys=True).encode()
        objects.append(put(f"{base}/record.json", record, "application/json"))
        sums = "".join(f"{o['sha256']}  {o['key'][len(base) + 1 :]}\n" for o in objects)
        objects.append(put(f"{base}/SHA256SUMS", sums.encode(), "text/plain"))
        manifest = json.dumps({"pass_id": p["id"], "objects": objects}, sort_keys=True).encode()
        put(f"{base}/manifest.json.sig", key.sign(manifest), "application/octet-stream")
        put(f"{base}/manifest.json", manifest, "application/json")
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "passes": len(passes), "images": images, "bytes": nbytes}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
