import pytest

from proxy.store import Entry
from proxy.store.record import RecordError, decode, encode


def entry(fp, body=b'{"a":1}'):
    return Entry("k", fp, 1.5, 200, "application/json", "/v1/chat/completions", "m", 7, 3, 4,
                 body, b'{"model":"m"}')


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
        decode("k", raw[:4] + len(header).to_bytes(4, "big") + header + raw[8 + hlen:])
