"""What differs per cached endpoint: usage fields, outputs compared, server-side state."""

from proxy.kinds import KINDS


def test_usage_comes_from_each_kinds_own_fields():
    assert KINDS["chat"].usage({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == (3, 4)
    assert KINDS["completion"].usage({"usage": {"prompt_tokens": 1}}) == (1, 0)
    assert KINDS["embedding"].usage({"usage": {"prompt_tokens": 3, "total_tokens": 3}}) == (3, 0)
    assert KINDS["response"].usage({"usage": {"input_tokens": 5, "output_tokens": 6}}) == (5, 6)
    assert KINDS["chat"].usage({"usage": None}) == (0, 0)
    assert KINDS["chat"].usage({"usage": {"prompt_tokens": True}}) == (0, 0)


def test_response_drift_compares_messages_and_function_calls():
    def answer(text: str, args: str) -> dict:
        return {
            "status": "completed",
            "output": [
                {"type": "reasoning", "id": "rs_1", "encrypted_content": "x"},
                {"type": "message", "id": "m1", "content": [{"type": "output_text", "text": text}]},
                {"type": "function_call", "id": "f1", "name": "f", "arguments": args},
            ],
        }

    kind = KINDS["response"]
    assert kind.compare(answer("a", "{}"), answer("a", "{}"), None) is None
    result = kind.compare(answer("a", "{}"), answer("b", '{"x":1}'), None)
    assert result is not None and "-a" in result.diff and '+tool_call f({"x":1})' in result.diff


def test_which_requests_kinds_count_or_keep_live():
    response, chat = KINDS["response"], KINDS["chat"]
    assert not response.stateful({"previous_response_id": "r"})
    assert not response.per_occurrence({"previous_response_id": "r"})
    assert response.stateful({"background": True})
    assert not response.stateful({"background": False, "input": "x"})
    assert response.per_occurrence({"conversation": "c"})
    assert response.per_occurrence({"conversation": {"id": "c"}})
    assert not response.per_occurrence({"conversation": None})
    assert not chat.stateful({"background": True}) and not chat.per_occurrence({"conversation": 1})
