"""The run report: what a chain did, how each stage moved the held-out metrics, and where it all came from.

`write_report(RUN_DIR)` reads a chain's run directory (`RUN_DIR/{sft,dpo,rlvr}/`
with manifest.json and metrics.jsonl, plus `pipeline.json` and `eval.json`
when the pipeline wrote them), or a directory of chains (`runs/demo/think`,
`runs/demo/instruct`), and writes

    RUN_DIR/report.md            Markdown; curves linked as report/*.png
    RUN_DIR/report.html          one self-contained page; the same curves embedded
    RUN_DIR/report/*.png         loss and reward curves

Per chain: the stage table (ran or skipped, wall time, steps, checkpoint),
the held-out metrics after each stage (the same suite on the input and on
every stage's checkpoint, `posttrain.eval.heldout`: like the Olmo 3 SFT / DPO /
final tables), the benchmark suite's table after each stage when the pipeline
ran one (`--eval-suite`, `posttrain.eval.results.suite_table`, with the
released Olmo 3 numbers beside), each stage's own final held-out numbers, the curves, and the
lineage (input checkpoint and hash, recipe hash, data fingerprints, git
commit, package versions). The document is built once as a list of blocks and
rendered twice, so the Markdown and the HTML say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, read_json
from posttrain.eval.heldout import EVAL_FILE, METRIC_LABELS
from posttrain.eval.results import EVAL_DIR, find_results, suite_table
from posttrain.lineage import HEADLINE_METRICS
from posttrain.metrics import read_metrics
from posttrain.pipeline import CHAIN, PIPELINE_FILE

REPORT_MD, REPORT_HTML, ASSETS = "report.md", "report.html", "report"
STAGE_TITLES = {"input": "input", "sft": "SFT", "dpo": "DPO", "rlvr": "RLVR (final)"}
# Curves drawn per stage when its metrics.jsonl has them: (figure, metric keys).
LOSS_KEYS = ("loss",)
REWARD_KEYS = ("reward/mean", "pass_rate", "eval/pass@1", "reward_acc")


# --------------------------------------------------------------------------
# Reading a run


@dataclass
class StageRun:
    stage: str
    out_dir: Path
    manifest: dict
    records: list[dict]
    summary: dict = field(default_factory=dict)  # this stage's row of pipeline.json, if any


@dataclass
class ChainRun:
    name: str
    run_dir: Path
    stages: list[StageRun]
    pipeline: dict | None
    evals: dict | None


def read_chain(run_dir: Path) -> ChainRun | None:
    """The stages of one chain directory that have a manifest; None when it has none."""
    pipeline = read_json(run_dir / PIPELINE_FILE) if (run_dir / PIPELINE_FILE).is_file() else None
    rows = {s["stage"]: s for s in (pipeline or {}).get("stages", [])}
    stages = []
    for stage in CHAIN:
        manifest_path = run_dir / stage / EXPORT_DIR / MANIFEST
        if not manifest_path.is_file():
            manifest_path = run_dir / stage / MANIFEST
        if manifest_path.is_file():
            stages.append(StageRun(stage, run_dir / stage, read_json(manifest_path), read_metrics(run_dir / stage),
                                   rows.get(stage, {})))
    if not stages:
        return None
    name = (pipeline or {}).get("variant") or (stages[0].manifest.get("config") or {}).get("variant") or run_dir.name
    evals = read_json(run_dir / EVAL_FILE) if (run_dir / EVAL_FILE).is_file() else None
    return ChainRun(name=name, run_dir=run_dir, stages=stages, pipeline=pipeline, evals=evals)


def find_chains(run_dir: Path) -> list[ChainRun]:
    """RUN_DIR itself if it is a chain, else its subdirectories that are (sorted: think before instruct)."""
    chain = read_chain(run_dir)
    if chain is not None:
        return [chain]
    found = [c for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()) if (c := read_chain(sub))]
    order = {"think": 0, "instruct": 1}
    return sorted(found, key=lambda c: (order.get(c.name, 2), c.name))


# --------------------------------------------------------------------------
# Blocks: one document, two renderings


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path  # absolute
    alt: str


Block = Heading | Para | Table | Image


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def seconds(value) -> str:
    return "-" if value is None else f"{value:.0f}s"


def chain_blocks(chain: ChainRun, assets: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, f"{chain.name.capitalize()} chain ({chain.run_dir})")]
    blocks += stage_table(chain)
    blocks += eval_table(chain)
    blocks += suite_tables(chain)
    blocks += own_metrics_table(chain)
    blocks += curve_blocks(chain, assets)
    blocks += lineage_blocks(chain)
    return blocks


def stage_table(chain: ChainRun) -> list[Block]:
    total = (chain.pipeline or {}).get("wall_s")
    intro = f"Last pipeline invocation took {seconds(total)}." if total is not None else "Stages found on disk:"
    return [Heading(3, "Stages"), Para(intro), stages(chain)]


def stages(chain: ChainRun) -> Table:
    rows = []
    for s in chain.stages:
        metrics = s.manifest.get("metrics") or {}
        action = s.summary.get("action", "-")
        reason = s.summary.get("reason")
        rows.append([STAGE_TITLES[s.stage], action + (f" ({reason})" if reason and action != "-" else ""),
                     seconds(s.manifest.get("wall_time_s")), fmt(metrics.get("steps")),
                     f"`{s.out_dir / EXPORT_DIR}`"])
    return Table(["stage", "action", "training wall time", "steps", "checkpoint"], rows)


def eval_table(chain: ChainRun) -> list[Block]:
    """The same held-out suite on the chain's input and after every stage."""
    table = held_out(chain)
    if table is None:
        return [Heading(3, "Held-out metrics after each stage"),
                Para("No evaluation was recorded (the pipeline ran with --eval-size 0).")]
    suite, results = chain.evals.get("suite", {}), chain.evals["results"]
    about = (f"Greedy responses to {suite.get('prompts', '?')} held-out RLVR prompts (at most {suite.get('max_tokens', '?')} "
             f"tokens) scored by their verifiers; preference accuracy on {suite.get('pairs', '?')} held-out DPO pairs "
             "(chosen response more likely per token than rejected). Input: "
             f"`{results.get('input', {}).get('checkpoint', '-')}`.")
    return [Heading(3, "Held-out metrics after each stage"), Para(about), table]


