"""The command line. Thin: parse, call the library, print. Heavy imports happen inside commands
so `tunery --help` is instant. How it prints (results, --json, --quiet, progress, errors):
cli_output.py."""

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .cli_output import JSON, QUIET, command, console, emit, error_line
from .errors import TuneryError, validated

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models on your own examples, prove what changed, serve them.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and check datasets.")
app.add_typer(data_app, name="data")


@app.command()
@command
def generate(
    model: str = typer.Argument(..., help="default, a fine-tune (ft:... or its run folder), a model folder, a .gguf file "
                                "or a cached hub id"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The user message"),
    system: Optional[str] = typer.Option(None, "--system", help="A system message"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 is greedy"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    schema: Optional[Path] = typer.Option(None, "--schema", help="The answer is JSON matching this JSON Schema file"),
    regex: Optional[str] = typer.Option(None, "--regex", help="The whole answer matches this regex"),
    choices: Optional[str] = typer.Option(None, "--choices", help="The answer is one of these: FILE (a line each, or a JSON array) or a,b,c"),
    constrain: bool = typer.Option(True, "--constrain/--no-constrain", help="Hold the answer to the format (given, or the fine-tune's recorded constraint)"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Answer one prompt, rendered through the model's chat template."""
    fmt = _answer_format(model, schema, regex, choices) if constrain else None
    from .generation import Generator

    gen = Generator(model)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    constraints = None
    if fmt is not None:
        from .constrain import Constraint

        constraints = [Constraint.from_format(fmt, gen.tokenizer, gen.stop_ids, "constraint")]
    out = gen.chat([messages], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                   constraints=constraints)[0]
    emit({"model": model, "text": out.text, "finish_reason": out.finish_reason, "prompt_tokens": out.prompt_tokens,
          "completion_tokens": out.completion_tokens}, as_json, lambda: print(out.text))


def _answer_format(model: str, schema: Optional[Path], regex: Optional[str], choices: Optional[str]):
    """The answer format of --schema/--regex/--choices, else the model's recorded constraint (None
    if neither), compiled once to check it before any model loads."""
    from .config import answer_format
    from .constrain import check_format

    fmt = answer_format(schema=schema, regex=regex, choices=choices)
    field = "--schema" if schema is not None else "--regex" if regex is not None else "--choices"
    if fmt is None:
        from .evaluate.evaluator import recorded_format

        fmt, field = recorded_format(model), "constraint"
    if fmt is not None:
        check_format(fmt, field)
    return fmt


@data_app.command("check")
@command
def data_check(
    file: Path = typer.Argument(..., help="A .jsonl, .json, .csv or .parquet dataset"),
    model: str = typer.Option("default", "--model", "-m", help="Model whose tokenizer and chat template are used"),
    max_length: int = typer.Option(2048, "--max-length", min=8),
    overlong: str = typer.Option("drop", "--overlong", help="drop | truncate | error"),
    mask: str = typer.Option("assistant", "--mask", help="assistant | last | all"),
    format: str = typer.Option("auto", "--format", help="auto | chat | completion | alpaca | sharegpt | text"),
    template: Optional[str] = typer.Option(None, "--template", help="A Jinja chat template file"),
    show: Optional[int] = typer.Option(None, "--show", help="Print example K with its trained tokens marked (in --json: its trained spans as text)"),
    retrieval: Optional[str] = typer.Option(None, "--retrieval", help="An index: ground each example as training "
                                            "would, and report how often the context holds the answer"),
    retrieval_k: int = typer.Option(3, "--retrieval-k", min=1, max=20),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Report every problem in a dataset file and what training would see."""
    from .config import DataConfig
    from .data.doctor import check_dataset, render_example
    from .models import load_tokenizer

    cfg = validated(DataConfig, model=model, max_length=max_length, overlong=overlong, mask=mask,
                    format=format, template=template, retrieval=retrieval, retrieval_k=retrieval_k)
    ground = None
    if cfg.retrieval:
        from .retrieval import grounding_for

        ground = grounding_for(cfg, distractors=False)  # the hit rate of real retrieval
    tokenizer = load_tokenizer(cfg.model)
    report = check_dataset(file, cfg, tokenizer=tokenizer, ground=ground)
    example = render_example(file, show, cfg, tokenizer=tokenizer) if show is not None else None
    if example and as_json:
        line, pieces = example
        report["example"] = {"index": show, "line": line, "text": "".join(p for p, _ in pieces),
                             "trained": [p for p, trained in pieces if trained]}

    def show_report():
        from .data.report import print_example, print_report

        print_report(report, console())
        if example:
            print_example(show, *example, console())

    emit(report, as_json, show_report)
    raise typer.Exit(0 if report["ok"] else 1)


@app.command()
@command
def merge(
    run: str = typer.Argument(..., help="A run folder trained with an adapter"),
    out: Path = typer.Argument(..., help="Folder for the standalone merged model"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Fold a run's adapter into its base: a standalone safetensors model."""
    from .export import merge_run

    folder = merge_run(run, out)
    emit({"out": str(folder)}, as_json, lambda: print(folder))


@app.command("export")
@command
def export_(
    run: str = typer.Argument(..., help="A run folder or a registered fine-tune (ft:...)"),
    format: str = typer.Option(..., "--format", help="merged (one safetensors model) | peft (the adapter, for vLLM) | "
                               "gguf (llama.cpp) | ollama (GGUF + Modelfile)"),
    out: Path = typer.Option(..., "--out", help="A new or empty folder"),
    quant: Optional[str] = typer.Option(None, "--quant", help="GGUF type: f16 (default) | bf16 | q8_0 | q6_k | q5_k_m | q4_k_m"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the export against the run's own model first"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Export a fine-tune for other tools, verified before it is handed over."""
    from .export import export

    record = export(run, format, out, verify=verify, quant=quant)
    emit(record, as_json, lambda: _show_export(record, run, out, quiet))


def _show_export(record: dict, run: str, out: Path, quiet: bool) -> None:
    v = record.get("verification")
    name = record["source"]["name"] or run
    if not v:
        checked = "not verified"
    elif "max_abs_logit_diff" in v:
        checked = f"verified: max |logit diff| {v['max_abs_logit_diff']:.1e} on {v['prompts']} prompts"
    else:
        checked = (f"verified in llama.cpp: same prompt, {v['agreement']:.0%} of {v['prompts']} greedy answers as tunery's"
                   + (f", {record['size_ratio_to_f16']:.2f}x the f16 size" if "size_ratio_to_f16" in record else ""))
    print(f"{record['format']} export of {name} in {out} ({checked})")
    if quiet:
        return
    for warning in (record.get("warning"), (v or {}).get("note")):
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    if record["format"] == "peft":
        a = record["adapter"]
        print(f"serve it with vLLM: vllm serve BASE --enable-lora --max-lora-rank {a['vllm_max_lora_rank']} "
              f"--lora-modules {record['source']['name'] or 'tuned'}={Path(out).resolve()}")
    elif record["format"] == "gguf":
        print(f"run it with llama.cpp: llama-server -m {Path(out).resolve() / record['gguf']} --jinja")
    elif record["format"] == "ollama":
        print(f"import it into Ollama: {record['ollama']['import']}")


@app.command()
def chat(
    model: str = typer.Argument(..., help="A run folder or any model reference"),
    system: Optional[str] = typer.Option(None, "--system"),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
):
    """Chat with a model in the terminal (an empty line or Ctrl-D quits)."""
    from .generation import Generator

    gen = Generator(model)
    messages = [{"role": "system", "content": system}] if system else []
    screen = console()
    while True:
        try:
            text = screen.input("[bold cyan]you>[/] ")
        except EOFError:
            break
        if not text.strip():
            break
        messages.append({"role": "user", "content": text})
        answer = gen.chat([messages], max_new_tokens=max_new_tokens, temperature=temperature)[0].text
        messages.append({"role": "assistant", "content": answer})
        screen.print(f"[bold green]model>[/] {answer}")


def _metric_options(schema: Optional[Path], regex: Optional[str]) -> dict:
    options = {}
    if schema is not None:
        try:
            options["schema"] = json.loads(schema.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TuneryError(f"{schema}: not a readable JSON Schema ({exc})") from None
    if regex is not None:
        options["regex"] = regex
    return options


_CHOICES = typer.Option(None, "--choices", help="Answers are one of these: FILE (a line each, or a JSON array) or a,b,c")
_CONSTRAIN = typer.Option(True, "--constrain/--no-constrain", help="Generate under the answer format (given, or the "
                          "fine-tune's recorded constraint); off: it is only scored (metric valid)")
_SCORE = typer.Option(False, "--score", help="Rank the --choices by log-probability instead of generating "
                      "(choice_accuracy, choice_top3)")
_RETRIEVAL = typer.Option(None, "--retrieval", help="An index: each question's retrieved context goes into its prompt")
_RETRIEVAL_K = typer.Option(3, "--retrieval-k", min=1, max=20, help="Chunks retrieved per question")
_METRICS_HELP = "Comma-separated: exact, json_valid, json_exact, json_schema, regex, contains, rougeL, chrf, module:function"


@app.command("eval")
@command
def eval_(
    model: str = typer.Argument(..., help="A run folder or any model reference"),
    data: Path = typer.Option(..., "--data", help="Held-out examples; the final assistant turn is the reference"),
    metrics: str = typer.Option("exact", "--metrics", help=_METRICS_HELP),
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON Schema file: answers are JSON matching it (and json_schema scores it)"),
    regex: Optional[str] = typer.Option(None, "--regex", help="Pattern the whole answer must match (and regex scores it)"),
    choices: Optional[str] = _CHOICES,
    constrain: bool = _CONSTRAIN,
    score: bool = _SCORE,
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N examples"),
    retrieval: Optional[str] = _RETRIEVAL,
    retrieval_k: int = _RETRIEVAL_K,
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Loss, perplexity and generation metrics of one model on a dataset."""
    from .evaluate.evaluator import evaluate_model, format_options
    from .metrics import resolve_metrics
    from .registry import recorder

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    resolve_metrics(names)  # unknown metric: an error before loading anything
    fmt = _answer_format(model, schema, regex, choices)  # its one-line errors first
    options = _metric_options(schema, regex) | format_options(fmt, constrained=constrain, score=score)
    registered = recorder.registered_id(model)  # a registered fine-tune keeps its results
    result = evaluate_model(model, data, names, options=options, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, limit=limit, retrieval=retrieval, retrieval_k=retrieval_k)
    recorder.record_eval(registered, "eval", data, result, _eval_params(names, options, max_new_tokens, limit))
    emit(result, as_json, lambda: _show_eval(result, model, data))


def _show_eval(result: dict, model: str, data: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{model} on {len(result['examples'])} examples of {data}"))
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for name, v in result["metrics"].items():
        table.add_row(name, f"{v:.4f}")
    table.add_row("prompt tokens / request", f"{result['prompt_tokens_per_request']:.1f}")
    table.add_row("latency s / request", f"{result['latency_s_per_request']:.3f}")
    console().print(table)
    if result.get("grammar_errors"):
        print(f"warning: {result['grammar_errors']} answers ended where their grammar reached a parser limit "
              "(counted invalid; `grammar_error` in --json names each)", file=sys.stderr)


@app.command()
@command
def compare(
    base: str = typer.Option("default", "--base", help="The base model"),
    tuned: str = typer.Option(..., "--tuned", help="The fine-tuned run (or model)"),
    data: Path = typer.Option(..., "--data", help="Held-out examples"),
    few_shot: int = typer.Option(3, "--few-shot", min=0, help="Examples from the training data in the baseline prompt"),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for the prompt-only baseline"),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Where few-shot examples come from (default: the run's training file)"),
    metrics: str = typer.Option("exact", "--metrics", help=_METRICS_HELP),
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON Schema file: the answer format (and json_schema's schema)"),
    regex: Optional[str] = typer.Option(None, "--regex", help="Pattern of the whole answer: the answer format (and regex's)"),
    choices: Optional[str] = _CHOICES,
    constrain: bool = typer.Option(True, "--constrain/--no-constrain", help="Under an answer format (given, or the "
                                   "fine-tune's recorded constraint), run each contestant as is and held to it"),
    score: bool = _SCORE,
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="Where report.json and report.html go (default: RUN/report)"),
    retrieval: Optional[str] = typer.Option(None, "--retrieval", help="An index: adds base_rag and tuned_rag (the "
                                            "base and the fine-tune with each question's retrieved context)"),
    retrieval_k: int = _RETRIEVAL_K,
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Base vs prompt-only baseline vs fine-tune: quality, prompt tokens and latency."""
    from .evaluate.compare import compare as run_compare
    from .metrics import resolve_metrics
    from .evaluate.report import print_comparison, write_report
    from .models import resolve_model
    from .registry import recorder
    from .run_folder import RunFolder

    from .evaluate.evaluator import format_options

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    resolve_metrics(names)
    fmt = _answer_format(tuned, schema, regex, choices)  # its one-line errors first
    options = _metric_options(schema, regex) | format_options(fmt, constrained=constrain, score=score)
    registered = recorder.registered_id(tuned)
    result = run_compare(base, tuned, data, metrics=names, few_shot=few_shot, system=system,
                         train_data=str(train_data) if train_data else None, options=options,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit, retrieval=retrieval,
                         retrieval_k=retrieval_k)
    recorder.record_eval(registered, "compare", data, result["contestants"]["tuned"],
                         _eval_params(names, options, max_new_tokens, limit))
    run = resolve_model(tuned).run
    folder = RunFolder(run) if run else None
    out = report_dir or (folder.report_dir if folder else Path("report"))
    json_path, html_path = write_report(result, out, folder.read_metrics() if folder else [])

    def show():
        print_comparison(result, console())
        print(f"report: {html_path} and {json_path}")

    emit(result, as_json, show)


def _eval_params(names: list[str], options: dict, max_new_tokens: int, limit: Optional[int]) -> dict:
    """What `tunery reeval` / `retrain` need to run the same evaluation again."""
    return {"metrics": names, "options": options, "max_new_tokens": max_new_tokens, "limit": limit}


def _train(config: Optional[str] = None, as_json: bool = False, quiet: bool = False, **flags):
    """Fine-tune a model. Flags override the --config YAML, which overrides the defaults. Prints
    the run folder (with --json: its record, the resolved recipe and the final metrics)."""
    from .config import load_train_config
    from .training import train

    flags = {k: v for k, v in flags.items() if v is not None}
    if flags.get("resume") and not config and flags.get("out"):
        from .run_folder import RunFolder

        saved = RunFolder(flags["out"]).config_file  # resume with the recipe the run was started with
        config = str(saved) if saved.is_file() else None
    run = train(load_train_config(config, **flags))
    info = run.info.model_dump(mode="json", exclude_none=True, exclude={"val": {"lines"}})  # as the registry has it
    emit({"dir": str(run.dir), **info, "config": run.config},
         as_json, lambda: print(run.dir))


def _register_train() -> None:
    """One flag per TrainConfig field, so CLI flags, YAML and the Python API cannot drift apart."""
    import inspect

    from .config import TrainConfig

    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                default=typer.Option(None, "--config", "-c", help="YAML recipe; flags override it")),
              inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=JSON),
              inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=QUIET)]
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            option = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=field.description)
            annotation = Optional[bool]
        else:
            option = typer.Option(None, flag, help=field.description, metavar="VALUE")
            annotation = Optional[str]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option))
    _train.__signature__ = inspect.Signature(params)
    app.command("train")(command(_train))


_register_train()


def _register_registry() -> None:
    from . import cli_registry

    app.add_typer(cli_registry.models_app, name="models")
    for fn in (cli_registry.lineage, cli_registry.retrain, cli_registry.reeval):
        app.command()(fn)


_register_registry()


def _register_index() -> None:
    from . import cli_index

    app.add_typer(cli_index.index_app, name="index")


_register_index()


def _register_serve() -> None:
    from .serve.command import register

    register(app)


_register_serve()


def run(argv: list[str] | None = None) -> int:
    """Run one command line (default: sys.argv) and return its exit code. A TuneryError prints as
    one line on stderr, never a traceback. Tests call this in-process through typer's CliRunner."""
    try:
        # Without standalone mode, click returns the code of a `typer.Exit` instead of raising it.
        rc = app(args=argv, prog_name="tunery", standalone_mode=False)
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
    except TuneryError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch, rank 0 alone says it
            print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Abort:
        return 1
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument
        exc.show()
        return getattr(exc, "exit_code", 2)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
