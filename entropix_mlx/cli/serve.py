"""serve: the OpenAI-compatible HTTP server (an optional extra)."""

import contextlib

import click

from .options import BATCH_ROWS, MODEL_HELP, cpu_dtype_option, load_model, model_option
from .output import echo_err, is_rank0


@click.command()
@model_option(MODEL_HELP + " (fixed for the server's life).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=lambda ctx, param, host: check_host(host),
    help="Address to listen on; 0.0.0.0 exposes the server to your network (use --api-key).",
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
    type=BATCH_ROWS,
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
@click.option(
    "--api-key",
    envvar="ENTROPIX_MLX_API_KEY",
    callback=lambda ctx, param, key: check_api_key(key),
    help="Answer only requests that send this key (Authorization: Bearer KEY), as OpenAI clients "
    "do with api_key=KEY; also read from $ENTROPIX_MLX_API_KEY, which keeps it out of the "
    "process list.",
)
@cpu_dtype_option
def serve(
    model,
    host,
    port,
    max_tokens_limit,
    max_concurrency,
    max_queue,
    prompt_cache_bytes,
    api_key,
    cpu_dtype,
):
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    try:
        from .. import server
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("starlette", "uvicorn"):
            raise
        raise click.ClickException(
            "the server needs its optional extra: pip install 'entropix-mlx[server]'"
        ) from None
    if not is_rank0():  # under mlx.launch: rank 0 listens, the others run its requests with it
        from ..scheduler import follow

        with contextlib.suppress(KeyboardInterrupt):
            follow(*load_model(model, cpu_dtype)[:2], max_concurrency=max_concurrency)
        return
    try:
        server.check_can_listen(host, port)
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port"
        ) from None
    if not server.is_loopback(host) and not api_key:
        echo_err(
            f"Warning: listening on {host} without --api-key: anyone who can reach this machine "
            "can use the model."
        )
    loaded = load_model(model, cpu_dtype)
    app = server.create_app(
        *loaded,
        max_tokens_limit=max_tokens_limit,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        prompt_cache_bytes=prompt_cache_bytes,
        api_key=api_key,
    )
    echo_err(
        f"Serving {loaded[2].name} at http://{host}:{port}/v1 (OpenAI-compatible); Ctrl-C stops."
    )
    server.run(app, host, port)


def check_host(host: str) -> str:
    """An address to listen on, given in full: an empty one would mean every interface."""
    if not host.strip():
        raise click.BadParameter(
            "an empty address listens on every interface; say --host 0.0.0.0 for that, or keep "
            "the default 127.0.0.1 (this machine only)"
        )
    return host


def check_api_key(key):
    if key is not None and not key.strip():
        raise click.BadParameter("the key is empty; give a secret, or leave the option out")
    return key
