"""Printing data doctor reports in the terminal (rich)."""


def print_report(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = report["stats"]
    tpe = s["tokens_per_example"]
    console.print(f"[bold]{s['file']}[/]  format [cyan]{s['format']}[/]  model [cyan]{s['model']}[/]  "
                  f"mask {s['mask']}  max_length {s['max_length']} ({s['overlong']})")
    console.print(f"examples {report['examples']}  good [green]{report['good']}[/]  bad "
                  f"[{'red' if s['bad'] else 'green'}]{s['bad']}[/]  dropped {s['dropped']}  "
                  f"truncated {s['truncated']}  duplicates {s['duplicates']}")
    console.print(f"tokens per example: min {tpe['min']}  median {tpe['median']}  p95 {tpe['p95']}  max {tpe['max']}")
    if s["histogram"]:
        peak = max(b["count"] for b in s["histogram"]) or 1
        for b in s["histogram"]:
            bar = "█" * max(1 if b["count"] else 0, round(30 * b["count"] / peak))
            console.print(f"  {b['lo']:>6}-{b['hi']:<6} {bar} {b['count']}")
    console.print(f"trainable tokens {s['trainable_tokens']:,}  tokens per epoch {s['tokens_per_epoch']:,}  "
                  f"suggested epochs {s['suggested_epochs']}")
    if r := report.get("retrieval"):
        rate = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.0%}"
        console.print(f"retrieval: the top {r['k']} chunks hold the answer for {rate} of {r['checked']} examples "
                      f"(retrieval_miss warnings name the others)")
    for kind, style in (("errors", "red"), ("warnings", "yellow")):
        issues = report[kind]
        if not issues:
            continue
        table = Table(title=f"{report[kind[:-1] + '_count']} {kind}", title_style=style, show_edge=False)
        table.add_column("line", justify="right")
        table.add_column("code", style=style)
        table.add_column("message")
        for issue in issues:
            table.add_row(str(issue["line"]), issue["code"], escape(issue["message"]))  # messages quote templates
        console.print(table)
    n = report["error_count"]
    verdict = "[green]ok[/]" if report["ok"] else f"[red]{n} error{'s' * (n != 1)}[/]: fix {'them' if n != 1 else 'it'} before training"
    console.print(verdict)


def print_example(k: int, line: int, pieces: list[tuple[str, bool]], console) -> None:
    """Example k with its trained tokens highlighted on a colour terminal, else between ⟦ and ⟧."""
    from rich.text import Text

    colour = console.is_terminal and not console.no_color
    how = "[black on green]highlighted[/]" if colour else "between ⟦ and ⟧"
    console.print(f"[bold]example {k}[/] (line {line}); trained tokens {how}:")
    text = Text()
    for piece, trained in pieces:
        if colour:
            text.append(piece, style="black on green" if trained else "dim")
        else:
            text.append(f"⟦{piece}⟧" if trained else piece)
    console.print(text)
