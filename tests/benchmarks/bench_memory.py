"""Peak memory of the archiver process alone, to size a container's requests and limits.

Run (not part of the test suite; a minute or two)::

    .venv/bin/python -m tests.benchmarks.bench_memory
    .venv/bin/python -m tests.benchmarks.bench_memory --heavy 360 --concurrency 4 6 12

Starts the ID Pass sandbox and SeaweedFS in *this* process (as ``idpass-archiver
demo`` does), seeds passes, imports the sandbox's ledger with ``idpass-archiver
catalog import``, and runs ``idpass-archiver run`` as a child process, once per
workload and concurrency, each on a fresh bucket and catalog. The peak resident set
size reported is the archiver process's own, neither the sandbox's nor SeaweedFS's:
its high-water mark (``VmHWM``, sampled while it runs, :mod:`tests.benchmarks.procmem`;
not ``wait4``'s ``ru_maxrss``, which starts from this benchmark's own size). With it,
its wall time and the CPU cores it used on average (CPU time / wall time), and with
the Python start-up alone (``idpass-archiver --version``) as a baseline.

Workloads: ``demo`` is the demo's 36 passes (151 images, about 50 MB); ``heavy`` is
``--heavy`` passes with every one of the 12 image slots present (the largest details
responses the API can send, several MB of Base64 each).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from archiver.catalog.keys import new_catalog_secret
from archiver.config import PipelineSettings
from archiver.core.signing import Signer
from archiver.demo import _seed
from archiver.idpass.models import SLOTS
from archiver.sandbox.seaweedfs import SeaweedFS
from archiver.sandbox.server import SandboxServer
from tests.benchmarks.procmem import MemorySampler

CLI = [sys.executable, "-m", "archiver"]


def _child(args: list[str], env: dict[str, str]) -> tuple[int, float, float, float, str]:
    """Run the CLI; return (exit code, peak RSS in MiB, seconds, CPU seconds, stdout)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([*CLI, *args], env=env, stdout=out, stderr=subprocess.DEVNULL)
        memory = MemorySampler(proc.pid, time.perf_counter()).start()
        _, status, usage = os.wait4(proc.pid, 0)
        memory.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, memory.peak_mb, time.monotonic() - t0, cpu, text


def _workload(
    name: str, heavy: int, concurrency: int, s3: SeaweedFS, sandbox: SandboxServer, tmp: Path
) -> dict[str, Any]:
    work = tmp / f"{name}-{concurrency}"
    work.mkdir(parents=True)
    bucket = f"bench-{name}-{concurrency}-{secrets.token_hex(3)}"
    s3.create_bucket(bucket, object_lock=True, kms_key_id="bench-key")
    cfg = work / "archiver.toml"
    cfg.write_text(
        f"""
[api]
base_url = "{sandbox.base_url}"
[storage]
bucket = "{bucket}"
endpoint_url = "{s3.endpoint_url}"
region = "us-east-1"
kms_key_id = "bench-key"
[catalog]
url = "sqlite:///{work / "catalog.db"}"
[pipeline]
concurrency = {concurrency}
[logging]
level = "warning"
"""
    )
    access, secret = s3.credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDPASS_ARCHIVER_")}
    env |= {
        "IDPASS_ARCHIVER_API_TOKEN": sandbox.token,
        "IDPASS_ARCHIVER_CATALOG_KEY": new_catalog_secret(),
        "IDPASS_ARCHIVER_SIGNING_KEY": Signer.generate().private_pem().decode(),
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    with httpx.Client(
        base_url=sandbox.base_url,
        headers={"Authorization": f"Bearer {sandbox.token}"},
        timeout=120,
    ) as admin:
        admin.post("/_sandbox/reset").raise_for_status()
        if name == "demo":
            _seed(admin)
        else:
            admin.post(
                "/_sandbox/passes",
                json={"count": heavy, "image_retention_days": 30, "slots": list(SLOTS)},
            ).raise_for_status()
        ledger = work / "ledger.jsonl"
        ledger.write_bytes(admin.get("/_sandbox/ledger").content)
    code, _, _, _, _ = _child(["catalog", "import", str(ledger), "--config", str(cfg)], env)
    assert code == 0, "import failed"
    code, rss, seconds, cpu, out = _child(["run", "--json", "--config", str(cfg)], env)
    doc = json.loads(out)
    return {
        "workload": name,
        "concurrency": concurrency,
        "exit_code": code,
        "passes": doc["passes"],
        "images": doc["images"],
        "image_mb": round(doc["image_bytes"] / 1e6, 1),
        "seconds": round(seconds, 1),
        "cpu_cores": round(cpu / seconds, 2),
        "peak_rss_mib": round(rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heavy", type=int, default=120, help="passes with all 12 slots")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[PipelineSettings.model_fields["concurrency"].default],
        help="pipeline.concurrency values to run (api.concurrency stays at its default)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmpdir:
        tmp = Path(tmpdir)
        _, base_rss, _, _, _ = _child(["--version"], dict(os.environ))
        print(f"python start-up (idpass-archiver --version): peak RSS {base_rss:.1f} MiB")
        access, secret = "bench" + secrets.token_hex(4), secrets.token_urlsafe(24)
        with (
            SeaweedFS(tmp / "s3", access_key=access, secret_key=secret) as s3,
            SandboxServer(secrets.token_urlsafe(24)) as sandbox,
        ):
            print(
                f"{'workload':<8} {'conc':>4} {'exit':>4} {'passes':>6} {'images':>6} "
                f"{'MB':>7} {'s':>6} {'cores':>5} {'peak RSS MiB':>12}"
            )
            # a value given twice is measured twice (run-to-run spread)
            for i, concurrency in enumerate(args.concurrency):
                for name in ("demo", "heavy"):
                    r = _workload(name, args.heavy, concurrency, s3, sandbox, tmp / str(i))
                    print(
                        f"{r['workload']:<8} {r['concurrency']:>4} {r['exit_code']:>4} "
                        f"{r['passes']:>6} {r['images']:>6} {r['image_mb']:>7} "
                        f"{r['seconds']:>6} {r['cpu_cores']:>5} {r['peak_rss_mib']:>12}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
