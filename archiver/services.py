"""The connections a job needs, opened together and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from archiver.db import Database
from archiver.settings import Settings
from archiver.signals import starting
from archiver.storage import Storage


@asynccontextmanager
async def database(settings: Settings, *, max_size: int = 3) -> AsyncIterator[Database]:
    """The database, closed at the end."""
    db = await Database.connect(settings.require_database(), max_size=max_size)
    try:
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def connected(
    settings: Settings, *, concurrency: int, storage: bool = True
) -> AsyncIterator[tuple[Database, Storage | None]]:
    """The database, and (when `storage`) an S3 client whose bucket was checked usable by a
    request on an object under the prefix (no bucket-level permission needed)."""
    async with AsyncExitStack() as stack:
        store: Storage | None = None
        async with starting("connecting to the database and S3; nothing was done"):
            db = await stack.enter_async_context(database(settings))
            if storage:
                store = await stack.enter_async_context(
                    Storage.open(settings, max_connections=concurrency)
                )
                await store.check_access(settings.key_prefix)
        yield db, store
