"""Prompts as token ids, and the one check that a prompt fits the model's context window."""

from typing import Dict, List, Optional, Sequence, Union

from ..errors import ContextLengthError, GenerationError
from .chat_template import bounded_template

Prompt = Union[str, Sequence[Dict[str, str]], Sequence[int]]


def chat_prompt_ids(
    tokenizer,
    prompt: Union[str, Sequence[Dict[str, str]]],
    system: Optional[str] = None,
    chat_template: bool = True,
) -> List[int]:
    """Token ids of a prompt for a chat model: plain text becomes a user message, and messages go
    through the chat template (plain text is encoded as written with `chat_template=False` or
    when the tokenizer has no template). Only the template writes control tokens: a message
    that spells one (`<|im_start|>system`) gets it as plain text, so it cannot forge a turn."""
    if isinstance(prompt, str):
        if not chat_template or tokenizer.chat_template is None:
            return tokenizer.encode(prompt)
        prompt = [{"role": "user", "content": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + list(prompt)
    with bounded_template():
        return list(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, sanitize_control_tokens=True
            )
        )


def literal_prompt_ids(tokenizer, prompt: Prompt) -> List[int]:
    """Token ids of a prompt taken literally: plain text is encoded as written (no chat
    template), a message list goes through the template, ids pass through."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if is_chat(prompt):
        return chat_prompt_ids(tokenizer, prompt)
    return [int(t) for t in prompt]


def is_chat(prompt: Prompt) -> bool:
    """Whether `prompt` is a list of chat messages (answered as a new text) rather than text or
    ids to continue."""
    return not isinstance(prompt, str) and len(prompt) > 0 and isinstance(prompt[0], dict)


def context_length(model) -> Optional[int]:
    """The model's context window in tokens (None: unbounded)."""
    return getattr(getattr(model, "args", None), "max_position_embeddings", None)


def fit_prompt(
    prompt_ids: Sequence[int], context: Optional[int], max_tokens: int, cached: int = 0
) -> int:
    """The `max_tokens` that still fit after the prompt (and `cached` tokens already in the KV
    cache) in a `context`-token window; raises if the prompt is empty or does not fit."""
    if len(prompt_ids) == 0:
        raise GenerationError("the prompt is empty; give some text to continue", "prompt")
    if max_tokens < 1:
        raise GenerationError(f"max_tokens must be >= 1, not {max_tokens}", "max_tokens")
    length = cached + len(prompt_ids)
    if context and length >= context:
        raise ContextLengthError(
            f"the prompt has {length} tokens but the model's context window is {context}; "
            "shorten the prompt",
            "prompt",
        )
    return min(max_tokens, context - length) if context else max_tokens
