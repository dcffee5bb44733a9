"""`archiver iam-policy`: the least-privilege IAM policy for the commands a deployment runs
(the rule of what each command needs is `iam`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archiver import iam
from archiver.settings import Settings


@dataclass(frozen=True)
class PolicyReport:
    commands: tuple[str, ...]
    bucket: str
    prefix: str
    write_only: bool = False
    kms_key: str | None = None
    error: str | None = None
    exit_code: int = 0

    def as_json(self) -> dict[str, Any]:
        """The policy document alone, ready to attach."""
        return iam.policy(*self.scope, write_only=self.write_only, kms_key=self.kms_key)

    @property
    def scope(self) -> tuple[tuple[str, ...], str, str]:
        """The commands, bucket and prefix the policy is for."""
        return self.commands, self.bucket, self.prefix


def run_iam_policy(
    settings: Settings, commands: tuple[str, ...], *, write_only: bool, kms_key: str | None
) -> PolicyReport:
    """The policy for `commands` (default: the daily ones) on the configured bucket and
    prefix."""
    return PolicyReport(
        tuple(dict.fromkeys(commands)) or iam.DAILY,
        settings.bucket,
        settings.key_prefix,
        write_only=write_only,
        kms_key=kms_key,
    )


def format_iam_policy(report: PolicyReport) -> str:
    """What each command needs and why, then the document to attach."""
    return iam.format_policy(*report.scope, write_only=report.write_only, kms_key=report.kms_key)
