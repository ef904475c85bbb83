"""The `entropix-mlx` command line: a thin front over the library."""

import contextlib
import functools
import os
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import click

from . import cpu_blas
from .batch import MAX_BATCH_SIZE
from .errors import ConfigError, EntropixError, EvalError
from .loading import CATALOG, CPU_DTYPES, DEFAULT_MODEL
from .loading import catalog as catalog_lib
from .sampling import SAMPLERS

CHAT_PROMPT_CACHE_BYTES = 256 * 2**20  # the conversation's KV states, kept between turns
STRATEGY_COLORS = {
    "argmax": "white",
    "pause": "yellow",
    "branch": "cyan",
    "resample": "magenta",
    "adaptive": "green",
}


def echo_err(message: str):
    if is_rank0():
        click.echo(message, err=True)


@functools.cache
def is_rank0() -> bool:
    """False on the follower ranks of an `mlx.launch` job, which print nothing but errors."""
    from .distributed import world

    return world().rank() == 0


CPU_DTYPE_HELP = (
    "CPU backend weights: auto = float32 when the system OpenBLAS is loaded and "
    "they fit the memory budget (README, 'Linux CPU'); or float32, or quantized."
)


def load_model(name: str, cpu_dtype: str = "auto"):
    from .loading import load

    return load(name, log=echo_err, cpu_dtype=cpu_dtype)


def check_output_folder(path: Path, option: str):
    """Fail before any long work if `path` cannot be written for want of its folder."""
    if not path.resolve().parent.is_dir():
        raise click.ClickException(f"cannot write {option} {path}: its folder does not exist")


def write_output(path: Path, text: str, option: str):
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot write {option} {path}: {e.strerror or e}") from None


def sampler_config(preset: dict, config_file, overrides):
    """The model's preset, then --config, then flags (`SamplerConfig.merged`), errors naming them."""
    from .sampling import SamplerConfig

    try:
        return SamplerConfig.merged(preset, config_file, overrides)
    except ConfigError as e:
        source = f"--config {config_file} / flags" if config_file else "sampler flags"
        raise ConfigError(f"invalid sampler settings ({source}): {e}") from None


MODEL_HELP = "Catalog name, .gguf file, MLX/HF folder or Hub repo id"


def model_option(help: str = MODEL_HELP + "."):
    return click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help=help)


cpu_dtype_option = click.option(
    "--cpu-dtype",
    type=click.Choice(CPU_DTYPES),
    default="auto",
    show_default=True,
    help=CPU_DTYPE_HELP,
)


def sampler_options(command):
    """The model and sampler options that generate and chat share."""
    options = [
        model_option(),
        click.option("--system", help="A system message for the chat template."),
        click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True),
        click.option("--seed", type=int, help="Random seed (same seed, same text)."),
        click.option(
            "--sampler", type=click.Choice(SAMPLERS), default="entropix", show_default=True
        ),
        click.option("--temp", type=float, help="Base temperature (default 0.666)."),
        click.option("--top-p", type=float, help="Base top-p (default 0.9)."),
        click.option("--top-k", type=int, help="Base top-k (default 27)."),
        click.option("--min-p", type=float, help="Base min-p (default 0.03)."),
        click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False),
            help="A TOML file of SamplerConfig settings (overrides the model's preset).",
        ),
        click.option("--pause-token", help='Text of the pause token (default "...").'),
        click.option(
            "--verbose", "-v", is_flag=True, help="Speed, peak memory and strategy histogram."
        ),
        cpu_dtype_option,
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


class GenerationSession:
    """A loaded model with its sampler settings, ready to stream answers."""

    def __init__(
        self, model, sampler, max_tokens, seed, verbose, config_file, cpu_dtype, **overrides
    ):
        from .generate import check_seed

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
        from .generate import stream_generate

        prompt_cache = (
            None if self.config.branch_k else prompt_cache
        )  # look-ahead keeps its own rows
        cache, rest = prompt_cache.fetch(prompt_ids) if prompt_cache else (None, prompt_ids)
        if prompt_cache and cache is None:
            cache = self.model.make_cache()
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
        """`n` completions of one prompt, decoded as rows of one batch: each row's responses,
        yielded in row order as soon as that row and those before it are done."""
        from .batch import stream_batch_generate

        rows, done, shown = [[] for _ in range(n)], set(), 0
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
            rows[response.index].append(response)
            strategies[response.strategy] += 1
            if response.finish_reason:
                done.add(response.index)
            while shown in done:
                yield rows[shown]
                shown += 1
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


