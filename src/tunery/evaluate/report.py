"""Comparison reports: a terminal table, report.json and a self-contained report.html with
the training curves (from metrics.jsonl) and metric bars drawn as inline SVG."""

import html
import json
from pathlib import Path

COLORS = {"base": "#9aa5b1", "prompt_only": "#f0a04b", "tuned": "#2f80ed", "train": "#2f80ed", "val": "#e5534b",
          "base_constrained": "#616e7c", "prompt_only_constrained": "#c77c1e", "tuned_constrained": "#1b5fbf"}


def print_comparison(result: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    cs = result["contestants"]
    names = list(next(iter(cs.values()))["metrics"])
    table = Table(title=f"{result['examples']} held-out examples from {result['data']}")
    table.add_column("")
    for c in cs:
        table.add_column(c, justify="right")
    for name in names:
        table.add_row(name, *(_fmt(cs[c]["metrics"].get(name)) for c in cs))
    table.add_row("prompt tokens / request", *(f"{cs[c]['prompt_tokens_per_request']:.1f}" for c in cs))
    table.add_row("latency s / request", *(f"{cs[c]['latency_s_per_request']:.3f}" for c in cs))
    console.print(table)
    s = result["summary"]
    wins = ", ".join(f"{m}: {w}" for m, w in s["quality_winner"].items())
    console.print(f"{_pair(s)[0]} saves {s['prompt_tokens_saved_per_request']:.1f} prompt tokens "
                  f"({s['prompt_tokens_saved_fraction']:.0%}) and {s['latency_saved_s_per_request'] * 1000:.0f} ms per "
                  f"request against {_pair(s)[1]}; quality: {wins} → "
                  + ("[green]the fine-tune wins[/]" if s["tuned_wins_on_quality"] else "[yellow]the fine-tune does not win on every metric[/]"))
    if result.get("verdict"):
        v = result["verdict"]
        console.print(("[bold green]" if v["worth_it"] else "[bold yellow]") + "verdict:[/] " + escape(v["text"]))


def _pair(s: dict) -> tuple[str, str]:
    """How the summary names its two contestants: the fine-tune and the prompt-only baseline, as run."""
    tuned, baseline = s.get("tuned", "tuned"), s.get("baseline", "prompt_only")
    return (f"the fine-tune ({tuned})" if tuned != "tuned" else "the fine-tune",
            f"the prompt-only baseline ({baseline})" if baseline != "prompt_only" else "the prompt-only baseline")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_report(result: dict, out_dir: str | Path, metrics_rows: list[dict] | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(result, indent=2))
    html_path.write_text(render_html(result, metrics_rows or []))
    return json_path, html_path


def line_chart(series: dict[str, list[tuple[float, float]]], width=640, height=260, title="") -> str:
    """An SVG line chart; series maps a name to (x, y) points."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return "<p>no training metrics recorded</p>"
    pad = 40
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda x: pad + (x - x0) / (x1 - x0) * (width - 2 * pad)  # noqa: E731
    sy = lambda y: height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)  # noqa: E731
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#555"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#555"/>',
             f'<text x="{pad - 4}" y="{sy(y1) + 4}" text-anchor="end" font-size="11">{y1:.3g}</text>',
             f'<text x="{pad - 4}" y="{sy(y0) + 4}" text-anchor="end" font-size="11">{y0:.3g}</text>',
             f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end" font-size="11">step {x1:g}</text>']
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS.get(name, "#333")
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" data-name="{name}" fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        if len(pts) < 40:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        parts.append(f'<text x="{width - pad - 90}" y="{pad + 14 * i}" fill="{color}" font-size="12">{name} loss</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(result: dict, width=640) -> str:
    cs = result["contestants"]
    names = [m for m in next(iter(cs.values()))["metrics"] if m not in ("loss", "perplexity")]
    row_h, pad = 22, 130
    height = 30 + len(names) * (len(cs) * row_h + 12)
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    y = 20
    for m in names:
        parts.append(f'<text x="4" y="{y + 14}" font-weight="bold" font-size="12">{html.escape(m)}</text>')
        for c, res in cs.items():
            v = res["metrics"].get(m) or 0.0
            w = max(1.0, v * (width - pad - 60))
            parts.append(f'<text x="{pad - 6}" y="{y + 15}" text-anchor="end" font-size="11">{c}</text>'
                         f'<rect class="bar" x="{pad}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{COLORS.get(c, "#333")}"/>'
                         f'<text x="{pad + w + 4:.1f}" y="{y + 15}" font-size="11">{v:.3f}</text>')
            y += row_h
        y += 12
    parts.append("</svg>")
    return "".join(parts)


def _verdict_html(v: dict | None) -> str:
    if not v:
        return ""
    return (f'<h2>Verdict: should this task be fine-tuned?</h2><p class="verdict" data-worth-it="{str(v["worth_it"]).lower()}">'
            f'{html.escape(v["text"])}</p>')


def render_html(result: dict, metrics_rows: list[dict]) -> str:
    train = [(r["step"], r["loss"]) for r in metrics_rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in metrics_rows if "val_loss" in r]
    cs = result["contestants"]
    names = list(dict.fromkeys(m for r in cs.values() for m in r["metrics"]))
    cost_rows = "".join(
        f"<tr><td>{c}</td><td>{r['prompt_tokens_per_request']:.1f}</td><td>{r['latency_s_per_request']:.3f}</td>"
        + "".join(f"<td>{_fmt(r['metrics'].get(m))}</td>" for m in names) + "</tr>" for c, r in cs.items())
    metric_heads = "".join(f"<th>{html.escape(m)}</th>" for m in names)
    differ = []
    for i, ex in enumerate(cs["tuned"]["examples"]):
        preds = {c: cs[c]["examples"][i]["prediction"] for c in cs}
        if len(set(preds.values())) > 1:
            differ.append((ex, preds))
    ex_rows = "".join(
        "<tr><td>" + html.escape(ex["prompt"]) + "</td><td>" + html.escape(ex["reference"]) + "</td>"
        + "".join(f"<td>{html.escape(p)}</td>" for p in preds.values()) + "</tr>" for ex, preds in differ[:50])
    s = result["summary"]
    verdict = ("The fine-tune wins on quality" if s["tuned_wins_on_quality"] else "The fine-tune does not win on every metric")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tunery report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1f2933; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #cbd2d9; padding: 4px 8px; vertical-align: top; }}
th {{ background: #f5f7fa; }} .chart {{ background: #fff; border: 1px solid #e4e7eb; margin: 0.5em 0; }}
.summary {{ font-size: 1.1em; padding: 0.6em 1em; background: #eef4fd; border-left: 4px solid #2f80ed; }}
</style></head><body>
<h1>What fine-tuning changed</h1>
<p>{result['examples']} held-out examples from <code>{html.escape(str(result['data']))}</code>;
base <code>{html.escape(str(result['base']))}</code>, tuned <code>{html.escape(str(result['tuned']))}</code>,
prompt-only baseline: {result['few_shot']} few-shot examples{' and a system prompt' if result.get('system') else ''}.</p>
<p class="summary">{verdict}. Against {html.escape(_pair(s)[1])} it saves {s['prompt_tokens_saved_per_request']:.1f} prompt tokens
({s['prompt_tokens_saved_fraction']:.0%}) and {s['latency_saved_s_per_request'] * 1000:.0f} ms per request.</p>
{_verdict_html(result.get("verdict"))}
<h2>Training</h2>
{line_chart({"train": train, "val": val} if val else {"train": train}, title="loss by step")}
<h2>Metrics</h2>
{bar_chart(result)}
<table><tr><th>contestant</th><th>prompt tokens / request</th><th>latency s / request</th>{metric_heads}</tr>{cost_rows}</table>
<h2>Examples where the contestants differ ({len(differ)})</h2>
<table><tr><th>input</th><th>expected</th>{''.join(f'<th>{c}</th>' for c in cs)}</tr>{ex_rows}</table>
</body></html>
"""
