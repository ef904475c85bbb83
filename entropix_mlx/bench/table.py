"""The benchmark report as text a person reads: machine, one table, cold compile."""

from typing import List

COLUMNS = (  # (header, figure)
    ("prefill tok/s", "prefill_tps"),
    ("decode tok/s", "decode_tps"),
    ("decode CPU ms/tok", "decode_cpu_ms"),
    ("TTFT s", "ttft_s"),
    ("peak MB", "peak_memory_mb"),
    ("sampler µs", "sampler_step_us"),
)


def number(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def cell(row: dict, figure: str) -> str:
    stats = row["figures"][figure]
    text = number(stats["median"])
    if len(stats["samples"]) > 1 and stats["median"]:
        text += f" ±{50 * (stats['max'] - stats['min']) / stats['median']:.0f}%"
    if row["ratios"]:
        text += f" ({row['ratios'][figure]:.2f}×)"
    return text


def machine_line(machine: dict) -> str:
    line = (
        f"Machine: {machine['os']} {machine['os_release']} {machine['arch']}, {machine['cpu']}, "
        f"{machine['cpu_count']} CPUs; MLX {machine['mlx']} on {machine['device']}, mlx-lm {machine['mlx_lm']}"
    )
    if machine.get("cpu_blas"):
        line += f"; CPU BLAS: {machine['cpu_blas']}"
    if machine.get("load_average_start") is not None:
        line += (
            f"; load average {machine['load_average_start']} at start, "
            f"{machine.get('load_average_end')} at end"
        )
    return line


def rows_table(rows: List[dict]) -> List[str]:
    header = ["prompt", "engine / sampler", *(h for h, _ in COLUMNS), "sampler/step"]
    body = [
        [
            str(r["prompt_tokens"]),
            r["label"],
            *(cell(r, f) for _, f in COLUMNS),
            f"{100 * r['sampler_share']:.1f}%",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line):  # the label column left-aligned, numbers right-aligned
        return "  ".join(
            v.ljust(w) if i == 1 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))
        )

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    for i, line in enumerate(body):
        if i and body[i - 1][0] != line[0]:
            lines.append("")
        lines.append(fmt(line))
    return lines


def reference_lines(rows: List[dict]) -> List[str]:
    """Ours on float32 weights against mlx-lm on the stored (quantized) ones."""
    compared = [r for r in rows if r.get("reference_ratios")]
    if not compared:
        return []
    lines = ["Ours on float32 weights / mlx-lm on the stored weights (CPU weight policy):"]
    for r in compared:
        q = r["reference_ratios"]
        lines.append(
            f"  {r['prompt_tokens']} tok {r['label']} / {r['reference']}: "
            f"prefill {q['prefill_tps']:.2f}×, decode {q['decode_tps']:.2f}×, "
            f"peak memory {q['peak_memory_mb']:.2f}×"
        )
    return lines


def cold_lines(section: dict) -> List[str]:
    lines = [
        f"First use, empty MLX compile cache ({section['prompt_tokens']}-token prompt, "
        f"{section['gen_tokens']} tokens; a fresh process each):"
    ]
    for run in section["runs"]:
        cold, warm = run["cold"], run["warm"]
        compiled = run["compiled_after_cold"] - run["compiled_before"]
        added = run["compiled_after_warm"] - run["compiled_after_cold"]
        lines.append(
            f"  {run['engine']} {run['sampler']}: decode {number(cold['decode_tps'])} tok/s cold, "
            f"{number(warm['decode_tps'])} warm ({run['cold_over_warm_decode']:.2f}×); CPU ms/tok "
            f"{number(cold['decode_cpu_ms'])} cold, {number(warm['decode_cpu_ms'])} warm; TTFT "
            f"{number(cold['ttft_s'])} s cold, {number(warm['ttft_s'])} s warm; kernels compiled: "
            f"{compiled} on first use, {added} more when warm"
        )
    if "entropix_over_mlx_lm_cold_decode" in section:
        lines.append(
            f"  entropix cold decode / mlx-lm cold decode: {section['entropix_over_mlx_lm_cold_decode']:.2f}×"
        )
    return lines


def format_report(report: dict) -> str:
    settings = report["settings"]
    lines = [
        machine_line(report["machine"]),
        f"Model: {settings['model']}; {settings['gen_tokens']} generated tokens; median of "
        f"{settings['repeats']} interleaved run(s), ± half the range; (×) = ratio to the mlx-lm row",
        "",
        *rows_table(report["rows"]),
    ]
    if reference_lines(report["rows"]):
        lines += ["", *reference_lines(report["rows"])]
    if report.get("cold_compile"):
        lines += ["", *cold_lines(report["cold_compile"])]
    return "\n".join(lines)