def styled(response, color: bool) -> str:
    if not color or response.strategy is None:
        return response.text
    return click.style(response.text, fg=STRATEGY_COLORS[response.strategy])


def color_legend() -> str:
    return "Strategies: " + " ".join(
        click.style(name, fg=fg) for name, fg in STRATEGY_COLORS.items()
    )


class Commands(click.Group):
    """The one place where the package's errors become `Error: ...` and exit code 1; any other
    exception is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EntropixError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="entropix-mlx")
def main():
    """Entropy-aware text generation with MLX."""
    if not is_rank0():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


@main.group()
def models():
    """List and fetch the catalog's models."""


@models.command("list")
def models_list():
    """Show the catalog and whether each model is fetched."""
    folder = catalog_lib.models_dir()
    for name, entry in CATALOG.items():
        mark = catalog_lib.status(name)
        default = " (default)" if name == DEFAULT_MODEL else ""
        fix = f" (replace it: entropix-mlx models fetch {name})" if mark == "corrupt" else ""
        click.echo(f"{name}{default}  [{mark}]{fix}\n    {entry.description}")
    click.echo(f"\nModels folder: {folder}\n{cpu_blas.STATUS.describe()}")


@models.command("fetch")
@click.argument("name", default=DEFAULT_MODEL)
def models_fetch(name):
    """Download and verify a catalog model (default: the embedded one); replaces a corrupt copy."""
    path = catalog_lib.fetch(name, log=echo_err, replace_corrupt=True)
    click.echo(f"{name}: {path} (sha256 verified)")


@main.command()
@click.argument("src")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--bits",
    type=click.Choice(["4", "8", "none"]),
    default="4",
    show_default=True,
    help="Quantize a float model to this many bits (a quantized one is written as loaded).",
)
@click.option(
    "--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True
)
def convert(src, dst, bits, group_size):
    """Convert SRC (a GGUF file, a float folder, a Hub id or a catalog name) to an MLX folder DST."""
    from .loading.convert import convert as convert_model

    out = convert_model(
        src, dst, None if bits == "none" else int(bits), int(group_size), log=echo_err
    )
    click.echo(f"Wrote {out} (opens with entropix-mlx and with mlx_lm.load)")


@main.command()
@click.option("--prompt", "-p", required=True, help="The prompt; '-' reads it from standard input.")
@click.option("--no-chat-template", is_flag=True, help="Feed the prompt as raw text.")
@click.option(
    "--trace",
    type=click.Path(dir_okay=False, writable=True),
    help="Write one JSON record per generated token (JSONL).",
)
@click.option("--color", is_flag=True, help="Colour each token by the strategy that chose it.")
@click.option(
    "-n",
    "completions",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=1,
    show_default=True,
    help="Print this many completions (rows of one batch; row i is seeded with --seed + i).",
)
@sampler_options
def generate(prompt, no_chat_template, trace, color, completions, system, **options):
    """Generate a completion of a prompt, streaming it as it is made."""
    from .generate import chat_prompt_ids
    from .trace import TraceWriter

    prompt = read_prompt(prompt)
    if completions > 1 and trace:
        raise click.ClickException("--trace records one completion; use it without -n")
    if trace:
        check_output_folder(Path(trace), "--trace")
    session = GenerationSession(**options)
    ids = chat_prompt_ids(session.tokenizer, prompt, system, chat_template=not no_chat_template)
    if color:
        echo_err(color_legend())
    if completions > 1:
        for i, responses in enumerate(session.stream_rows(ids, completions)):
            if i:
                click.echo()
            click.echo(f"--- completion {i + 1} of {completions} ---")
            click.echo("".join(styled(r, color) for r in responses))
        return
    with TraceWriter(trace) if trace else nullcontext() as writer:

        def on_response(response):
            click.echo(styled(response, color), nl=False)
            sys.stdout.flush()
            if writer:
                writer.write(response)

        session.stream(ids, on_response)
    click.echo()


def read_prompt(prompt: str) -> str:
    """The --prompt text ('-' reads standard input), checked to be UTF-8 and not blank."""
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise click.ClickException(
                f"the prompt on standard input is not UTF-8 (byte 0x{data[e.start]:02x} at offset "
                f"{e.start}); convert it to UTF-8"
            ) from None
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable argv bytes arrive as lone surrogates
        raise click.ClickException(
            f"--prompt is not UTF-8 (byte 0x{ord(prompt[e.start]) - 0xDC00:02x} at character "
            f"{e.start}); pass UTF-8 text"
        ) from None
    if not prompt.strip():
        raise click.ClickException(
            "the prompt is empty; pass text with --prompt (or '-' for stdin)"
        )
    return prompt


