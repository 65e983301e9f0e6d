"""Transport settings: plain http:// only to loopback (unless allowed, with a warning on
every run), the request deadline and the response cap derived from the image limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from archiver import config
from archiver.config import default_max_response_bytes, warn_insecure_transport
from archiver.doctor import _scheme
from archiver.errors import ConfigError
from tests.fixtures.cli import run_cli


def _settings(api_url: str, endpoint: str | None = None, **extra: dict) -> config.Settings:
    data: dict = {
        "api": {"base_url": api_url},
        "storage": {"bucket": "my-archive", "kms_key_id": "alias/archive"},
    }
    if endpoint is not None:
        data["storage"]["endpoint_url"] = endpoint
    for section, keys in extra.items():
        data.setdefault(section, {}).update(keys)
    return config.from_mapping(data, environ={})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.3.4.5",
        "http://[::1]:9000/x",
        "http://localhost:9",
        "http://LocalHost:9",
        "https://api.example.test",
    ],
)
def test_loopback_http_and_any_https_are_accepted(url):
    s = _settings(url, url)
    assert s.api.base_url == url and s.storage.endpoint_url == url
    with capture_logs() as logs:
        assert warn_insecure_transport(s) == []
    assert logs == []


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.test",
        "http://10.0.0.5:8333",
        "http://localhost.example.test",
        "http://127.0.0.1.nip.io",
        "http://[fd00::2]:8080",
    ],
)
@pytest.mark.parametrize("where", ["api.base_url", "storage.endpoint_url"])
def test_plain_http_elsewhere_is_refused_by_name(url, where):
    api, endpoint = (url, None) if where == "api.base_url" else ("https://api.example.test", url)
    with pytest.raises(ConfigError) as info:
        _settings(api, endpoint)
    message = str(info.value)
    assert message.startswith(f"{where}: plain http:// is refused")
    assert f"{where.split('.')[0]}.allow_insecure_http = true" in message


def test_allowing_plain_http_is_per_section_and_warns_each_time():
    with pytest.raises(ConfigError, match=r"^storage\.endpoint_url"):
        _settings(
            "http://api.example.test",
            "http://s3.example.test",
            api={"allow_insecure_http": True},
        )
    s = _settings(
        "http://api.example.test",
        "http://s3.example.test",
        api={"allow_insecure_http": True},
        storage={"allow_insecure_http": True},
    )
    for _ in range(2):  # every call (every run) warns again
        with capture_logs() as logs:
            keys = warn_insecure_transport(s)
        assert keys == ["api.base_url", "storage.endpoint_url"]
        assert [(e["event"], e["log_level"], e["setting"]) for e in logs] == [
            ("insecure_http_allowed", "warning", "api.base_url"),
            ("insecure_http_allowed", "warning", "storage.endpoint_url"),
        ]
        assert all("example.test" not in str(e) for e in logs)  # no URL in the log


def test_the_cli_refuses_plain_http_to_another_host(tmp_path: Path):
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[api]\nbase_url = "http://api.example.test"\n'
        '[storage]\nbucket = "my-archive"\nkms_key_id = "alias/archive"\n'
    )
    proc = run_cli(["status", "--config", str(cfg)])
    assert proc.returncode == 2, proc.stderr
    assert "api.base_url: plain http:// is refused" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_doctor_names_the_scheme_and_never_claims_certificates_for_http():
    assert _scheme("api", "https://api.example.test", True).detail == (
        "https://, certificates verified"
    )
    assert _scheme("storage", None, True).detail == "https://, certificates verified"  # AWS
    assert not _scheme("api", "https://api.example.test", False).ok
    local = _scheme("storage", "http://127.0.0.1:8333", True)
    assert local.ok and not local.warn and "certificates" not in local.detail
    far = _scheme("api", "http://api.example.test", True)
    assert far.ok and far.warn and far.label == "WARN"
    assert "secrets travel in clear" in far.detail and "certificates" not in far.detail


def test_the_deadline_must_cover_a_read():
    with pytest.raises(ConfigError, match="request_deadline_seconds must be at least"):
        _settings(
            "https://api.example.test",
            api={"read_timeout_seconds": 60, "request_deadline_seconds": 30},
        )
    s = _settings("https://api.example.test")
    assert s.api.request_deadline_seconds == 120.0 >= s.api.read_timeout_seconds
    # unset, it follows a longer read timeout rather than refusing the file
    slow = _settings("https://api.example.test", api={"read_timeout_seconds": 300})
    assert slow.api.request_deadline_seconds == 300.0


def test_the_response_cap_is_derived_from_the_image_limit():
    """12 slots x Base64 of pipeline.max_image_bytes, + 1/32 for escapes, + 1 MiB."""
    s = _settings("https://api.example.test")
    assert s.api.max_response_bytes == default_max_response_bytes(15 * 1024 * 1024)
    assert s.api.max_response_bytes == 260_571_136
    small = _settings("https://api.example.test", pipeline={"max_image_bytes": 3 * 1024 * 1024})
    images = 12 * 4 * 1024 * 1024  # Base64 of 3 MiB is 4 MiB
    assert small.api.max_response_bytes == images + images // 32 + 1024 * 1024
    fixed = _settings("https://api.example.test", api={"max_response_bytes": 5_000_000})
    assert fixed.api.max_response_bytes == 5_000_000
    with pytest.raises(ConfigError, match="max_response_bytes"):
        _settings("https://api.example.test", api={"max_response_bytes": 100})
