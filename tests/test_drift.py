from proxy.drift import compare as compare_outputs
from proxy.drift import outputs


def compare(a, b):
    return compare_outputs(outputs(a), outputs(b))


def completion(content=None, tool_args=None, finish="stop", **extra):
    message = {"role": "assistant", "content": content}
    if tool_args is not None:
        message["tool_calls"] = [
            {
                "id": "call_x",
                "type": "function",
                "function": {"name": "weather", "arguments": tool_args},
            }
        ]
    return {
        "id": extra.get("id", "a"),
        "created": extra.get("created", 1),
        "usage": extra.get("usage", {"total_tokens": 1}),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def test_ids_timestamps_and_usage_are_ignored():
    a = completion("same", id="x", created=1, usage={"total_tokens": 3})
    b = completion("same", id="y", created=2, usage={"total_tokens": 9})
    assert compare(a, b) is None


def test_content_difference_gives_ratio_and_diff():
    result = compare(completion("one\ntwo"), completion("one\nthree"))
    assert result is not None
    assert 0 < result.similarity < 1
    assert "-two" in result.diff and "+three" in result.diff


def test_tool_call_arguments_and_finish_reason_count():
    assert (
        compare(completion(tool_args='{"city":"Paris"}'), completion(tool_args='{"city":"Rome"}'))
        is not None
    )
    assert compare(completion("x", finish="stop"), completion("x", finish="length")) is not None


def test_choices_are_compared_by_index():
    a = {
        "choices": [
            {"index": 1, "message": {"content": "b"}},
            {"index": 0, "message": {"content": "a"}},
        ]
    }
    b = {
        "choices": [
            {"index": 0, "message": {"content": "a"}},
            {"index": 1, "message": {"content": "b"}},
        ]
    }
    assert compare(a, b) is None
    assert [o["content"] for o in outputs(a)] == ["a", "b"]


def test_refusal_counts():
    a = {"choices": [{"index": 0, "message": {"content": None, "refusal": "no"}}]}
    b = {"choices": [{"index": 0, "message": {"content": None, "refusal": "never"}}]}
    assert "refusal" in compare(a, b).diff
