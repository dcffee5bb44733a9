"""The `.env` file: loaded without overriding the environment, and read for keys that look
like archiver's or the AWS SDK's but are not known (a typo would otherwise fall back to a
default without a word)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from dotenv import dotenv_values, load_dotenv

from archiver.settings import ENVIRONMENT

# What archiver reads itself (flags' env vars, the data-plane switch), and the test suite's
# database.
ARCHIVER_KEYS = frozenset(
    {name for names in ENVIRONMENT.values() for name in names if not name.startswith("AWS_")}
    - {"SUPABASE_DB_URL"}
    | {"ARCHIVER_TEST_DATABASE_URL", "ARCHIVER_PUT_CLIENT"}
)
# The AWS SDK's environment variables (botocore and the AWS CLI read these).
AWS_KEYS = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL_CLOUDFRONT",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CA_BUNDLE",
        "AWS_RETRY_MODE",
        "AWS_MAX_ATTEMPTS",
        "AWS_REQUEST_CHECKSUM_CALCULATION",
        "AWS_RESPONSE_CHECKSUM_VALIDATION",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
        "AWS_STS_REGIONAL_ENDPOINTS",
        "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_METADATA_SERVICE_TIMEOUT",
        "AWS_METADATA_SERVICE_NUM_ATTEMPTS",
        "AWS_DEFAULT_OUTPUT",
        "AWS_PAGER",
        "AWS_SDK_UA_APP_ID",
        "AWS_ACCOUNT_ID",
        "AWS_DATA_PATH",
        "AWS_SIGV4A_SIGNING_REGION_SET",
    }
)
# The app's own name for the database URL, read when DATABASE_URL is not set. Not offered
# as a spelling of the app's other keys (SUPABASE_URL is no typo of it).
APP_KEYS = frozenset({"SUPABASE_DB_URL"})
OURS = ARCHIVER_KEYS | AWS_KEYS
KNOWN_KEYS = OURS | APP_KEYS
SIMILAR = 0.85  # difflib ratio from which an unknown key is taken for a typo of a known one
RELATED = 0.6  # ... from which a key of archiver's or AWS's prefix is offered one at all


def _app_key_typo(key: str) -> str | None:
    """The app's key `key` misspells: as close as a typo and as long (SUPABASE_DB_ULR is
    SUPABASE_DB_URL; SUPABASE_URL, shorter, is another setting of the app's)."""
    for known in APP_KEYS:
        close = difflib.SequenceMatcher(None, key, known).ratio() >= SIMILAR
        if close and abs(len(key) - len(known)) <= 1:
            return known
    return None


def unknown_key_warnings(keys: list[str], where: str) -> list[str]:
    """One line per key that looks like archiver's or AWS's (its prefix, or a spelling close
    to a known key) or the app's database URL, but is not known, naming the closest known
    key when one is close enough to be meant."""
    lines = []
    for key in keys:
        if key in KNOWN_KEYS:
            continue
        upper = key.upper()  # `database_url`: a known key in the wrong case
        if upper in KNOWN_KEYS:
            close = [upper]
        else:
            close = difflib.get_close_matches(upper, OURS, n=1, cutoff=SIMILAR)
            typo = None if close else _app_key_typo(upper)
            close = [typo] if typo else close
        if not close and not upper.startswith(("ARCHIVER_", "AWS_")):
            continue  # the app's own settings (SUPABASE_URL, ...)
        if not close:
            # Compared after the prefix, which every key of the pool shares.
            prefix = "ARCHIVER_" if upper.startswith("ARCHIVER_") else "AWS_"
            pool = {
                k.removeprefix(prefix): k for k in ARCHIVER_KEYS | AWS_KEYS if k.startswith(prefix)
            }
            near = difflib.get_close_matches(upper.removeprefix(prefix), pool, n=1, cutoff=RELATED)
            close = [pool[near[0]]] if near else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{where}: unknown key {key}{hint}; it is ignored")
    return lines


def environment_warnings(environ: dict[str, str]) -> list[str]:
    """The same check for the variables of the environment that carry archiver's prefix (an
    exported `ARCHIVER_BUKET` would fall back to the default as silently)."""
    return unknown_key_warnings(
        sorted(k for k in environ if k.upper().startswith("ARCHIVER_")), "environment"
    )


def load(path: Path) -> tuple[list[str], set[str], set[str]]:
    """Load `path` into the environment (never over a variable already set); the warnings
    about its unknown keys, the keys it set, and the keys it has that the environment set
    already to another value (the environment's is used)."""
    values = dotenv_values(path)
    keys = list(values)
    unset = {k for k in keys if k not in os.environ}
    shadowed = {k for k in keys if k in os.environ and os.environ[k] != (values[k] or "")}
    load_dotenv(path, override=False)
    return unknown_key_warnings(keys, str(path)), {k for k in unset if k in os.environ}, shadowed
