"""Blob stores: the same contract for the filesystem, S3 (a real S3 HTTP endpoint),
S3 behind a local spool, and the in-memory store."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreAccessError,
    BlobStoreError,
    BlobStoreFullError,
    BlobStoreUnavailableError,
    FilesystemBlobStore,
    InvalidBlobKeyError,
    MemoryBlobStore,
    SpooledBlobStore,
    validate_key,
)
from storage.s3 import S3BlobStore
from tests.conftest import mounted_tmpfs
from tests.page_cache import cached_pages, drop_from_page_cache, nowait_reads
from tests.services import S3Endpoint, TcpRelay, free_port, new_bucket_name

KEY = "1.2.3/1.2.3.4/1.2.3.4.5.0123456789abcdef.dcm"


def s3_store(
    endpoint: S3Endpoint,
    bucket: str | None = None,
    *,
    relay: TcpRelay | None = None,
    prefix: str = "archive",
    **options: Any,
) -> S3BlobStore:
    """A store on the tests' S3, directly or through ``relay`` (which a test cuts off)."""
    return S3BlobStore(
        bucket or new_bucket_name(),
        prefix,
        endpoint=f"127.0.0.1:{relay.port}" if relay else endpoint.endpoint,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        secure=endpoint.secure,
        **options,
    )


