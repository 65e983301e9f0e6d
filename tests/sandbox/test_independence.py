"""The sandbox plays the other side of the wire: it must not share the client's
wire-format code, or a wrong guess about the format could never fail a test."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import archiver.sandbox
from archiver.idpass import crypto, models
from archiver.sandbox import cipher, wire

SANDBOX = Path(archiver.sandbox.__file__).parent
FORBIDDEN = ("archiver.idpass", "archiver.core")


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (``from x import y`` counts as ``x`` and ``x.y``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_no_sandbox_module_imports_the_client_or_the_core_formats() -> None:
    modules = sorted(SANDBOX.glob("*.py"))
    assert len(modules) >= 10
    bad = {
        f"{path.name}: {name}"
        for path in modules
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, sorted(bad)


def test_the_import_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The walk above really finds both import forms."""
    probe = tmp_path / "probe.py"
    probe.write_text("import archiver.idpass.crypto\nfrom archiver.core import images\n")
    assert {"archiver.idpass.crypto", "archiver.core", "archiver.core.images"} <= set(
        _imports(probe)
    )


def test_both_sides_state_the_same_slots_and_statuses() -> None:
    """Stated twice on purpose: a change on one side alone fails here."""
    assert wire.SLOTS == models.SLOTS
    assert wire.STATUSES == models.STATUSES
    assert wire.TERMINAL_STATUSES == models.TERMINAL_STATUSES


def test_the_sandbox_cipher_follows_the_documented_layout() -> None:
    """nonce[12] || ciphertext || tag[16], Base64, AES-256-GCM without associated data."""
    key_text = cipher.new_key()
    key = base64.b64decode(key_text)
    assert len(key) == 32
    token = cipher.seal(key, b"\xff\xd8jpeg bytes")
    blob = base64.b64decode(token)
    assert len(blob) == 12 + len(b"\xff\xd8jpeg bytes") + 16
    assert AESGCM(key).decrypt(blob[:12], blob[12:], None) == b"\xff\xd8jpeg bytes"
    assert cipher.seal(key, b"x") != cipher.seal(key, b"x")  # a fresh nonce each time


def test_the_client_decrypts_what_the_sandbox_encrypts() -> None:
    """Two implementations of one documented scheme, one per side, agree."""
    key = cipher.new_key()
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0 a jpeg").decode()
    plain = {
        "id": "p",
        "status": "complete",
        "ip_address": "203.0.113.9",
        "verified_identity": {"first_name": "Ana", "address": None},
        "logs": [{"event": "pass_registered", "ip": "198.51.100.20"}],
        "config": {"image_retention_days": 30, "requested_identity": {"last_name": "Ode"}},
        "images": {"probe": jpeg, "id_photo": None},
    }
    sealed = cipher.encrypt_answer(plain, key)
    assert crypto.is_encrypted(sealed)
    assert sealed["verified_identity"]["first_name"] != "Ana"
    assert sealed["config"]["image_retention_days"] == 30
    assert sealed["images"]["id_photo"] is None
    assert crypto.decrypt_response(sealed, key) == plain
