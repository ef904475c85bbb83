"""Which gate lets look-ahead branching fork, and how accurate is it, on dev arithmetic (seed 1)?

The accuracy grid of `calibrate --objective accuracy --branching` keeps the table's branch
quadrant, which on arithmetic almost never fires once argmax is widened (about 0.1 forks per
answer): its branching candidates are single-path Entropix in all but name. This probe tries
gates that do fork, on the same 90 dev items and seed as that grid:

  uncertain  the preset's argmax corner; pause and resample off; every token with varentropy
             above low_vent forks (rollouts use the preset's adaptive sampling elsewhere)
  vgate      argmax wherever varentropy < g (any entropy); fork where it is above g + 0.01

Run: PYTHONPATH=. python benchmarks/branch_gate_probe.py
"""

from entropix_mlx.evaluation.arms import Arm
from entropix_mlx.evaluation.runner import run_eval
from entropix_mlx.evaluation.tasks import arith_task
from entropix_mlx.evaluation.tuning import DEV_ARITH_SEED, entropy_ceiling
from entropix_mlx.loading import load

ITEMS = 90


def candidates(base, ceiling):
    arms = [Arm("greedy", "greedy", base)]
    off = dict(med_ent=ceiling, high_ent=ceiling + 1)
    for low_vent in (base.low_vent, 2.0):
        for score in ("margin", "logprob"):
            config = base.replace(
                **off, low_vent=low_vent, high_vent=low_vent + 0.01, branch_k=3, branch_score=score
            )
            arms.append(Arm(f"uncertain lv{low_vent:g} k3 {score}", "entropix", config))
    for gate in (1.0, 3.0, 6.0):
        for k in (3, 2):
            config = base.replace(
                low_ent=ceiling - 1,
                **off,
                low_vent=gate,
                high_vent=gate + 0.01,
                branch_k=k,
                branch_score="margin",
            )
            arms.append(Arm(f"vgate g{gate:g} k{k} margin", "entropix", config))
    return arms


def main():
    model, tokenizer, info = load("smollm2-135m-instruct")
    base = info.sampler_config().replace(
        low_ent=1.9994, low_vent=6.76438
    )  # the mix preset's corner
    arms = candidates(base, entropy_ceiling(model.args.vocab_size))
    run = run_eval(
        model,
        tokenizer,
        arith_task(ITEMS, seed=DEV_ARITH_SEED),
        arms,
        (0,),
        batch_size=16,
        progress=False,
    )
    print("candidate                     correct  row tokens/answer  forks/answer")
    for arm in arms:
        rows = [r for r in run.records if r["arm"] == arm.name]
        print(
            f"{arm.name:28s} {sum(r['correct'] for r in rows):3d}/{len(rows)}  "
            f"{sum(r['row_tokens'] for r in rows) / len(rows):17.2f}  "
            f"{sum(r['forks'] for r in rows) / len(rows):12.2f}"
        )


if __name__ == "__main__":
    main()
