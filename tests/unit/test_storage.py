"""Local locations behave like the S3 ones: relative paths, atomic writes, listing."""

from __future__ import annotations

import pytest

from contract.errors import InputError
from contract.storage import LocalLocation, S3Location, open_location


def test_uri_forms():
    assert isinstance(open_location("s3://bucket/a/b"), S3Location)
    s3 = open_location("s3://bucket/a/b/")
    assert (s3.bucket, s3.prefix, s3.uri) == ("bucket", "a/b", "s3://bucket/a/b")
    assert s3.child("m", "3").uri == "s3://bucket/a/b/m/3"
    assert open_location("s3://bucket").child("x").uri == "s3://bucket/x"
    assert isinstance(open_location("file:///tmp/x"), LocalLocation)
    assert open_location("file:///tmp/x").uri == "/tmp/x"
    with pytest.raises(InputError, match="unsupported location scheme 'gs'"):
        open_location("gs://bucket/x")
    with pytest.raises(InputError, match="no bucket"):
        open_location("s3:///x")


def test_local_write_read_list(tmp_path):
    loc = open_location(str(tmp_path / "root"))
    assert loc.is_empty() and loc.list_files() == []
    loc.write_bytes("a/b.bin", b"123")
    loc.write_bytes("c.bin", b"")
    assert loc.read_bytes("a/b.bin") == b"123"
    assert [(e.path, e.size) for e in loc.list_files()] == [("a/b.bin", 3), ("c.bin", 0)]
    assert loc.list_dirs() == ["a"]
    assert loc.exists("c.bin") and not loc.exists("d.bin")
    assert list(loc.read_many(["c.bin", "nope"])) == [("c.bin", b""), ("nope", None)]
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["a", "c.bin"]
    loc.delete(["c.bin", "never-existed"])
    assert not loc.exists("c.bin")


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../../x", "", "a//b"])
def test_paths_cannot_escape_the_location(tmp_path, bad):
    with pytest.raises(InputError, match="invalid relative path"):
        open_location(str(tmp_path)).read_bytes(bad)


def test_read_many_reads_a_bounded_number_ahead_of_a_slow_consumer(tmp_path):
    """Memory of a streaming pass stays bounded: however many files, read_many holds at
    most READ_AHEAD of them beyond what its consumer has taken."""
    import threading
    import time

    from contract.storage import READ_AHEAD

    class Counting(LocalLocation):
        started = 0
        lock = threading.Lock()

        def read_bytes(self, path, limit=None):
            with Counting.lock:
                Counting.started += 1
            return super().read_bytes(path, limit)

    loc = Counting(tmp_path)
    paths = [f"f{i:04d}" for i in range(READ_AHEAD * 4)]
    for p in paths:
        loc.write_bytes(p, p.encode())
    ahead = []
    for taken, (path, data) in enumerate(loc.read_many(iter(paths)), start=1):
        assert data == path.encode()  # in order
        time.sleep(0.001)  # a consumer slower than the readers
        ahead.append(Counting.started - taken)
    assert max(ahead) <= READ_AHEAD
    assert Counting.started == len(paths)
