"""Where Bulk Data export files are kept: an interface, and the one store we ship (a
directory, EXPORT_DIR, by default the data directory's exports/ folder).

A file is named by its organization, its job and its name (`Patient.ndjson`); the store
never sees a path from a request (the routes look the name up in the job's manifest
first). An object store (S3, GCS, Azure Blob) would implement the same four methods:
`writer` as a multipart upload committed on `close`, `chunks` as a ranged GET, `remove`
as deleting the job's prefix, `jobs` as listing the top-level prefixes
(docs/SCALING.md, "Bulk Data export files").
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import anyio

CHUNK = 256 * 1024
SYNC_EVERY = 8 << 20  # bytes a file writer writes between two fdatasync (_FileWriter)


class ExportStorageError(Exception):
    """A file could not be written (the disk full, a directory read-only, a name taken).
    Not an OSError, nor caused by one (raised `from None`): the export's transaction
    reads an OSError in an exception's chain as a lost database connection, and would run
    again."""


FILE_NAME = re.compile(r"[A-Za-z]+(-[0-9]+)?\.ndjson")


class ExportWriter(Protocol):
    """A file being written. Its calls may block (a disk's sync, an upload): the export
    makes them in a thread."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> int:
        """Finish the file; its size in bytes."""
        ...


class ExportStorage(Protocol):
    def writer(self, organization_id: uuid.UUID, job_id: uuid.UUID, name: str) -> ExportWriter:
        """A new file (an earlier one of that name is replaced)."""
        ...

    def chunks(
        self, organization_id: uuid.UUID, job_id: uuid.UUID, name: str
    ) -> AsyncIterator[bytes]:
        """The file's bytes, in pieces (FileNotFoundError if it is not there)."""
        ...

    def remove(self, organization_id: uuid.UUID, job_id: uuid.UUID) -> None:
        """Every file of the job (nothing if there is none)."""
        ...

    def jobs(self) -> Iterator[tuple[uuid.UUID, uuid.UUID]]:
        """(organization, job) of every job that has files."""
        ...


class _FileWriter:
    """A file written to disk as it goes: every SYNC_EVERY bytes (fdatasync), and on
    close, so a finished export's files are on disk before its job says it is done.
    Otherwise the kernel keeps a file's pages and writes them back in bursts that hold the
    database's commits waiting (its WAL on the same disk): measured at 1,000,000 patients,
    concurrent writers' longest transaction 359 ms without, 120 ms with, for an export a
    fifth longer (docs/PERFORMANCE.md, "Bulk Data export"). Its calls block: run_export
    makes them in a thread."""

    def __init__(self, path: Path) -> None:
        try:
            self._file = path.open("wb")
        except OSError as err:
            raise ExportStorageError(f"{path.name}: {err.strerror or err}") from None
        self._unsynced = 0

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
            self._unsynced += len(data)
            if self._unsynced >= SYNC_EVERY:
                self._sync()
        except OSError as err:
            raise ExportStorageError(f"{self._file.name}: {err.strerror or err}") from None

    def _sync(self) -> None:
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self._unsynced = 0

    def close(self) -> int:
        try:
            if not self._file.closed:
                self._sync()
            self._file.close()
            return Path(self._file.name).stat().st_size
        except OSError as err:
            raise ExportStorageError(f"{self._file.name}: {err.strerror or err}") from None


class DirectoryStorage:
    """Files under `root`/<organization>/<job>/<name>."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _job_dir(self, organization_id: uuid.UUID, job_id: uuid.UUID) -> Path:
        return self.root / str(uuid.UUID(str(organization_id))) / str(uuid.UUID(str(job_id)))

    def _path(self, organization_id: uuid.UUID, job_id: uuid.UUID, name: str) -> Path:
        if not FILE_NAME.fullmatch(name):
            raise ValueError(f"not an export file name: {name[:64]!r}")
        return self._job_dir(organization_id, job_id) / name

    def writer(self, organization_id: uuid.UUID, job_id: uuid.UUID, name: str) -> ExportWriter:
        path = self._path(organization_id, job_id, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ExportStorageError(f"{path.parent}: {err.strerror or err}") from None
        return _FileWriter(path)

    async def chunks(
        self, organization_id: uuid.UUID, job_id: uuid.UUID, name: str
    ) -> AsyncIterator[bytes]:
        path = self._path(organization_id, job_id, name)
        async with await anyio.open_file(path, "rb") as file:
            while chunk := await file.read(CHUNK):
                yield chunk

    def remove(self, organization_id: uuid.UUID, job_id: uuid.UUID) -> None:
        shutil.rmtree(self._job_dir(organization_id, job_id), ignore_errors=True)

    def jobs(self) -> Iterator[tuple[uuid.UUID, uuid.UUID]]:
        if not self.root.is_dir():
            return
        for org_dir in self.root.iterdir():
            for job_dir in org_dir.iterdir() if org_dir.is_dir() else ():
                try:
                    yield uuid.UUID(org_dir.name), uuid.UUID(job_dir.name)
                except ValueError:  # not ours: left alone
                    continue
