"""generate and chat: a loaded model with its sampler settings, streamed to the terminal."""

import io
import re
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import click

from .. import cpu_blas
from ..errors import GenerationError
from ..files import read_limited
from .options import BATCH_ROWS, load_model, model_path, sampler_config, sampler_options
from .output import check_output_file, check_utf8, echo_err

CHAT_PROMPT_CACHE_BYTES = 256 * 2**20  # the conversation's KV states, kept between turns
CHAT_COMMANDS = {
    "/help": "list these commands",
    "/reset": "clear the conversation's history",
    "/quit": "end the chat (so does Ctrl-D); Ctrl-C stops an answer, not the chat",
}
CHAT_COMMAND = re.compile(r"/[A-Za-z]+")  # a line that is one such word is never a prompt
STRATEGY_COLORS = {
    "argmax": "white",
    "pause": "yellow",
    "branch": "cyan",
    "resample": "magenta",
    "adaptive": "green",
}


class GenerationSession:
    """A loaded model with its sampler settings, ready to stream answers."""

    def __init__(
        self, model, sampler, max_tokens, seed, verbose, config_file, cpu_dtype, **overrides
    ):
        from ..engine.seeds import check_seed

        check_seed(seed)  # before the slow load
        self.model, self.tokenizer, self.info = load_model(model, cpu_dtype)
        if verbose:
            echo_err(
                f"{cpu_blas.STATUS.describe()}\nWeights: {self.info.weight_dtype} "
                f"(stored as {self.info.quantization})"
            )
        renamed = {"temp": overrides.pop("temp"), "pause_token": overrides.pop("pause_token")}
        self.config = sampler_config(
            self.info.sampler_preset, config_file, {**overrides, **renamed}
        )
        self.sampler, self.max_tokens, self.seed, self.verbose = sampler, max_tokens, seed, verbose

    def stream(self, prompt_ids, on_response, prompt_cache=None):
        """Stream one answer; with a PromptCache, only the tokens it does not hold are prefilled,
        and the answer's state is kept there for the next turn."""
        from ..generate import stream_generate

        prompt_cache = (
            None if self.config.branch_k else prompt_cache
        )  # look-ahead keeps its own rows
        cache, rest = prompt_cache.fetch(prompt_ids) if prompt_cache else (None, prompt_ids)
        strategies, tokens = Counter(), list(prompt_ids)
        response = None
        for response in stream_generate(
            self.model,
            self.tokenizer,
            rest,
            sampler=self.sampler,
            config=self.config,
            max_tokens=self.max_tokens,
            seed=self.seed,
            prompt_cache=cache,
        ):
            strategies[response.strategy] += 1
            tokens.append(response.token)
            on_response(response)
        if prompt_cache:
            prompt_cache.store(tokens, cache)
        if self.verbose and response is not None:
            report(response, strategies)
        return response

    def stream_rows(self, prompt_ids, n):
        """`n` completions of one prompt, decoded as rows of one batch: the rows' responses
        interleaved as they come (`response.index` is the row)."""
        from ..generate import stream_batch_generate

        strategies = Counter()
        for response in stream_batch_generate(
            self.model,
            self.tokenizer,
            [prompt_ids] * n,
            sampler=self.sampler,
            config=self.config,
            max_tokens=self.max_tokens,
            seed=self.seed,
        ):
            strategies[response.strategy] += 1
            yield response
        if self.verbose:
            report(response, strategies)


def report(response, strategies: Counter):
    echo_err(f"\nPrompt: {response.prompt_tokens} tokens, {response.prompt_tps:.1f} tokens/s")
    echo_err(
        f"Generation: {response.generation_tokens} tokens, {response.generation_tps:.1f} tokens/s"
    )
    echo_err(f"Peak memory: {response.peak_memory:.3f} GB")
    if any(strategies):
        counts = ", ".join(
            f"{name} {strategies[name]}" for name in STRATEGY_COLORS if strategies[name]
        )
        echo_err(f"Strategies: {counts}")


def show(responses, color: bool):
    """The responses' text on stdout; with --color, coloured by strategy even when piped."""
    text = "".join(
        click.style(r.text, fg=STRATEGY_COLORS[r.strategy]) if color and r.strategy else r.text
        for r in responses
    )
    click.echo(text, nl=False, color=color or None)


def color_legend() -> str:
    return "Strategies: " + " ".join(
        click.style(name, fg=fg) for name, fg in STRATEGY_COLORS.items()
    )


