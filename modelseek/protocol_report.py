"""The evaluation report: tables in the paper's layout, targets and the drop-off figure."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelseek.protocol import (
    DESCRIPTION_BASELINE,
    KEYWORD_BASELINE,
    MAP_KS,
    METHOD_ORDER,
    SKETCH_SIGMA_PER_64_PX,
    TEXT_TEMPLATES,
    TOP_KS,
    EvalConfig,
    QuerySet,
    Row,
    SpaceResult,
    Zoo,
    describe_zoo,
    mean_relevant,
)
from modelseek.query import DEFAULT_METHOD

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (
    *(f"top{k}" for k in TOP_KS),
    *(f"map@{k}" for k in MAP_KS),
    "map",
)
METRIC_TITLES = {
    **{f"top{k}": f"top-{k}" for k in TOP_KS},
    **{f"map@{k}": f"mAP@{k}" for k in MAP_KS},
    "map": "mAP",
}
TARGET_SPACE = "lite"
DROPOFF_FLOOR = 1e-12
# The breakdowns each query set's main tables show; other groups get a default-method table.
MAIN_GROUPS = {"image": ("all",), "sketch": ("all",), "text": ("seen", "held-out", "all")}


def method_title(method: str, rank: int, reservoir: int) -> str:
    """A row title as in the paper's tables."""
    return {
        "monte_carlo": f"Monte-Carlo ({reservoir} stored samples)",
        "first_moment": "1st moment",
        "first_second_moment": f"1st + 2nd moment (low-rank Σ, r = {rank})",
        "first_second_moment_full": "1st + 2nd moment (full Σ)",
        "gaussian_density": f"Gaussian density (low-rank Σ, r = {rank})",
        "gaussian_density_full": "Gaussian density (full Σ)",
        KEYWORD_BASELINE: "Baseline: keyword match of a caption with descriptions (oracle "
        "caption for images)",
        DESCRIPTION_BASELINE: "Baseline: description embedded in the text space",
    }[method]


@dataclass(frozen=True)
class Target:
    """A figure the issue asks for, checked on the lite space."""

    name: str
    query_set: str
    group: str
    method: str
    metric: str
    threshold: float


TARGETS = (
    Target(
        "Image queries, Gaussian density: top-1", "image", "all", "gaussian_density", "top1", 0.77
    ),
    Target(
        "Image queries, Gaussian density: mAP@10",
        "image",
        "all",
        "gaussian_density",
        "map@10",
        0.75,
    ),
    Target(
        "Sketch queries, Gaussian density: top-5", "sketch", "all", "gaussian_density", "top5", 0.67
    ),
    Target(
        "Text queries on seen classes, 1st + 2nd moment: mAP@10",
        "text",
        "seen",
        "first_second_moment",
        "map@10",
        0.70,
    ),
)


def find_row(
    results: Sequence[SpaceResult], encoder: str, query_set: str, group: str, method: str
) -> Row | None:
    """The row of (space, query set, group, method), or None where it was not measured."""
    for result in results:
        for row in result.rows:
            if (row.space, row.query_set, row.group, row.method) == (
                encoder,
                query_set,
                group,
                method,
            ):
                return row
    return None


def evaluate_targets(results: Sequence[SpaceResult]) -> list[tuple[Target, float | None]]:
    """Each target with its measured value on the lite space (None: lite was not evaluated)."""
    out = []
    for target in TARGETS:
        row = find_row(results, TARGET_SPACE, target.query_set, target.group, target.method)
        out.append((target, None if row is None else row.metrics[target.metric]))
    return out


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def results_table(results: Sequence[SpaceResult], query_set: str, group: str) -> list[str]:
    """Rows space × method of one query set's group, best top-1 of each space in bold."""
    header = ["Space", "Method", "queries", *(METRIC_TITLES[c] for c in METRIC_COLUMNS)]
    lines = [
        "| " + " | ".join([*header, "score ms/query"]) + " |",
        "|" + "---|" * (len(header) + 1),
    ]
    for result in results:
        rows = [r for r in result.rows if r.query_set == query_set and r.group == group]
        rows.sort(key=lambda r: METHOD_ORDER.index(r.method))
        if not rows:
            continue
        best = {c: max(r.metrics[c] for r in rows) for c in METRIC_COLUMNS}
        for row in rows:
            cells = [
                f"**{_fmt(row.metrics[c])}**" if row.metrics[c] == best[c] else _fmt(row.metrics[c])
                for c in METRIC_COLUMNS
            ]
            title = method_title(row.method, result.rank, result.reservoir)
            lines.append(
                f"| {result.encoder} | {title} | {row.num_queries} | "
                + " | ".join(cells)
                + f" | {_ms(row.score_ms)} |"
            )
    return lines + [""]


