"""Files that readers never see half-written, a lock that lets one of several processes work, and store paths.

Local paths and URIs (``s3://bucket/prefix``, ``file://...``) are resolved to a ``pyarrow.fs`` filesystem
and a path on it by :func:`resolve_filesystem`, which the results store, the feature cache and the report
share.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

try:  # POSIX advisory locks; elsewhere concurrent writers still cannot corrupt a file (rename).
    import fcntl
except ImportError:  # pragma: no cover - not on the supported platforms
    fcntl = None  # type: ignore[assignment]

# Object stores write a key in one request, so a final name can be written directly there.
_OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set and restore it (a brief window another thread could observe).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a unique temporary name in the same directory, fsync, then rename into place.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask: 0644 by default),
    not mkstemp's private 0600, so other users of a shared disk can read results and caches.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode())


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (created if needed) while the block runs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(directory / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def resolve_filesystem(root: str | Path, filesystem: pafs.FileSystem | None = None
                       ) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path without a trailing slash) for a local path, a URI, or a path on ``filesystem``."""
    if filesystem is not None:
        return filesystem, str(root).rstrip("/")
    text = os.fspath(root)
    if isinstance(root, Path) or "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text)
    if text.startswith("s3://") and "allow_delayed_open" not in text:
        # Delayed open lets pyarrow send a small file as one PutObject instead of a three-request
        # multipart upload: fewer round trips per task row, and S3 look-alikes (moto) that mishandle
        # multipart completion work too. Either way the object appears whole or not at all.
        text += ("&" if "?" in text else "?") + "allow_delayed_open=true"
    fs, path = pafs.FileSystem.from_uri(text)
    return fs, path.rstrip("/")


def is_object_store(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is an object store (S3, GCS, Azure), where one PUT writes a whole object."""
    while isinstance(fs, pafs.SubTreeFileSystem):
        fs = fs.base_fs
    return fs.type_name in _OBJECT_STORES


def data_files(fs: pafs.FileSystem, directory: str, suffix: str = ".parquet") -> list[str]:
    """Paths of the ``suffix`` files of a directory, skipping hidden and temporary names (leading ``.`` or
    ``_``, as pyarrow's dataset discovery does), sorted."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    out = []
    for info in infos:
        base = info.base_name
        if info.type == pafs.FileType.File and base.endswith(suffix) and not base.startswith((".", "_")):
            out.append(info.path)
    return sorted(out)


def split_uri(root: str) -> tuple[str, str]:
    """(path part, ``?query`` or ``""``) of a store root, so sub-paths go before the query."""
    text = str(root)
    if "://" in text and "?" in text:
        path, _, query = text.partition("?")
        return path.rstrip("/"), "?" + query
    return text.rstrip("/") or "/", ""


def child(root: str, name: str) -> str:
    """``root/name`` for a local path or a URI with a query string (``s3://b/p?x=1`` -> ``s3://b/p/name?x=1``)."""
    path, query = split_uri(root)
    return f"{path}/{name}{query}"
