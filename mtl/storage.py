"""Where a run lives: local paths, shared filesystems and object stores behind one small API.

A *location* is a string: a local path (a shared NFS/Lustre mount is just a local path on every node) or a URI
that pyarrow understands (`s3://bucket/key`, `gs://bucket/key`, `file:///abs/path`, `hdfs://...`). Shard URLs may
also be webdataset `pipe:` commands or http(s) URLs: readable (through `gopen`; http(s) sizes by a HEAD request).
Writes are atomic: a local file is written beside its target (mode 0o666 less the umask), flushed and renamed
over it; an object-store PUT is atomic by itself. A full disk raises `DiskFull` (one line: file, free space,
mount) and leaves no partial file. Credentials come from the usual environment (AWS_*, GOOGLE_APPLICATION_...),
which Ray workers must see too.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import math
import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, BinaryIO, Iterator, Mapping, Optional, Union

import numpy as np

Location = Union[str, os.PathLike]
STREAM_PREFIXES = ("pipe:", "http://", "https://")  # read through webdataset's gopen
BUCKET_SCHEMES = ("s3", "gs", "gcs")  # netloc is the bucket; directories are implicit
READ_BUFFER = 4 << 20
HTTP_PREFIXES = ("http://", "https://")
HTTP_TIMEOUT_S = 30
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write that found no space (ENOSPC) or quota (EDQUOT) left: `str()` is one line naming the file, the free
    space and the mount (`DiskFull.at`). Pickles whole, so a Ray task or worker can hand it to the driver."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"

    @classmethod
    def at(cls, location: Location, code: int = errno.ENOSPC) -> "DiskFull":
        what, mount = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device", local_path(location)
        while mount is not None and not os.path.ismount(mount):
            mount = os.path.dirname(mount)
        where = f" ({shutil.disk_usage(mount).free / 2**20:.1f} MB free on {mount})" if mount else ""
        return cls(code, what + where, str(location))


@contextmanager
def naming_full_disk(location: Location) -> Iterator[None]:
    """Inside the block, a full disk (ENOSPC, EDQUOT) raises `DiskFull` naming `location`."""
    try:
        yield
    except OSError as err:
        if isinstance(err, DiskFull) or err.errno not in FULL_DISK_ERRNOS:
            raise
        raise DiskFull.at(location, err.errno) from None


def is_uri(location: Location) -> bool:
    """True for `scheme://...` (not a local path, not a Windows drive letter)."""
    scheme, sep, _ = str(location).partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


def is_stream(location: Location) -> bool:
    return str(location).startswith(STREAM_PREFIXES)


def absolute(location: Location) -> str:
    """URIs as they are; local paths made absolute (Ray's storage_path must be)."""
    return str(location) if is_uri(location) or is_stream(location) else os.path.abspath(location)


def join(location: Location, *parts: str) -> str:
    location = str(location)
    if is_uri(location):
        return posixpath.join(location.rstrip("/") if not location.endswith(":///") else location, *parts)
    return os.path.join(location, *parts)


def name(location: Location) -> str:
    return posixpath.basename(str(location).rstrip("/"))


@lru_cache(maxsize=32)
def _bucket_filesystem(scheme: str, bucket: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def filesystem(location: Location):
    """(pyarrow filesystem, path on it) of a URI; local paths get the local filesystem."""
    import pyarrow.fs

    location = str(location)
    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(location)
    scheme, _, rest = location.partition("://")
    if scheme in BUCKET_SCHEMES:  # one client per bucket (from_uri may resolve the bucket's region over the network)
        return _bucket_filesystem(scheme, rest.split("/", 1)[0]), rest.rstrip("/")
    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except Exception as err:
        raise ValueError(f"{location}: not a storage location pyarrow can open ({err})") from None


def _local(location: str) -> bool:
    return not is_uri(location) and not is_stream(location)


def local_path(location: Location) -> Optional[str]:
    """The local path of a local path or a file:// URI; None for anything remote."""
    location = str(location)
    if _local(location):
        return os.path.abspath(location)
    return filesystem(location)[1] if location.startswith("file://") else None


def _http_stat(url: str) -> tuple[bool, Optional[int]]:
    """(exists, size or None) of an http(s) file: a HEAD request, or a one-byte GET where HEAD is refused (a
    presigned GET URL, a server without HEAD)."""
    from urllib import error, request

    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        try:
            with request.urlopen(request.Request(url, method=method, headers=headers),
                                 timeout=HTTP_TIMEOUT_S) as response:
                length = (response.headers.get("Content-Range", "").rpartition("/")[2] if response.status == 206
                          else response.headers.get("Content-Length"))
                return True, int(length) if length and length.isdigit() else None
        except error.HTTPError as err:
            if err.code in (404, 410):
                return False, None
            if method == "HEAD" and err.code in (403, 405, 501):
                continue
            raise OSError(f"{url}: HTTP {err.code} {err.reason}") from None
        except error.URLError as err:
            raise OSError(f"{url}: {err.reason}") from None
    return False, None


def open_read(location: Location) -> BinaryIO:
    """A binary stream of the file at `location` (usable as a context manager)."""
    location = str(location)
    if is_stream(location):
        from webdataset import gopen

        return gopen(location, "rb")
    if _local(location):
        return open(location, "rb")
    fs, path = filesystem(location)
    try:
        return fs.open_input_stream(path, buffer_size=READ_BUFFER)  # unbuffered: one request per small read
    except OSError as err:
        if isinstance(err, FileNotFoundError) or not is_file(location):
            raise FileNotFoundError(f"{location}: no such file") from None
        raise OSError(f"{location}: {err}") from None


def read_bytes(location: Location) -> bytes:
    with open_read(location) as handle:
        return handle.read()


def read_text(location: Location) -> str:
    return read_bytes(location).decode("utf-8")


def read_json(location: Location) -> Any:
    try:
        return json.loads(read_text(location))
    except ValueError as err:
        raise ValueError(f"{location}: invalid JSON: {err}") from None


def write_atomic(location: Location, data: bytes) -> str:
    """Write `data` to `location` so that readers see the old file or the whole new one, never a part."""
    location, path = str(location), local_path(location)
    if path is not None:  # a local path or a file:// URI
        with atomic_local_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
        return location
    if is_stream(location):
        raise ValueError(f"{location}: a stream URL is read-only")
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as handle:
        handle.write(data)
    return location


@contextmanager
def atomic_local_path(path: Location) -> Iterator[str]:
    """A new empty file beside local `path` (mode 0o666 less the umask, as `open` makes) for writers that want a
    path; when the block succeeds it is flushed to disk and renamed over `path` (then the folder is flushed), else
    removed (a full disk raises DiskFull naming `path`)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mkstemp's would be 0600
    with naming_full_disk(path):  # after the temporary file is gone: the free space it reports is that left
        try:
            yield tmp
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    fd = os.open(folder, os.O_RDONLY)  # the folder's new entry reaches the disk too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(location: Location, text: str) -> str:
    return write_atomic(location, text.encode("utf-8"))


def write_json(location: Location, data: Any) -> str:
    return write_text(location, json.dumps(data, indent=1) + "\n")


def save_torch(obj: Any, location: Location) -> str:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(location, buffer.getvalue())


def load_torch(location: Location, **kwargs) -> Any:
    import torch

    source = str(location) if _local(str(location)) else io.BytesIO(read_bytes(location))
    return torch.load(source, **{"map_location": "cpu", "weights_only": True, **kwargs})


def is_file(location: Location) -> bool:
    return _http_stat(str(location))[0] if str(location).startswith(HTTP_PREFIXES) else size(location) is not None


def size(location: Location) -> Optional[int]:
    """Bytes of the file at `location`; None when there is none, for a `pipe:` stream, or an http file of no length."""
    import pyarrow.fs

    location = str(location)
    if location.startswith(HTTP_PREFIXES):
        return _http_stat(location)[1]
    if is_stream(location) or _local(location):
        return os.path.getsize(location) if _local(location) and os.path.isfile(location) else None
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    return info.size if info.type == pyarrow.fs.FileType.File else None


def exists(location: Location) -> bool:
    import pyarrow.fs

    location = str(location)
    if _local(location):
        return os.path.exists(location)
    if location.startswith(HTTP_PREFIXES):
        return _http_stat(location)[0]
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def makedirs(location: Location) -> None:
    """Create a folder (and parents); nothing to do on object stores, where folders are implicit."""
    path = local_path(location)
    if path is not None:
        os.makedirs(path, exist_ok=True)


def list_files(location: Location, pattern: str = "*") -> list[str]:
    """Locations of the files directly in folder `location` whose names match `pattern`, sorted."""
    import pyarrow.fs

    location = str(location)
    if _local(location):
        return sorted(os.path.join(location, n) for n in (os.listdir(location) if os.path.isdir(location) else ())
                      if fnmatch.fnmatch(n, pattern) and os.path.isfile(os.path.join(location, n)))
    fs, path = filesystem(location)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(join(location, posixpath.basename(i.path)) for i in infos
                  if i.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(posixpath.basename(i.path), pattern))


def remove(location: Location) -> None:
    """Delete a file; a missing one is fine."""
    location = str(location)
    if _local(location) and os.path.lexists(location):
        os.unlink(location)
    elif not _local(location) and exists(location):
        filesystem(location)[0].delete_file(filesystem(location)[1])


def remove_tree(location: Location) -> None:
    """Delete a folder (an object-store prefix) and everything in it; a missing one is fine."""
    path = local_path(location)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
    elif exists(location):
        filesystem(location)[0].delete_dir(filesystem(location)[1])


def upload(source: Location, location: Location) -> str:
    """Copy local file `source` to `location`: locally through a temporary file renamed over it; to a bucket in one
    streamed upload (an interrupted one may leave a partial object: upload to a temporary name, then `move` it)."""
    location, path = str(location), local_path(location)
    if path is not None:
        with atomic_local_path(path) as tmp:
            shutil.copyfile(source, tmp)
        return location
    if is_stream(location):
        raise ValueError(f"{location}: a stream URL is read-only")
    fs, path = filesystem(location)
    with open(source, "rb") as reader, fs.open_output_stream(path) as writer:
        shutil.copyfileobj(reader, writer, READ_BUFFER)
    return location


def move(source: Location, location: Location) -> str:
    """Rename a file within one store: os.replace locally; on object stores a server-side copy (the new object
    appears whole) and a delete."""
    src, dst = local_path(source), local_path(location)
    if src is not None and dst is not None:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
        return str(location)
    fs, src = filesystem(source)
    fs.copy_file(src, filesystem(location)[1])  # S3 and GCS: one server-side copy
    fs.delete_file(src)
    return str(location)


def scratch_root(scratch: Optional[str] = None) -> str:
    """Local scratch: $MTL_LOCAL_DIR, else `scratch` (runtime.local_dir), else <temp dir>/mtl-scratch-<uid>, this
    user's own (made 0700; FileExistsError when another user owns it). Not "mtl": that folder in the directory a
    Ray driver runs from (e.g. /tmp) would shadow the package in the driver's Ray workers."""
    if os.environ.get("MTL_LOCAL_DIR") or scratch:
        return os.environ.get("MTL_LOCAL_DIR") or scratch
    root, uid = os.path.join(tempfile.gettempdir(), f"mtl-scratch-{os.getuid()}"), os.getuid()
    os.makedirs(root, mode=0o700, exist_ok=True)  # a file or a link in its place: FileExistsError, or refused here
    if os.lstat(root).st_uid != uid:
        raise FileExistsError(f"{root}: another user's (not uid {uid}); set MTL_LOCAL_DIR to a scratch folder")
    return root


@contextmanager
def scratch_folder(purpose: str, scratch: Optional[str] = None) -> Iterator[str]:
    """A new local folder under `scratch_root(scratch)` for files on their way to a bucket; removed with its
    content when the block ends."""
    root = scratch_root(scratch)
    os.makedirs(root, exist_ok=True)
    folder = tempfile.mkdtemp(dir=root, prefix=f"{purpose}-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def local_folder(location: Location, purpose: str, scratch: Optional[str] = None) -> str:
    """A local folder for tools that need one (wandb): `location/purpose`, or one under `scratch_root` for a URI."""
    location = str(location)
    folder = (os.path.join(os.path.abspath(location), purpose) if _local(location)
              else os.path.join(scratch_root(scratch), location.replace("://", "/").strip("/"), purpose))
    os.makedirs(folder, exist_ok=True)
    return folder


def sha256(location: Location) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (which teacher made these soft labels, ...)."""
    digest = hashlib.sha256()
    with open_read(location) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_ready(value: Any) -> Any:
    """`value` with numpy scalars/arrays, tuples and paths turned into JSON types; NaN and infinities -> None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, np.generic)):  # numpy arrays and scalars: as Python lists and numbers
        return json_ready(value.tolist())
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return value if value is None or isinstance(value, (bool, int, str)) else str(value)
