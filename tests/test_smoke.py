from tests.harness import FAKE_KEY

MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_second_call_hits(client, upstream):
    first = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    second = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert len(upstream.chat_calls) == 1
    assert upstream.chat_calls[0].headers["Authorization"] == f"Bearer {FAKE_KEY}"
