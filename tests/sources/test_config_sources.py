"""The ``[[sources]]`` part of the configuration: URLs from env or files, cross-checks."""

import tomllib
from pathlib import Path

import pytest

from archiver import config
from archiver.errors import ConfigError

BASE = """
[api]
base_url = "https://api.example.test"
[storage]
bucket = "my-archive"
kms_key_id = "alias/archive"
"""
URL = "postgresql+psycopg://archiver:hunter2-pw@kyc-db:5432/kyc"
QUERY = "SELECT id, cipher_key, completed_at, updated_at FROM p WHERE updated_at > :watermark"
KEY_QUERY = "SELECT cipher_key FROM p WHERE id = :id"


def _sql(**keys: object) -> str:
    values = {"name": "kyc", "url_env": "KYC_URL", "query": QUERY, "key_query": KEY_QUERY}
    values.update(keys)
    lines = ["[[sources]]", 'kind = "sql"']
    for k, v in values.items():
        if v is None:
            continue
        lines.append(f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
    return "\n".join(lines) + "\n"


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Settings:
    p = tmp_path / "a.toml"
    p.write_text(BASE + text)
    return config.load(p, environ={"KYC_URL": URL} if env is None else env)


def test_url_from_environment_variable_is_secret(tmp_path):
    """url_env names a variable whose value becomes the excluded, secret url."""
    s = _load(tmp_path, _sql())
    (src,) = s.sources
    assert isinstance(src, config.SqlSourceSettings)
    assert src.url is not None and src.url.get_secret_value() == URL
    assert "hunter2" not in repr(s)
    assert "hunter2" not in s.model_dump_json()
    assert "url" not in s.model_dump()["sources"][0]


def test_fingerprint_does_not_change_with_the_url(tmp_path):
    """The configuration fingerprint ignores the source URL (a secret)."""
    a = _load(tmp_path, _sql(), {"KYC_URL": URL}).fingerprint()
    b = _load(tmp_path, _sql(), {"KYC_URL": "sqlite:///other.db"}).fingerprint()
    assert a == b


def test_url_from_file(tmp_path):
    """url_file is read and stripped like the other secret files."""
    f = tmp_path / "kyc-url"
    f.write_text(URL + "\n")
    s = _load(tmp_path, _sql(url_env=None, url_file=str(f)), env={})
    assert s.sources[0].url is not None and s.sources[0].url.get_secret_value() == URL  # type: ignore[union-attr]


def test_url_env_variable_with_the_override_prefix_is_not_an_override(tmp_path):
    """A url_env variable named IDPASS_ARCHIVER_... is read as the URL, not as an override."""
    s = _load(tmp_path, _sql(url_env="IDPASS_ARCHIVER_KYC_URL"), {"IDPASS_ARCHIVER_KYC_URL": URL})
    assert s.sources[0].url is not None  # type: ignore[union-attr]


def test_file_source_loads(tmp_path):
    """A file source needs only a name and a path."""
    s = _load(tmp_path, '[[sources]]\nkind = "file"\nname = "ledger"\npath = "/x/l.csv"\n')
    (src,) = s.sources
    assert isinstance(src, config.FileSourceSettings) and src.path == Path("/x/l.csv")


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        (_sql(url_env=None), {}, "sources[0].url_env: give exactly one of url_env"),
        (_sql(url_file="/run/x"), {"KYC_URL": URL}, "sources[0].url_env: give exactly one"),
        (_sql(), {}, "sources[0].url_env: environment variable KYC_URL is not set"),
        (_sql(url_env=None, url_file="/nonexistent/u"), {}, "sources[0].url_file: cannot read"),
        (
            _sql(url="sqlite:///x.db"),
            {"KYC_URL": URL},
            "sources[0].url: secrets may not be written",
        ),
        (_sql() + _sql(), {"KYC_URL": URL}, "sources[1].name: source name 'kyc' is already"),
        (_sql(query="SELECT * FROM p"), {"KYC_URL": URL}, "sources[0].query: the query must bind"),
        (
            _sql(query="SELECT x FROM p WHERE t > 1::watermark"),
            {"KYC_URL": URL},
            "sources[0].query: the query must bind :watermark",
        ),
        (_sql(key_query=None), {"KYC_URL": URL}, "sources[0].key_query: the query returns"),
        (
            _sql(key_query="SELECT cipher_key FROM p"),
            {"KYC_URL": URL},
            "sources[0].key_query: key_query must bind :id",
        ),
        (
            _sql(store_cipher_keys=True),
            {"KYC_URL": URL},
            "sources[0].store_cipher_keys: store_cipher_keys = true needs a catalog key",
        ),
        (_sql(name="KYC DB"), {"KYC_URL": URL}, "sources[0].name: String should match"),
        (_sql(querry="x"), {"KYC_URL": URL}, "sources[0].querry: unknown key"),
        ('[[sources]]\nkind = "sql"\nname = "k"\n', {}, "sources[0].query: required key"),
        ('[[sources]]\nkind = "ftp"\nname = "k"\n', {}, "sources[0]: Input tag 'ftp'"),
    ],
)
def test_bad_source_names_key_and_never_the_url(tmp_path, text, env, fragment):
    """Each bad source gives one message naming sources[N].key, without the URL."""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, env)
    message = str(info.value)
    assert fragment in message
    assert "hunter2" not in message and "sqlite:///x.db" not in message


def test_store_cipher_keys_with_a_catalog_key_loads(tmp_path):
    """store_cipher_keys = true is accepted once a catalog key is configured."""
    env = {"KYC_URL": URL, "IDPASS_ARCHIVER_CATALOG_KEY": "k" * 44}
    s = _load(tmp_path, _sql(store_cipher_keys=True, key_query=None), env)
    assert s.sources[0].store_cipher_keys is True  # type: ignore[union-attr]


def test_query_without_keys_needs_no_key_query(tmp_path):
    """A query that returns no cipher_key column needs no key_query."""
    q = "SELECT id, updated_at FROM p WHERE updated_at >= :watermark"
    s = _load(tmp_path, _sql(query=q, key_query=None))
    assert s.sources[0].key_query is None  # type: ignore[union-attr]


def test_example_source_blocks_load_when_uncommented(tmp_path):
    """The commented [[sources]] examples in archiver.example.toml are valid as written."""
    example = Path(__file__).parents[2] / "config" / "archiver.example.toml"
    blocks = example.read_text().split("\n# [[sources]]\n")[1:]
    assert len(blocks) == 2
    code = []
    for block in blocks:
        code.append("[[sources]]")
        for line in block.splitlines():
            if not line.startswith("# "):
                break  # a bare "#" or the end of the comment ends the example
            if not line.startswith("# #"):
                code.append(line[2:])
    s = config.from_mapping(tomllib.loads(BASE + "\n".join(code)), {"KYC_DATABASE_URL": URL})
    assert [src.kind for src in s.sources] == ["sql", "file"]
    assert s.sources[0].key_query is not None  # type: ignore[union-attr]
