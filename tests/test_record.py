import pytest

from proxy.store import Entry
from proxy.store.hot import SEEN, HotRecords
from proxy.store.record import RecordError, decode, encode

pytestmark = pytest.mark.every_store


def entry(fp, body=b'{"a":1}'):
    return Entry(
        "k",
        fp,
        1.5,
        200,
        "application/json",
        "/v1/chat/completions",
        "m",
        7,
        3,
        4,
        body,
        b'{"model":"m"}',
    )


def test_round_trip_keeps_bytes_exactly():
    entries = [entry("fp_a", b'{"x": "\xc3\xa9"}'), entry(None, b"")]
    assert decode("k", encode(entries)) == entries


@pytest.mark.parametrize("cut", [1, 5, 10, 40])
def test_truncated_records_are_refused(cut):
    raw = encode([entry("fp_a")])
    with pytest.raises(RecordError):
        decode("k", raw[:-cut])


def test_garbage_is_refused():
    with pytest.raises(RecordError):
        decode("k", b"not a record at all")


@pytest.mark.parametrize("header", [b"{}", b"[1]", b"[[1, 2]]", b'"x"'])
def test_headers_of_the_wrong_shape_are_refused(header):
    raw = encode([entry("fp_a")])
    hlen = int.from_bytes(raw[4:8], "big")
    with pytest.raises(RecordError):
        decode("k", raw[:4] + len(header).to_bytes(4, "big") + header + raw[8 + hlen :])


def test_hot_records_are_forgotten_when_the_version_changes():
    hot = HotRecords(limit=16 * 100)
    assert hot.get("k", 1) is None
    kept = [entry("fp_a")]
    hot.put("k", kept, 100)
    assert hot.get("k", 1) is kept
    assert hot.get("k", 2) is None  # something was committed since: all of it goes
    assert hot.get("k", 2) is None


def test_hot_records_keep_a_key_from_its_second_read():
    hot = HotRecords(limit=16 * 100)
    assert hot.first_read("k") and not hot.first_read("k")
    hot.put("k", [entry("fp_a")], 100)
    assert not hot.first_read("k")
    assert all(hot.first_read(f"other{i}") for i in range(SEEN))  # "k" is held, not seen
    assert not hot.first_read("k")
    hot.get("k", 2)  # a commit: "k" must be read once more before it is kept again
    assert hot.first_read("k")
    assert hot.first_read("other0")  # the oldest of the keys read once was forgotten


def test_hot_records_keep_to_their_byte_limit_dropping_the_oldest():
    hot = HotRecords(limit=16 * 100)
    hot.get("k0", 1)
    for i in range(20):
        hot.put(f"k{i}", [entry("fp_a")], 100)
    assert [k for k in (f"k{i}" for i in range(20)) if hot.get(k, 1)] == [
        f"k{i}" for i in range(4, 20)
    ]
    hot.put("k19", [entry("fp_b")], 100)  # stored again: counted once
    hot.put("big", [entry("fp_a")], 101)  # over a sixteenth of the limit: not kept
    assert hot.get("big", 1) is None and hot.get("k4", 1) is not None
