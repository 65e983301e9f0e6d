import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from archiver import config
from archiver.errors import ConfigError

MINIMAL = """
[api]
base_url = "https://api.example.test"
[storage]
bucket = "my-archive"
kms_key_id = "alias/archive"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "a.toml"
    p.write_text(text)
    return p


def test_minimal_file_loads_with_safe_defaults(tmp_path):
    """A minimal file gives KMS encryption, TLS verification and sane limits."""
    s = config.load(_write(tmp_path, MINIMAL), environ={})
    assert s.storage.sse == "aws:kms"
    assert s.api.verify_tls and s.storage.verify_tls
    assert s.pipeline.archive_statuses == ("complete",)
    assert s.api.token is None


def test_env_overrides_and_token(tmp_path):
    """Environment overrides replace keys (typed) and the token comes from the env."""
    env = {
        "IDPASS_ARCHIVER_PIPELINE__CONCURRENCY": "3",
        "IDPASS_ARCHIVER_STORAGE__PREFIX": "p2",
        "IDPASS_ARCHIVER_API_TOKEN": "sekret-token",
    }
    s = config.load(_write(tmp_path, MINIMAL), environ=env)
    assert s.pipeline.concurrency == 3
    assert s.storage.prefix == "p2"
    assert s.api.token is not None and s.api.token.get_secret_value() == "sekret-token"
    assert "sekret-token" not in repr(s)
    assert "sekret-token" not in s.model_dump_json()


def test_config_path_from_environment(tmp_path):
    """$IDPASS_ARCHIVER_CONFIG names the file when --config is absent."""
    p = _write(tmp_path, MINIMAL)
    s = config.load(None, environ={"IDPASS_ARCHIVER_CONFIG": str(p)})
    assert s.source_path == p.resolve()


def test_token_file(tmp_path):
    """api.token_file is read and stripped."""
    tok = tmp_path / "tok"
    tok.write_text("file-token\n")
    env = {"IDPASS_ARCHIVER_API__TOKEN_FILE": str(tok)}
    s = config.load(_write(tmp_path, MINIMAL), environ=env)
    assert s.api.token is not None and s.api.token.get_secret_value() == "file-token"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (MINIMAL + "\n[pipeline]\nconcurency = 3\n", "pipeline.concurency: unknown key"),
        (MINIMAL.replace('kms_key_id = "alias/archive"', ""), "kms_key_id is required"),
        (MINIMAL + "\n[pipeline]\nconcurrency = 0\n", "pipeline.concurrency"),
        (MINIMAL.replace('bucket = "my-archive"', 'bucket = "x"'), "storage.bucket"),
        (MINIMAL.replace("[api]\n", "[api]\ntoken = 'abc'\n"), "api.token: secrets may not"),
        (MINIMAL.replace('base_url = "https://api.example.test"', ""), "api.base_url: required"),
        ("[api\n", "not valid TOML"),
        (MINIMAL + "\n[storage2]\n", "storage2: unknown key"),
        (MINIMAL + '\n[pipeline]\narchive_statuses = ["cancelled"]\n', "archive_statuses"),
    ],
)
def test_bad_config_names_key_and_problem(tmp_path, text, fragment):
    """A bad config gives one message naming the key and the problem."""
    with pytest.raises(ConfigError) as info:
        config.load(_write(tmp_path, text), environ={})
    assert fragment in str(info.value)


def test_missing_file_and_no_path():
    """No path and no env var, or an unreadable file, are config errors."""
    with pytest.raises(ConfigError, match="--config"):
        config.load(None, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        config.load("/nonexistent/x.toml", environ={})


def test_bad_override_name(tmp_path):
    """A malformed override variable is reported by name."""
    with pytest.raises(ConfigError, match="IDPASS_ARCHIVER_FOO"):
        config.load(_write(tmp_path, MINIMAL), environ={"IDPASS_ARCHIVER_FOO": "1"})


def test_fingerprint_ignores_secrets(tmp_path):
    """The fingerprint changes with settings, not with the token."""
    p = _write(tmp_path, MINIMAL)
    a = config.load(p, environ={"IDPASS_ARCHIVER_API_TOKEN": "one"}).fingerprint()
    b = config.load(p, environ={"IDPASS_ARCHIVER_API_TOKEN": "two"}).fingerprint()
    c = config.load(p, environ={"IDPASS_ARCHIVER_STORAGE__PREFIX": "z"}).fingerprint()
    assert a == b != c


def _example_sections(text: str) -> dict[str, str]:
    """The example's text per table header (``[api]``, ``# [[sources]]``, ...)."""
    parts = re.split(r"^(?:# )?\[+([a-z_]+)\]+$", text, flags=re.MULTILINE)
    sections: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sections[name] = sections.get(name, "") + body
    return sections


def test_example_config_documents_every_key():
    """config/archiver.example.toml loads and mentions every settings key in its section."""
    root = Path(__file__).parents[1]
    example = root / "config" / "archiver.example.toml"
    s = config.load(example, environ={})
    sections = _example_sections(example.read_text())
    for section_name, section in s:
        if section_name == "source_path":
            continue
        if section_name == "sources":
            # An array of tables, commented out in the example: check each kind's keys.
            models: tuple[type[BaseModel], ...] = (
                config.SqlSourceSettings,
                config.FileSourceSettings,
            )
        else:
            models = (type(section),)
        text = sections.get(section_name, "")
        secrets = {
            "api": {"token"},
            "storage": {"sse_customer_key"},
            "catalog": {"key"},
            "signing": {"key"},
            "sources": {"url"},
        }.get(section_name, set())
        for model in models:
            for key in model.model_fields:
                if key in secrets:
                    continue
                documented = f"\n{key} =" in text or f"# {key} =" in text
                assert documented, f"{section_name}.{key} undocumented"