def held_out(chain: ChainRun) -> Table | None:
    """metric x (input, SFT, DPO, RLVR) from eval.json; None when there is no evaluation."""
    if not chain.evals or not chain.evals.get("results"):
        return None
    results = chain.evals["results"]
    columns = [name for name in ("input", *CHAIN) if name in results]
    present = {k for c in columns for k in results[c]["metrics"]}
    keys = [k for k in METRIC_LABELS if k in present]
    keys += sorted(k for k in present if k.startswith("pass@1/") and k not in METRIC_LABELS)
    rows = [[METRIC_LABELS.get(k, k)] + [fmt(results[c]["metrics"].get(k)) for c in columns] for k in keys]
    return Table(["metric"] + [STAGE_TITLES[c] for c in columns], rows)


def suite_tables(chain: ChainRun) -> list[Block]:
    """Benchmark suites run on a stage's checkpoint (`--eval-suite`: RUN_DIR/<stage>/eval/<suite>/results.json)."""
    blocks: list[Block] = []
    for s in chain.stages:
        for content in find_results(s.out_dir / EVAL_DIR, s.manifest.get("content_hash")):
            header, rows, note = suite_table(content)
            blocks += [Heading(4, f"{content.get('suite') or 'tasks'} after {STAGE_TITLES[s.stage]}"), Para(note),
                       Table(header, rows)]
    return [Heading(3, "Benchmark suites after each stage (posttrain eval)"), *blocks] if blocks else []


def own_metrics_table(chain: ChainRun) -> list[Block]:
    """Each stage's own final held-out numbers, as its manifest records them."""
    rows = []
    for s in chain.stages:
        metrics = s.manifest.get("metrics") or {}
        shown = {k: v for k, v in metrics.items() if _own_metric(k) and isinstance(v, (int, float))}
        if shown:
            rows.append([STAGE_TITLES[s.stage], ", ".join(f"{k} {fmt(float(v))}" for k, v in shown.items())])
    if not rows:
        return []
    return [Heading(3, "Each stage's own held-out measurements"), Table(["stage", "final metrics (manifest)"], rows)]


def _own_metric(key: str) -> bool:
    return key.startswith(HEADLINE_METRICS) or key == "loss"


def curve_blocks(chain: ChainRun, assets: Path) -> list[Block]:
    blocks: list[Block] = []
    for figure, keys in (("loss", LOSS_KEYS), ("reward", REWARD_KEYS)):
        path = assets / f"{chain.run_dir.name}_{figure}.png"
        if plot_stages(chain, keys, f"{chain.name}: {figure}", path):
            blocks.append(Image(path, f"{chain.name} {figure} curves"))
    return ([Heading(3, "Curves")] + blocks) if blocks else []


