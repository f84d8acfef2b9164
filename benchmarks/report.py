"""Turn a results folder's `results.json` into `REPORT.md` (summary of ratios + tables) and PNG plots.

    python benchmarks/report.py benchmarks/results/cpu    # rebuild the report of an earlier run

The report is meant to be pasted into (or linked from) the README: it starts with the machine, the versions and the
command that reproduces it, then a summary of speed-ups, then one table per suite and the plots.
Kernel plots show time against the swept size with the device's floor drawn in: the larger of bytes / measured
copy bandwidth and FLOPs / measured matmul rate (see `floor_ms`).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import common

# The variant a suite's speed-ups are measured against, in order of preference (first present wins).
BASELINES = ("literal_reference", "literal", "reference", "ref", "eager", "baseline")
# Parameter names that are swept along a plot's x axis, in order of preference.
X_KEYS = ("N", "seq_len", "n", "seq", "tokens", "batch", "batch_size", "B", "images", "size")
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
# Sizes a benchmark may record in extra_info or its own JSON rather than as pytest parameters.
SIZE_KEYS = ("B", "H", "M", "N", "d", "dv", "batch", "batch_size", "A", "D", "G", "seq_len", "height", "width")
# Parameters that only name a case (its sizes are in dims): not a panel of their own on plots.
LABEL_KEYS = ("case", "name")
MAX_PANELS = 12
FLOOR_NOTE = (
    "GB/s and TFLOP/s count the op's minimum traffic and useful FLOPs. The floor is the larger of bytes / measured "
    "copy bandwidth and FLOPs / measured matmul rate; above 100 % the data came from caches (the copy measures main "
    "memory) or the matmul measurement under-rates the device."
)


# ----------------------------------------------------------------------------------------------- floors
def _dtype(record: dict) -> str:
    merged = {**record["extra"], **record["params"]}
    return str(merged.get("dtype", "float32")).removeprefix("torch.")


def _diff_attention_cost(p: dict) -> tuple[float, float] | None:
    """Bytes (read Q1,Q2,K1,K2,V once, write O once) and FLOPs (4MNd + 2MNdv) of dual-softmax attention."""
    try:
        slices = int(p.get("B", p.get("batch", 1))) * int(p.get("H", p.get("heads", 1)))
        n = int(p.get("N", p.get("seq_len", p.get("n"))))
        m = int(p.get("M", p.get("m", n)))
        d = int(p.get("d", p.get("head_dim", p.get("D"))))
        dv = int(p.get("dv", d))
    except (TypeError, ValueError):
        return None
    elem = DTYPE_BYTES.get(str(p.get("dtype", "float32")).removeprefix("torch."), 4)
    bytes_moved = slices * elem * (2 * m * d + 2 * n * d + n * dv + m * dv)
    return bytes_moved, slices * (4 * m * n * d + 2 * m * n * dv)


def _attribute_scorer_cost(p: dict) -> tuple[float, float] | None:
    """Bytes (image embeddings, prompt differences, both outputs) and FLOPs (the (B,D)x(D,A) product + pooling)."""
    try:
        b, a, d, g = (int(p[k]) for k in ("batch", "A", "D", "G"))
    except (KeyError, TypeError, ValueError):
        return None
    return 4 * (b * d + a * d + b * a + b * g + 2 * a), 2 * b * a * d + 2 * b * a


COST_MODELS = {"diff_attention": _diff_attention_cost, "attribute_scorer": _attribute_scorer_cost}


def cost(record: dict, suite_shapes: dict | None = None) -> tuple[float, float] | None:
    """(bytes moved, FLOPs) of the case: its own (extra_info `bytes`, `flops`) or the suite's cost model's."""
    extra = record["extra"]
    bytes_moved = extra.get("bytes", extra.get("bytes_moved"))
    flops = extra.get("flops")
    if isinstance(bytes_moved, (int, float)) and isinstance(flops, (int, float)):
        return float(bytes_moved), float(flops)
    model = COST_MODELS.get(record["suite"])
    return model({**(suite_shapes or {}), **extra, **record["params"]}) if model else None


def floor_ms(record: dict, floors: dict, suite_shapes: dict | None = None) -> float | None:
    """The device's floor for this case in ms (the larger of bytes / bandwidth and FLOPs / matmul rate), or None
    when the case's cost is unknown."""
    known = cost(record, suite_shapes)
    if known is None:
        return None
    return common.floor_seconds(known[0], known[1], floors, _dtype(record)) * 1e3


