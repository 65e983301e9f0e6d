import base64
import json

import httpx
import pytest

from archiver.errors import (
    ApiAuthError,
    ApiBadRequest,
    ApiMalformedResponse,
    ApiNotFound,
    ApiRateLimited,
    ApiServerError,
    ApiTransportError,
)
from archiver.idpass import crypto
from archiver.idpass.client import IdPassClient
from tests.helpers import make_jpeg

PID = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"
TOKEN = "tok-" + "x" * 20
JPEG = make_jpeg()


def _details(**over):
    doc = {
        "id": PID,
        "status": "complete",
        "verification_status": "passed",
        "config": {
            "image_retention_days": 30,
            "link_validity_days": 7,
            "requested_identity": {"first_name": "Quillon"},
        },
        "created_at": "2026-01-01T00:00:00Z",
        "completed_at": "2026-01-01T00:10:00Z",
        "verified_identity": {"first_name": "Quillon", "date_of_birth": "1971-02-03"},
        "ip_address": "203.0.113.9",
        "some_future_field": {"kept": True},
        "images": {"probe": base64.b64encode(JPEG).decode(), "id_photo": None},
    }
    doc.update(over)
    return doc


def _client(handler):
    return IdPassClient("http://api.test", TOKEN, transport=httpx.MockTransport(handler))


async def test_details_sends_bearer_and_flags_and_parses():
    """details() posts the id and flags with the bearer token and returns typed data."""
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers["authorization"]
        seen["body"] = json.loads(request.content)
        seen["path"] = request.url.path
        return httpx.Response(200, json=_details())

    async with _client(handler) as api:
        read = await api.details(PID, "k" * 44)
    assert seen["auth"] == f"Bearer {TOKEN}"
    assert seen["path"] == "/idpass/details"
    assert seen["body"] == {
        "id": PID,
        "cipher_key": "k" * 44,
        "return_images": True,
        "return_documents": False,
        "return_logs": False,
    }
    assert read.details.status == "complete"
    assert read.details.image_retention_days == 30
    assert base64.b64decode(read.images["probe"]) == JPEG
    assert read.null_slots == ("id_photo",)
    assert "images" not in read.record
    assert read.record["some_future_field"] == {"kept": True}
    assert read.details.model_extra["some_future_field"] == {"kept": True}
    assert read.response_bytes > len(JPEG)


async def test_details_omits_key_when_none():
    """Without a key the request carries no cipher_key field."""

    def handler(request):
        assert "cipher_key" not in json.loads(request.content)
        return httpx.Response(200, json=_details())

    async with _client(handler) as api:
        await api.details(PID)


async def test_enveloped_response_is_unwrapped():
    """A {"data": {...}} envelope is removed."""
    async with _client(lambda r: httpx.Response(200, json={"data": _details()})) as api:
        read = await api.details(PID, "k")
    assert read.details.id == PID


@pytest.mark.parametrize(
    ("status", "exc", "retryable"),
    [
        (400, ApiBadRequest, False),
        (401, ApiAuthError, False),
        (403, ApiAuthError, False),
        (404, ApiNotFound, False),
        (500, ApiServerError, True),
        (503, ApiServerError, True),
    ],
)
async def test_http_errors_map_to_project_types(status, exc, retryable):
    """Each HTTP error status becomes its own error type with the status attached."""
    body = {"error": {"code": "some_code", "message": "Quillon Marrowby not found"}}
    async with _client(lambda r: httpx.Response(status, json=body)) as api:
        with pytest.raises(exc) as info:
            await api.details(PID)
    assert info.value.status_code == status
    assert info.value.retryable is retryable
    assert info.value.pass_id == PID
    assert "some_code" in str(info.value)
    assert "Quillon" not in str(info.value)  # bodies never reach messages


async def test_auth_errors_are_systemic():
    """A refused token is a systemic error that stops the run."""
    async with _client(lambda r: httpx.Response(401, json={})) as api:
        with pytest.raises(ApiAuthError) as info:
            await api.details(PID)
    assert info.value.systemic