def show_in_row_order(responses, n: int, color: bool):
    """Print `n` interleaved rows one after another, each under its header: the first unfinished
    row streams as it is made, a later row's text waits until the rows before it are done."""
    waiting, done, shown = [[] for _ in range(n)], set(), 0
    click.echo(f"--- completion 1 of {n} ---")
    for response in responses:
        if response.index == shown:
            show([response], color)
        else:
            waiting[response.index].append(response)
        if response.finish_reason:
            done.add(response.index)
        while shown in done:
            click.echo()
            shown += 1
            if shown < n:
                click.echo(f"\n--- completion {shown + 1} of {n} ---")
                show(waiting[shown], color)


@click.command()
@click.option("--prompt", "-p", required=True, help="The prompt; '-' reads it from standard input.")
@click.option("--no-chat-template", is_flag=True, help="Feed the prompt as raw text.")
@click.option(
    "--trace",
    type=click.Path(dir_okay=False, writable=True),
    help="Write one JSON record per generated token (JSONL).",
)
@click.option(
    "--color",
    is_flag=True,
    help="Colour each token by the strategy that chose it (also when piped, e.g. to less -R).",
)
@click.option(
    "-n",
    "completions",
    type=BATCH_ROWS,
    default=1,
    show_default=True,
    help="Print this many completions, in turn (rows of one batch; row i is seeded with "
    "--seed + i).",
)
@sampler_options
def generate(prompt, no_chat_template, trace, color, completions, system, **options):
    """Generate a completion of a prompt, streaming it as it is made."""
    from ..engine.prompt import chat_prompt_ids
    from ..trace import TraceWriter

    if completions > 1 and trace:
        raise click.ClickException("--trace records one completion; use it without -n")
    if trace:
        inputs = [
            ("the model", model_path(options["model"])),
            ("--config", options["config_file"]),
            ("the prompt's standard input", "/dev/stdin" if prompt == "-" else None),
        ]
        check_output_file(Path(trace), "--trace", inputs)
    prompt = read_prompt(prompt)
    session = GenerationSession(**options)
    ids = chat_prompt_ids(session.tokenizer, prompt, system, chat_template=not no_chat_template)
    if color:
        echo_err(color_legend(), color=True)
    if completions > 1:
        show_in_row_order(session.stream_rows(ids, completions), completions, color)
        return
    with TraceWriter(trace) if trace else nullcontext() as writer:

        def on_response(response):
            show([response], color)
            if writer:
                writer.write(response)

        session.stream(ids, on_response)
    click.echo()


def read_prompt(prompt: str) -> str:
    """The --prompt text ('-' reads standard input), checked to be UTF-8 and not blank."""
    if prompt == "-":
        data = read_limited(sys.stdin.buffer, "the prompt on standard input")
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise click.ClickException(
                f"the prompt on standard input is not UTF-8 (byte 0x{data[e.start]:02x} at offset "
                f"{e.start}); convert it to UTF-8"
            ) from None
    check_utf8(prompt, "--prompt")
    if not prompt.strip():
        raise click.ClickException(
            "the prompt is empty; pass text with --prompt (or '-' for stdin)"
        )
    return prompt


@click.command()
@sampler_options
def chat(system, **options):
    """An interactive chat: /help lists its commands, /reset clears the history, /quit ends;
    Ctrl-C stops an answer."""
    from ..engine.prompt import chat_prompt_ids
    from ..engine.prompt_cache import PromptCache

    session = GenerationSession(**options)
    prompt_cache = PromptCache(session.model, CHAT_PROMPT_CACHE_BYTES)
    history = []
    if isinstance(sys.stdin, io.TextIOWrapper):  # a line that is not UTF-8 is refused, not fatal
        sys.stdin.reconfigure(errors="surrogateescape")
    echo_err("Chat with the model. /help lists the commands, /quit (or Ctrl-D) ends.")
    while True:
        try:
            line = input(">> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        try:
            check_utf8(line, "that line")
        except click.ClickException as e:
            echo_err(e.format_message())
            continue
        command = line.strip()
        if command == "/quit":
            return
        if command == "/reset":
            history = []
            echo_err("(history cleared)")
            continue
        if command == "/help":
            echo_err("\n".join(f"{name:<7} {what}" for name, what in CHAT_COMMANDS.items()))
            continue
        if CHAT_COMMAND.fullmatch(command):
            echo_err(f"unknown command {command}; /help lists the commands")
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        answer = []
        try:
            session.stream(
                chat_prompt_ids(session.tokenizer, history, system),
                lambda r: (answer.append(r.text), click.echo(r.text, nl=False)),
                prompt_cache,
            )
        except KeyboardInterrupt:
            echo_err(" [stopped]")
        except GenerationError as e:  # the template refused it, or it outgrew the context
            history.pop()
            echo_err(f"{e} (the message was not kept; /reset clears the history)")
            continue
        click.echo()
        history.append({"role": "assistant", "content": "".join(answer)})