def _suite_shapes(out: Path) -> dict[str, dict]:
    """Fixed shapes a suite records once in its own JSON (e.g. {"shape": {"A": 125, ...}}) rather than per case."""
    shapes: dict[str, dict] = {}
    for path in (out / "suites").rglob("*.json") if (out / "suites").exists() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("shape"), dict):
            shapes[str(data.get("benchmark", path.stem))] = data["shape"]
    return shapes


# ----------------------------------------------------------------------------------------------- grouping
def _sortable(value: Any) -> tuple:
    """Numbers before strings, numbers in numeric order (batch 64 before 1024)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _shape_key(record: dict) -> tuple:
    """Everything that identifies the measured case except the variant: cases with equal keys are comparable."""
    skip = {k for k, v in record["params"].items() if v == record["variant"]}
    return (record["suite"], record["test"]) + tuple(
        sorted((k, _sortable(v)) for k, v in record["params"].items() if k not in skip)
    )


def _baseline(variants: Iterable[str]) -> str | None:
    variants = [str(v) for v in variants]
    for name in BASELINES:
        if name in variants:
            return name
    for name in BASELINES:
        for v in variants:
            if name in v.lower():
                return v
    return None


def speedups(results: list[dict]) -> list[dict]:
    """Per suite and variant: the baseline's median time over the variant's, summarised over comparable cases."""
    cases: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in results:
        if r["variant"] is not None:
            cases[_shape_key(r)][str(r["variant"])] = r
    ratios: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for key, by_variant in cases.items():
        base = _baseline(by_variant)
        if base is None:
            continue
        for variant, r in by_variant.items():
            if variant != base and r["median_ms"] > 0:
                ratios[(key[0], variant, base)].append(by_variant[base]["median_ms"] / r["median_ms"])
    return [
        {
            "suite": s,
            "variant": v,
            "baseline": b,
            "cases": len(x),
            "median": statistics.median(x),
            "min": min(x),
            "max": max(x),
        }
        for (s, v, b), x in sorted(ratios.items())
    ]


# ----------------------------------------------------------------------------------------------- markdown
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _mib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def _suite_table(records: list[dict], floors: dict, shapes: dict) -> list[str]:
    param_names = sorted({k for r in records for k, v in r["params"].items() if v != r["variant"]})
    sizes = {id(r): " ".join(f"{k}={v}" for k, v in dims(r).items() if k not in r["params"]) for r in records}
    show_sizes = any(sizes.values())
    show_items = any(r["items_per_s"] is not None for r in records)
    show_mem = any(r["peak_memory_bytes"] is not None for r in records)
    costs = {id(r): cost(r, shapes.get(r["suite"])) for r in records}
    show_floor = any(v is not None for v in costs.values())
    header = param_names + ["sizes"] * show_sizes + ["variant", "median ms", "IQR ms", "rounds"]
    header += ["items/s"] * show_items + ["peak MiB"] * show_mem
    header += ["GB/s", "TFLOP/s", "floor ms", "floor/time %"] * show_floor
    rows = []
    for r in sorted(records, key=lambda r: (_shape_key(r), str(r["variant"]))):
        row = [_fmt(r["params"].get(k)) for k in param_names] + [sizes[id(r)]] * show_sizes
        row += [str(r["variant"] or r["name"]), _fmt(r["median_ms"]), _fmt(r["iqr_ms"], 2), str(r["rounds"])]
        if show_items:
            row.append(_fmt(r["items_per_s"]))
        if show_mem:
            row.append(_mib(r["peak_memory_bytes"]))
        if show_floor:
            c, f = costs[id(r)], floor_ms(r, floors, shapes.get(r["suite"]))
            seconds = r["median_ms"] / 1e3
            row += (
                ["", "", "", ""]
                if c is None
                else [
                    _fmt(c[0] / seconds / 1e9),
                    _fmt(c[1] / seconds / 1e12),
                    _fmt(f),
                    f"{100 * f / r['median_ms']:.1f}",
                ]
            )
        rows.append(row)
    lines = _table(header, rows)
    if show_floor:
        lines += ["", FLOOR_NOTE]
    return lines


def _case_speedups(records: list[dict]) -> list[str]:
    """Per case: the baseline's time over each variant's (the summary's ratios, case by case)."""
    cases: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        if r["variant"] is not None:
            cases[_shape_key(r)][str(r["variant"])] = r
    variants = sorted({v for by_variant in cases.values() for v in by_variant})
    rows, baselines = [], set()
    for key in sorted(cases):
        by_variant = cases[key]
        base = _baseline(by_variant)
        if base is None or len(by_variant) < 2:
            continue
        baselines.add(base)
        label = _label(next(iter(by_variant.values())))
        rows.append(
            [label]
            + [
                f"{by_variant[base]['median_ms'] / by_variant[v]['median_ms']:.2f}x" if v in by_variant else ""
                for v in variants
                if v != base
            ]
        )
    if not rows or len(baselines) != 1:
        return []
    (base,) = baselines
    return (
        [f"Speed-up over `{base}` per case:", ""] + _table(["case"] + [v for v in variants if v != base], rows) + [""]
    )


def _throughput_table(results: list[dict]) -> list[str]:
    """Every end-to-end case with a batch side by side: our metrics and the pyiqa peers on the same inputs."""
    rows = []
    for r in sorted(results, key=lambda r: (r["suite"], str(r["variant"]), _shape_key(r))):
        if r["items_per_s"] is None or r["suite"] in COST_MODELS:
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if v != r["variant"])
        rows.append(
            [
                r["suite"],
                str(r["variant"] or ""),
                params,
                _fmt(r["items_per_s"]),
                _fmt(r["median_ms"]),
                _mib(r["peak_memory_bytes"]),
            ]
        )
    if not rows:
        return []
    return (
        ["## Metrics end to end (images/s, peak memory)", ""]
        + _table(["suite", "variant", "case", "images/s", "median ms / batch", "peak MiB"], rows)
        + [""]
    )