async def test_rate_limit_carries_retry_after():
    """429 carries the Retry-After seconds."""
    async with _client(lambda r: httpx.Response(429, headers={"Retry-After": "7"})) as api:
        with pytest.raises(ApiRateLimited) as info:
            await api.details(PID)
    assert info.value.retry_after == 7.0
    assert info.value.retryable


async def test_html_error_page_is_malformed_not_a_crash():
    """An HTML 200 page is a malformed response."""
    page = "<html><body>Bad gateway</body></html>"
    async with _client(
        lambda r: httpx.Response(200, text=page, headers={"content-type": "text/html"})
    ) as api:
        with pytest.raises(ApiMalformedResponse, match="expected JSON"):
            await api.details(PID)


async def test_invalid_json_is_malformed():
    """A JSON content type with a broken body is a malformed response."""
    async with _client(
        lambda r: httpx.Response(
            200, content=b'{"id": "x", "sta', headers={"content-type": "application/json"}
        )
    ) as api:
        with pytest.raises(ApiMalformedResponse, match="not valid JSON"):
            await api.details(PID)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"status": "weird"}, "status"),
        ({"completed_at": "yesterday"}, "completed_at"),
        ({"completed_at": "2026-01-01T00:00:00"}, "completed_at"),
        ({"id": "00000000-0000-0000-0000-000000000000"}, "different pass"),
        ({"images": "a"}, "images is a str"),
        ({"images": ["a"]}, "images entry 0 is not a {slot, data} object"),
        ({"images": {"probe": 5}}, "image slot"),
    ],
)
async def test_shape_errors_name_the_field_not_the_value(change, fragment):
    """A response of the wrong shape names the field that failed, never its value."""
    async with _client(lambda r: httpx.Response(200, json=_details(**change))) as api:
        with pytest.raises(ApiMalformedResponse) as info:
            await api.details(PID)
    assert fragment in str(info.value)
    assert "yesterday" not in str(info.value)


async def test_transport_failures_are_retryable():
    """A connection failure becomes a retryable transport error."""

    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    async with _client(handler) as api:
        with pytest.raises(ApiTransportError) as info:
            await api.details(PID)
    assert info.value.retryable


async def test_timeouts_are_transport_errors():
    """A read timeout becomes a retryable transport error."""

    def handler(request):
        raise httpx.ReadTimeout("slow", request=request)

    async with _client(handler) as api:
        with pytest.raises(ApiTransportError, match="timed out"):
            await api.details(PID)


async def test_local_decryption_opens_text_fields_and_leaves_image_tokens():
    """With local decryption the record is plaintext and images stay sealed tokens."""
    key = crypto.new_key()
    encrypted = crypto.encrypt_response(_details(), key)

    async with _client(lambda r: httpx.Response(200, json=encrypted)) as api:
        read = await api.details(PID, decrypt_locally_with=key)
    assert read.encrypted
    assert read.record["verified_identity"]["first_name"] == "Quillon"
    assert read.record["config"]["requested_identity"]["first_name"] == "Quillon"
    token = read.images["probe"]
    assert crypto.decrypt_value(crypto.parse_key(key), token) == JPEG


async def test_repr_of_details_hides_personal_fields():
    """The repr of the typed model shows no personal data."""
    async with _client(lambda r: httpx.Response(200, json=_details())) as api:
        read = await api.details(PID)
    text = repr(read) + repr(read.details) + repr(read.details.config)
    assert "Quillon" not in text and "1971" not in text and "203.0.113" not in text
    assert PID in text


async def test_httpx_sends_no_timeouts_of_its_own_to_the_transport():
    """The timeouts are the transport's alone (urllib3's, from connect_timeout and
    read_timeout; tests/idpass/test_transport.py shows them at work). The client used to
    give httpx a Timeout, a Limits and a verify flag too: with a transport of its own,
    httpx ignores the last two and only hands the Timeout on to the transport, which
    never reads it. Now httpx is given none, so no request carries a second set of
    timeouts that looks like the one in force."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions.get("timeout"))
        return httpx.Response(200, json=_details())

    async with _client(handler) as api:
        await api.details(PID)
    assert seen == [{"connect": None, "read": None, "write": None, "pool": None}]
