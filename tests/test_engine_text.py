"""engine.text: stop strings, the streaming text of one row and why it ended."""

from entropix_mlx.engine.text import EOS, MAX_TOKENS, STOP_STRING, RowText, StopMatcher, row_end


def test_stop_matcher_holds_back_a_partial_stop_and_cuts_at_the_first():
    stops = StopMatcher(["END", "\n\n"])
    assert stops.feed("Hello E") == ("Hello ", False)  # "E" may begin "END"
    assert stops.feed("x") == ("Ex", False)
    assert stops.feed("ok\n") == ("ok", False)
    assert stops.feed("\nmore") == ("", True)
    assert StopMatcher(["END"]).feed("aENDbEND") == ("a", True)
    tail = StopMatcher(["END"])
    assert tail.feed("abEN") == ("ab", False) and tail.flush() == "EN"
    assert StopMatcher([]).feed("anything") == ("anything", False)


def test_answers_are_cut_at_the_first_stop_string():
    assert StopMatcher(("\n",)).feed(" 12\nfoo") == (" 12", True)
    assert StopMatcher(("\n\n", "Question:")).feed("a Question: b\n\n") == ("a ", True)
    assert StopMatcher(("\n",)).feed("abc") == ("abc", False)


class Letters:
    """A tokenizer whose token i is chr(i), with mlx-lm's streaming detokenizer."""

    def __init__(self):
        from mlx_lm.tokenizer_utils import NaiveStreamingDetokenizer

        self.detokenizer_class = NaiveStreamingDetokenizer

    def decode(self, ids):
        return "".join(map(chr, ids))

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    @property
    def detokenizer(self):
        return self.detokenizer_class(self)


def feed(tokens, ends, stops=()):
    text = RowText(Letters(), stops)
    return [text.add(ord(t), end) for t, end in zip(tokens, ends)], text


def test_row_end_is_eos_then_max_tokens():
    assert row_end(2, {2}, 5, 5) == EOS
    assert row_end(3, {2}, 5, 5) == MAX_TOKENS
    assert row_end(3, {2}, 4, 5) is None


def test_row_text_streams_and_reports_why_it_ended():
    steps, text = feed("abc", [None, None, MAX_TOKENS])
    assert "".join(t for t, _ in steps) == "abc" and steps[-1][1] == MAX_TOKENS
    assert text.finish_reason == "length"


def test_row_text_leaves_out_the_eos_token():
    steps, text = feed("ab$", [None, None, EOS])
    assert "".join(t for t, _ in steps) == "ab" and text.end == EOS
    assert text.finish_reason == "stop"


def test_row_text_cuts_before_a_stop_string_though_the_row_goes_on():
    steps, text = feed("abXY", [None] * 4, stops=("XY",))
    assert [end for _, end in steps] == [None, None, None, STOP_STRING]
    assert "".join(t for t, _ in steps) == "ab"
    assert text.finish_reason == "stop"


def test_row_text_flushes_a_held_back_tail_at_the_end():
    steps, _ = feed("abX", [None, None, MAX_TOKENS], stops=("XY",))
    assert "".join(t for t, _ in steps) == "abX"


def continuation(tokenizer, prompt_ids, ids, **kwargs) -> str:
    text = RowText(tokenizer, context=prompt_ids, **kwargs)
    ends = [None] * (len(ids) - 1) + [MAX_TOKENS]
    return "".join(text.add(token, end)[0] for token, end in zip(ids, ends))


def exact_continuation(tokenizer, prompt_ids, ids) -> str:
    """What `ids` decode to after the prompt: what a client gets by appending the text to it."""
    return tokenizer.decode(prompt_ids + ids)[len(tokenizer.decode(prompt_ids)) :]


def test_a_continuation_is_exactly_what_its_tokens_decode_to_after_the_prompt(tiny):
    tokenizer = tiny[1]
    for prompt, answer in [
        ("1, 2, 3,", " 4, 5,"),  # a leading space, which the detokenizer drops at a text's start
        ("the", " tea"),  # "Ġt" is one token
        ("caf\u00e9", "\u00e8!"),  # two-byte characters: the primer ends inside no character
        ("x", "\n y"),
    ]:
        prompt_ids, ids = tokenizer.encode(prompt), tokenizer.encode(answer)
        assert continuation(tokenizer, prompt_ids, ids) == answer
        assert exact_continuation(tokenizer, prompt_ids, ids) == answer
    # A text of its own (a chat answer) keeps the detokenizer's start-of-text rule.
    assert continuation(tokenizer, [], tokenizer.encode(" 4, 5,")) == "4, 5,"


def test_a_continuation_still_stops_at_a_stop_string(tiny):
    tokenizer = tiny[1]
    ids = tokenizer.encode(" 4, 5, 6")
    assert continuation(tokenizer, tokenizer.encode("3,"), ids, stops=(", 6",)) == " 4, 5"


def scripted(tokenizer, script: str, after: int):
    """A sampler step that writes `script` (then EOS) after the token `after`, whatever the
    logits: each next token is a function of the previous one."""
    import mlx.core as mx

    ids = tokenizer.encode(script)
    table = [min(tokenizer.eos_token_ids)] * 512
    for prev, token in zip([after] + ids, ids):
        table[prev] = token
    table = mx.array(table)

    def step(logits, scores, prev, key):
        token = table[prev].astype(mx.int32)
        return token, mx.full(token.shape, -1, dtype=mx.int32), {}

    step.reads_scores = False
    return step


def test_stream_generate_continues_raw_text_exactly_and_answers_chat_as_before(tiny):
    from entropix_mlx.engine.prompt import chat_prompt_ids
    from entropix_mlx.generate import stream_batch_generate, stream_generate

    model, tokenizer, _ = tiny
    prompt = "1, 2, 3,"
    prompt_ids = tokenizer.encode(prompt)
    sampler = scripted(tokenizer, " tea!", after=prompt_ids[-1])
    responses = list(stream_generate(model, tokenizer, prompt, sampler=sampler, max_tokens=9))
    assert "".join(r.text for r in responses) == " tea!"
    assert responses[-1].finish_reason == "stop"
    batch = stream_batch_generate(model, tokenizer, [prompt, prompt_ids], sampler=sampler)
    texts = ["", ""]
    for r in batch:
        texts[r.index] += r.text
    assert texts == [" tea!", " tea!"]
    # A chat answer is a text of its own: the detokenizer drops its leading space, as before.
    messages = [{"role": "user", "content": "hi"}]
    chat_sampler = scripted(tokenizer, " tea!", after=chat_prompt_ids(tokenizer, messages)[-1])
    chat = stream_generate(model, tokenizer, messages, sampler=chat_sampler, max_tokens=9)
    assert "".join(r.text for r in chat) == "tea!"
