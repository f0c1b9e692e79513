from proxy.keys import cache_key, canonical_body, canonical_query

IGNORE = ("stream", "stream_options", "user", "metadata", "store")


def key(body, **kw):
    args = {
        "path": "/v1/chat/completions",
        "query": "",
        "namespace": "",
        "upstream": "https://api.openai.com/v1",
    } | kw
    return cache_key(
        args["path"],
        args["query"],
        args["namespace"],
        args["upstream"],
        canonical_body(body, IGNORE),
    )


def test_key_order_and_numbers_do_not_matter():
    a = {"model": "m", "temperature": 1.0, "messages": [{"role": "user", "content": "x"}]}
    b = {"messages": [{"content": "x", "role": "user"}], "temperature": 1, "model": "m"}
    assert canonical_body(a) == canonical_body(b)
    assert key(a) == key(b)


def test_canonical_form_is_compact_and_sorted():
    assert canonical_body({"b": 1, "a": {"d": 2.0, "c": [1.5]}}) == b'{"a":{"c":[1.5],"d":2},"b":1}'


def test_ignored_fields_share_an_entry_and_others_do_not():
    base = {"model": "m", "messages": []}
    assert key(base) == key(
        base
        | {
            "stream": True,
            "user": "u1",
            "metadata": {"a": "b"},
            "store": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert key(base) != key(base | {"temperature": 0.5})
    assert key(base) != key(base | {"seed": 1})


def test_every_selector_changes_the_key():
    body = {"model": "m"}
    k = key(body)
    assert k != key(body, path="/v1/completions")
    assert k != key(body, query="api-version=1")
    assert k != key(body, namespace="team-a")
    assert k != key(body, upstream="http://localhost:8000/v1")
    assert k == key(body, upstream="https://api.openai.com/v1/")


def test_query_order_does_not_matter():
    assert canonical_query("b=2&a=1") == canonical_query("a=1&b=2")


def test_huge_and_fractional_floats_are_kept_apart():
    assert canonical_body({"x": 1e300}) != canonical_body({"x": 1e299})
    assert canonical_body({"x": 0.1}) != canonical_body({"x": 0.10000001})


def test_too_deep_bodies_are_a_400():
    import pytest

    from proxy.errors import ProxyError

    deep: dict = {"a": 1}
    for _ in range(300):
        deep = {"a": deep}
    with pytest.raises(ProxyError) as err:
        canonical_body({"model": "m", "x": deep})
    assert err.value.status == 400
