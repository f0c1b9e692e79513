"""Issue 18, item 8 (paths): encoded dot segments and backslashes are refused like ``..``
and never reach the upstream."""

from __future__ import annotations

import pytest

from tests.harness import http

CLIMBS = [
    "/v1/files/..%2f..%2fadmin",
    "/v1/files/%2e%2e%2fadmin",
    "/v1/files/%2E%2E/admin",
    "/v1/files/..%5cadmin",
    "/v1/files/..\\admin",
    "/v1/files/x%2f..%2f..%2fadmin",
]


@pytest.mark.parametrize("path", CLIMBS)
def test_encoded_dot_segments_are_refused(proxy, upstream, path):
    status, _, body = http(proxy.url, "GET", path)
    assert status == 400 and b"invalid_path" in body, body
    assert upstream.call_count == 0


def test_an_ordinary_path_with_dots_in_names_passes(proxy, upstream):
    status, _, _ = http(proxy.url, "GET", "/v1/files/file..name.jsonl")
    assert status != 400
    assert upstream.call_count == 1
