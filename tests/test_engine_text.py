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
