"""Where the store's bytes live: a local directory or any fsspec URL (S3 through s3fs).

The campaign store needs only five things from a backend, and each has to be atomic on its own:
read a key, write a batch of keys (every key replaced whole, never half-written), delete,
list, and a campaign-wide mutual-exclusion lock. Keeping the interface this small is what lets
the same append protocol (``zarr_table.py``) run on a laptop and on S3.

- Local: each write goes to a temporary file in the same directory and is ``os.replace``-d into
  place (atomic on POSIX); the lock is ``fcntl.flock`` on ``<root>/.coorch-lock`` (released by
  the kernel if the holder dies, so a SIGKILL never leaves a stale lock).
- S3: a PUT is atomic per object; the lock is a lock object created with ``If-None-Match: *``
  (a conditional PUT), holding an expiry so that a crashed holder's lock can be broken. The
  file system's listings cache is off: s3fs answers a read from a cached listing that lacks the
  key with "not found" (another writer's new journal entry, or one written while the listing
  was in flight), and the store must never take a stored key for a missing one.

Credentials are never logged: only the URL (which carries none) appears in messages.

Nothing is written outside the store's folder: a local root is normalised before use (``a/../b``
is ``b``, and no stray ``a`` is made), and every key is checked by :func:`check_key` (no ``..``,
no absolute key), so a name that reaches a key (a modality, a record id) cannot climb out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import fsspec

LOCK_KEY = ".coorch-lock"


def check_key(key: str) -> str:
    """``key`` if it names something inside the store, else ``ValueError``: a key is relative,
    '/'-separated, with no empty, ``.`` or ``..`` segment and no NUL. Keys are made by the store
    itself (journal ids are percent-quoted, modality names checked), so this is the last line,
    not the first: cheap string tests on every read and write."""
    if not key or key.startswith("/") or "\0" in key or "\\" in key:
        raise ValueError(f"store key {key!r} is not a relative key inside the store")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"store key {key!r} is not a relative key inside the store")
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix: empty (the whole store) or a key (:func:`check_key`)."""
    return check_key(prefix.rstrip("/")) if prefix else prefix


class Backend(Protocol):
    """The byte-level operations the store needs (keys are '/'-separated, relative to root)."""

    url: str

    def read(self, key: str) -> bytes | None: ...

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]: ...

    def write_many(self, items: Mapping[str, bytes]) -> None: ...

    def create_exclusive(self, key: str, data: bytes) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: list[str]) -> None: ...

    def exists(self) -> bool: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...


