"""The bound on a model's chat template: its code is stopped when it runs too long, and what it
raises becomes one GenerationError; everything else in the block runs as usual."""

import sys
import time

import pytest

from entropix_mlx.engine.chat_template import bounded_template
from entropix_mlx.errors import GenerationError

MESSAGES = [{"role": "user", "content": "hi"}]


def render(tokenizer, template: str, seconds=None) -> str:
    with bounded_template(seconds):
        return tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)


def test_a_long_but_finite_template_renders_as_without_the_bound(tiny):
    tokenizer = tiny[1]
    template = "{% for i in range(20000) %}{% endfor %}{{ messages[0]['content'] }}!"
    assert render(tokenizer, template) == "hi!"
    assert tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False) == "hi!"


def test_the_bound_counts_the_templates_own_time_only(tiny):
    with bounded_template(0.05):
        time.sleep(0.2)  # not template code
        text = tiny[1].apply_chat_template(MESSAGES, chat_template="{{ 'ok' }}", tokenize=False)
    assert text == "ok"
    with pytest.raises(GenerationError, match=r"ran for over 0\.05 s and was stopped") as error:
        render(
            tiny[1],
            "{% for i in range(100000) %}{% for j in range(300) %}{% endfor %}{% endfor %}",
            0.05,
        )
    assert error.value.param == "messages"


def test_other_errors_pass_through_and_the_trace_function_is_restored():
    def tracer(frame, event, arg):
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyError), bounded_template():
            {}["not template code"]
        assert sys.gettrace() is tracer
        with pytest.raises(GenerationError), bounded_template():
            import jinja2

            raise jinja2.TemplateError("from a template")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