@main.command()
@sampler_options
def chat(system, **options):
    """An interactive chat: /reset clears the history, /quit ends; Ctrl-C stops an answer."""
    from .generate import chat_prompt_ids
    from .prompt_cache import PromptCache

    session = GenerationSession(**options)
    prompt_cache = PromptCache(CHAT_PROMPT_CACHE_BYTES)
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
                chat_prompt_ids(session.tokenizer, history, system),
                lambda r: (answer.append(r.text), click.echo(r.text, nl=False), sys.stdout.flush()),
                prompt_cache,
            )
        except KeyboardInterrupt:
            echo_err(" [stopped]")
        click.echo()
        history.append({"role": "assistant", "content": "".join(answer)})


@main.command()
@model_option(MODEL_HELP + " (fixed for the server's life).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 exposes the server to your network.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="The most tokens one request may generate; larger max_tokens are capped.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=8,
    show_default=True,
    help="Rows decoded together (each choice of a request is a row).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Requests that may wait for a row; beyond that the server answers 429.",
)
@click.option(
    "--prompt-cache-bytes",
    type=click.IntRange(min=0),
    default=512 * 2**20,
    show_default=True,
    help="Bytes of KV states kept for prompt reuse (0 turns the prompt cache off).",
)
@cpu_dtype_option
def serve(
    model, host, port, max_tokens_limit, max_concurrency, max_queue, prompt_cache_bytes, cpu_dtype
):
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    try:
        from . import server
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("starlette", "uvicorn"):
            raise
        raise click.ClickException(
            "the server needs its optional extra: pip install 'entropix-mlx[server]'"
        ) from None
    if not is_rank0():  # under mlx.launch: rank 0 listens, the others run its requests with it
        from .scheduler import follow

        with contextlib.suppress(KeyboardInterrupt):
            follow(*load_model(model, cpu_dtype)[:2], max_concurrency=max_concurrency)
        return
    try:
        server.check_can_listen(host, port)
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port"
        ) from None
    loaded = load_model(model, cpu_dtype)
    app = server.create_app(
        *loaded,
        max_tokens_limit=max_tokens_limit,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        prompt_cache_bytes=prompt_cache_bytes,
    )
    echo_err(
        f"Serving {loaded[2].name} at http://{host}:{port}/v1 (OpenAI-compatible); Ctrl-C stops."
    )
    server.run(app, host, port)


def parse_prompt_lengths(ctx, param, value):
    try:
        lengths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) < 1:
        raise click.BadParameter(
            f"expected positive token counts separated by commas (e.g. 64,512), got {value!r}"
        )
    return lengths


@main.command()
@model_option(MODEL_HELP + "; mlx-lm runs the same weights.")
@click.option(
    "--prompt-lengths",
    default="64,512,2048",
    show_default=True,
    callback=parse_prompt_lengths,
    help="Prompt lengths in tokens, comma-separated.",
)
@click.option(
    "--gen-tokens",
    type=click.IntRange(min=2),
    default=128,
    show_default=True,
    help="Tokens generated per run (never stopped early at EOS).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed runs per row, interleaved across rows; figures are medians.",
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the report as JSON (schema in entropix_mlx/bench/__init__.py).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Smoke test: one 32-token prompt, 8 tokens, 1 repeat (flags you give still win).",
)
@click.option("--pause-token", help="Text of Entropix's pause token (default: the model's preset).")
@click.option(
    "--no-cold", is_flag=True, help="Skip the first-use runs with an empty MLX compile cache."
)
@cpu_dtype_option
@click.pass_context
def bench(
    ctx,
    model,
    prompt_lengths,
    gen_tokens,
    repeats,
    json_file,
    quick,
    pause_token,
    no_cold,
    cpu_dtype,
):
    """Benchmark entropix-mlx against mlx-lm on the same weights: speed, memory, sampler cost."""
    import json

    from .bench import BenchSettings, format_report, run_benchmark

    given = {"prompt_lengths": prompt_lengths, "gen_tokens": gen_tokens, "repeats": repeats}
    if quick:
        given = {
            k: v
            for k, v in given.items()
            if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT
        }
    if json_file:
        check_output_folder(json_file, "--json")
    make = BenchSettings.quick if quick else BenchSettings
    settings = make(
        model=model, pause_token=pause_token, cold_compile=not no_cold, cpu_dtype=cpu_dtype, **given
    )
    result = run_benchmark(settings, log=echo_err)
    click.echo(format_report(result))
    if json_file:
        write_output(json_file, json.dumps(result, indent=2) + "\n", "--json")
        echo_err(f"Wrote {json_file}")


