import base64
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from archiver import config
from archiver.errors import ConfigError
from tests.fixtures.cli import run_cli

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


# -- secrets: one table, every row resolved and refused the same way -----------------

SSE_C_KEY = base64.b64encode(b"k" * 32).decode()
SSE_C = MINIMAL.replace('kms_key_id = "alias/archive"', 'sse = "SSE-C"')
SQL_SOURCE = (
    '\n[[sources]]\nkind = "sql"\nname = "kyc"\nurl_env = "KYC_URL"\n'
    'query = "SELECT id, updated_at FROM p WHERE updated_at > :watermark"\n'
)
# (section header, key, the value written inline) for every secret that is refused
INLINE_SECRETS = [
    ("[api]", "token", "inline-token-value"),
    ("[storage]", "sse_customer_key", SSE_C_KEY),
    ("[catalog]", "key", "inline-catalog-key"),
    ("[signing]", "key", "inline-signing-key"),
]


def _with_key(text: str, header: str, key: str, value: str) -> str:
    if header not in text:
        text += f"\n{header}\n"
    return text.replace(f"{header}\n", f"{header}\n{key} = {value!r}\n", 1)


@pytest.mark.parametrize(("header", "key", "value"), INLINE_SECRETS)
def test_a_secret_written_in_the_file_is_refused(tmp_path, header, key, value):
    """Every secret written in the TOML is refused by name (storage.sse_customer_key
    used to be accepted and silently dropped), and the message never holds it."""
    section = header.strip("[]")
    text = _with_key(SSE_C, header, key, value)
    with pytest.raises(ConfigError) as info:
        config.load(_write(tmp_path, text), environ={"IDPASS_ARCHIVER_SSE_CUSTOMER_KEY": SSE_C_KEY})
    message = str(info.value)
    assert message.startswith(f"{section}.{key}: secrets may not be written in the config file")
    assert value not in message


def test_a_source_url_written_in_the_file_is_refused(tmp_path):
    text = SQL_SOURCE + "url = 'sqlite:///inline.db'\n"
    with pytest.raises(ConfigError) as info:
        config.load(_write(tmp_path, MINIMAL + text), environ={"KYC_URL": "sqlite:///x.db"})
    assert str(info.value).startswith("sources[0].url: secrets may not be written")
    assert "inline.db" not in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "IDPASS_ARCHIVER_API__TOKEN",
        "IDPASS_ARCHIVER_STORAGE__SSE_CUSTOMER_KEY",
        "IDPASS_ARCHIVER_CATALOG__KEY",
        "IDPASS_ARCHIVER_SIGNING__KEY",
    ],
)
def test_a_secret_set_as_an_override_is_refused(tmp_path, name):
    """A secret is not an override: ``IDPASS_ARCHIVER_STORAGE__SSE_CUSTOMER_KEY`` used to
    be silently dropped; each is refused, naming the variable the secret comes from."""
    env = {name: "override-secret-value", "IDPASS_ARCHIVER_SSE_CUSTOMER_KEY": SSE_C_KEY}
    with pytest.raises(ConfigError) as info:
        config.load(_write(tmp_path, SSE_C), environ=env)
    message = str(info.value)
    assert message.startswith(f"{name}: secrets are not overrides")
    assert "override-secret-value" not in message


# (section, field, the variable, the *_file key as an override)
SECRETS_FROM_ENV_OR_FILE = [
    ("api", "token", "IDPASS_ARCHIVER_API_TOKEN", "IDPASS_ARCHIVER_API__TOKEN_FILE"),
    (
        "storage",
        "sse_customer_key",
        "IDPASS_ARCHIVER_SSE_CUSTOMER_KEY",
        "IDPASS_ARCHIVER_STORAGE__SSE_CUSTOMER_KEY_FILE",
    ),
    ("catalog", "key", "IDPASS_ARCHIVER_CATALOG_KEY", "IDPASS_ARCHIVER_CATALOG__KEY_FILE"),
    ("signing", "key", "IDPASS_ARCHIVER_SIGNING_KEY", "IDPASS_ARCHIVER_SIGNING__KEY_FILE"),
]