def _header(payload: dict) -> list[str]:
    env, floors = payload["environment"], payload["floors"]
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "triton", "pyiqa", "python") if env.get(k))
    threads = env["torch_threads"]
    cuda = f", CUDA {env['cuda']}" if env.get("device_type") == "cuda" and env.get("cuda") else ""
    mm = ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in floors["matmul_TFLOPs"].items())
    lines = [
        f"# Benchmarks on {env['device']}",
        "",
        f"- Device: {env['device']} ({env['device_type']}; {env['cpu_count']} CPU cores, {threads} torch threads){cuda}",
        f"- Versions: {versions}; commit {env.get('git_commit') or 'not recorded'}",
        f"- Date: {env['date']}; mode: {payload['mode']}; suite wall time {payload['wall_s']:.0f} s"
        + (
            f"; load average at start {env['load_average_1m']} on {env['cpu_count']} cores"
            if env.get("load_average_1m") is not None
            else ""
        ),
        f"- Measured ceilings: copy {floors['bandwidth_GBps']:.1f} GB/s; matmul {mm}",
        f"- Reproduce: `{payload['command']}` (or `make bench`)",
        "",
    ]
    if payload["mode"] == "quick":
        lines += [
            "> Quick mode: tiny shapes and single rounds check that the suite runs; the numbers mean nothing.",
            "",
        ]
    return lines


def _summary(results: list[dict]) -> list[str]:
    rows = [
        [
            s["suite"],
            s["variant"],
            s["baseline"],
            f"{s['median']:.2f}x",
            f"{s['min']:.2f}x - {s['max']:.2f}x",
            str(s["cases"]),
        ]
        for s in speedups(results)
    ]
    if not rows:
        return ["## Summary", "", "No comparable variants were measured.", ""]
    return (
        ["## Summary: speed-up over the baseline (baseline time / variant time)", ""]
        + _table(["suite", "variant", "baseline", "median", "range", "cases"], rows)
        + [""]
    )


