"""The PutObject template (storage.PutTemplate): a PUT built once per run must still be
the request botocore would send, signed, retried and translated by botocore, on both
servers; and the part payload (storage.Body) must send exactly the bytes read."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import uuid

import boto3
import pytest

from archiver.errors import AccessDenied
from archiver.settings import ClientOptions, Settings
from archiver.storage import Storage
from archiver.storage_fast_put import PutTemplate
from tests.helpers import (
    assert_archive_invariant,
    both_servers,
    make_rows,
    moto_over_tls,
    run_cli,
)
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
    """With obstore set aside (ARCHIVER_PUT_CLIENT=botocore), the template sends the PUTs."""
    settings = penv.settings(client=ClientOptions(put_client="botocore"))
    async with Storage.open(settings, max_connections=4) as store:
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
        assert store._plane is None

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


@both_servers
async def test_data_plane_puts_store_what_botocore_would(s3_server, penv, s3, proxy) -> None:
    """obstore carries single PUTs of bodies in memory: the same keys (odd ones too), the
    same Content-Type and storage class, a conditional PUT refused for a stored key, a
    body whose SHA-256 is signed over plain http (the server checks it)."""
    settings = penv.settings()
    # Ceph RGW knows no storage class but its placement's own (STANDARD).
    storage_class = "STANDARD_IA" if s3_server.name == "moto" else "STANDARD"
    async with Storage.open(settings, max_connections=4) as store:
        store.storage_class = storage_class
        for i, key in enumerate(ODD_KEYS):
            body = bytes([i]) * 100_000 + key.encode()
            put = await store.put_object(key, body, md5(body), "image/jpeg", if_absent=True)
            assert put is not None and put.etag == md5(body) and put.crc32 is None
            assert (
                await store.put_object(key, body, md5(body), "image/jpeg", if_absent=True) is None
            )
            stored = s3.get_object(Bucket=penv.bucket, Key=key)
            assert stored["Body"].read() == body and stored["ContentType"] == "image/jpeg"
            assert stored.get("StorageClass", "STANDARD") == storage_class
        assert store._plane is not None and store._plane.puts == 2 * len(ODD_KEYS)

    puts = [r for r, _ in proxy.requests if r.is_object_put]
    assert len(puts) == 2 * len(ODD_KEYS)
    for put in puts:
        headers = {k.lower(): v for k, v in put.headers.items()}
        assert "authorization" in headers and "content-md5" not in headers
        assert re.fullmatch(r"[0-9a-f]{64}", headers["x-amz-content-sha256"])
        assert headers["if-none-match"] == "*"


async def put_over_https(endpoint: str, ca_file: str, monkeypatch, tmp_path) -> Storage:
    """One PUT of a small body to a new bucket at `endpoint`, trusting `ca_file` as the AWS
    CLI would (AWS_CA_BUNDLE); the store it went through."""
    monkeypatch.setenv("AWS_CA_BUNDLE", ca_file)
    bucket = f"tls-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=ca_file)
    client.create_bucket(Bucket=bucket)
    settings = Settings(bucket=bucket, endpoint_url=endpoint, region="us-east-1")
    body = b"z" * 100_000
    async with Storage.open(settings, max_connections=2) as store:
        put = await store.put_object(ODD_KEYS[0], body, md5(body), "image/jpeg", if_absent=True)
        assert put is not None and put.etag == md5(body)
    assert client.get_object(Bucket=bucket, Key=ODD_KEYS[0])["Body"].read() == body
    return store


@both_servers
async def test_over_https_the_data_plane_trusts_the_ca_bundle(
    s3_server, s3_tls, monkeypatch, tmp_path
) -> None:
    endpoint, ca_file = (
        s3_tls if s3_server.name == "moto" else (s3_server.tls_url, s3_server.ca_file)
    )
    store = await put_over_https(endpoint, ca_file, monkeypatch, tmp_path)
    assert store._plane is not None and store._plane.puts == 1


async def test_a_certificate_rustls_refuses_leaves_the_puts_to_botocore(
    monkeypatch, tmp_path
) -> None:
    """A self-signed certificate that is its own CA (OpenSSL takes it, rustls does not):
    the first PUT gets no answer through obstore, and botocore sends it and every later one."""
    with moto_over_tls(tmp_path, own_ca=True) as (endpoint, ca_file):
        store = await put_over_https(endpoint, ca_file, monkeypatch, tmp_path)
    assert store._plane is None and store._plane_tried


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
    # The PUTs in flight before the region was known: obstore's (then botocore carries
    # the PUTs), and botocore's own until its redirector learned the region.
    assert 1 <= len(redirected) <= 4
    assert all(signed_region(r) == "eu-west-1" for r, what in puts if what != "answered 400")