def preset_config(model, config_file, overrides=None):
    """The sampler config a catalog model's preset gives (other models: the defaults), under --config and flags."""
    entry = CATALOG.get(model)
    return sampler_config(entry.sampler_preset if entry else {}, config_file, overrides or {})


@main.command()
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG file to write.",
)
@model_option("Draw this catalog model's preset thresholds (other names: the defaults).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML file of SamplerConfig settings whose thresholds to draw (overrides the preset).",
)
@click.option("--title", help="A title for the figure (default: the trace's file name).")
def plot(trace_file, output, model, config_file, title):
    """Draw a --trace file: the entropy-varentropy plane and a per-token timeline, as a PNG; or
    the frontier of an `eval --task writing` summary.json."""
    from .frontier_plot import plot_frontier, read_writing_summary
    from .plot import pixel_size, plot_trace, strategy_mismatches
    from .trace import read_trace

    if output.suffix.lower() != ".png":
        raise click.ClickException(f"--output {output} must be a .png file")
    check_output_folder(output, "--output")
    writing = read_writing_summary(trace_file)
    if writing is not None:
        plot_frontier(writing, output, title)
        click.echo(f"Wrote {output} (the frontier of {len(writing['arms'])} arms)")
        return
    config = preset_config(model, config_file)
    try:
        records = read_trace(trace_file)
        plot_trace(records, output, config, title=title or Path(trace_file).name)
    except OSError as e:
        raise click.ClickException(f"cannot write --output {output}: {e.strerror or e}") from None
    width, height = pixel_size(len(records))
    click.echo(f"Wrote {output} ({width}x{height} px, {len(records)} tokens)")
    mismatched = strategy_mismatches(records, config)
    if mismatched:
        echo_err(
            f"Note: {mismatched} of {len(records)} tokens' strategies do not match the drawn thresholds; "
            "pass the --model or --config the trace was made with."
        )


@main.command()
@model_option()
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The preset TOML file to write.",
)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A text file, one prompt per line (default: 20 built-in prompts).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=48,
    show_default=True,
    help="Tokens generated per prompt.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--target",
    help="Target mix in percent, e.g. 'argmax=40,pause=2,branch=10,resample=5' "
    "(adaptive takes the rest; default as shown).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML file of base settings (temp, top_p, ...) to generate with.",
)
@click.option(
    "--pause-token", help="Text of the pause token to write into the preset (default: the model's)."
)
@click.option(
    "--objective",
    type=click.Choice(["mix", "accuracy"]),
    default="mix",
    show_default=True,
    help="mix: match a target strategy mix; accuracy: the best of a grid on dev items.",
)
@click.option(
    "--task",
    type=click.Choice(["arith"]),
    default="arith",
    show_default=True,
    help="Dev items for --objective accuracy (arithmetic, seed 1; eval uses seed 0).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=90,
    show_default=True,
    help="Dev items for --objective accuracy.",
)
@click.option(
    "--seeds",
    "dev_seeds",
    default="0",
    show_default=True,
    help="Sampling seeds for --objective accuracy, comma-separated.",
)
@click.option(
    "--branching", is_flag=True, help="--objective accuracy: also search look-ahead branching."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=16,
    show_default=True,
    help="--objective accuracy: answers decoded together.",
)
def calibrate(
    model,
    output,
    prompts_file,
    max_tokens,
    seed,
    target,
    config_file,
    pause_token,
    objective,
    task,
    limit,
    dev_seeds,
    branching,
    batch_size,
):
    """Fit the sampler's thresholds to a model: match a strategy mix, or tune for accuracy."""
    from . import calibrate as calibration

    check_output_folder(output, "--output")
    if objective == "accuracy":
        tune_for_accuracy(
            model, output, config_file, pause_token, limit, dev_seeds, branching, batch_size
        )
        return
    try:
        prompts = (
            calibration.read_prompts(prompts_file) if prompts_file else calibration.DEFAULT_PROMPTS
        )
        target_mix = calibration.parse_target(target) if target else calibration.TARGET_MIX
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read --prompts {prompts_file}: {e}") from None
    loaded, tokenizer, info = load_model(model)
    config = sampler_config(info.sampler_preset, config_file, {"pause_token": pause_token})
    fit_n, held_n = map(len, calibration.split_prompts(prompts))
    echo_err(
        f"Calibrating {model} on {fit_n} prompts, checking on {held_n}, up to {max_tokens} tokens each"
    )
    result = calibration.calibrate(
        loaded,
        tokenizer,
        prompts,
        max_tokens=max_tokens,
        seed=seed,
        config=config,
        target=target_mix,
    )
    source = (
        f"the prompts in {Path(prompts_file).name}" if prompts_file else "the built-in prompt set"
    )
    write_output(output, calibration.preset_toml(result, model, source), "--output")
    click.echo(calibration.format_mix_table(result))
    thresholds = "  ".join(f"{name} {value:.4g}" for name, value in result.thresholds.items())
    click.echo(f"\nThresholds: {thresholds}\nWrote {output}")


