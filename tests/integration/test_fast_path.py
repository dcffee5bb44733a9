"""The PutObject template (storage.PutTemplate): a PUT built once per run must still be
the request botocore would send, signed, retried and translated by botocore, on both
servers; and the part payload (storage.Body) must send exactly the bytes read."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from archiver.errors import AccessDenied
from archiver.settings import ClientOptions
from archiver.storage import Storage
from archiver.storage_fast_put import PutTemplate
from tests.helpers import assert_archive_invariant, both_servers, make_rows, run_cli
from tests.proxy import Respond, bucket_in_region, signed_region


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# Keys as botocore must encode them in the path: a space, a plus, a tilde, a percent sign
# and a non-ASCII letter (archiver's own keys are plainer; the encoding must not depend on it).
ODD_KEYS = [
    "cache/2025/01/0123456789abcdef0123456789abcdef.jpg",
    "cache/2025/01/a key+with~odd%chars ü.bin",
]


@both_servers
async def test_template_puts_store_what_botocore_would(penv, s3, proxy) -> None:
    async with Storage.open(penv.settings(), max_connections=4) as store:
        for i, key in enumerate(ODD_KEYS):
            body = bytes([i]) * 100_000 + key.encode()
            etag = await store.put_object(key, body, md5(body), "image/jpeg", if_absent=True)
            assert etag is not None and etag.etag == md5(body)
            # Stored: a second conditional PUT is refused (412), as botocore's would be.
            assert (
                await store.put_object(key, body, md5(body), "image/jpeg", if_absent=True) is None
            )
            stored = s3.get_object(Bucket=penv.bucket, Key=key)
            assert stored["Body"].read() == body and stored["ContentType"] == "image/jpeg"
        assert isinstance(store._template, PutTemplate)  # the template was used

    puts = [r for r, _ in proxy.requests if r.is_object_put]
    assert len(puts) == 2 * len(ODD_KEYS)
    for put in puts:
        headers = {k.lower(): v for k, v in put.headers.items()}
        assert "content-md5" in headers and "authorization" in headers
        # Over plain http too, the body is not hashed again for the signature: Content-MD5
        # is a signed header, and the server checks the body against it.
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert "content-md5" in headers["authorization"].lower()
        assert "expect" not in headers  # a small body is sent at once


async def test_template_puts_are_retried_and_errors_translated(penv, proxy) -> None:
    attempts = itertools.count()

    def flaky(request):  # the first two PUTs of the object answer 503 SlowDown
        if request.is_object_put and next(attempts) < 2:
            return Respond(503, "SlowDown")
        return None

    proxy.rule = flaky
    body = b"x" * 1000
    async with Storage.open(penv.settings(), max_connections=4) as store:
        etag = await store.put_object(ODD_KEYS[0], body, md5(body), "image/jpeg", if_absent=True)
        assert etag is not None and etag.etag == md5(body)
        assert proxy.count(lambda r: r.is_object_put) == 3  # botocore's standard retries

        proxy.rule = lambda r: Respond(403, "AccessDenied") if r.is_object_put else None
        with pytest.raises(AccessDenied, match="s3:PutObject"):
            await store.put_object(
                "cache/2025/01/other.jpg", body, md5(body), "x/y", if_absent=True
            )


async def test_with_botocores_own_checksums_the_template_steps_aside(penv, s3) -> None:
    """AWS_REQUEST_CHECKSUM_CALCULATION=when_supported asks botocore for a CRC32 of each
    body: the template cannot reuse one, so botocore's own path sends those PUTs."""
    settings = penv.settings(client=ClientOptions(checksum_calculation="when_supported"))
    body = b"y" * 5000
    async with Storage.open(settings, max_connections=4) as store:
        etag = await store.put_object(ODD_KEYS[0], body, md5(body), "image/jpeg", if_absent=True)
        assert etag is not None and etag.etag == md5(body) and store._template is None
    assert s3.get_object(Bucket=penv.bucket, Key=ODD_KEYS[0])["Body"].read() == body


async def test_force_into_a_bucket_in_another_region_stores_every_object(penv, db, s3, proxy):
    """AWS answers a request signed for the wrong region with AuthorizationHeaderMalformed
    and the bucket's region; botocore's redirector retries it once per request. The
    template's PUTs each get their own redirect state, and once the region is known the
    template is built again for it."""
    await make_rows(penv, db, 8)
    proxy.rule = bucket_in_region("eu-west-1")

    out = run_cli(penv, "upload", "--force", "--json", "--concurrency", "2")

    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["uploaded"] == 8
    assert await assert_archive_invariant(db, s3, penv.bucket) == 8
    puts = [(r, what) for r, what in proxy.requests if r.is_object_put]
    redirected = [r for r, what in puts if what == "answered 400"]
    assert 1 <= len(redirected) <= 2  # the PUTs in flight before the region was known
    assert all(signed_region(r) == "eu-west-1" for r, what in puts if what != "answered 400")
