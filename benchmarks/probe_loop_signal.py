"""Does the final layer's attention see a loop coming? (the loop guard's evidence, docs/sampler.md)

Greedy answers to the first N development writing prompts; at every step, candidate signals from
the final layer's attention scores and a label: does the chosen token extend a 4-gram already
in the text (prompt and answer so far)? Prints each signal's AUC for that label, over all steps
and within the argmax corner of the model's preset, and at fixed context lengths.

    python benchmarks/probe_loop_signal.py --prompts 24 --max-tokens 96
"""

import argparse

# isort: off
import entropix_mlx  # noqa: F401  (binds the system OpenBLAS before mlx loads)
import mlx.core as mx

# isort: on
import numpy as np

from entropix_mlx import load
from entropix_mlx.engine.decode import generate_step
from entropix_mlx.evaluation.writing import load_writing_task
from entropix_mlx.sampling.draw import make_greedy_sampler
from entropix_mlx.sampling.metrics import far_attention, logits_entropy_varentropy

WINDOWS = (8, 16, 32)


def auc(values, labels) -> float:
    """P(a positive's value > a negative's), ties counted half (Mann-Whitney)."""
    values, labels = np.asarray(values, dtype=float), np.asarray(labels, dtype=bool)
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable") + 1.0
    for v in np.unique(values):  # average ranks over ties
        ranks[values == v] = ranks[values == v].mean()
    pos = labels.sum()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * (~labels).sum()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()

    model, tokenizer, info = load(args.model)
    preset = info.sampler_config()
    task = load_writing_task(tokenizer, "dev", args.prompts, args.max_tokens)
    greedy = make_greedy_sampler()
    steps = []

    def recording_greedy(logits, scores, prev, key):
        attn = mx.softmax(scores.astype(mx.float32), axis=-1)[0]
        peak = mx.max(attn[:, 1 : max(attn.shape[-1] - 2, 2)], axis=-1).mean()
        entropy, varentropy = logits_entropy_varentropy(logits.astype(mx.float32))
        row = {"peak": peak.item(), "entropy": entropy.item(), "varentropy": varentropy.item()}
        row.update({f"far{w}": far_attention(scores, w).item() for w in WINDOWS})
        row["length"] = scores.shape[-1]
        steps.append(row)
        return greedy(logits, scores, prev, key)

    recording_greedy.reads_scores = True
    rows = []
    for item in task.items:
        steps.clear()
        text = list(item.ids)
        for step in generate_step(
            mx.array(text), model, recording_greedy, max_tokens=item.max_tokens
        ):
            row = steps[len(text) - len(item.ids)]
            earlier = {tuple(text[i : i + 4]) for i in range(len(text) - 3)}
            row["copy"] = tuple(text[-3:] + [step.token]) in earlier
            rows.append(row)
            text.append(step.token)
            if step.token in tokenizer.eos_token_ids:
                break

    signals = ["peak", *(f"far{w}" for w in WINDOWS)]
    corner = [
        r for r in rows if r["entropy"] < preset.low_ent and r["varentropy"] < preset.low_vent
    ]
    print(f"{len(rows)} steps, {np.mean([r['copy'] for r in rows]):.0%} extend a written 4-gram")
    print(f"argmax corner: {len(corner)} steps, {np.mean([r['copy'] for r in corner]):.0%} copy")
    print(f"{'signal':8} {'AUC all':>8} {'AUC corner':>11}")
    for name in signals:
        everywhere = auc([r[name] for r in rows], [r["copy"] for r in rows])
        in_corner = auc([r[name] for r in corner], [r["copy"] for r in corner])
        print(f"{name:8} {everywhere:8.3f} {in_corner:11.3f}")
    print("in the corner, at fixed context length (tokens):")
    for low, high in ((0, 60), (60, 100), (100, 140)):
        part = [r for r in corner if low <= r["length"] < high]
        labels = [r["copy"] for r in part]
        if 0 < sum(labels) < len(labels):
            aucs = "  ".join(f"{n} {auc([r[n] for r in part], labels):.3f}" for n in signals[1:])
            print(f"  [{low}, {high}): {len(part)} steps, {np.mean(labels):.0%} copy; {aucs}")


if __name__ == "__main__":
    main()