def plot_stages(chain: ChainRun, keys: Sequence[str], title: str, path: Path) -> bool:
    """One subplot per stage that logged any of `keys` (metric against step); False when none did."""
    panels = []
    for s in chain.stages:
        series = {k: [(r["step"], r[k]) for r in s.records if isinstance(r.get(k), (int, float)) and "step" in r]
                  for k in keys}
        series = {k: v for k, v in series.items() if v}
        if series:
            panels.append((s.stage, series))
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), dpi=100, squeeze=False)
    for ax, (stage, series) in zip(axes[0], panels):
        for key, points in series.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=key, linewidth=1.4, marker="o" if len(points) < 12 else None, markersize=3)
        ax.set_title(STAGE_TITLES[stage])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def lineage_blocks(chain: ChainRun) -> list[Block]:
    rows, env = [], None
    for s in chain.stages:
        m = s.manifest
        parent = m.get("parent") or {}
        data = "; ".join(f"`{p}` {fp}" for p, fp in (m.get("data_sources") or {}).items()) or "-"
        rows.append([STAGE_TITLES[s.stage], f"`{parent.get('path')}` ({parent.get('hash')})", str(m.get("content_hash")),
                     str(m.get("config_hash")), data])
        env = m
    git = (env or {}).get("git") or {}
    versions = ", ".join(f"{k} {v}" for k, v in sorted(((env or {}).get("packages") or {}).items()))
    commit = f"git commit `{git.get('commit')}`" + (" (uncommitted changes)" if git.get("dirty") else "")
    return [Heading(3, "Lineage"),
            Table(["stage", "input checkpoint (hash)", "checkpoint hash", "recipe hash", "data (fingerprint)"], rows),
            Para(f"{commit}; {versions}. The full resolved recipe of each stage is in its manifest.json.")]


# --------------------------------------------------------------------------
# Rendering


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text)
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Table):
            out.append("| " + " | ".join(block.header) + " |")
            out.append("|" + "---|" * len(block.header))
            out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block.rows]
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.path.relative_to(base).as_posix()})")
        out.append("")
    return "\n".join(out)


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1d2330; background: #ffffff; line-height: 1.45; padding: 0 1rem; }
h1 { border-bottom: 3px solid #2c6bed; padding-bottom: .3rem; }
h2 { margin-top: 2.4rem; color: #2c6bed; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #c9d2e3; padding: .35rem .6rem; text-align: left; vertical-align: top; }
th { background: #e8eefc; }
tr:nth-child(even) td { background: #f6f8fd; }
code { background: #eef1f6; padding: 0 .25rem; border-radius: 3px; font-size: .85em; word-break: break-all; }
img { max-width: 100%; border: 1px solid #dde3ee; margin: .4rem 0; }
"""


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only inline markup the blocks use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: Sequence[Block], title: str) -> str:
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{CSS}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode()
            out.append(f"<img alt='{html.escape(block.alt)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out)


def to_text(table: Table, indent: str = "  ") -> str:
    """A table as aligned plain text (for the terminal)."""
    rows = [table.header] + [[cell.replace("`", "") for cell in row] for row in table.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.header))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def summary_text(run_dir: str | Path) -> str:
    """Each chain's stages and held-out metrics after each stage, as terminal text."""
    parts = []
    for chain in find_chains(Path(run_dir)):
        parts.append(f"{chain.name} chain ({chain.run_dir}):\n" + to_text(stages(chain)))
        table = held_out(chain)
        if table is not None:
            parts.append(f"{chain.name}: held-out metrics after each stage\n" + to_text(table))
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Written:
    markdown: Path
    html: Path
    images: tuple[Path, ...]
    chains: tuple[str, ...]


def write_report(run_dir: str | Path) -> Written:
    """Write RUN_DIR/report.md, report.html and report/*.png (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    chains = find_chains(run_dir)
    if not chains:
        raise FileNotFoundError(f"{run_dir}: no stage manifests here (expected RUN_DIR/<stage>/manifest.json "
                                "or RUN_DIR/<chain>/<stage>/manifest.json)")
    assets = run_dir / ASSETS
    title = f"posttrain report: {run_dir}"
    blocks: list[Block] = [Heading(1, title),
                           Para("Chains: " + ", ".join(f"{c.name} ({len(c.stages)} stage(s))" for c in chains) + ".")]
    for chain in chains:
        blocks += chain_blocks(chain, assets)
    markdown = run_dir / REPORT_MD
    markdown.write_text(to_markdown(blocks, run_dir))
    page = run_dir / REPORT_HTML
    page.write_text(to_html(blocks, title))
    images = tuple(b.path for b in blocks if isinstance(b, Image))
    return Written(markdown, page, images, tuple(c.name for c in chains))