@pytest.mark.parametrize(
    ("section", "field", "variable", "file_override"), SECRETS_FROM_ENV_OR_FILE
)
def test_a_secret_comes_from_its_variable_else_its_file(
    tmp_path, section, field, variable, file_override
):
    """Each secret is read from its variable when set and not empty, else from the file
    named by its ``*_file`` key (stripped); without either it is unset."""
    secret_file = tmp_path / "secret"
    other = base64.b64encode(b"f" * 32).decode()
    secret_file.write_text(other + "\n")
    path = _write(tmp_path, MINIMAL)
    base = {"IDPASS_ARCHIVER_SSE_CUSTOMER_KEY": SSE_C_KEY} if section != "storage" else {}

    def value(env: dict[str, str]) -> str | None:
        secret = getattr(getattr(config.load(path, environ={**base, **env}), section), field)
        return None if secret is None else secret.get_secret_value()

    both = {variable: SSE_C_KEY, file_override: str(secret_file)}
    assert value(both) == SSE_C_KEY
    assert value({variable: "", file_override: str(secret_file)}) == other
    assert value({file_override: str(secret_file)}) == other
    if section != "storage":
        assert value({}) is None


def test_a_missing_secret_file_names_its_key(tmp_path):
    env = {"IDPASS_ARCHIVER_SIGNING__KEY_FILE": str(tmp_path / "nope.pem")}
    with pytest.raises(ConfigError, match=r"^signing\.key_file: cannot read secret file"):
        config.load(_write(tmp_path, MINIMAL), environ=env)


def test_catalog_url_file_replaces_the_url(tmp_path):
    """catalog.url may be written in the file; catalog.url_file replaces it."""
    url_file = tmp_path / "url"
    url_file.write_text("sqlite:///from-file.db\n")
    path = _write(tmp_path, MINIMAL + '\n[catalog]\nurl = "sqlite:///inline.db"\n')
    assert config.load(path, environ={}).catalog.url == "sqlite:///inline.db"
    env = {"IDPASS_ARCHIVER_CATALOG__URL_FILE": str(url_file)}
    assert config.load(path, environ=env).catalog.url == "sqlite:///from-file.db"


def _models(annotation: object) -> list[type[BaseModel]]:
    """The settings models a field holds (``X | None``, ``tuple[A | B, ...]``: each)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def test_every_secret_field_is_in_the_table():
    """A field kept out of dumps as a SecretStr is a secret: it has a row in
    config.SECRETS, so it is resolved and refused like the others."""
    found = {
        (section, key)
        for section, field in config.Settings.model_fields.items()
        for model in _models(field.annotation)
        for key, inner in model.model_fields.items()
        if inner.exclude and SecretStr in typing.get_args(inner.annotation)
    }
    table = {(s.section, s.key) for s in config.SECRETS if not s.inline}
    assert found == table
    assert ("storage", "sse_customer_key") in found


# -- removed keys --------------------------------------------------------------------


def test_pipeline_batch_size_is_refused_as_removed(tmp_path):
    """pipeline.batch_size never had any effect and was removed: a file (or an override)
    that still sets it is told so, by name, rather than with "unknown key"."""
    for text, env in (
        (MINIMAL + "\n[pipeline]\nbatch_size = 500\n", {}),
        (MINIMAL, {"IDPASS_ARCHIVER_PIPELINE__BATCH_SIZE": "500"}),
    ):
        with pytest.raises(ConfigError) as info:
            config.load(_write(tmp_path, text), environ=env)
        assert str(info.value).startswith(
            "pipeline.batch_size: this key was removed because it never had any effect"
        )


def test_a_removed_key_is_a_configuration_error_on_the_command_line(tmp_path):
    """The command says so in one line and exits 2 (usage), with no traceback."""
    catalog = f'\n[catalog]\nurl = "sqlite:///{tmp_path / "catalog.db"}"\n'
    path = _write(tmp_path, MINIMAL + catalog + "\n[pipeline]\nbatch_size = 500\n")
    proc = run_cli(["status", "--config", str(path)])
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "idpass-archiver: configuration error: pipeline.batch_size: this key was removed "
        "because it never had any effect (how many passes a worker claims at a time follows "
        "api.concurrency and pipeline.concurrency): delete it"
    )
