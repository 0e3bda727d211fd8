"""Shared test helpers: generated JPEGs, nature_12K-shaped zips and folders, a local HTTP server.

Never real iNaturalist images: everything here is generated (the dataset license forbids
redistribution, and tests have no network).
"""

from __future__ import annotations

import io
import random
import re
import socket
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from naturalist import synthetic
from naturalist.params import Params
from naturalist.split import split_dataset
from naturalist.sweep import SweepSummary, run_sweep

NATURE_CLASSES = (
    "Amphibia",
    "Animalia",
    "Arachnida",
    "Aves",
    "Fungi",
    "Insecta",
    "Mammalia",
    "Mollusca",
    "Plantae",
    "Reptilia",
)
WRAPPER = "inaturalist_12K"


def jpeg_bytes(
    size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 80, 40)
) -> bytes:
    """A small solid-colour RGB JPEG, encoded in memory."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def make_jpeg(
    path: Path, size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 80, 40)
) -> Path:
    """Write a small solid-colour JPEG to ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(size, color))
    return path


def _per_class(value: int | Mapping[str, int], cls: str) -> int:
    return value.get(cls, 0) if isinstance(value, Mapping) else value


def nature_entries(
    classes: tuple[str, ...] | list[str] = NATURE_CLASSES[:3],
    per_class_train: int | Mapping[str, int] = 3,
    per_class_val: int | Mapping[str, int] = 2,
    *,
    junk: bool = True,
    corrupt_class: str | None = None,
    wrapper: str | None = WRAPPER,
) -> dict[str, bytes]:
    """The files of a nature_12K-shaped dataset as {posix relative path: bytes}.

    Images are ``<wrapper>/{train,val}/<class>/<class>_<split>_<i>.jpg``, each class its own colour
    and sizes varying by index. ``junk`` adds ``.DS_Store`` (top, wrapper and train/),
    ``__MACOSX/`` entries, a ``*.jpg:Zone.Identifier`` and a ``Thumbs.db``. ``corrupt_class`` adds
    one ``corrupt.jpg`` of random bytes to ``train/<corrupt_class>`` (it counts as a file).
    """
    prefix = f"{wrapper}/" if wrapper else ""
    rng = random.Random(0)
    entries: dict[str, bytes] = {}
    for k, cls in enumerate(classes):
        color = ((37 * k + 50) % 256, (91 * k + 20) % 256, (53 * k + 120) % 256)
        for split, count in (("train", per_class_train), ("val", per_class_val)):
            for i in range(_per_class(count, cls)):
                size = (24 + 4 * (i % 3), 20 + 4 * (i % 2))
                entries[f"{prefix}{split}/{cls}/{cls}_{split}_{i}.jpg"] = jpeg_bytes(size, color)
    if corrupt_class is not None:
        entries[f"{prefix}train/{corrupt_class}/corrupt.jpg"] = rng.randbytes(512)
    if junk:
        first = classes[0]
        entries[".DS_Store"] = b"\x00\x00\x00\x01Bud1" + rng.randbytes(64)
        entries[f"{prefix}.DS_Store"] = b"\x00\x00\x00\x01Bud1" + rng.randbytes(64)
        entries[f"{prefix}train/.DS_Store"] = b"\x00\x00\x00\x01Bud1" + rng.randbytes(64)
        entries[f"__MACOSX/{prefix}train/._{first}"] = rng.randbytes(32)
        entries[f"__MACOSX/{prefix}train/{first}/._{first}_train_0.jpg"] = rng.randbytes(32)
        entries[f"{prefix}train/{first}/{first}_train_0.jpg:Zone.Identifier"] = (
            b"[ZoneTransfer]\r\nZoneId=3\r\n"
        )
        entries[f"{prefix}val/{first}/Thumbs.db"] = rng.randbytes(64)
    return entries


