"""The download stage against a real HTTP server on 127.0.0.1 and real zip files."""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path

import pytest
from helpers import FileServer, make_jpeg, make_nature_tree, make_nature_zip

from naturalist.download import DownloadError, download_file, extract_zip, prepare_dataset
from naturalist.layout import is_junk

CLASSES = ("Amphibia", "Aves", "Fungi")
FAST = {"backoff": 0.01, "progress": False}


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A 300 KB file of incompressible bytes to download."""
    path = tmp_path / "srv" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(300_000))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> list[str]:
    """Every path under ``folder``, relative and sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------
# download_file


def test_full_download_matches_source(http_server: FileServer, payload: Path, tmp_path: Path):
    url = http_server.serve(payload)
    target = tmp_path / "cache" / "payload.bin"
    result = download_file(
        url, target, expected_bytes=payload.stat().st_size, sha256=sha(payload), **FAST
    )
    assert result == target
    assert target.read_bytes() == payload.read_bytes()
    assert not target.with_suffix(".bin.part").exists()
    assert http_server.ranges == [None]


def test_progress_bar_and_summary(
    http_server: FileServer, payload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    url = http_server.serve(payload)
    download_file(url, tmp_path / "payload.bin", expected_bytes=None, sha256=None, progress=True)
    out, err = capsys.readouterr()
    assert "payload.bin" in err  # the tqdm bar
    assert len(out.strip().splitlines()) == 1 and "300,000 bytes" in out and "MB/s" in out


def test_existing_verified_target_is_not_downloaded_again(
    http_server: FileServer, payload: Path, tmp_path: Path
):
    url = http_server.serve(payload)
    target = tmp_path / "payload.bin"
    target.write_bytes(payload.read_bytes())
    download_file(url, target, expected_bytes=300_000, sha256=sha(payload), **FAST)
    assert http_server.requests == []


def test_part_longer_than_expected_restarts(http_server: FileServer, payload: Path, tmp_path: Path):
    url = http_server.serve(payload)
    target = tmp_path / "payload.bin"
    Path(f"{target}.part").write_bytes(os.urandom(400_000))
    download_file(url, target, expected_bytes=300_000, sha256=sha(payload), **FAST)
    assert http_server.ranges == [None]
    assert target.read_bytes() == payload.read_bytes()


def test_resume_after_cut_connection(http_server: FileServer, payload: Path, tmp_path: Path):
    url = http_server.serve(payload)
    http_server.cut_after = 100_000
    target = tmp_path / "payload.bin"
    download_file(url, target, expected_bytes=payload.stat().st_size, sha256=sha(payload), **FAST)
    assert http_server.ranges == [None, "bytes=100000-"]
    assert [r.status for r in http_server.requests] == [200, 206]
    assert target.read_bytes() == payload.read_bytes()


def test_resume_part_left_by_interrupted_run(
    http_server: FileServer, payload: Path, tmp_path: Path
):
    url = http_server.serve(payload)
    target = tmp_path / "payload.bin"
    Path(f"{target}.part").write_bytes(payload.read_bytes()[:123_456])
    download_file(url, target, expected_bytes=None, sha256=sha(payload), **FAST)
    assert http_server.ranges == ["bytes=123456-"]
    assert target.read_bytes() == payload.read_bytes()


def test_complete_part_answered_416_is_accepted(
    http_server: FileServer, payload: Path, tmp_path: Path
):
    url = http_server.serve(payload)
    target = tmp_path / "payload.bin"
    Path(f"{target}.part").write_bytes(payload.read_bytes())
    download_file(url, target, expected_bytes=None, sha256=sha(payload), **FAST)
    assert [r.status for r in http_server.requests] == [416]
    assert target.read_bytes() == payload.read_bytes()


def test_server_ignoring_range_restarts_from_zero(
    http_server: FileServer, payload: Path, tmp_path: Path
):
    url = http_server.serve(payload)
    http_server.ignore_range = True
    http_server.cut_after = 50_000
    target = tmp_path / "payload.bin"
    download_file(url, target, expected_bytes=payload.stat().st_size, sha256=sha(payload), **FAST)
    assert http_server.ranges == [None, "bytes=50000-"]
    assert [r.status for r in http_server.requests] == [200, 200]
    assert target.read_bytes() == payload.read_bytes()


def test_503_is_retried(http_server: FileServer, payload: Path, tmp_path: Path):
    url = http_server.serve(payload)
    http_server.fail_next = 1
    target = tmp_path / "payload.bin"
    download_file(url, target, expected_bytes=payload.stat().st_size, sha256=None, **FAST)
    assert [r.status for r in http_server.requests] == [503, 200]
    assert target.read_bytes() == payload.read_bytes()


def test_persistent_503_gives_up(http_server: FileServer, payload: Path, tmp_path: Path):
    url = http_server.serve(payload)
    http_server.fail_next = 100
    with pytest.raises(DownloadError, match="503"):
        download_file(
            url, tmp_path / "payload.bin", expected_bytes=None, sha256=None, retries=2, **FAST
        )
    assert len(http_server.requests) == 3


def test_404_fails_at_once(http_server: FileServer, tmp_path: Path):
    with pytest.raises(DownloadError, match="404") as info:
        download_file(
            http_server.url("missing.zip"),
            tmp_path / "missing.zip",
            expected_bytes=None,
            sha256=None,
            **FAST,
        )
    assert "\n" not in str(info.value)
    assert len(http_server.requests) == 1
    assert not (tmp_path / "missing.zip").exists()


def test_size_mismatch(http_server: FileServer, payload: Path, tmp_path: Path):
    url = http_server.serve(payload)
    target = tmp_path / "payload.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, target, expected_bytes=299_000, sha256=None, **FAST)
    assert "299,000" in str(info.value) and "300,000" in str(info.value)
    assert not target.exists()
    assert not Path(f"{target}.part").exists()


def test_sha256_mismatch(http_server: FileServer, payload: Path, tmp_path: Path):
    url = http_server.serve(payload)
    target = tmp_path / "payload.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download_file(url, target, expected_bytes=None, sha256=wrong, **FAST)
    assert wrong in str(info.value) and sha(payload) in str(info.value)
    assert not target.exists()
    assert not Path(f"{target}.part").exists()


# --------------------------------------------------------------------------------------------
# extract_zip


def _zip_with(path: Path, name: str, data: bytes = b"evil", *, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("inaturalist_12K/train/Aves/ok.jpg", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("member", "symlink", "reason"),
    [
        ("../evil.txt", False, "'..'"),
        ("inaturalist_12K/../../evil.txt", False, "'..'"),
        ("/tmp/naturalist-evil.txt", False, "absolute"),
        ("C:/evil.txt", False, "drive letter"),
        ("inaturalist_12K/train/Aves/link.jpg", True, "symlink"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path: Path, member: str, symlink: bool, reason: str):
    archive = _zip_with(
        tmp_path / "bad.zip", member, b"/etc/passwd" if symlink else b"evil", symlink=symlink
    )
    dest = tmp_path / "out" / "dest"
    before = tree(tmp_path)
    with pytest.raises(DownloadError, match=reason):
        extract_zip(archive, dest)
    assert tree(tmp_path) == before  # nothing written, inside dest or outside it
    assert not Path("/tmp/naturalist-evil.txt").exists()


def test_extract_skips_junk(tmp_path: Path):
    archive = make_nature_zip(tmp_path / "n.zip", CLASSES, 2, 1)
    written = extract_zip(archive, tmp_path / "out")
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written == len(files) == 3 * (2 + 1)
    assert not any(is_junk(p.relative_to(tmp_path / "out")) for p in files)


def test_corrupt_zip(tmp_path: Path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(DownloadError, match="corrupt"):
        extract_zip(archive, tmp_path / "out")


# --------------------------------------------------------------------------------------------
# prepare_dataset


def _expected_tree(train: dict[str, int], val: dict[str, int]) -> dict[str, dict[str, int]]:
    return {"train": train, "val": val}


def test_prepare_over_http_strips_wrapper_and_junk(http_server: FileServer, tmp_path: Path):
    train = {"Amphibia": 4, "Aves": 3, "Fungi": 2}
    archive = make_nature_zip(
        tmp_path / "srv" / "nature_12K.zip", CLASSES, train, 2, corrupt_class="Aves"
    )
    url = http_server.serve(archive)
    dest, cache = tmp_path / "data" / "raw", tmp_path / "cache"
    layout = prepare_dataset(
        url,
        dest,
        expected_bytes=archive.stat().st_size,
        sha256=sha(archive),
        cache_dir=cache,
        progress=False,
    )
    assert layout.root == dest
    assert layout.classes == CLASSES
    assert layout.counts() == _expected_tree({**train, "Aves": 4}, dict.fromkeys(CLASSES, 2))
    assert sorted(p.name for p in dest.iterdir()) == ["train", "val"]
    for split in ("train", "val"):
        assert sorted(p.name for p in (dest / split).iterdir()) == list(CLASSES)
    assert not any(is_junk(p.relative_to(dest)) or p.name.startswith(".") for p in dest.rglob("*"))
    assert (dest / "train" / "Aves" / "corrupt.jpg").is_file()
    assert not (cache / "nature_12K.zip").exists()
    assert not Path(f"{cache / 'nature_12K.zip'}.part").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["raw"]


def test_prepare_from_local_zip_and_folder_agree(tmp_path: Path):
    archive = make_nature_zip(tmp_path / "src" / "n.zip", CLASSES, 3, 2)
    folder = make_nature_tree(tmp_path / "src" / "folder", CLASSES, 3, 2)
    from_zip = prepare_dataset(
        str(archive),
        tmp_path / "a",
        expected_bytes=1,
        sha256=sha(archive),
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    from_uri = prepare_dataset(
        archive.as_uri(),
        tmp_path / "b",
        expected_bytes=None,
        sha256=None,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    from_dir = prepare_dataset(
        str(folder),
        tmp_path / "c",
        expected_bytes=1,
        sha256=None,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    expected = _expected_tree(dict.fromkeys(CLASSES, 3), dict.fromkeys(CLASSES, 2))
    assert from_zip.counts() == from_uri.counts() == from_dir.counts() == expected
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == tree(tmp_path / "c")
    assert archive.is_file() and (folder / "inaturalist_12K" / ".DS_Store").is_file()


def test_prepare_replaces_existing_dest(tmp_path: Path):
    dest = tmp_path / "raw"
    make_jpeg(dest / "train" / "Old" / "x.jpg")
    archive = make_nature_zip(tmp_path / "n.zip", CLASSES, 1, 1, junk=False)
    prepare_dataset(
        str(archive),
        dest,
        expected_bytes=None,
        sha256=None,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert sorted(p.name for p in (dest / "train").iterdir()) == list(CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.zip", "raw"]


def _assert_untouched(dest: Path) -> None:
    assert (dest / "marker.txt").read_text() == "old"
    assert sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("val", "message"),
    [
        ({"Amphibia": 2, "Aves": 2}, "different classes"),
        ({"Amphibia": 2, "Aves": 0, "Fungi": 2}, "empty class folders: Aves"),
    ],
)
def test_bad_layout_leaves_dest_untouched(tmp_path: Path, val: dict[str, int], message: str):
    dest = tmp_path / "data" / "raw"
    dest.mkdir(parents=True)
    (dest / "marker.txt").write_text("old")
    archive = make_nature_zip(tmp_path / "n.zip", CLASSES, 2, val)
    with zipfile.ZipFile(archive, "a") as zf:  # an empty class folder is a directory entry
        for cls, count in val.items():
            if count == 0:
                zf.writestr(f"inaturalist_12K/val/{cls}/", b"")
    with pytest.raises(DownloadError, match=message) as info:
        prepare_dataset(
            str(archive),
            dest,
            expected_bytes=None,
            sha256=None,
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    assert "\n" not in str(info.value) and ".tmp-" not in str(info.value)
    _assert_untouched(dest)


def test_failed_download_leaves_dest_untouched(http_server: FileServer, tmp_path: Path):
    archive = make_nature_zip(tmp_path / "srv" / "n.zip", CLASSES, 1, 1)
    url = http_server.serve(archive)
    dest = tmp_path / "data" / "raw"
    dest.mkdir(parents=True)
    (dest / "marker.txt").write_text("old")
    with pytest.raises(DownloadError, match="sha256"):
        prepare_dataset(
            url,
            dest,
            expected_bytes=None,
            sha256="f" * 64,
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    _assert_untouched(dest)


@pytest.mark.parametrize("url", ["ftp://example.com/nature_12K.zip", "does/not/exist.zip"])
def test_unsupported_url(tmp_path: Path, url: str):
    with pytest.raises(DownloadError, match=r"http\(s\) URL, a local \.zip") as info:
        prepare_dataset(
            url,
            tmp_path / "raw",
            expected_bytes=None,
            sha256=None,
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_local_file_that_is_not_a_zip(tmp_path: Path):
    bogus = make_jpeg(tmp_path / "photo.jpg")
    with pytest.raises(DownloadError, match="not a zip"):
        prepare_dataset(
            str(bogus),
            tmp_path / "raw",
            expected_bytes=None,
            sha256=None,
            cache_dir=tmp_path / "cache",
            progress=False,
        )
