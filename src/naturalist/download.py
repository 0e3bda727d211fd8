"""The download stage for ``data.source: inaturalist``: fetch, verify, extract, validate nature_12K.

The real archive is 3.8 GB, so the download resumes (HTTP ``Range``) after a dropped connection or
an interrupted run, and transient server errors are retried with backoff. The archive is extracted
in pure Python without trusting member paths, OS junk is dropped, and the dataset folder is
replaced only once the new copy is complete and has the nature_12K layout.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from naturalist.errors import PipelineError
from naturalist.fsutil import replacing_directory
from naturalist.layout import SPLITS, Layout, LayoutError, is_junk, read_layout

CHUNK = 1 << 20
USER_AGENT = "naturalist-download/0.1 (python urllib)"
ALLOWED_SOURCES = "an http(s) URL, a local .zip file (path or file:// URL) or an extracted folder"

# Failures worth another attempt: the network or the server may do better a moment later.
# HTTPError is a URLError too; it is sorted out by status code before this tuple is consulted.
TRANSIENT_ERRORS = (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError)


class DownloadError(PipelineError, RuntimeError):
    """The dataset could not be downloaded, verified or extracted; the message is one line."""


class _Retry(Exception):
    """An attempt failed in a way another attempt may fix (the message says how)."""


# --------------------------------------------------------------------------------------------
# download_file


def _part_path(target: Path) -> Path:
    return target.with_suffix(target.suffix + ".part")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks so a multi-GB archive never sits in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from ``bytes START-END/TOTAL`` or ``bytes */TOTAL``; None where unknown."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _fetch_once(
    url: str, part: Path, *, expected_bytes: int | None, timeout: float, progress: bool, desc: str
) -> int:
    """One attempt: append to ``part`` from where it ends until the server's body is complete.

    Returns the bytes received once the body (or, after a 416 answer, the file on disk) is
    complete; raises ``_Retry`` or a transient network error otherwise, keeping what arrived.
    """
    have = _size(part)
    if expected_bytes is not None and have > expected_bytes:
        part.unlink()  # longer than the real file: it cannot be resumed into a correct one
        have = 0
    if expected_bytes is not None and have == expected_bytes:
        return 0  # an earlier run received everything but stopped before the checks
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            total = expected_bytes or _content_range(exc.headers.get("Content-Range"))[1]
            if total == have:
                return 0
            part.unlink()
            raise _Retry(f"server refused to resume at byte {have}; starting over") from exc
        if exc.code == 429 or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Retry(f"server resumed at byte {start}, not {have}; starting over")
            total = total if total is not None else (have + length if length is not None else None)
        else:  # 200: the server ignored Range (or there was nothing to resume): start from zero
            if have:
                print(
                    f"server ignored the Range request; restarting {desc} from zero",
                    file=sys.stderr,
                )
            have = 0
            total = length
        mode = "ab" if have else "wb"
        received = 0
        with (
            part.open(mode) as out,
            tqdm(
                total=expected_bytes or total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            while block := response.read(CHUNK):
                out.write(block)
                received += len(block)
                bar.update(len(block))
        if length is not None and received < length:
            # http.client returns b"" when the peer closes early instead of raising; say it here.
            raise http.client.IncompleteRead(b"", length - received)
        return received


def download_file(
    url: str,
    target: Path,
    *,
    expected_bytes: int | None,
    sha256: str | None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``target``, resuming a partial ``<target>.part`` file, and verify it.

    Transient failures (network errors, timeouts, HTTP 429 and 5xx) are retried with exponential
    backoff (``backoff * 2**n`` seconds); every retry resumes from the bytes already on disk.
    ``n`` counts consecutive attempts that received nothing, so a slow but alive connection that
    drops now and then still finishes a multi-GB file. Other HTTP 4xx errors fail at once.

    A complete file of the wrong size or sha256 is deleted (resuming it can never give the right
    file) and ``DownloadError`` is raised; ``target`` only ever appears complete and verified.
    An existing ``target`` that passes the checks is returned without a download.
    """
    target = Path(target)
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"{url}: download_file needs an http(s) URL")
    if target.is_file():
        try:
            _verify(target, expected_bytes=expected_bytes, sha256=sha256, delete=False)
            return target
        except DownloadError:
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(target)
    started, start_size = time.monotonic(), _size(part)
    if start_size:
        print(f"resuming {target.name} from byte {start_size:,}", file=sys.stderr)

    failures = fetched = 0
    while True:
        before = _size(part)
        try:
            fetched += _fetch_once(
                url,
                part,
                expected_bytes=expected_bytes,
                timeout=timeout,
                progress=progress,
                desc=target.name,
            )
            break
        except DownloadError:
            raise
        except (_Retry, *TRANSIENT_ERRORS) as exc:
            fetched += max(_size(part) - before, 0)
            failures = 0 if _size(part) > before else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"{url}: giving up after {retries} retries without progress "
                    f"(last error: {_describe(exc)})"
                ) from exc
            delay = backoff * 2 ** max(failures - 1, 0)
            print(
                f"download interrupted ({_describe(exc)}); retrying in {delay:.3g} s "
                f"from byte {_size(part):,}",
                file=sys.stderr,
            )
            time.sleep(delay)

    _verify(part, expected_bytes=expected_bytes, sha256=sha256, delete=True)
    os.replace(part, target)
    size, seconds = _size(target), max(time.monotonic() - started, 1e-9)
    print(
        f"downloaded {target.name}: {size:,} bytes ({fetched:,} this run) in {seconds:.1f} s, "
        f"{fetched / seconds / 1e6:.1f} MB/s"
    )
    return target