def make_nature_zip(
    path: Path,
    classes: tuple[str, ...] | list[str] = NATURE_CLASSES[:3],
    per_class_train: int | Mapping[str, int] = 3,
    per_class_val: int | Mapping[str, int] = 2,
    junk: bool = True,
    *,
    corrupt_class: str | None = None,
    wrapper: str | None = WRAPPER,
) -> Path:
    """Write a nature_12K-shaped zip (see ``nature_entries``) to ``path`` and return the path."""
    entries = nature_entries(
        classes,
        per_class_train,
        per_class_val,
        junk=junk,
        corrupt_class=corrupt_class,
        wrapper=wrapper,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def make_nature_tree(
    root: Path,
    classes: tuple[str, ...] | list[str] = NATURE_CLASSES[:3],
    per_class_train: int | Mapping[str, int] = 3,
    per_class_val: int | Mapping[str, int] = 2,
    junk: bool = True,
    *,
    corrupt_class: str | None = None,
    wrapper: str | None = WRAPPER,
) -> Path:
    """Write the same files as ``make_nature_zip`` as a folder under ``root``; return ``root``."""
    for name, data in nature_entries(
        classes,
        per_class_train,
        per_class_val,
        junk=junk,
        corrupt_class=corrupt_class,
        wrapper=wrapper,
    ).items():
        path = root.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# --------------------------------------------------------------------------------------------
# A local HTTP server


@dataclass
class Request:
    """One request the server received, and what it answered."""

    path: str
    range: str | None
    status: int


@dataclass
class FileServer:
    """A real HTTP server on 127.0.0.1 that serves registered files, with fault switches.

    Register a file with ``url = server.serve(path)``; unregistered paths answer 404. Files are
    read at request time. ``Range: bytes=N-`` is honoured (206 + Content-Range) unless
    ``ignore_range``; a start at or past the end answers 416 with ``Content-Range: bytes */size``.

    Fault switches (each consumed by the requests it affects):
    - ``cut_after = K``: the next successful response sends full headers and K body bytes, then
      the socket is closed (``cut_count`` responses are cut, default 1).
    - ``fail_next = n`` with ``fail_status`` (503): the next n requests get that status.
    - ``ignore_range = True``: always answer 200 with the whole file.
    """

    host: str = "127.0.0.1"
    files: dict[str, Path] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_after: int | None = None
    cut_count: int = 1
    fail_next: int = 0
    fail_status: int = 503
    ignore_range: bool = False
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def url(self, name: str) -> str:
        """The URL of ``/<name>`` (registered or not: unregistered names give 404)."""
        return f"{self.base_url}/{name.lstrip('/')}"

    def serve(self, path: Path, name: str | None = None) -> str:
        """Serve the file at ``path`` as ``/<name>`` (default: its file name); return its URL."""
        name = (name or path.name).lstrip("/")
        self.files[f"/{name}"] = Path(path)
        return self.url(name)

    @property
    def ranges(self) -> list[str | None]:
        """The Range header of every request received, in order (None when absent)."""
        return [r.range for r in self.requests]

    def start(self) -> FileServer:
        self._httpd = ThreadingHTTPServer((self.host, 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # Decisions made under the lock, so concurrent requests consume switches exactly once.
    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False

    def _take_cut(self) -> int | None:
        with self._lock:
            if self.cut_after is None or self.cut_count <= 0:
                return None
            self.cut_count -= 1
            cut = self.cut_after
            if self.cut_count == 0:
                self.cut_after = None
            return cut


def _make_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _record(self, status: int) -> None:
            with server._lock:
                server.requests.append(Request(self.path, self.headers.get("Range"), status))

        def _plain(self, status: int) -> None:
            self._record(status)
            body = f"{status}\n".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def do_GET(self) -> None:
            if server._take_failure():
                self._plain(server.fail_status)
                return
            file = server.files.get(self.path)
            if file is None or not file.is_file():
                self._plain(404)
                return
            data = file.read_bytes()
            start = 0
            status = 200
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and not server.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    self._record(416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    return
                status = 206
            body = data[start:]
            self._record(status)
            self.send_response(status)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Connection", "close")
            self.end_headers()
            cut = server._take_cut()
            if cut is not None and cut < len(body):
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)
            self.close_connection = True

    return Handler


def running_server() -> Iterator[FileServer]:
    """Generator for a pytest fixture: a started FileServer, stopped afterwards."""
    server = FileServer().start()
    try:
        yield server
    finally:
        server.stop()


def make_synthetic_split(
    root: Path,
    *,
    seed: int,
    train_per_class: int,
    test_per_class: int,
    min_side: int,
    max_side: int,
    val_fraction: float = 0.2,
    image_size: int = 32,
) -> Path:
    """Generate the synthetic dataset in ``root / "raw"``; split it into ``root / "split"``."""
    synthetic.generate(
        root / "raw",
        seed=seed,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        min_side=min_side,
        max_side=max_side,
    )
    split_dataset(
        root / "raw",
        root / "split",
        image_size=image_size,
        val_fraction=val_fraction,
        seed=seed,
        progress=False,
    )
    return root / "split"


def run_sweep_in(tmp: Path, params: Params, split_dir: Path) -> SweepSummary:
    """The sweep stage with every output and the Optuna storage under ``tmp``."""
    return run_sweep(
        params,
        split_dir=split_dir,
        results_dir=tmp / "results" / "sweep",
        model_path=tmp / "models" / "sweep_best.pt",
        sweep_dir=tmp / ".sweep",
        progress=False,
    )