def tune_for_accuracy(
    model, output, config_file, pause_token, limit, dev_seeds, branching, batch_size
):
    from .evaluation import parse_seeds, tuning

    seeds = parse_seeds(dev_seeds)
    loaded, tokenizer, info = load_model(model)
    base = sampler_config(info.sampler_preset, config_file, {"pause_token": pause_token})
    chosen, tried = tuning.tune(
        loaded,
        tokenizer,
        base,
        items=limit,
        seeds=seeds,
        batch_size=batch_size,
        branching=branching,
        log=echo_err,
    )
    source = f"{Path(config_file).name}" if config_file else "the model's preset"
    write_output(output, tuning.preset_toml(chosen, tried, model, source, limit, seeds), "--output")
    click.echo(tuning.format_candidates(tried, chosen))
    click.echo(f"\nWrote {output}")


# --- eval --task writing (issue 26) ------------------------------------------------------------


def writing_options(command):
    """The writing task's split and the standard sampler's sweeps (its frontier)."""
    options = [
        click.option(
            "--split",
            type=click.Choice(["dev", "test"]),
            default="dev",
            show_default=True,
            help="writing: the prompt split (tune on dev only).",
        ),
        click.option(
            "--temps",
            help="writing: the standard sampler at these temperatures, comma-separated "
            "(the frontier's curve; the preset's top-p/top-k/min-p).",
        ),
        click.option(
            "--min-ps", help="writing: min-p sampling (temperature 1) at these min-p values."
        ),
        click.option(
            "--repetition-penalties",
            help="writing: greedy with mlx-lm's repetition penalty at these values.",
        ),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def eval_writing(
    samplers,
    seeds,
    limit,
    model,
    out,
    config_files,
    max_tokens,
    quick,
    batch_size,
    split,
    temps,
    min_ps,
    repetition_penalties,
):
    """`eval --task writing`: generate, score each answer as it comes, summarize, print."""
    from datetime import datetime, timezone

    from .evaluation import ARMS, RecordWriter, make_arms, parse_seeds, plan, run_eval
    from .evaluation.frontier import families, parse_values, sweep_arms
    from .evaluation.report import write_summary
    from .evaluation.text_metrics import require_wordfreq
    from .evaluation.writing import load_writing_task
    from .evaluation.writing_report import format_writing_table, summarize_writing
    from .evaluation.writing_scores import WritingScorer
    from .sampling import SamplerConfig

    if set(samplers) - set(ARMS):
        raise EvalError("the writing task compares greedy, standard and entropix (and the sweeps)")
    require_wordfreq()
    sweep = (
        parse_values(temps, "--temps", 0.05, 5.0),
        parse_values(min_ps, "--min-ps", 0.001, 0.99),
        parse_values(repetition_penalties, "--repetition-penalties", 1.0, 5.0),
    )
    settings = plan("writing", limit, parse_seeds(seeds), max_tokens, quick)
    loaded, tokenizer, info = load_model(model)
    task = load_writing_task(tokenizer, split, settings.limit, settings.max_tokens)
    base = SamplerConfig.merged(info.sampler_preset or {})
    presets = [(Path(f).stem, sampler_config(info.sampler_preset, f, {})) for f in config_files]
    arms = make_arms(samplers or ARMS, info.sampler_preset, presets) + sweep_arms(base, *sweep)
    scorer = WritingScorer(loaded, task)
    writer = RecordWriter(out) if out else None
    started = datetime.now(timezone.utc)
    try:
        run = run_eval(
            loaded,
            tokenizer,
            task,
            arms,
            settings.seeds,
            batch_size=batch_size,
            on_record=lambda r: writer.write(scorer.score(r)) if writer else scorer.score(r),
            log=echo_err,
        )
    finally:
        if writer:
            writer.close()
    summary = summarize_writing(
        task,
        run,
        arms,
        scorer.human,
        families(arms, base),
        model=model,
        split=split,
        seeds=settings.seeds,
        quick=quick,
        started=started,
    )
    click.echo(format_writing_table(summary))
    if out:
        echo_err(f"\nWrote {writer.path} and {write_summary(out, summary)}")


@main.command("eval")
@click.option(
    "--task", "-t", required=True, help="arith, gsm8k, arc-easy, arc-challenge or writing."
)
@click.option(
    "--sampler",
    "-s",
    "samplers",
    multiple=True,
    type=click.Choice(["greedy", "standard", "entropix", "cot-decoding", "self-consistency"]),
    help="An arm to compare (repeatable; default: greedy, standard and entropix).",
)
@click.option(
    "--paths",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Paths per answer of cot-decoding and self-consistency.",
)
@click.option(
    "--seeds", default="0", show_default=True, help="Run seeds, comma-separated (e.g. 1,2,3)."
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Only the first N items (arith: default 200)."
)
@model_option()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write items.jsonl (one record per answer) and summary.json here.",
)
@click.option(
    "--config",
    "config_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A SamplerConfig TOML preset: adds an entropix arm named after the file (repeatable).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="The evaluation data folder or the task's JSONL file (default: ../shared/evaldata).",
)
@click.option(
    "--max-tokens", type=click.IntRange(min=1), help="Tokens per answer (default: the task's)."
)
@click.option(
    "--quick", is_flag=True, help="Smoke run: 2-3 items, the first seed, few tokens, 1-shot GSM8K."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=1,
    show_default=True,
    help="Answers generated together as rows of one batch.",
)
@writing_options
def eval_command(
    task,
    samplers,
    paths,
    seeds,
    limit,
    model,
    out,
    config_files,
    data,
    max_tokens,
    quick,
    batch_size,
    **writing,
):
    """Compare samplers on the same items, paired: accuracy, Wilson CIs, exact McNemar tests
    (writing: loops, repetition, surprisal, junk and relevance, and the temperature frontier)."""
    from datetime import datetime, timezone

    if task == "writing":
        eval_writing(
            samplers,
            seeds,
            limit,
            model,
            out,
            config_files,
            max_tokens,
            quick,
            batch_size,
            **writing,
        )
        return
    if writing["split"] != "dev" or any(v for k, v in writing.items() if k != "split"):
        raise EvalError(
            "--split, --temps, --min-ps and --repetition-penalties are for --task writing"
        )

    from .evaluation import (
        ARMS,
        RecordWriter,
        format_table,
        load_task,
        make_arms,
        parse_seeds,
        plan,
        run_eval,
        summarize,
        write_summary,
    )

    settings = plan(task, limit, parse_seeds(seeds), max_tokens, quick)
    task_obj = load_task(task, data, settings.limit, settings.shots)
    if task_obj.kind == "choice" and (samplers or config_files or seeds != "0"):
        echo_err(
            f"{task} is log-likelihood multiple choice: --sampler, --config and --seeds do not apply."
        )
    loaded, tokenizer, info = load_model(model)
    presets = [(Path(f).stem, sampler_config(info.sampler_preset, f, {})) for f in config_files]
    writer = RecordWriter(out) if out else None
    started = datetime.now(timezone.utc)
    try:
        arms = make_arms(samplers or ARMS, info.sampler_preset, presets, paths)
        run = run_eval(
            loaded,
            tokenizer,
            task_obj,
            arms,
            settings.seeds,
            max_tokens=settings.max_tokens,
            batch_size=batch_size,
            on_record=writer.write if writer else lambda record: None,
            log=echo_err,
        )
    finally:
        if writer:
            writer.close()
    summary = summarize(
        task_obj,
        run,
        arms,
        model=model,
        seeds=settings.seeds,
        max_tokens=settings.max_tokens,
        quick=quick,
        started=started,
    )
    click.echo(format_table(summary))
    if out:
        echo_err(f"\nWrote {writer.path} and {write_summary(out, summary)}")
