"""The contenders: mlx-lm and entropix-mlx on the same weights, each with its samplers.

Where the CPU weight policy runs ours in float32, mlx-lm runs twice: on the stored
(quantized) weights and on the same float32 weights (dequantized by the same function).
"""

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from ..engine.decode import generate_step
from ..errors import BenchError, ConfigError
from ..loading import ModelLoadError, load
from ..loading.cpu_weights import dequantize_model
from ..sampling import SamplerConfig, make_sampler, reads_scores
from .same_weights import mlx_lm_folder

MLX_LM, OURS = "mlx-lm", "entropix-mlx"
FLOAT32 = "float32"  # the weights tag of the rows on dequantized weights ("" for the stored ones)
# The plain sampled rows: mlx-lm's make_sampler and our standard sampler, same settings.
SAMPLED = {"temp": 0.666, "top_p": 0.9, "top_k": 27}
SEED = 0

TokenRun = Callable[[List[int], int], Iterator]
SamplerStep = Callable[[int], Callable[[], object]]


@dataclass(frozen=True)
class Contender:
    """One engine with one sampler, and the mlx-lm row it is measured against."""

    engine: str
    sampler: str
    baseline: Optional[str]  # the label of the matching mlx-lm row; None for mlx-lm's own
    run: TokenRun  # (prompt ids, n) -> a generator of n tokens that never stops at EOS
    sampler_step: SamplerStep  # attention length -> one sampler call on [1, vocab] logits
    weights_bytes: int
    weights: str = ""  # FLOAT32 for dequantized weights, "" as stored
    reference: Optional[str] = None  # for ours in float32: the mlx-lm row on the stored weights

    @property
    def label(self) -> str:
        return row_label(self.engine, self.sampler, self.weights)


def row_label(engine: str, sampler: str, weights: str = "") -> str:
    return " ".join(part for part in (engine, weights, sampler) if part)


def weights_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def random_logits(vocab_size: int) -> mx.array:
    return 4.0 * mx.random.normal((1, vocab_size), key=mx.random.key(SEED))


def mlx_lm_contenders(
    name: str, log: Callable[[str], None] = lambda msg: None, weights: str = ""
) -> List[Contender]:
    """mlx-lm's greedy and sampled rows on the MLX copy of `name` (FLOAT32: dequantized)."""
    import mlx_lm
    from mlx_lm.generate import generate_step as mlx_lm_generate_step
    from mlx_lm.sample_utils import make_sampler as mlx_lm_make_sampler

    folder = mlx_lm_folder(name, log)
    try:
        model, _ = mlx_lm.load(str(folder))
    except Exception as e:  # mlx-lm raises plain exceptions of several kinds
        raise ModelLoadError(f"mlx-lm cannot load {folder}: {e}") from None
    if weights == FLOAT32:
        dequantize_model(model)
    vocab_size, size = model.args.vocab_size, weights_bytes(model)

    def contender(sampler_name, sampler):
        def run(prompt_ids, n):
            mx.random.seed(SEED)
            steps = mlx_lm_generate_step(mx.array(prompt_ids), model, max_tokens=n, sampler=sampler)
            return (token for token, _ in steps)

        def sampler_step(attention_length):
            logits = random_logits(vocab_size)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            return lambda: sampler(logprobs)

        return Contender(MLX_LM, sampler_name, None, run, sampler_step, size, weights)

    return [
        contender("greedy", mlx_lm_make_sampler(temp=0.0)),
        contender("sampled", mlx_lm_make_sampler(**SAMPLED)),
    ]


def entropix_config(preset: dict, pause_token: Optional[str]) -> SamplerConfig:
    """The model's Entropix preset, with `pause_token` (text) if given."""
    try:
        return SamplerConfig.merged(preset, overrides={"pause_token": pause_token})
    except ConfigError as e:
        raise BenchError(f"invalid Entropix settings: {e}") from None


def our_contenders(
    name: str,
    pause_token: Optional[str] = None,
    log: Callable[[str], None] = lambda msg: None,
    cpu_dtype: str = "auto",
):
    """Our greedy, standard and entropix rows -> (contenders, tokenizer, model info)."""
    model, tokenizer, info = load(name, log=log, cpu_dtype=cpu_dtype)
    dequantized = info.weight_dtype == FLOAT32 and info.quantization != "float"
    weights = FLOAT32 if dequantized else ""
    args, size = info.args, weights_bytes(model)
    standard = SamplerConfig(**SAMPLED, min_p=0.0)
    try:
        samplers = {
            "greedy": make_sampler("greedy"),
            "standard": make_sampler("standard", standard),
            "entropix": make_sampler(
                "entropix", entropix_config(info.sampler_preset, pause_token), tokenizer
            ),
        }
    except ConfigError as e:
        raise BenchError(f"{e} (see --pause-token)") from None

    def contender(sampler_name, baseline_sampler):
        sampler = samplers[sampler_name]
        with_scores = reads_scores(sampler)

        def run(prompt_ids, n):
            steps = generate_step(
                mx.array(prompt_ids),
                model,
                sampler,
                max_tokens=n,
                seed=SEED,
            )
            return (step.token for step in steps)

        def sampler_step(attention_length):
            logits = random_logits(args.vocab_size)
            scores = None
            if with_scores:
                shape = (1, args.num_attention_heads, attention_length)
                scores = mx.random.normal(shape, key=mx.random.key(SEED + 1))
            prev, key = mx.array([0], dtype=mx.int32), mx.random.key(SEED)
            return lambda: sampler(logits, scores, prev, key)

        baseline = row_label(MLX_LM, baseline_sampler, weights)
        reference = row_label(MLX_LM, baseline_sampler) if weights else None
        return Contender(OURS, sampler_name, baseline, run, sampler_step, size, weights, reference)

    contenders = [
        contender("greedy", "greedy"),
        contender("standard", "sampled"),
        contender("entropix", "sampled"),
    ]
    return contenders, tokenizer, info
