"""The registry commands: `tunery models list|show|rm|diff`, `lineage`, `retrain`, `reeval`.
Thin like cli.py: parse, call tunery.registry and tunery.workflows, print."""

from pathlib import Path
from typing import Optional

import typer

from .cli_output import JSON, QUIET, command, console, emit
from .errors import RegressionError

models_app = typer.Typer(no_args_is_help=True,
                         help="The registry: every fine-tune with its recipe, data, base and results.")

_NAME = typer.Argument(..., help="A registry name (ft:...), id or run folder")


@models_app.command("list")
@command
def models_list(
    stale: bool = typer.Option(False, "--stale", help="Only fine-tunes whose base reference now holds different content"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Every recorded fine-tune, oldest first; files whose folder vanished show as missing."""
    from .registry import store
    from .workflows import stale as staleness
    from .registry.db import connect
    from .registry.report import print_list, public

    with connect(create=False) as conn:
        rows = store.list_models(conn)
        if stale:
            rows = [r for r in staleness.check(conn, rows) if r["stale"]]
    emit([public(r) for r in rows], as_json, lambda: print_list(rows, console(), stale=stale))


@models_app.command("show")
@command
def models_show(name: str = _NAME, as_json: bool = JSON, quiet: bool = QUIET):
    """Everything recorded about one model: base and its hashes, data, recipe, versions, metrics, evals."""
    from .registry import store
    from .registry.db import connect
    from .registry.report import print_show, public

    with connect(create=False) as conn:
        row = store.describe(conn, name)
    emit(public(row), as_json, lambda: print_show(row, console()))


@models_app.command("rm")
@command
def models_rm(name: str = _NAME, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask"),
              as_json: bool = JSON, quiet: bool = QUIET):
    """Remove a model: its registry row and its run folder, together."""
    from .registry import store
    from .registry.db import connect

    with connect(create=False) as conn:
        row = store.get(conn, name)
        if not yes:
            typer.confirm(f"remove {row['name']} and its folder {row['run_dir']}?", abort=True)
        removed = store.remove(conn, name)
    emit({"removed": row["name"], "run_dir": row["run_dir"], "files_removed": bool(removed["files_removed"])}, as_json,
         lambda: print(f"removed {row['name']}" + (f" and {row['run_dir']}" if removed["files_removed"]
                                                   else " (its folder was already gone)")))


@models_app.command("diff")
@command
def models_diff(a: str = typer.Argument(..., help="A model"), b: str = typer.Argument(..., help="Another model"),
                as_json: bool = JSON, quiet: bool = QUIET):
    """Recipe, data, base and metric differences between two models."""
    from .registry import store
    from .registry.db import connect
    from .registry.diff import diff
    from .registry.report import print_diff

    with connect(create=False) as conn:
        result = diff(conn, store.get(conn, a), store.get(conn, b))
    emit(result, as_json, lambda: print_diff(result, console()))


@command
def lineage(name: str = _NAME, as_json: bool = JSON, quiet: bool = QUIET):
    """A model's ancestors (what it was retrained from), descendants, and where each was exported."""
    from .registry import store
    from .registry.db import connect
    from .registry.report import print_lineage

    with connect(create=False) as conn:
        result = store.lineage(conn, name)
    keep = ("id", "name", "status", "base_ref", "derived_from", "created", "removed")
    brief = lambda r: {k: r.get(k) for k in keep} | ({"exports": r["exports"]} if "exports" in r else {})  # noqa: E731
    emit({"model": brief(result["model"]), "ancestors": [brief(r) for r in result["ancestors"]],
          "descendants": [brief(r) for r in result["descendants"]]}, as_json, lambda: print_lineage(result, console()))


_METRICS = typer.Option(None, "--metrics", help="Comma-separated metrics (default: the recorded evaluation's)")
_MAX_REG = typer.Option(None, "--max-regression", min=0.0,
                        help="Exit 1 if any metric is worse by more than this (absolute; loss: higher is worse)")


def _split(metrics: Optional[str]) -> Optional[list[str]]:
    return [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None


def _finish(result: dict, as_json: bool) -> None:
    from .registry.report import print_rerun, regression_message

    emit(result, as_json, lambda: print_rerun(result, console()))
    if result["regressions"]:
        raise RegressionError(regression_message(result))


@command
def retrain(
    name: str = _NAME,
    base: str = typer.Option(..., "--base", help="The new base model (any model reference)"),
    data: Optional[Path] = typer.Option(None, "--data", help="New training data (default: the recorded file)"),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="Eval set (default: the recorded evaluation's)"),
    metrics: Optional[str] = _METRICS,
    max_regression: Optional[float] = _MAX_REG,
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder for the new model"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Generation batch size"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Re-run a model's recorded recipe on a new base, evaluate old and new the same way, gate on regressions."""
    from .workflows import retrain as run

    result = run(name, base, data=str(data) if data else None, eval_file=str(eval_file) if eval_file else None,
                 metrics=_split(metrics), max_regression=max_regression, out=str(out) if out else None,
                 max_new_tokens=max_new_tokens, batch_size=batch_size)
    _finish(result, as_json)


@command
def reeval(
    name: str = _NAME,
    base: Optional[str] = typer.Option(None, "--base", help="Apply the model's adapter to this base instead"),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="Eval set (default: the recorded evaluation's)"),
    metrics: Optional[str] = _METRICS,
    max_regression: Optional[float] = _MAX_REG,
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Re-run the recorded evaluation (optionally on a new base) to tell whether a retrain is needed."""
    from .workflows import reeval as run

    result = run(name, base=base, eval_file=str(eval_file) if eval_file else None, metrics=_split(metrics),
                 max_regression=max_regression, max_new_tokens=max_new_tokens, batch_size=batch_size)
    _finish(result, as_json)