@pytest.fixture(params=["filesystem", "s3", "spooled-s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        yield FilesystemBlobStore(tmp_path / "blobs")
    elif request.param == "memory":
        yield MemoryBlobStore()
    else:
        remote = s3_store(request.getfixturevalue("s3_endpoint"))
        if request.param == "s3":
            yield remote
            remote.close()
        else:
            spooled = SpooledBlobStore(FilesystemBlobStore(tmp_path / "spool"), remote)
            yield spooled
            spooled.close()


def test_both_follow_the_protocol(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_put_and_read_back(store: BlobStore) -> None:
    assert store.put(KEY, [b"head", b"", bytearray(b"-mid-"), memoryview(b"tail")]) == 13
    assert store.get(KEY) == b"head-mid-tail"
    assert store.size(KEY) == 13
    assert store.exists(KEY)
    assert not store.exists(KEY + ".other")


def test_put_of_more_pieces_than_one_writev_takes(store: BlobStore) -> None:
    pieces = [bytes([i % 251]) * (i % 7) for i in range(3000)]
    assert store.put("many/pieces", pieces) == sum(map(len, pieces))
    assert store.get("many/pieces") == b"".join(pieces)


def test_map_range_is_the_bytes_or_none(store: BlobStore) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: several pages, an offset inside one
    store.put("mapped/blob", [data])
    for offset, length in ((0, 100), (70_001, 5_000_000), (len(data) - 10, 10)):
        view = store.map_range("mapped/blob", offset, length)
        assert view is None or bytes(view) == data[offset : offset + length]
    assert store.map_range("mapped/blob", len(data) - 10, 11) is None  # past the end
    if isinstance(store, FilesystemBlobStore):
        view = store.map_range("mapped/blob", 70_001, 5_000_000)
        assert view is not None and view.readonly
        store.delete("mapped/blob")
        assert bytes(view[:3]) == data[70_001:70_004]  # a mapping outlives the file
        with pytest.raises(BlobNotFoundError):
            store.map_range("mapped/blob", 0, 1)


def test_put_from_a_generator(store: BlobStore) -> None:
    chunks = (bytes([i]) * 1000 for i in range(10))
    assert store.put("gen/blob", chunks) == 10_000
    assert store.get("gen/blob") == b"".join(bytes([i]) * 1000 for i in range(10))


def test_empty_blob(store: BlobStore) -> None:
    assert store.put("empty", []) == 0
    assert store.get("empty") == b""
    assert store.size("empty") == 0
    assert store.exists("empty")
    assert list(store.iter_chunks("empty")) == []


def _cached_range(store: BlobStore, key: str, offset: int, length: int) -> Any:
    """``get_range_now`` once a normal read has just brought the pages in (the
    kernel may reclaim them between the two calls, so a few tries)."""
    for _ in range(5):
        store.get_range(key, offset, length)
        found = store.get_range_now(key, offset, length)
        if found is not None:
            return found
    return None


def test_get_range_now_answers_what_needs_no_wait(store: BlobStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    store.put(KEY, [data])
    if isinstance(store, S3BlobStore):
        assert store.get_range_now(KEY, 0, 10) is None  # always a round trip
        return
    if isinstance(store, SpooledBlobStore):
        store.drain()  # uploaded and gone from the spool: only S3 has it
        assert store.get_range_now(KEY, 0, 10) is None
        return
    if isinstance(store, FilesystemBlobStore) and not nowait_reads(tmp_path / "blobs" / KEY):
        assert store.get_range_now(KEY, 0, 10) is None  # it cannot tell: a thread reads
        pytest.skip(f"the filesystem of {tmp_path} takes no RWF_NOWAIT reads (tmpfs?)")
    assert _cached_range(store, KEY, 500, 24) == data[500:524]
    assert _cached_range(store, KEY, 0, len(data)) == data
    with pytest.raises(BlobNotFoundError):
        store.get_range_now(KEY + ".other", 0, 10)
    with pytest.raises(ValueError):
        store.get_range_now(KEY, -1, 10)


def test_get_range_now_leaves_a_read_from_the_disk_to_a_thread(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    data = os.urandom(1 << 20)
    store.put(KEY, [data])  # fsynced: clean pages the kernel can drop
    drop_from_page_cache(tmp_path / "blobs" / KEY)
    # Not in memory: ``None``, unless the read the kernel starts for it (readahead)
    # is done before the call returns (a disk that answers from the host's cache).
    found = store.get_range_now(KEY, 4096, 65536)
    assert found is None or found == data[4096 : 4096 + 65536]
    assert store.get_range(KEY, 4096, 65536) == data[4096 : 4096 + 65536]
    # past the end of the blob: short, so not "at once" (``get_range`` says how short)
    assert store.get_range_now(KEY, len(data) - 10, 20) is None


def test_prefetch_reads_ahead_and_never_raises(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    store.put(KEY, [data])
    store.prefetch([KEY, "no/such/blob.dcm", "../bad"])  # the unknown ones are skipped
    assert store.get(KEY) == data
    if not isinstance(store, FilesystemBlobStore):
        return
    path = tmp_path / "blobs" / KEY
    drop_from_page_cache(path)
    store.prefetch([KEY])
    deadline = time.monotonic() + 10
    while cached_pages(path) < len(data) // mmap.PAGESIZE:
        assert time.monotonic() < deadline, "prefetch did not bring the file in"
        time.sleep(0.01)
    assert store.get_range_now(KEY, 0, len(data)) == data


def test_get_range(store: BlobStore) -> None:
    data = bytes(range(256)) * 4
    store.put(KEY, [data])
    assert store.get_range(KEY, 0, 10) == data[:10]
    assert store.get_range(KEY, 500, 24) == data[500:524]
    assert store.get_range(KEY, 1000, 100) == data[1000:]  # fewer at the end
    assert store.get_range(KEY, 5000, 10) == b""
    assert store.get_range(KEY, 7, 0) == b""
    with pytest.raises(ValueError):
        store.get_range(KEY, -1, 10)
    with pytest.raises(ValueError):
        store.get_range(KEY, 0, -1)


@pytest.mark.parametrize("chunk_size", [1, 7, 1024, 1 << 20])
def test_iter_chunks(store: BlobStore, chunk_size: int) -> None:
    data = os.urandom(3000)
    store.put(KEY, [data])
    chunks = list(store.iter_chunks(KEY, chunk_size))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= chunk_size for c in chunks)
    assert len(chunks) == -(-len(data) // chunk_size)


def test_missing_blob(store: BlobStore) -> None:
    for read in (
        lambda: store.get(KEY),
        lambda: store.get_range(KEY, 0, 1),
        lambda: list(store.iter_chunks(KEY)),
        lambda: store.size(KEY),
    ):
        with pytest.raises(BlobNotFoundError) as info:
            read()
        assert isinstance(info.value, KeyError) and isinstance(info.value, BlobStoreError)
        assert KEY in str(info.value)
    assert not store.exists(KEY)
    store.delete(KEY)  # deleting a missing blob is not an error


def test_delete(store: BlobStore) -> None:
    store.put(KEY, [b"x"])
    store.put("other/key", [b"y"])
    store.delete(KEY)
    assert not store.exists(KEY)
    with pytest.raises(BlobNotFoundError):
        store.get(KEY)
    assert store.get("other/key") == b"y"
    assert sorted(store.keys()) == ["other/key"]


def test_keys_and_prefixes(store: BlobStore) -> None:
    keys = ["s1/a/1.dcm", "s1/a/2.dcm", "s1/b/3.dcm", "s2/c/4.dcm", "top"]
    for key in keys:
        store.put(key, [key.encode()])
    assert sorted(store.keys()) == keys
    assert sorted(store.keys("s1/")) == keys[:3]
    assert sorted(store.keys("s1/a/")) == keys[:2]
    assert list(store.keys("nothing")) == []


def test_put_replaces(store: BlobStore) -> None:
    store.put(KEY, [b"first version, longer"])
    assert store.put(KEY, [b"second"]) == 6
    assert store.get(KEY) == b"second"
    assert store.size(KEY) == 6
    assert list(store.keys()) == [KEY]


BAD_KEYS = [
    "",
    "..",
    "../x",
    "a/../../x",
    "a/./b",
    "/etc/passwd",
    "a//b",
    "a/",
    ".hidden",
    ".incoming/x",
    "a\\b",
    "a b",
    "a\x00b",
    "ünïcode",
    "x" * 513,
    "a/" + "b" * 129,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=range(len(BAD_KEYS)))
def test_path_trick_keys_are_rejected(store: BlobStore, key: str, tmp_path: Path) -> None:
    operations = [
        lambda: store.put(key, [b"x"]),
        lambda: store.get(key),
        lambda: store.get_range(key, 0, 1),
        lambda: list(store.iter_chunks(key)),
        lambda: store.size(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidBlobKeyError) as info:
            operation()
        assert isinstance(info.value, ValueError) and isinstance(info.value, BlobStoreError)
    assert list(store.keys()) == []
    # nothing was written anywhere near the store
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


def test_validate_key_limits() -> None:
    assert validate_key("a" * 128) == "a" * 128
    long_key = "/".join(["b" * 127] * 4)
    assert len(long_key) == 511 and validate_key(long_key) == long_key
    assert validate_key("1.2.3/x_y-z.dcm") == "1.2.3/x_y-z.dcm"
    with pytest.raises(InvalidBlobKeyError):
        validate_key("a" * 129)
    with pytest.raises(InvalidBlobKeyError):
        validate_key("/".join(["b" * 128] * 5))


class Interrupted(Exception):
    pass


def test_no_partial_blob_is_ever_visible(store: BlobStore, tmp_path: Path) -> None:
    store.put(KEY, [b"old content"])
    seen = []

    def chunks() -> Iterator[bytes]:
        yield b"new "
        # half-way through the write: readers still see the old blob, whole
        seen.append((store.get(KEY), sorted(store.keys())))
        yield b"content"

    store.put(KEY, chunks())
    assert seen == [(b"old content", [KEY])]
    assert store.get(KEY) == b"new content"

    def failing() -> Iterator[bytes]:
        yield b"never "
        seen.append((store.exists("fresh/key"), store.get(KEY)))
        raise Interrupted

    with pytest.raises(Interrupted):
        store.put("fresh/key", failing())
    with pytest.raises(Interrupted):
        store.put(KEY, failing())
    assert seen[1:] == [(False, b"new content")] * 2
    assert not store.exists("fresh/key")
    assert store.get(KEY) == b"new content"
    if isinstance(store, FilesystemBlobStore):
        assert list((store.root / ".incoming").iterdir()) == []  # no half-written leftovers
        assert not (store.root / "fresh" / "key").exists()


def test_concurrent_puts(store: BlobStore) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                store.put(f"study/series{i % 3}/{n}-{i}", [f"{n}-{i}".encode()])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    keys = sorted(store.keys())
    assert len(keys) == 200
    assert all(store.get(k) == k.rsplit("/", 1)[1].encode() for k in keys)


# -- filesystem specifics -----------------------------------------------------------------


def test_filesystem_layout(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    store.put("a/b/c.dcm", [b"data"])
    assert (tmp_path / "blobs" / "a" / "b" / "c.dcm").read_bytes() == b"data"
    # a file that is not a key (hidden bookkeeping) is never listed
    (tmp_path / "blobs" / "a" / ".tmp").write_bytes(b"")
    assert list(store.keys()) == ["a/b/c.dcm"]


@pytest.mark.parametrize(
    "sizes",
    [
        [1],
        [4095],
        [4096],
        [1500, 524_288],  # a CT slice: file meta, then the data set
        [4 << 20],  # exactly one direct I/O buffer
        [3 << 20, (1 << 20) + 4096 + 7],  # a buffer, a block, a tail
        [5, (9 << 20) + 1, 4093],  # several buffers, pieces across their edges
    ],
    ids=lambda sizes: "+".join(map(str, sizes)),
)
def test_blobs_around_the_direct_io_blocks_read_back_whole(
    tmp_path: Path, sizes: list[int]
) -> None:
    """With direct I/O on, blobs held in memory go past the page cache in whole
    blocks, the tail through it; every size and split reads back byte for byte."""
    store = FilesystemBlobStore(tmp_path / "blobs", direct_io=True)
    pieces = [os.urandom(size) for size in sizes]
    assert store.put(KEY, pieces) == sum(sizes)
    path = tmp_path / "blobs" / KEY
    if store._direct and _direct_io_bypasses_the_page_cache(path):
        # Only the tail, written through the page cache, may be there.
        assert cached_pages(path) <= 1
    assert store.get(KEY) == b"".join(pieces)
    assert list((tmp_path / "blobs" / ".incoming").iterdir()) == []


def _direct_io_bypasses_the_page_cache(path: Path) -> bool:
    """Whether direct I/O skips the page cache on ``path``'s filesystem: on the
    disk filesystems known to (tmpfs keeps everything in memory; overlay and
    network filesystems may buffer what is written direct)."""
    fs_type = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return fs_type in ("ext2/ext3", "ext4", "xfs", "btrfs")


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_filesystem_without_direct_io_gets_the_blob_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    """Some filesystems refuse O_DIRECT, when the file is opened or at its first
    write (EINVAL; the file may already exist): the blob is written the buffered
    way, durably, and the store stops trying."""
    real_open, real_write = os.open, os.write
    direct_fds: set[int] = set()

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags & ~os.O_DIRECT, *args, **kwargs)
        if flags & os.O_DIRECT:
            if refused_at == "open":
                os.close(fd)
                raise OSError(errno.EINVAL, "Invalid argument")
            direct_fds.add(fd)
        return fd

    def refusing_write(fd: int, data: Any) -> int:
        if fd in direct_fds:
            direct_fds.discard(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "write", refusing_write)
    store = FilesystemBlobStore(tmp_path / "blobs", direct_io=True)
    assert store._direct
    data = os.urandom(100_000)
    assert store.put(KEY, [data[:1000], data[1000:]]) == len(data)
    assert not store._direct
    store.put(KEY + ".second", [data])
    monkeypatch.undo()
    assert store.get(KEY) == data
    assert store.get(KEY + ".second") == data
    assert list((tmp_path / "blobs" / ".incoming").iterdir()) == []


def test_filesystem_store_clears_incoming_on_open(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = FilesystemBlobStore(root)
    store.put(KEY, [b"kept"])
    # what a crash mid-write leaves behind
    (root / ".incoming" / "0123abcd").write_bytes(b"half a blob")
    (root / ".incoming" / "nested").mkdir()
    (root / ".incoming" / "nested" / "x").write_bytes(b"")
    reopened = FilesystemBlobStore(root)
    assert list((root / ".incoming").iterdir()) == []
    assert reopened.get(KEY) == b"kept"
    assert list(reopened.keys()) == [KEY]


def test_a_forked_writer_names_its_temporaries_apart_from_its_parent(tmp_path: Path) -> None:
    """Temporary names lead with the writer's PID (a restart keeps a live
    writer's, drops a dead one's) and never repeat, not even across a fork of a
    process that has already written."""
    root = tmp_path / "blobs"
    store = FilesystemBlobStore(root)
    parent_names = {store._temporary_names.next() for _ in range(3)}
    assert len(parent_names) == 3
    assert all(Path(n).name.startswith(f"{os.getpid()}-") for n in parent_names)
    store.put(KEY, [b"parent"])
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: write its own blob, report a name it would use
        try:
            store.put(KEY + ".child", [b"child"])
            os.write(write_end, store._temporary_names.next().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_name = pipe.read().decode()
    os.waitpid(child, 0)
    assert Path(child_name).name.startswith(f"{child}-")
    assert child_name not in parent_names
    assert store.get(KEY) == b"parent"
    assert store.get(KEY + ".child") == b"child"
    assert list((root / ".incoming").iterdir()) == []


def test_filesystem_store_refuses_a_directory_key(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    store.put("a/b", [b"x"])
    with pytest.raises(BlobStoreError):
        store.put("a", [b"y"])  # "a" is a folder
    with pytest.raises(BlobStoreError):
        store.put("a/b/c", [b"z"])  # "a/b" is a file
    assert store.get("a/b") == b"x"
    assert list((tmp_path / "blobs" / ".incoming").iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs with 64 inodes (needs root; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "tiny", "size=64k,nr_inodes=64") as mount_point:
        yield mount_point


def test_full_disk_raises_blob_store_full(tiny_tmpfs: Path) -> None:
    store = FilesystemBlobStore(tiny_tmpfs / "blobs")
    store.put("study/kept", [b"k" * 1000])
    with pytest.raises(BlobStoreFullError):
        store.put("study/too-big", [b"x" * 4096] * 64)  # 256 KiB into 64 KiB
    assert not store.exists("study/too-big")
    assert list((tiny_tmpfs / "blobs" / ".incoming").iterdir()) == []  # space given back
    assert store.get("study/kept") == b"k" * 1000
    store.put("study/small", [b"fits"])  # and the store still works
    assert store.get("study/small") == b"fits"


def test_a_put_leaves_the_space_kept_free(tmp_path: Path) -> None:
    """A quarter of a 4 MiB disk kept free: what would go below it is refused
    before a byte is written, and smaller blobs still fit."""
    with mounted_tmpfs(tmp_path / "disk", "size=4m") as disk:
        store = FilesystemBlobStore(disk / "blobs", keep_free_percent=25)
        assert store.keep_free == 1024 * 1024
        store.put("study/first", [b"a" * (2 * 1024 * 1024)])  # 2 MiB left
        with pytest.raises(BlobStoreFullError, match=r"MB left, 1\.0 MB kept free"):
            store.put("study/second", [b"b" * (1536 * 1024)])  # would leave 0.5 MiB
        assert not store.exists("study/second")
        assert list((disk / "blobs" / ".incoming").iterdir()) == []
        store.put("study/third", [b"c" * (512 * 1024)])  # leaves 1.5 MiB
        assert sorted(store.keys()) == ["study/first", "study/third"]
        store.delete("study/first")  # room again
        store.put("study/second", [b"b" * (1536 * 1024)])
        assert store.get("study/second") == b"b" * (1536 * 1024)


def test_no_inode_left_raises_blob_store_full(tiny_tmpfs: Path) -> None:
    store = FilesystemBlobStore(tiny_tmpfs / "blobs")
    store.put("existing/one", [b"1"])
    filler = tiny_tmpfs / "filler"
    filler.mkdir()
    with pytest.raises(OSError) as info:
        for n in range(1000):
            (filler / str(n)).touch()
    assert info.value.errno == errno.ENOSPC
    # a new blob file in an existing folder, and a new folder for a new study
    with pytest.raises(BlobStoreFullError):
        store.put("existing/two", [b"2"])
    with pytest.raises(BlobStoreFullError):
        store.put("new-study/one", [b"1"])
    assert sorted(store.keys()) == ["existing/one"]


def test_filesystem_store_keeps_temporaries_of_live_writers(tmp_path: Path) -> None:
    # `pacs import` may open the store while the server writes: a temporary that
    # belongs to a running process is in flight, not a leftover.
    root = tmp_path / "blobs"
    FilesystemBlobStore(root)
    in_flight = root / ".incoming" / f"{os.getppid()}-abc"
    orphan = root / ".incoming" / "999999999-def"  # no such process
    in_flight.write_bytes(b"being written")
    orphan.write_bytes(b"half a blob")
    FilesystemBlobStore(root)
    assert in_flight.exists()
    assert not orphan.exists()


# -- S3 specifics -----------------------------------------------------------------------

PART = 5 << 20  # S3's smallest multipart part


def test_s3_large_blob_goes_up_in_parts(s3_endpoint: S3Endpoint) -> None:
    store = s3_store(s3_endpoint, part_size=PART)
    data = os.urandom(2 * PART + 12345)
    uploads: list[str] = []
    urlopen = store._http.urlopen

    def recording(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        uploads.append(f"{method} {url.split('?', 1)[-1] if '?' in url else ''}")
        return urlopen(method, url, *args, **kwargs)

    store._http.urlopen = recording  # type: ignore[method-assign]
    chunks = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    assert store.put("big/blob", chunks) == len(data)
    parts = [u for u in uploads if u.startswith("PUT ") and "partNumber=" in u]
    assert len(parts) == 3, uploads
    assert any(u.startswith("POST ") and "uploads" in u for u in uploads)  # multipart started
    assert store.get("big/blob") == data
    assert store.size("big/blob") == len(data)
    # a range across a part boundary
    assert store.get_range("big/blob", PART - 10, 20) == data[PART - 10 : PART + 10]


def test_s3_a_failed_multipart_upload_leaves_nothing(s3_endpoint: S3Endpoint) -> None:
    store = s3_store(s3_endpoint, part_size=PART)

    def failing() -> Iterator[bytes]:
        yield os.urandom(PART + 1000)  # more than a part: the upload is multipart
        yield os.urandom(PART)
        raise Interrupted

    with pytest.raises(Interrupted):
        store.put("half/blob", failing())
    assert not store.exists("half/blob")
    assert list(store.keys()) == []


def test_s3_ranged_get_fetches_only_the_range(s3_endpoint: S3Endpoint) -> None:
    """A frame of a large multi-frame object is read without fetching the object."""
    store = s3_store(s3_endpoint)
    data = os.urandom(4 << 20)
    store.put("multiframe", [data])
    received: list[tuple[str | None, int]] = []
    urlopen = store._http.urlopen

    def recording(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = urlopen(method, url, *args, **kwargs)
        length = int(response.headers.get("Content-Length", -1))
        received.append(((kwargs.get("headers") or {}).get("Range"), length))
        return response

    store._http.urlopen = recording  # type: ignore[method-assign]
    assert store.get_range("multiframe", 1_000_000, 512) == data[1_000_000:1_000_512]
    assert received == [("bytes=1000000-1000511", 512)]


def test_s3_bucket_is_created_when_missing(s3_endpoint: S3Endpoint) -> None:
    bucket = new_bucket_name()
    store = s3_store(s3_endpoint, bucket)
    assert list(store.keys()) == []  # no bucket yet: no keys, no error
    assert not store.exists(KEY)
    store.put(KEY, [b"x"])
    assert store._client.bucket_exists(bucket)
    # a second store on the same bucket (another server process) sees the blob
    assert s3_store(s3_endpoint, bucket).get(KEY) == b"x"


def test_s3_refused_credentials_are_a_clear_error() -> None:
    """Keys the service does not know are refused (403): MinIO when the tests have
    one, else a moto server of its own that checks signatures."""
    given = os.environ.get("PACS_TEST_S3_ENDPOINT")
    strict = S3Endpoint().start() if given else S3Endpoint(authenticate=True).start()
    try:
        store = S3BlobStore(
            new_bucket_name(),
            endpoint=strict.endpoint,
            access_key="AKIAWRONGWRONGWRONG0",
            secret_key="not-the-secret-at-all",
            secure=False,
        )
        with pytest.raises(BlobStoreAccessError) as info:
            store.put(KEY, [b"x"])
        message = str(info.value)
        assert store.bucket in message and "refused access" in message
        assert "not-the-secret-at-all" not in message
    finally:
        strict.stop()


def test_s3_unreachable_fails_after_bounded_retries() -> None:
    store = S3BlobStore(
        "pacs-nowhere", endpoint=f"127.0.0.1:{free_port()}", secure=False, backoff=0.05
    )
    started = time.monotonic()
    for operation in (lambda: store.put(KEY, [b"x"]), lambda: store.get(KEY)):
        with pytest.raises(BlobStoreUnavailableError) as info:
            operation()
        assert "cannot be reached" in str(info.value)
    assert time.monotonic() - started < 10


def test_s3_rides_out_a_short_outage(s3_endpoint: S3Endpoint) -> None:
    """The endpoint comes back while the retries last: the call succeeds."""
    relay = TcpRelay(s3_endpoint.port)
    store = s3_store(s3_endpoint, relay=relay, attempts=6, backoff=0.2)
    starter = threading.Timer(0.3, relay.start)
    starter.start()
    try:
        store.put(KEY, [b"made it"])
        assert store.get(KEY) == b"made it"
    finally:
        starter.join()
        relay.stop()


# -- the spool in front of S3 ---------------------------------------------------------------


def spooled(tmp_path: Path, remote: BlobStore, **options: Any) -> SpooledBlobStore:
    return SpooledBlobStore(FilesystemBlobStore(tmp_path / "spool"), remote, **options)


def test_spooled_put_is_readable_at_once_and_uploaded_soon(
    tmp_path: Path, s3_endpoint: S3Endpoint
) -> None:
    remote = s3_store(s3_endpoint)
    store = spooled(tmp_path, remote)
    try:
        for n in range(20):
            store.put(f"s/{n}", [f"blob {n}".encode()])
            assert store.get(f"s/{n}") == f"blob {n}".encode()
        assert store.drain(timeout=30)
        assert store.pending() == 0
        assert list(store.spool.keys()) == []
        assert sorted(remote.keys()) == sorted(f"s/{n}" for n in range(20))
        assert all(remote.get(f"s/{n}") == f"blob {n}".encode() for n in range(20))
    finally:
        store.close()


def test_spool_holds_blobs_while_s3_is_down_and_uploads_them_after_a_restart(
    tmp_path: Path, s3_endpoint: S3Endpoint
) -> None:
    relay = TcpRelay(s3_endpoint.port)
    bucket = new_bucket_name()

    def remote() -> S3BlobStore:
        return s3_store(s3_endpoint, bucket, relay=relay, prefix="", attempts=2, backoff=0.05)

    # S3 down: puts succeed (durable in the spool) and read back from it.
    store = spooled(tmp_path, remote(), max_retry_delay=0.5)
    for n in range(10):
        store.put(f"down/{n}", [bytes([n]) * 1000])
    assert store.get("down/3") == bytes([3]) * 1000
    assert not store.drain(timeout=1)
    assert store.pending() == 10
    store.close()  # the server stops with uploads outstanding

    # Started again with S3 back: what the spool held goes up, once each.
    relay.start()
    try:
        store = spooled(tmp_path, remote())
        assert store.drain(timeout=30)
        store.close()
        direct = s3_store(s3_endpoint, bucket, prefix="")
        assert sorted(direct.keys()) == sorted(f"down/{n}" for n in range(10))
        assert direct.get("down/7") == bytes([7]) * 1000
        assert list(FilesystemBlobStore(tmp_path / "spool").keys()) == []
    finally:
        relay.stop()


def test_spool_recovers_by_itself_when_s3_returns(tmp_path: Path, s3_endpoint: S3Endpoint) -> None:
    relay = TcpRelay(s3_endpoint.port).start()
    remote = s3_store(s3_endpoint, relay=relay, attempts=2, backoff=0.05)
    store = spooled(tmp_path, remote, max_retry_delay=0.5)
    try:
        store.put("before", [b"1"])
        assert store.drain(timeout=30)
        relay.kill()
        with pytest.raises(BlobStoreUnavailableError):
            store.get("before")  # only in S3, which is unreachable
        store.put("during", [b"2"])
        assert store.get("during") == b"2"  # from the spool
        relay.start()
        assert store.drain(timeout=30)
        assert remote.get("during") == b"2" and store.get("before") == b"1"
    finally:
        store.close()
        relay.stop()


def test_spool_adopts_what_another_process_left(tmp_path: Path) -> None:
    remote = MemoryBlobStore()
    store = spooled(tmp_path, remote, sweep_interval=0.2)
    try:
        # as if written by a DICOM worker process that died before uploading
        FilesystemBlobStore(tmp_path / "spool").put("orphan/blob", [b"left behind"])
        deadline = time.monotonic() + 10
        while not remote.exists("orphan/blob") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert remote.get("orphan/blob") == b"left behind"
        assert store.drain(timeout=5) and store.pending() == 0
    finally:
        store.close()


def test_spooled_delete_removes_both_copies(tmp_path: Path) -> None:
    remote = MemoryBlobStore()
    store = spooled(tmp_path, remote)
    try:
        store.put("a", [b"1"])
        assert store.drain(timeout=5)
        store.put("b", [b"2"])
        store.delete("a")
        store.delete("b")
        assert store.drain(timeout=5)
        assert not store.exists("a") and not store.exists("b")
        assert list(remote.keys()) == [] and store.pending() == 0
    finally:
        store.close()


def test_spool_uploads_give_way_to_arriving_blobs_for_a_while(tmp_path: Path) -> None:
    remote = MemoryBlobStore()
    store = spooled(tmp_path, remote, quiet=0.5, give_way=1.0)
    try:
        started = time.monotonic()
        for n in range(5):  # a burst: nothing goes up while it lasts
            store.put(f"burst/{n}", [b"x"])
            time.sleep(0.02)
        if time.monotonic() - started < 0.4:
            assert list(remote.keys()) == []
        assert store.drain(timeout=10)  # then, after the lull, all of it
        assert sorted(remote.keys()) == [f"burst/{n}" for n in range(5)]

        # arrivals that never pause: uploads start anyway once the oldest waited 1 s
        deadline = time.monotonic() + 3
        n = 0
        while time.monotonic() < deadline and not remote.exists("steady/0"):
            store.put(f"steady/{n}", [b"y"])
            n += 1
            time.sleep(0.05)
        assert remote.exists("steady/0"), "uploads waited for a lull that never came"
        assert store.drain(timeout=10)
    finally:
        store.close()