def _describe(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ").strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _verify(path: Path, *, expected_bytes: int | None, sha256: str | None, delete: bool) -> None:
    """Raise DownloadError if ``path`` has the wrong size or sha256 (deleting it if asked)."""
    size = _size(path)
    problem = None
    if expected_bytes is not None and size != expected_bytes:
        problem = f"expected {expected_bytes:,} bytes, got {size:,}"
    elif sha256 is not None:
        digest = sha256_of(path)
        if digest != sha256.lower():
            problem = f"sha256 mismatch: expected {sha256.lower()}, got {digest}"
    if problem:
        if delete:
            path.unlink(missing_ok=True)
        raise DownloadError(f"{path.name}: {problem}" + (" (file deleted)" if delete else ""))


# --------------------------------------------------------------------------------------------
# extract_zip


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting this member could write outside the destination, or None if it cannot."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/"):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    if ".." in PurePosixPath(name).parts:
        return "'..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink"
    return None


def extract_zip(archive: Path, dest: Path) -> int:
    """Extract ``archive`` into ``dest`` in pure Python; return the number of files written.

    Every member is checked before anything is written: an absolute path, a drive letter, a ``..``
    component or a symlink refuses the whole archive. OS junk (``__MACOSX/``, ``.DS_Store``, ...)
    is skipped. Files are streamed, so memory stays flat for large members.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if not is_junk(info.filename)]
            for info in members:
                reason = _unsafe_reason(info)
                if reason:
                    raise DownloadError(
                        f"{archive.name}: refusing to extract, member "
                        f"{info.filename!r} has an unsafe path ({reason})"
                    )
            dest.mkdir(parents=True, exist_ok=True)
            written = 0
            for info in members:
                out = dest.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                written += 1
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DownloadError(
            f"{archive.name}: corrupt or unreadable zip ({exc}); delete it and download again"
        ) from exc
    return written


# --------------------------------------------------------------------------------------------
# prepare_dataset


def _resolve_source(url: str) -> tuple[str, str | Path]:
    """("http", url), ("zip", path) or ("dir", path); DownloadError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return "http", url
    if scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
    elif scheme == "" or len(scheme) == 1:  # a plain path, or a Windows drive letter
        path = Path(url).expanduser()
    else:
        raise DownloadError(f"unsupported data.url {url!r}: use {ALLOWED_SOURCES}")
    if path.is_dir():
        return "dir", path
    if path.is_file() and zipfile.is_zipfile(path):
        return "zip", path
    what = "is not a zip file" if path.exists() else "does not exist"
    raise DownloadError(f"data.url {url!r} {what}: use {ALLOWED_SOURCES}")


