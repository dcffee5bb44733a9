"""What S3 answered, classified once for every caller: a missing bucket, no such object, a
refused action or refused credentials, a failed precondition, a setting the server does not
implement; and botocore's exceptions translated into archiver's errors (see `errors`).

Per-object failures become `StorageError` (the row fails, the run goes on); failures that
doom every request (no bucket, no credentials, access denied) become `ConfigError`
subclasses that stop the run.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

from archiver.errors import (
    AccessDenied,
    BucketMissing,
    CredentialsRefused,
    SettingRefused,
    SettingUnsupported,
    StorageError,
    StorageUnavailable,
)
from archiver.iam import MAYBE_MISSING, OBJECT_ACTIONS, POLICY_HINT, SETTING_ACTIONS

# Refusals of the credentials themselves (not of one action): every request would fail.
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "AllAccessDisabled",
    }
)
FATAL_CODES = CREDENTIAL_CODES | {"AccessDenied"}
# Error codes of a part refused for a checksum that does not match its bytes.
CHECKSUM_MISMATCH_CODES = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "InvalidRequest"}
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_denied(exc: ClientError) -> bool:
    return http_status(exc) == 403 or error_code(exc) in ("AccessDenied", "403", "Forbidden")


def action_refused(exc: ClientError) -> bool:
    """A 403 for want of a permission, not for the credentials themselves."""
    return is_denied(exc) and error_code(exc) not in CREDENTIAL_CODES


def operation_name(method: str) -> str:
    """botocore's method name as the S3 operation: `head_object` -> `HeadObject`."""
    return "".join(part.capitalize() for part in method.split("_"))


def denied(bucket: str, method: str, key: str) -> AccessDenied:
    """The error for a 403 on one object: the operation, the object and the IAM action
    these credentials lack on it."""
    action = OBJECT_ACTIONS.get(method, method)
    maybe = MAYBE_MISSING if method in ("head_object", "get_object") else ""
    return AccessDenied(
        f"S3 denied {operation_name(method)} of s3://{bucket}/{key}: the credentials need "
        f"{action} on it{maybe}; {POLICY_HINT}"
    )


def bucket_denied(bucket: str, method: str) -> StorageUnavailable:
    """The error for a 403 on a bucket-level call, naming the IAM action."""
    action = SETTING_ACTIONS.get(method, method)
    return StorageUnavailable(
        f"S3 denied {operation_name(method)} on bucket {bucket!r}: the credentials need {action} "
        f"on arn:aws:s3:::{bucket}; {POLICY_HINT}"
    )


NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE (or --profile), or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, or run `aws configure`"
)


def translate(exc: Exception, bucket: str, doing: str) -> Exception:
    """A botocore exception as an archiver error (see the module docstring)."""
    if isinstance(exc, NoCredentialsError):
        return StorageUnavailable(NO_CREDENTIALS)
    if isinstance(exc, PartialCredentialsError | ProfileNotFound):
        return StorageUnavailable(f"no usable AWS credentials: {exc}")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code == "NoSuchBucket":
            return missing_bucket(bucket)
        if code == "BucketAlreadyExists":
            return StorageUnavailable(
                f"bucket name {bucket!r} belongs to another account: choose another"
            )
        if code in CREDENTIAL_CODES:
            return CredentialsRefused(f"S3 refused {doing} in bucket {bucket!r}: {code}")
        if code in FATAL_CODES:
            return StorageUnavailable(f"S3 refused {doing} in bucket {bucket!r}: {code}")
        if code == "MissingContentLength" or http_status(exc) == 411:
            # Every PUT would fail so: botocore's streamed (aws-chunked) checksum bodies.
            return StorageUnavailable(
                f"S3 refused {doing}: {code or 411} (this server does not take streamed "
                "checksum bodies: leave AWS_REQUEST_CHECKSUM_CALCULATION at when_required)"
            )
        return StorageError(f"{doing} failed: {code or http_status(exc)} {exc}")
    return StorageError(f"{doing} failed: {exc.__class__.__name__}: {exc}")


def unreachable(exc: BotoCoreError, bucket: str, service: str = "S3") -> Exception:
    """A client-side failure before any answer: credentials missing, or no connection."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return translate(exc, bucket, "")
    return StorageUnavailable(f"{service} is not reachable: {exc}")


def is_missing_bucket(exc: ClientError) -> bool:
    """The bucket does not exist: NoSuchBucket, or a 404 to a request on the bucket itself
    (HeadBucket answers with a status and no body)."""
    return error_code(exc) == "NoSuchBucket" or (
        exc.operation_name == "HeadBucket"
        and (http_status(exc) == 404 or error_code(exc) in ("404", "NotFound"))
    )


def is_no_object(exc: ClientError) -> bool:
    """No object at the key (NoSuchKey, or a HEAD answered 404)."""
    return error_code(exc) in ("NoSuchKey", "404", "NotFound") or http_status(exc) == 404


def is_precondition_failed(exc: ClientError) -> bool:
    """A conditional request's condition (If-None-Match, If-Match) did not hold."""
    return http_status(exc) == 412 or error_code(exc) == "PreconditionFailed"


def is_redirect(exc: ClientError) -> bool:
    """S3 answered that the bucket is to be asked elsewhere (another region or endpoint)."""
    return http_status(exc) in (301, 307) or error_code(exc) in (
        "PermanentRedirect",
        "TemporaryRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    )


def is_not_implemented(exc: ClientError) -> bool:
    """The server does not implement what was asked (a setting, a conditional write)."""
    return http_status(exc) == 501 or error_code(exc) in ("NotImplemented", "XNotImplemented")


def missing_bucket(bucket: str) -> BucketMissing:
    """The error for a bucket that does not exist, saying how to make it."""
    return BucketMissing(
        f"bucket {bucket!r} does not exist (create it with: archiver setup-bucket)"
    )


def setting_error(exc: ClientError, method: str) -> Exception:
    """A server's refusal of one bucket setting (`method`, e.g. `put_bucket_versioning`)."""
    return setting_refusal(exc, method, SETTING_ACTIONS.get(method, method))


def setting_refusal(
    exc: ClientError, what: str, action: str, *, name_action: bool = False
) -> Exception:
    """A server's answer refusing one setting, of S3 or of CloudFront: SettingUnsupported
    (`what`) when the server does not implement it, SettingRefused naming the IAM `action`
    when it was denied, SettingRefused with the server's code otherwise (after the action,
    with `name_action`)."""
    code, status = error_code(exc), http_status(exc)
    if code == "InvalidAction" or is_not_implemented(exc):
        return SettingUnsupported(what)
    if is_denied(exc) or code == "AccessDeniedException":
        return SettingRefused(f"AccessDenied: these credentials need {action}")
    message = str(exc.response.get("Error", {}).get("Message") or "").strip()
    detail = f": {message}" if message and message != "None" else ""
    named = f"{action}: " if name_action else ""
    return SettingRefused(f"{named}{code or 'error'} (HTTP {status}){detail}")
