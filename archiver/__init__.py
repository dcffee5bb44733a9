"""archiver: move a social app's cached media into S3 and record where each file went."""

from __future__ import annotations

__version__ = "0.1.0"
