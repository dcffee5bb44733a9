"""The original design, faithfully: the baseline archiver is measured against.

As the original `upload_to_s3.py` script did: every unarchived row fetched at once ordered by
`created_at`; for each, the local file found with the three strategies, uploaded with boto3's
`upload_file`, then one autocommitted single-row UPDATE. One file at a time. Prints a JSON
object of counts. Run: `python -m benchmarks.baseline --database-url DSN --bucket B
--cache-root DIR [--endpoint-url URL] [--limit N]`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import boto3
import psycopg

MIME_EXT = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "application/pdf": ".pdf",
}


def find_local_file(row: dict, cache_root: Path) -> Path | None:
    """The original script's three strategies, in order."""
    if row["local_file_path"] and Path(row["local_file_path"]).exists():
        return Path(row["local_file_path"])
    directory = cache_root / f"{row['media_type']}s"
    ext = MIME_EXT.get(row["mime_type"] or "")
    if ext and (directory / f"{row['md5_sum']}{ext}").exists():
        return directory / f"{row['md5_sum']}{ext}"
    matches = sorted(directory.glob(f"{row['md5_sum']}.*"))
    return matches[0] if matches else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--cache-root", required=True, type=Path)
    parser.add_argument("--endpoint-url")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    started = time.monotonic()
    s3 = boto3.client("s3", endpoint_url=args.endpoint_url)
    uploaded = missing = 0
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        sql = (
            "SELECT media_id, media_type, local_file_path, md5_sum, mime_type, created_at "
            "FROM post_media WHERE archive_url IS NULL ORDER BY created_at"
        )
        if args.limit:
            sql += f" LIMIT {int(args.limit)}"
        rows = cur.execute(sql).fetchall()
        for row in rows:
            path = find_local_file(row, args.cache_root)
            if path is None:
                missing += 1
                continue
            key = f"cache/{row['created_at']:%Y/%m}/{row['md5_sum']}{path.suffix}"
            s3.upload_file(
                str(path),
                args.bucket,
                key,
                ExtraArgs={"ContentType": row["mime_type"] or "binary/octet-stream"},
            )
            conn.execute(
                "UPDATE post_media SET archive_url = %s, updated_at = now() WHERE media_id = %s",
                (f"s3://{args.bucket}/{key}", row["media_id"]),
            )
            uploaded += 1
    elapsed = time.monotonic() - started
    print(
        json.dumps(
            {
                "selected": len(rows),
                "uploaded": uploaded,
                "missing_local": missing,
                "elapsed_s": round(elapsed, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