def breakdown_table(results: Sequence[SpaceResult], query_set: str) -> list[str]:
    """The default method of a query set on every group of its queries."""
    method = DEFAULT_METHOD["text" if query_set == "text" else "image"]
    rows = [
        (result.encoder, row)
        for result in results
        for row in result.rows
        if row.query_set == query_set and row.method == method
    ]
    if not rows:  # a query set no space supports (text with the hermetic space alone)
        return []
    lines = [
        f"Default method ({method}) by group:",
        "",
        "| Space | Group | queries | "
        + " | ".join(METRIC_TITLES[c] for c in METRIC_COLUMNS)
        + " |",
        "|" + "---|" * (3 + len(METRIC_COLUMNS)),
    ]
    for encoder, row in rows:
        cells = " | ".join(_fmt(row.metrics[c]) for c in METRIC_COLUMNS)
        lines.append(f"| {encoder} | {row.group} | {row.num_queries} | {cells} |")
    return lines + [""]


def confusion_table(result: SpaceResult, query_set: str) -> list[str]:
    """Per label: top-1 of the default method and the labels wrongly ranked first."""
    method = DEFAULT_METHOD["text" if query_set == "text" else "image"]
    rows = result.confusions.get((query_set, method), [])
    if not rows:
        return []
    lines = [
        f"{result.encoder}, {query_set} queries, {method}: top-1 per label of the query's source "
        "and the labels of the models wrongly ranked first (count):",
        "",
        "| Label | top-1 | wrongly first |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {_fmt(hit)} | {confused} |" for label, hit, confused in rows]
    return lines + [""]


def timing_table(results: Sequence[SpaceResult], query_sets: Sequence[QuerySet]) -> list[str]:
    """Encode ms per query by space and query set, and score ms per query by method."""
    names = [qs.name for qs in query_sets]
    lines = [
        "| Space | Step | " + " | ".join(f"{n} ms/query" for n in names) + " |",
        "|" + "---|" * (2 + len(names)),
    ]
    for result in results:
        cells = [_ms(result.encode_ms[n]) if n in result.encode_ms else "—" for n in names]
        lines.append(f"| {result.encoder} | encode | " + " | ".join(cells) + " |")
        for method in METHOD_ORDER:
            row_ms = []
            for name in names:
                row = find_row(results, result.encoder, name, "all", method)
                row_ms.append("—" if row is None else _ms(row.score_ms))
            if any(cell != "—" for cell in row_ms):
                title = method_title(method, result.rank, result.reservoir)
                lines.append(f"| {result.encoder} | {title} | " + " | ".join(row_ms) + " |")
    return lines + [""]