class LocalBackend:
    """A directory on a POSIX file system."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = False) -> None:
        # abspath, not Path.absolute(): it folds "a/../b" into "b", so that mkdir -p of the
        # root makes no folder "a" outside the store (symlinks are the kernel's, as in a shell)
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        self.url = str(self.root)
        self.durable = durable
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._made_dirs: set[Path] = set()

    def exists(self) -> bool:
        return (self.root / "zarr.json").exists()

    def read(self, key: str) -> bytes | None:
        try:
            with open(self.root / check_key(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):  # a root that is a file holds no key
            return None

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        return {k: self.read(k) for k in keys}

    def write_many(self, items: Mapping[str, bytes]) -> None:
        for key, data in items.items():
            self._write_atomic(self.root / check_key(key), data)

    def _tmp_write(self, path: Path, data: bytes) -> str:
        parent = path.parent
        if parent not in self._made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(parent)
        tmp = f"{parent}/.{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _write_atomic(self, path: Path, data: bytes) -> None:
        os.replace(self._tmp_write(path, data), path)
        if self.durable:
            self._fsync_dir(path.parent)

    @staticmethod
    def _fsync_dir(parent: Path) -> None:
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``key`` whole, only if absent: tmp file, ``os.link`` (fails if the key
        exists, atomically), unlink tmp. False if the key already existed."""
        path = self.root / check_key(key)
        tmp = self._tmp_write(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        if self.durable:
            self._fsync_dir(path.parent)
        return True

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / check_key(key)).unlink()

    def delete_many(self, keys: list[str]) -> None:
        for k in keys:
            self.delete(k)

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self.root / _check_prefix(prefix) if prefix else self.root
        if not base.exists():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Campaign-wide exclusive lock: threads (RLock) and processes (flock)."""
        with self._thread_lock:
            if self._lock_depth:  # re-entrant within one thread
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_KEY, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FsspecBackend:
    """Any fsspec file system; the lock needs S3-style conditional PUT (``mode='create'``)."""

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        lock_lease_s: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        if any(part in (".", "..") for part in self.url.split("://", 1)[-1].split("/")):
            # an object store keeps "a/../b" as a literal key prefix, a file system climbs
            raise ValueError(f"store URL {url!r} has a '.' or '..' segment: name the store plainly")
        # use_listings_cache=False: s3fs (max_concurrency > 1) sizes each object before reading
        # it, and takes the size from a cached listing when it has one: a key missing from that
        # listing reads as not found. Journal.keys() lists every journal folder, so another
        # writer's entry (or one this process wrote while the listing was in flight) was read
        # as "already consolidated" and deleted: acknowledged, then lost. The option also keeps
        # this instance apart from fsspec's shared default one (a user listing the bucket).
        options = {**dict(storage_options or {}), "use_listings_cache": False}
        self.fs, path = fsspec.core.url_to_fs(self.url, **options)
        self.root = path.rstrip("/")
        self.lock_lease_s = lock_lease_s
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def _p(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}" if key else self.root

    def exists(self) -> bool:
        return self.read("zarr.json") is not None

    def read(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._p(key))
        except FileNotFoundError:
            return None

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        """Concurrent reads; None only for a key that is not there. Any other failure (a
        timeout, a 5xx after retries) raises: a caller such as the journal's consolidation
        takes None for "consumed by another writer", and must not on a read that failed."""
        if not keys:
            return {}
        got = self.fs.cat([self._p(k) for k in keys], on_error="return")
        out: dict[str, bytes | None] = {}
        for k in keys:
            v = got.get(self._p(k))
            if isinstance(v, BaseException) and not isinstance(v, FileNotFoundError):
                raise v
            out[k] = v if isinstance(v, bytes) else None
        return out

    def write_many(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        if len(items) == 1:
            ((key, data),) = items.items()
            self.fs.pipe_file(self._p(key), data)
        else:
            self.fs.pipe({self._p(k): v for k, v in items.items()})

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """One conditional PUT (``If-None-Match: *``): False if the key already exists."""
        try:
            self.fs.pipe_file(self._p(key), data, mode="create")
        except FileExistsError:
            return False
        return True

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._p(key))

    def delete_many(self, keys: list[str]) -> None:
        if keys:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm([self._p(k) for k in keys])

    def list_keys(self, prefix: str = "") -> list[str]:
        base = f"{self.root}/{_check_prefix(prefix)}" if prefix else self.root
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        n = len(self.root) + 1
        return sorted(p[n:] for p in found)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """A lock object created with a conditional PUT; broken when its lease has expired.

        The lease protects against a crashed holder. Appends hold the lock for well under a
        second, so a 60 s lease is generous; breaking a lease is logged in the lock body only.
        """
        with self._thread_lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            self._acquire()
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                self._release()

    def _release(self) -> None:
        """Delete the lock object only if it is still ours (our lease may have been broken)."""
        held = self.read(LOCK_KEY)
        try:
            ours = held is not None and json.loads(held).get("owner") == self._owner
        except ValueError:
            ours = False
        if ours:
            self.delete(LOCK_KEY)

    def _acquire(self) -> None:
        path = self._p(LOCK_KEY)
        delay = 0.005
        while True:
            body = json.dumps(
                {"owner": self._owner, "expires": time.time() + self.lock_lease_s}
            ).encode()
            try:
                self.fs.pipe_file(path, body, mode="create")
                return
            except FileExistsError:
                pass
            held = self.read(LOCK_KEY)
            if held is not None:
                try:
                    expires = float(json.loads(held)["expires"])
                except (ValueError, KeyError, TypeError):
                    expires = 0.0
                if expires < time.time():
                    self.delete(LOCK_KEY)  # stale: its holder died holding it
                    continue
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)


def open_backend(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    durable: bool = False,
) -> Backend:
    """A local path (or ``file://``) gives :class:`LocalBackend`; anything else fsspec."""
    s = os.fspath(url)
    if s.startswith("file://"):
        s = s[len("file://") :]
    if "://" not in s:
        return LocalBackend(s, durable=durable)
    return FsspecBackend(s, storage_options)
