import pytest

from proxy.drift import Divergence, divergence, outputs, shared_prefix, text
from proxy.drift import compare as compare_outputs

pytestmark = pytest.mark.every_store


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


@pytest.mark.parametrize(
    ("a", "b", "chars", "words"),
    [
        ("The cat sat", "The car sat", 7, 2),  # inside word 2
        ("abc", "abcd", 4, 1),  # b goes on with word 1
        ("abc", "abc def", 4, 2),  # word 1 finished in both: word 2 differs
        ("abc def", "abc\tdef", 4, 2),  # the whitespace after word 1 counts for word 2
        ("The ", "The cat", 5, 2),
        ("", "x", 1, 1),
        ("x", "y", 1, 1),
        ("  a b", "  a c", 5, 2),  # leading whitespace is no word
        ("数学很有趣", "数学很无聊", 4, 1),  # characters, not bytes
    ],
)
def test_divergence_positions(a, b, chars, words):
    for x, y in ((a, b), (b, a)):  # symmetric
        found = divergence(x, y)
        assert found == Divergence(chars, words, chars - 1)
        assert found.fields() == {
            "divergence_chars": chars,
            "divergence_words": words,
            "shared_prefix_chars": chars - 1,
        }


def test_equal_texts_have_no_divergence():
    assert divergence("same", "same") is None
    assert divergence("", "") is None


def test_shared_prefix_across_blocks():
    base = "word " * 5000  # 25,000 characters: several comparison blocks
    for at in (0, 4095, 4096, 4097, 12_345, len(base) - 1):
        other = base[:at] + "#" + base[at + 1 :]
        assert shared_prefix(base, other) == at
        assert divergence(base, other).words == at // 5 + 1  # "word " is 5 characters
    assert shared_prefix(base, base + "x") == len(base)


def test_text_is_what_the_model_wrote():
    outs = outputs(completion("hello", tool_args='{"city":"Paris"}'))
    assert text(outs) == 'hello\nweather({"city":"Paris"})'
    assert divergence(
        text(outputs(completion("hi there"))), text(outputs(completion("hi you")))
    ) == (Divergence(4, 2, 3))


def test_a_comparison_says_where_outputs_first_differ_and_a_report_shows_a_short_diff():
    from proxy import drift

    def answer(*lines: str) -> dict[str, object]:
        content = "\n".join(lines)
        return {"choices": [{"index": 0, "message": {"content": content}, "finish_reason": "stop"}]}

    same = [f"line {i}" for i in range(100)]
    result = drift.compare(
        drift.outputs(answer(*same)), drift.outputs(answer(*same[:50], "changed", *same[51:]))
    )
    assert result is not None and result.path == "outputs[0].content"
    short = drift.short_diff(result.diff)
    assert short.splitlines() == [
        "--- cached",
        "+++ live",
        "…",
        " line 49",
        "-line 50",
        "+changed",
        " line 51",
        "…",
    ]
    huge = drift.compare(
        drift.outputs(answer(*(f"a{i}" * 500 for i in range(50)))),
        drift.outputs(answer(*(f"b{i}" * 500 for i in range(50)))),
    )
    assert huge is not None
    capped = drift.short_diff(huge.diff)
    assert len(capped) <= drift.SHORT_CHARS + 100 and len(capped.splitlines()) <= 14