def save_dropoff_figure(
    results: Sequence[SpaceResult], query_sets: Sequence[QuerySet], path: Path
) -> None:
    """Mean p(model | q) against rank, one panel per (space, query set), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [qs.name for qs in query_sets]
    fig, axes = plt.subplots(
        len(results), len(names), figsize=(4.2 * len(names), 3.4 * len(results)), squeeze=False
    )
    for r, result in enumerate(results):
        for c, name in enumerate(names):
            ax = axes[r][c]
            curves = {m: v for (n, m), v in result.dropoff.items() if n == name}
            if not curves:
                ax.set_axis_off()
                ax.set_title(f"{result.encoder}: {name} (not evaluated)")
                continue
            for method in (m for m in METHOD_ORDER if m in curves):
                values = curves[method]
                ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=method)
            ax.set_yscale("log")
            # The densities put 1e-100 and less on later ranks; below 1e-12 is "nothing".
            ax.set_ylim(DROPOFF_FLOOR, 1.5)
            ax.set_title(f"{result.encoder}: {name} queries")
            ax.set_xlabel("rank")
            ax.set_ylabel("mean p(model | q)")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_markdown(
    cfg: EvalConfig,
    zoo: Zoo,
    query_sets: Sequence[QuerySet],
    results: Sequence[SpaceResult],
    leaks: tuple[int, int],
    machine: dict[str, str],
    command: str,
    wall_s: float,
    figure_name: str,
    notes: str = "",
) -> str:
    """The whole report; `notes` (markdown) closes it when given."""
    lines = _header(cfg, zoo, query_sets, results, leaks, machine, command, wall_s)
    for query_set in query_sets:
        for group in MAIN_GROUPS[query_set.name]:
            if not any(
                r.query_set == query_set.name and r.group == group for s in results for r in s.rows
            ):
                continue
            title = query_set.name.capitalize() + " queries"
            lines += [f"## {title}" + ("" if group == "all" else f": {group} classes"), ""]
            lines += results_table(results, query_set.name, group)
        lines += breakdown_table(results, query_set.name)
    lines += ["## Per label (why the misses)", ""]
    for result in results:
        for query_set in query_sets:
            lines += confusion_table(result, query_set.name)
    lines += ["## Timing", ""]
    lines += [
        "Milliseconds per query on this machine: *encode* is the feature space's encoder "
        "(batches of up to 256); *score* is `shards.scoring.score` over the whole collection "
        "plus the exact top-10 of `shards.topk.topk_rows`, all queries of a set as one block "
        "(so per query it is the batched cost); baselines: their similarity matrix alone.",
        "",
    ]
    lines += timing_table(results, query_sets)
    lines += ["Index builds (Ray tasks, cached in the work dir between runs):", ""]
    for result in results:
        lines.append(
            f"- {result.encoder}: version {result.index_version}, {result.models_sampled} models "
            f"sampled in {result.index_seconds:.0f} s"
            + (" (reused from the cache)" if result.models_sampled == 0 else "")
        )
    lines += ["", "## Score drop-off", "", f"![per-query score drop-off]({figure_name})", ""]
    lines += [
        "Mean over queries of p(model | q) = softmax(score / T) at each rank (T = τ for the "
        "1st moment's cosines, 1 for the log-likelihoods): how peaked each method's answer is. "
        f"The axis stops at {DROPOFF_FLOOR:g}; the densities fall far below it.",
        "",
    ]
    lines += targets_section(results)
    if notes:
        lines += ["## Notes (written by hand after the run)", "", notes.strip(), ""]
    return "\n".join(lines)


def _header(
    cfg: EvalConfig,
    zoo: Zoo,
    query_sets: Sequence[QuerySet],
    results: Sequence[SpaceResult],
    leaks: tuple[int, int],
    machine: dict[str, str],
    command: str,
    wall_s: float,
) -> list[str]:
    facts = describe_zoo(zoo)
    sizes = {qs.name: len(qs) for qs in query_sets}
    kinds = ", ".join(f"{count} {kind}" for kind, count in facts["kinds"].items())
    origins = ", ".join(
        f"{count} with {origin} queries" for origin, count in facts["origins"].items()
    )
    duplicates = ", ".join(f"{r.encoder}: {r.duplicate_queries}" for r in results)
    spaces = "; ".join(
        f"`{r.encoder}` = {r.space_id} (index at {r.index_root}, full Σ "
        f"{'kept' if r.full_covariance else 'NOT kept'}, r = {r.rank}, τ = {r.tau:.4g})"
        for r in results
    )
    return [
        "# Evaluation: the paper's protocol on the evaluation zoo",
        "",
        f"Written by `modelseek eval` on {machine['date']} in {wall_s / 60:.1f} min. Command:",
        "",
        f"    {command}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, "
        f"{machine['system']}; Python {machine['python']}, torch {machine['torch']}. "
        f"Load average at the start {machine['load_start']}.",
        "",
        "## Zoo",
        "",
        f"{zoo.root} ({'small' if zoo.small else 'full'} build, fingerprint "
        f"{zoo.fingerprint()[:12]}: sha256 of catalog.yaml and zoo.json): {facts['models']} models "
        f"({kinds}; {origins}), {len(zoo.labels)} labels. Labels seen by the lite space's "
        f"training: {', '.join(facts['seen']) or 'none'}. Held out from it: "
        f"{', '.join(facts['held_out']) or 'none'}. Models with more than one label: "
        f"{', '.join(facts['mixed']) or 'none'}.",
        "",
        f"Feature spaces: {spaces}. Index settings: {cfg.samples_per_model} samples per model "
        f"(a sample-set folder gives at most its files), ε = {cfg.eps}; τ is "
        + (
            "each space's own, the temperature it was trained with (its manifest's)."
            if cfg.tau is None
            else f"{cfg.tau} in every space."
        ),
        "",
        "## Queries",
        "",
        f"- **Image** ({sizes.get('image', 0)}): up to {cfg.max_queries_per_model} per model from "
        "`queries/<id>/` of the zoo: held-out real images of the model's classes where "
        "zoo.json says `queries: real` (models trained on real data), images generated with "
        "seeds the index never uses where it says `generated`. The index samples only what "
        "the catalog names; query folders are never read while indexing. Checks: "
        f"{leaks[0]} of {leaks[1]} query images of sample-set models are pixel-identical to an "
        "indexed file; image queries whose feature equals a stored sample of their own model "
        f"(cos > 1 − 1e-6, the {results[0].reservoir if results else 0} stored samples only): "
        f"{duplicates or '—'}.",
        f"- **Sketch** ({sizes.get('sketch', 0)}): each image query as Canny edges "
        "(`skimage.feature.canny` of the grayscale, σ = "
        f"{SKETCH_SIGMA_PER_64_PX:g} px per 64 px of the shorter side), drawn black on white, "
        "same size.",
        f"- **Text** ({sizes.get('text', 0)}): every model's catalog description, and every "
        f"label's noun in the prompts {', '.join(repr(t) for t in TEXT_TEMPLATES)}. Seen / "
        "held-out: a prompt by its label, a description seen only when all its model's labels "
        "are. The hermetic space's text tower has random weights: it is left out of text "
        "queries and of the description-embedding baseline.",
        "",
        "## Metrics",
        "",
        "- top-k accuracy: the query's source model is among the first k (a label's prompt has "
        "no single source: any model with that label counts).",
        "- mAP@k as the paper's code: AP@k = Σ_{j≤k} P(j)·rel(j) / min(#relevant, k); mAP is AP "
        "over the whole ranking. Relevant to an image, sketch or description query of model m: "
        "every model sharing a label with m (a mixed {sandal, sneaker} model is relevant to "
        "sandal queries and to sneaker queries); to a prompt of label l: the models with l. "
        "Mean relevant models per query: "
        + ", ".join(f"{qs.name} {mean_relevant(qs):.1f}" for qs in query_sets)
        + ".",
        "- Ties rank by model id everywhere; a random ranking has top-1 = "
        f"{1 / max(1, facts['models']):.3f}.",
        "- Baselines: *keyword match* scores the Jaccard overlap of content words (lower-cased, "
        "stopwords and a plural 's' dropped) of a caption with each description; an image or "
        "sketch query's caption is what a perfect captioner would say, 'a photo of <its "
        "source's label nouns>', a text query is its own caption. *Description embedding* is "
        "cos(query feature, the description's text feature).",
        "",
    ]


def targets_section(results: Sequence[SpaceResult]) -> list[str]:
    lines = ["## Targets (lite space, full zoo)", ""]
    for target, value in evaluate_targets(results):
        if value is None:
            lines.append(
                f"- **NOT RUN** {target.name} ≥ {target.threshold:.2f}: lite not evaluated "
                "(add it with `--encoders lite`)"
            )
            continue
        margin = value - target.threshold
        verdict = "PASS" if margin >= 0 else "MISS"
        lines.append(
            f"- **{verdict}** {target.name} ≥ {target.threshold:.2f}: {value:.3f} "
            f"({'+' if margin >= 0 else '−'}{abs(margin):.3f})"
        )
    held_out = find_row(results, TARGET_SPACE, "text", "held-out", "first_second_moment")
    if held_out is not None:
        lines.append(
            f"- Text on held-out classes (reported, no target): mAP@10 "
            f"{held_out.metrics['map@10']:.3f}, top-5 {held_out.metrics['top5']:.3f} "
            f"({held_out.num_queries} queries)."
        )
    return lines + [""]


def report_paths(out: Path) -> tuple[Path, Path]:
    """(markdown, figure): the figure lies beside the report as dropoff.png."""
    return out, out.parent / "dropoff.png"


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, versions and the date, as `modelseek bench` records them."""
    import torch

    from modelseek.bench import describe_machine

    return describe_machine(torch.get_num_threads())


def write_report(
    cfg: EvalConfig,
    zoo: Zoo,
    query_sets: Sequence[QuerySet],
    results: Sequence[SpaceResult],
    command: str,
    wall_s: float,
    notes: str = "",
) -> str:
    """Write the markdown report and the figure beside it; returns the targets as text lines."""
    from modelseek.protocol import count_folder_leaks

    markdown_path, figure_path = report_paths(Path(cfg.out))
    leaks = count_folder_leaks(zoo, query_sets[0])
    save_dropoff_figure(results, query_sets, figure_path)
    text = render_markdown(
        cfg,
        zoo,
        query_sets,
        results,
        leaks,
        machine_facts(),
        command,
        wall_s,
        figure_path.name,
        notes,
    )
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(text)
    logger.info("wrote %s and %s", markdown_path, figure_path)
    return "\n".join([f"wrote {markdown_path} and {figure_path}", *targets_section(results)])
