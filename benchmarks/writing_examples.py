"""Side-by-side answers from a writing run, as Markdown (docs/your-text.md's examples).

The prompts are chosen by rule, not by hand: the first N request prompts of the run, in the
task's order. Each shows the named arms' answers for one seed, with each answer's measures.

    python benchmarks/writing_examples.py benchmarks/results/writing-test/items.jsonl \
        --arms greedy,standard,entropix --count 3 --seed 0
"""

import argparse
import json
import textwrap

from entropix_mlx.evaluation.writing import read_requests


def measures(record: dict) -> str:
    loop = "loops" if record["loop"] else "no loop"
    end = "ended (EOS)" if record["ended"] else f"cut at {record['tokens']} tokens"
    return (
        f"{loop}, {end}; seq-rep-4 {record['seq_rep_4']:.2f}, "
        f"surprisal {record['surprisal']:.2f} nats/token"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", help="a writing run's items.jsonl")
    parser.add_argument("--arms", default="greedy,standard,entropix")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    arms = args.arms.split(",")
    with open(args.items, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    requests = {
        f"request-{kind}-{i}": text
        for kind, texts in read_requests().items()
        for i, text in enumerate(texts)
    }
    chosen = {}
    for r in records:
        if r["group"] != "request" or r["arm"] not in arms:
            continue
        if r["seed"] not in (None, args.seed):  # greedy runs once: its seed is null
            continue
        if r["item"] not in chosen and len(chosen) == args.count:
            continue
        chosen.setdefault(r["item"], {"prompt": r, "answers": {}})["answers"][r["arm"]] = r
    for entry in chosen.values():
        prompt = entry["prompt"]["id"]
        print(f"### `{prompt}`\n")
        print(f"> {requests[prompt.split(':', 1)[1]]}\n")
        for arm in arms:
            record = entry["answers"].get(arm)
            if record is None:
                continue
            print(f"**{arm}** ({measures(record)}):\n")
            body = record["completion"].strip()
            print(textwrap.indent(body, "    ", lambda line: True) + "\n")


if __name__ == "__main__":
    main()
