from datetime import UTC, datetime

from archiver.idpass.crypto import new_key
from archiver.sources.file import read_file

A = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"
B = "1c7f3c9e-6a55-4a43-9d8f-2f0a8f7e3c22"


def test_jsonl_with_optional_fields(tmp_path):
    """JSONL lines give ids, keys, completion times and retention."""
    key = new_key()
    p = tmp_path / "l.jsonl"
    p.write_text(
        f'{{"id": "{A}", "cipher_key": "{key}", "completed_at": "2026-01-02T03:04:05Z", '
        f'"image_retention_days": 30, "status": "complete"}}\n\n{{"id": "{B.upper()}"}}\n'
    )
    good, bad = read_file(p)
    assert bad == []
    assert good[0].pass_id == A and good[0].cipher_key == key
    assert good[0].completed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert good[0].image_retention_days == 30
    assert good[1].pass_id == B and good[1].completed_at is None


def test_csv_with_header(tmp_path):
    """CSV with an id column imports; empty optional cells mean unknown."""
    p = tmp_path / "l.csv"
    p.write_text(
        f"id,cipher_key,completed_at,image_retention_days\n{A},,,\n{B},,2026-01-01T00:00:00+10:00,7\n"
    )
    good, bad = read_file(p)
    assert bad == []
    assert [g.pass_id for g in good] == [A, B]
    assert good[1].image_retention_days == 7


def test_bad_lines_are_reported_by_number_without_content(tmp_path):
    """Each bad line gets its line number and reason; its content is not echoed."""
    p = tmp_path / "l.jsonl"
    p.write_text(
        "\n".join(
            [
                f'{{"id": "{A}"}}',
                '{"id": "Quillon-Marrowby"}',
                "not json at all",
                f'{{"id": "{B}", "completed_at": "1999-13-45"}}',
                f'{{"id": "{B}", "completed_at": "2026-01-01T00:00:00"}}',
                f'{{"id": "{B}", "image_retention_days": 9000}}',
                f'{{"id": "{B}", "cipher_key": "short"}}',
                f'{{"id": "{A}"}}',
                "[1, 2]",
            ]
        )
    )
    good, bad = read_file(p)
    assert [g.pass_id for g in good] == [A]
    reasons = {b.line: b.reason for b in bad}
    assert reasons == {
        2: "id is not a UUID",
        3: "line is not valid JSON",
        4: "completed_at is not an ISO 8601 timestamp",
        5: "completed_at has no timezone",
        6: "image_retention_days is outside 0..5000",
        7: "cipher key is not valid Base64",
        8: "duplicate id (first occurrence kept)",
        9: "line is not an object",
    }
    assert all("Quillon" not in b.reason for b in bad)


def test_csv_without_id_column(tmp_path):
    """A CSV without an id column is one clear error."""
    p = tmp_path / "l.csv"
    p.write_text("pass,other\nx,y\n")
    good, bad = read_file(p)
    assert good == [] and bad[0].reason == "CSV header has no 'id' column"