def _skipped(skipped: list[dict]) -> list[str]:
    if not skipped:
        return []
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for s in skipped:
        counts[(s["suite"], s["reason"])] += 1
    return (
        ["## Not measured here", ""]
        + _table(["suite", "reason", "cases"], [[s, r, str(n)] for (s, r), n in sorted(counts.items())])
        + [""]
    )


def _failures(failures: list[dict]) -> list[str]:
    if not failures:
        return []
    return (
        ["## Failures", ""]
        + _table(
            ["suite", "case", "message"],
            [[f["suite"], f["name"], f["message"].replace("|", "/").replace("\n", " ")[:200]] for f in failures],
        )
        + [""]
    )


def _notes(results: list[dict]) -> list[str]:
    """Notes a suite attaches to its cases (extra_info `note`), e.g. that a peer ran with random weights."""
    notes = {(r["suite"], str(r["extra"]["note"])) for r in results if r["extra"].get("note")}
    noted = {suite for suite, _ in notes}
    notes |= {
        (r["suite"], f"{r['extra']['weights']} weights")
        for r in results
        if r["extra"].get("weights") and r["suite"] not in noted
    }
    notes = sorted(notes)
    return [f"- {suite}: {note}" for suite, note in notes]


# ----------------------------------------------------------------------------------------------- plots
def dims(record: dict) -> dict[str, Any]:
    """The case's numeric sizes: its numeric parameters plus the sizes its benchmark recorded (B, H, M, N, ...)."""
    merged = {**record["extra"], **record["params"]}
    return {
        k: v
        for k, v in merged.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (k in record["params"] or k in SIZE_KEYS)
    }


def _x_key(records: list[dict]) -> str | None:
    numeric = {k for r in records for k in dims(r)}
    swept = [k for k in numeric if len({dims(r).get(k) for r in records}) > 1]
    for key in X_KEYS:
        if key in swept:
            return key
    return None  # categorical parameters only (e.g. a distortion's number): a bar chart


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines or GPU hosts
    import matplotlib.pyplot as plt

    return plt


