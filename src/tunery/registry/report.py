"""Terminal output for the registry commands (their --json forms are the dicts themselves)."""

import json


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def public(row: dict) -> dict:
    """A model's record as `--json` prints it."""
    return {k: v for k, v in row.items() if k != "pid"}


def print_list(rows: list[dict], console, stale: bool = False) -> None:
    from rich.table import Table

    if not rows:
        console.print("no stale models" if stale else "no models yet: `tunery train` records every run here")
        return
    table = Table()
    table.add_column("name", no_wrap=True)
    for col in (("base", "why stale") if stale else ("status", "base", "val_loss", "files", "created")):
        table.add_column(col, overflow="fold", no_wrap=col in ("status", "files"))
    for r in rows:
        if stale:
            table.add_row(r["name"], r["base_ref"], r.get("stale_reason") or "-")
            continue
        files = "[red]missing[/]" if r["files"] == "missing" else r["files"]
        table.add_row(r["name"], r["status"], r["base_name"], _fmt((r["metrics"] or {}).get("val_loss")), files,
                      r["created"][:16].replace("T", " "))
    console.print(table)


def print_show(row: dict, console) -> None:
    from rich.table import Table

    table = Table(show_header=False, title=row["name"])
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    artifact = f"{row['run_dir']}/{row['artifact']}" + (" [red](missing)[/]" if row["files"] == "missing" else "")
    for k, v in [("id", row["id"]), ("status", row["status"] + (f": {row['error']}" if row.get("error") else "")),
                 ("method", row["method"]), ("base", f"{row['base_ref']} ({row['base_name']})"),
                 ("base weights sha256", row["base_weights_sha256"]),
                 ("base tokenizer sha256", row["base_tokenizer_sha256"]), ("artifact", artifact),
                 ("derived from", row.get("derived_from_name") or row["derived_from"]),
                 ("created", row["created"]), ("finished", row["finished"])]:
        table.add_row(k, _fmt(v))
    for role, d in (row["data"] or {}).items():
        if d:
            what = f"{d['file']} (sha256 {d['sha256'][:12]}, " if d.get("file") else (
                f"split {d.get('split')} of the training file (")
            table.add_row(f"{role} data", what + f"{d.get('used')} used"
                          + (f" of {d['examples']})" if d.get("examples") is not None else ")"))
    for k, v in (row["metrics"] or {}).items():
        table.add_row(k, _fmt(v))
    if row.get("live"):
        table.add_row("latest step", _fmt(row["live"]))
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in row["versions"].items()))
    console.print(table)
    for e in row.get("evals", []):
        scores = ", ".join(f"{k} {v:.4f}" for k, v in e["results"].items())
        on = f" on base {e['base_ref']}" if e["base_ref"] else ""
        console.print(f"{e['kind']} {e['created']}{on}: {e['data_file']} ({e['examples']} examples): {scores}")
    for e in row.get("exports", []):
        console.print(f"export {export_label(e)}")


def print_diff(d: dict, console) -> None:
    from rich.table import Table

    for section in ("base", "data", "config", "versions"):
        if not d[section]:
            console.print(f"{section}: same")
            continue
        table = Table(title=section, title_justify="left")
        for col in ("", d["a"], d["b"]):
            table.add_column(col, overflow="fold")
        for k, (a, b) in d[section].items():
            table.add_row(k, _fmt(a), _fmt(b))
        console.print(table)
    if d["metrics"]:
        table = Table(title="metrics (eval[...]: recorded evaluations, by eval file hash)", title_justify="left")
        table.add_column("", no_wrap=True)
        for col in (d["a"], d["b"], "delta"):
            table.add_column(col, justify="right", overflow="fold")
        for k, (a, b, delta) in d["metrics"].items():
            table.add_row(k, _fmt(a), _fmt(b), "-" if delta is None else _signed(delta))
        console.print(table)


def _signed(v) -> str:
    return f"{v:+d}" if isinstance(v, int) else f"{v:+.4f}"


def print_lineage(lin: dict, console) -> None:
    from rich.tree import Tree

    def label(r, here=False):
        if r.get("removed"):
            return f"[dim]{r['id'][:8]} (removed)[/]"
        text = f"{r['name']} [dim]{r['status']}, base {r['base_ref']}, {r['created']}[/]"
        return f"[bold]{text}[/] ◀" if here else text

    me = lin["model"]
    chain = [*lin["ancestors"], me]
    root = Tree(label(chain[0], chain[0] is me))
    node = root
    for r in chain[1:]:
        node = node.add(label(r, r is me))
    nodes = {me["id"]: node}
    for r in lin["descendants"]:  # parents come before children (ordered by creation)
        parent = nodes.get(r["derived_from"], node)
        nodes[r["id"]] = parent.add(label(r))
    for r in (me, *lin["descendants"]):
        for e in r.get("exports", []):
            nodes[r["id"]].add(f"[cyan]export {export_label(e)}[/]")
    console.print(root)


def export_label(e: dict) -> str:
    """`gguf q8_0 -> /path (agreement 100%)`: one export in a line."""
    from rich.markup import escape

    v = e.get("verification") or {}
    if "agreement" in v:
        checked = f"agreement {v['agreement']:.0%} on {v['prompts']} prompts"
    elif "max_abs_logit_diff" in v:
        checked = f"max |logit diff| {v['max_abs_logit_diff']:.1e}"
    else:
        checked = "not verified"
    kind = e["format"] + (f" {e['quant']}" if e.get("quant") else "")
    return f"{kind} → {escape(e['path'])} [dim]({checked}, {e['created']})[/]"


def print_rerun(result: dict, console) -> None:
    """retrain / reeval: metric, old, new, delta, and the verdict."""
    from rich.table import Table

    ev = result["eval"]
    console.print(f"old: {result['old_label']}\nnew: {result['new_label']}\n"
                  f"eval: {ev['examples']} examples of {ev['data']} ({ev['source']})")
    table = Table()
    table.add_column("metric", no_wrap=True)
    for col in ("old", "new", "delta", ""):
        table.add_column(col, justify="right")
    regressed = {r["metric"] for r in result["regressions"]}
    for r in result["rows"]:
        mark = "[red]regressed[/]" if r["metric"] in regressed else {"worse": "[yellow]worse[/]",
                                                                       "better": "[green]better[/]"}.get(r["change"], "")
        table.add_row(r["metric"], _fmt(r["old"]), _fmt(r["new"]), _signed(r["delta"]), mark)
    console.print(table)
    for note in result.get("notes", []):
        console.print(f"[yellow]note[/]: {note}")
    if result["max_regression"] is not None and not result["regressions"]:
        verdict = ": no retrain needed" if result["kind"] == "reeval" else ""
        console.print(f"[green]no metric regressed by more than {result['max_regression']}{verdict}[/]")


def regression_message(result: dict) -> str:
    parts = ", ".join(f"{r['metric']} worse by {r['worse_by']:.4f}" for r in result["regressions"])
    verdict = f": a retrain is needed (tunery retrain {result['old']} --base ...)" if result["kind"] == "reeval" else ""
    return f"{parts} (more than --max-regression {result['max_regression']}){verdict}"
