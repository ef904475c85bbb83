"""The `entropix-mlx` command line: a thin front over the library."""

import functools
import sys
import tomllib
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import click

from .loading import CATALOG, DEFAULT_MODEL, ModelLoadError
from .loading import catalog as catalog_lib

STRATEGY_COLORS = {"argmax": "white", "pause": "yellow", "branch": "cyan", "resample": "magenta", "adaptive": "green"}


def echo_err(message: str):
    click.echo(message, err=True)


def load_model(name: str):
    from .loading import load

    try:
        return load(name, log=echo_err)
    except ModelLoadError as e:
        raise click.ClickException(str(e)) from None


def sampler_config(info, config_file, overrides):
    """The model's preset, then the TOML file, then command-line flags; validated once."""
    from .sampling import SamplerConfig

    settings = dict(info.sampler_preset)
    if config_file:
        try:
            settings.update(tomllib.loads(Path(config_file).read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise click.ClickException(f"cannot read --config {config_file}: {e}") from None
    settings.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SamplerConfig.from_dict(settings)
    except (TypeError, ValueError) as e:
        source = f"--config {config_file} / flags" if config_file else "sampler flags"
        raise click.ClickException(f"invalid sampler settings ({source}): {e}") from None


def sampler_options(command):
    """The model and sampler options that generate and chat share."""
    options = [
        click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                     help="Catalog name, .gguf file, MLX/HF folder or Hub repo id."),
        click.option("--system", help="A system message for the chat template."),
        click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True),
        click.option("--seed", type=int, help="Random seed (same seed, same text)."),
        click.option("--sampler", type=click.Choice(["entropix", "standard", "greedy"]), default="entropix",
                     show_default=True),
        click.option("--temp", type=float, help="Base temperature (default 0.666)."),
        click.option("--top-p", type=float, help="Base top-p (default 0.9)."),
        click.option("--top-k", type=int, help="Base top-k (default 27)."),
        click.option("--min-p", type=float, help="Base min-p (default 0.03)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="A TOML file of SamplerConfig settings (overrides the model's preset)."),
        click.option("--pause-token", help='Text of the pause token (default "...").'),
        click.option("--verbose", "-v", is_flag=True, help="Speed, peak memory and strategy histogram."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


class GenerationSession:
    """A loaded model with its sampler settings, ready to stream answers."""

    def __init__(self, model, sampler, max_tokens, seed, verbose, config_file, **overrides):
        self.model, self.tokenizer, self.info = load_model(model)
        renamed = {"temp": overrides.pop("temp"), "pause_token": overrides.pop("pause_token")}
        self.config = sampler_config(self.info, config_file, {**overrides, **renamed})
        self.sampler, self.max_tokens, self.seed, self.verbose = sampler, max_tokens, seed, verbose

    def stream(self, prompt_ids, on_response):
        from .generate import GenerationError, stream_generate

        strategies = Counter()
        response = None
        try:
            for response in stream_generate(
                self.model, self.tokenizer, prompt_ids, sampler=self.sampler, config=self.config,
                max_tokens=self.max_tokens, seed=self.seed,
            ):  # fmt: skip
                strategies[response.strategy] += 1
                on_response(response)
        except (GenerationError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        if self.verbose and response is not None:
            report(response, strategies)
        return response


def report(response, strategies: Counter):
    echo_err(f"\nPrompt: {response.prompt_tokens} tokens, {response.prompt_tps:.1f} tokens/s")
    echo_err(f"Generation: {response.generation_tokens} tokens, {response.generation_tps:.1f} tokens/s")
    echo_err(f"Peak memory: {response.peak_memory:.3f} GB")
    if any(strategies):
        counts = ", ".join(f"{name} {strategies[name]}" for name in STRATEGY_COLORS if strategies[name])
        echo_err(f"Strategies: {counts}")


def styled(response, color: bool) -> str:
    if not color or response.strategy is None:
        return response.text
    return click.style(response.text, fg=STRATEGY_COLORS[response.strategy])


def color_legend() -> str:
    return "Strategies: " + " ".join(click.style(name, fg=fg) for name, fg in STRATEGY_COLORS.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="entropix-mlx")
def main():
    """Entropy-aware text generation with MLX."""


@main.group()
def models():
    """List and fetch the catalog's models."""


@models.command("list")
def models_list():
    """Show the catalog and whether each model is fetched."""
    folder = catalog_lib.models_dir()
    for name, entry in CATALOG.items():
        here = (folder / entry.filename).is_file()
        mark = "fetched" if here else "not fetched"
        default = " (default)" if name == DEFAULT_MODEL else ""
        click.echo(f"{name}{default}  [{mark}]\n    {entry.description}")
    click.echo(f"\nModels folder: {folder}")


@models.command("fetch")
@click.argument("name", default=DEFAULT_MODEL)
def models_fetch(name):
    """Download and verify a catalog model (default: the embedded one)."""
    try:
        path = catalog_lib.fetch(name, log=echo_err)
        if not catalog_lib.verify(name):
            raise ModelLoadError(f"{path} does not match its recorded sha256; delete it and fetch again")
    except ModelLoadError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{name}: {path} (sha256 verified)")


@main.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--bits", type=click.Choice(["4", "8", "none"]), default="4", show_default=True,
              help="Quantize float layers to this many bits (already quantized layers are kept).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
def convert(src, dst, bits, group_size):
    """Convert SRC (a GGUF file, a float folder, a Hub id or a catalog name) to an MLX folder DST."""
    from .loading.convert import convert as convert_model

    try:
        out = convert_model(src, dst, None if bits == "none" else int(bits), int(group_size), log=echo_err)
    except ModelLoadError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Wrote {out} (opens with entropix-mlx and with mlx_lm.load)")


@main.command()
@click.option("--prompt", "-p", required=True, help="The prompt; '-' reads it from standard input.")
@click.option("--no-chat-template", is_flag=True, help="Feed the prompt as raw text.")
@click.option("--trace", type=click.Path(dir_okay=False, writable=True),
              help="Write one JSON record per generated token (JSONL).")
@click.option("--color", is_flag=True, help="Colour each token by the strategy that chose it.")
@sampler_options
def generate(prompt, no_chat_template, trace, color, system, **options):
    """Generate a completion of a prompt, streaming it as it is made."""
    from .generate import GenerationError, encode_prompt
    from .trace import TraceWriter

    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.ClickException("the prompt is empty; pass text with --prompt (or '-' for stdin)")
    session = GenerationSession(**options)
    try:
        ids = encode_prompt(session.tokenizer, prompt, system, chat_template=not no_chat_template)
    except GenerationError as e:
        raise click.ClickException(str(e)) from None
    if color:
        echo_err(color_legend())
    with open(trace, "w", encoding="utf-8") if trace else nullcontext() as trace_file:
        writer = TraceWriter(trace_file) if trace_file else None

        def on_response(response):
            click.echo(styled(response, color), nl=False)
            sys.stdout.flush()
            if writer:
                writer.write(response)

        session.stream(ids, on_response)
    click.echo()


@main.command()
@sampler_options
def chat(system, **options):
    """An interactive chat: /reset clears the history, /quit ends; Ctrl-C stops an answer."""
    from .generate import encode_prompt

    session = GenerationSession(**options)
    history = []
    echo_err("Chat with the model. /reset clears the history, /quit (or Ctrl-D) ends.")
    while True:
        try:
            line = input(">> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if line.strip() == "/quit":
            return
        if line.strip() == "/reset":
            history = []
            echo_err("(history cleared)")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        answer = []
        try:
            session.stream(
                encode_prompt(session.tokenizer, history, system),
                lambda r: (answer.append(r.text), click.echo(r.text, nl=False), sys.stdout.flush()),
            )
        except KeyboardInterrupt:
            echo_err(" [stopped]")
        click.echo()
        history.append({"role": "assistant", "content": "".join(answer)})