def _bar_chart(suite: str, records: list[dict], out: Path) -> Path:
    plt = _pyplot()

    records = sorted(records, key=lambda r: r["name"])
    labels = [r["name"].removeprefix(r["test"]).strip("[]") or r["test"] for r in records]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(records) + 2), 4))
    ax.bar(range(len(records)), [r["median_ms"] for r in records])
    ax.set_xticks(range(len(records)), labels, rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms)")
    ax.set_title(suite, fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path = out / f"plot_{suite}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(record: dict) -> str:
    return (
        ", ".join(
            str(v) if k in LABEL_KEYS else f"{k}={v}" for k, v in record["params"].items() if v != record["variant"]
        )
        or record["test"]
    )


def _grouped_bars(suite: str, records: list[dict], floors: dict, shapes: dict, out: Path) -> Path:
    """One panel per test: a group of bars (one per variant) for each case, the device floor as a dashed mark."""
    plt = _pyplot()
    tests = sorted({r["test"] for r in records})
    width_cases = max(len({_label(r) for r in records if r["test"] == t}) for t in tests)
    fig, axes = plt.subplots(len(tests), 1, figsize=(max(6.0, 1.3 * width_cases + 2), 4.2 * len(tests)), squeeze=False)
    for ax, test in zip(axes.flat, tests):
        mine = [r for r in records if r["test"] == test]
        cases = sorted({_label(r) for r in mine})
        variants = sorted({str(r["variant"]) for r in mine})
        width = 0.8 / len(variants)
        by_key = {(_label(r), str(r["variant"])): r for r in mine}
        for j, variant in enumerate(variants):
            xs = [i + j * width for i, c in enumerate(cases) if (c, variant) in by_key]
            ys = [by_key[(c, variant)]["median_ms"] for c in cases if (c, variant) in by_key]
            ax.bar(xs, ys, width=width, label=variant)
        floor_label = "device floor (measured)"
        for i, case in enumerate(cases):
            known = [
                f
                for v in variants
                if (case, v) in by_key
                for f in [floor_ms(by_key[(case, v)], floors, shapes.get(suite))]
                if f is not None
            ]
            if known:
                ax.hlines(known[0], i - width / 2, i + 0.8 - width / 2, colors="k", linestyles="--", label=floor_label)
                floor_label = None
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases, rotation=20, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median time (ms)")
        ax.set_title(test, fontsize=8)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(suite, fontsize=10)
    fig.tight_layout()
    path = out / f"plot_{suite}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_suite(suite: str, records: list[dict], floors: dict, shapes: dict, out: Path) -> Path | None:
    """One PNG per suite: time (or items/s for batched end-to-end cases) against the swept size, one line per
    variant, one panel per remaining parameter combination, the device floor dashed where it is known; a bar
    chart of the cases when nothing size-like is swept."""
    plt = _pyplot()
    if not records:
        return None
    has_variants = all(r["variant"] is not None for r in records)
    x_key = _x_key(records)
    if x_key is None:
        return _grouped_bars(suite, records, floors, shapes, out) if has_variants else _bar_chart(suite, records, out)
    records = [r for r in records if x_key in dims(r)]
    throughput = x_key in ("batch", "batch_size", "B", "images") and all(r["items_per_s"] for r in records)
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        size = dims(r)
        fixed = {k: v for k, v in r["params"].items() if k not in LABEL_KEYS and k != x_key and v != r["variant"]}
        # sizes other than x; one that equals x (M = N) is shown as such so M = N cases share a panel
        fixed.update({k: (x_key if v == size[x_key] else v) for k, v in size.items() if k != x_key})
        panels[(r["test"],) + tuple(sorted((k, str(v)) for k, v in fixed.items()))].append(r)
    if has_variants and all(len({dims(r)[x_key] for r in p}) == 1 for p in panels.values()):
        # nothing is swept within any panel (each case has its own sizes): compare variants case by case
        return _grouped_bars(suite, records, floors, shapes, out)
    keys = sorted(panels)[:MAX_PANELS]
    cols = min(4, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        floor_points: dict[float, float] = {}
        for r in panels[key]:
            x = float(dims(r)[x_key])
            lines[str(r["variant"] or r["test"])].append((x, r["items_per_s"] if throughput else r["median_ms"]))
            f = floor_ms(r, floors, shapes.get(suite))
            if f is not None:
                floor_points[x] = dims(r).get(x_key, 1) / (f / 1e3) if throughput else f
        for label, points in sorted(lines.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=label)
        if floor_points:
            xs, ys = zip(*sorted(floor_points.items()))
            ax.plot(xs, ys, "k--", label="device ceiling (measured)" if throughput else "device floor (measured)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x_key)
        ax.set_ylabel("items/s" if throughput else "median time (ms)")
        ax.set_title(", ".join(f"{k}={v}" for k, v in key[1:]) or key[0], fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{suite}", fontsize=10)
    fig.tight_layout()
    path = out / f"plot_{suite}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- entry points
def build_report(out: Path | str) -> list[Path]:
    """Write REPORT.md and plot_<suite>.png from out/results.json; returns the files written."""
    out = Path(out)
    payload = json.loads((out / "results.json").read_text())
    results, floors = payload["results"], payload["floors"]
    shapes = _suite_shapes(out)
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_suite[r["suite"]].append(r)
    written: list[Path] = []
    lines = _header(payload) + _summary(results) + _throughput_table(results)
    notes = _notes(results)
    if notes:
        lines += ["## Notes", "", *notes, ""]
    for suite in sorted(by_suite):
        lines += [f"## {suite}", ""] + _suite_table(by_suite[suite], floors, shapes) + [""]
        lines += _case_speedups(by_suite[suite])
        plot = plot_suite(suite, by_suite[suite], floors, shapes, out)
        if plot is not None:
            written.append(plot)
            lines += [f"![{suite}]({plot.name})", ""]
    lines += _skipped(payload["skipped"]) + _failures(payload["failures"])
    report = out / "REPORT.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return [report] + written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/report.py RESULTS_DIR")
    for written_path in build_report(Path(sys.argv[1])):
        print(written_path)