def _assemble(layout: Layout, out: Path, *, move: bool) -> None:
    """Write exactly the layout's images to ``out/<split>/<class>/``: no wrapper, no junk."""
    for split in SPLITS:
        for cls, files in layout.files[split].items():
            folder = out / split / cls
            folder.mkdir(parents=True)
            for file in files:
                if move:
                    os.replace(file, folder / file.name)
                else:
                    shutil.copyfile(file, folder / file.name)


def prepare_dataset(
    url: str,
    dest: Path,
    *,
    expected_bytes: int | None,
    sha256: str | None,
    cache_dir: Path,
    progress: bool = True,
) -> Layout:
    """Make ``dest/{train,val}/<class>/*`` from ``url`` and return its validated Layout.

    ``url`` is one of:

    - an http(s) URL: downloaded (with resume) to ``cache_dir/<file name>``, outside ``dest``, so an
      interrupted run resumes. ``expected_bytes`` and ``sha256`` are checked.
    - a local .zip (a path or a ``file://`` URL): ``sha256`` is checked if set, ``expected_bytes``
      is not, since its default is the size of the real archive at the default URL and a user's
      own zip (re-packed, or a small sample) legitimately differs.
    - an extracted folder: its images are copied; neither check applies.

    The data is assembled in a temporary sibling ``.<dest>.tmp-<pid>`` and validated (train/ and
    val/ with the same non-empty classes; an ``inaturalist_12K/`` wrapper is stripped, OS junk is
    left out). Only then is the old ``dest`` replaced; on any failure the temporary folder is
    removed and the old ``dest`` is untouched.

    After success the downloaded zip is deleted from ``cache_dir``: its content now lives in
    ``dest``, which DVC caches, so keeping another 3.8 GB copy buys nothing. A local .zip or
    folder given by the user is never deleted.
    """
    dest, cache_dir = Path(dest), Path(cache_dir)
    kind, source = _resolve_source(url)
    # Leftovers of a killed run (DVC's repo lock means no other download stage is running now).
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    downloaded: Path | None = None
    with replacing_directory(dest) as tmp:
        if kind == "dir":
            layout = _read(Path(source), shown=str(source))
            _assemble(layout, tmp, move=False)
        else:
            if kind == "http":
                name = unquote(PurePosixPath(urlsplit(url).path).name) or "dataset.zip"
                downloaded = download_file(
                    url,
                    cache_dir / name,
                    expected_bytes=expected_bytes,
                    sha256=sha256,
                    progress=progress,
                )
                archive = downloaded
            else:
                archive = Path(source)
                if sha256 is not None:
                    _verify(archive, expected_bytes=None, sha256=sha256, delete=False)
            extracted = tmp / ".extracted"  # hidden, so it can never pass for a split or class
            count = extract_zip(archive, extracted)
            print(f"extracted {count:,} files from {archive.name}")
            layout = _read(extracted, shown=archive.name, replace=extracted)
            _assemble(layout, tmp, move=True)
            shutil.rmtree(extracted)
        _read(tmp, shown=str(dest), replace=tmp)
    if downloaded is not None:
        downloaded.unlink(missing_ok=True)
    final = read_layout(dest)
    print(final.summary())
    return final


def _read(folder: Path, *, shown: str, replace: Path | None = None) -> Layout:
    """read_layout, with errors as one-line DownloadErrors that name the source, not temp paths."""
    try:
        return read_layout(folder)
    except LayoutError as exc:
        message = str(exc).replace(str(replace), shown) if replace is not None else str(exc)
        raise DownloadError(f"bad dataset layout: {message}") from exc
