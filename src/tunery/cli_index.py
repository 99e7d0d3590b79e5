"""The retrieval index commands: `tunery index build|search|info|list|rm`.
Thin like cli.py: parse, call tunery.retrieval and the registry, print. User text (queries,
document text, paths) is escaped wherever rich renders it, so brackets in it are never markup."""

from pathlib import Path
from typing import List

import typer

from .cli_output import JSON, QUIET, command, console, emit

index_app = typer.Typer(no_args_is_help=True,
                        help="Retrieval indexes: documents in chunks, searchable by BM25, embeddings, or both.")

_INDEX = typer.Argument(..., help="An index folder, or a name it was registered under")


@index_app.command("build")
@command
def build(
    docs: List[Path] = typer.Argument(..., help="Files and folders (.md .txt .html .pdf .jsonl; folders recursed)"),
    out: Path = typer.Option(..., "--out", help="The index folder (updated in place when it holds an index)"),
    name: str = typer.Option(None, "--name", help="Register the index under this name (default: the folder's name)"),
    chunk_tokens: int = typer.Option(200, "--chunk-tokens", help="Most tokens in a chunk (by the embedder's tokenizer)"),
    overlap: int = typer.Option(30, "--overlap", help="Tokens a chunk repeats from the previous one in its section"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """Build or update an index: only new and changed documents are chunked and embedded."""
    from .retrieval import build_index

    report = build_index(docs, out, chunk_tokens=chunk_tokens, overlap=overlap, name=name)
    skipped = f", {report['skipped']} files of other kinds skipped" if report["skipped"] else ""
    line = (f"indexed {report['documents']} documents ({report['added']} added, {report['updated']} updated, "
            f"{report['removed']} removed, {report['unchanged']} unchanged{skipped}): {report['chunks']} chunks, "
            f"{report['embedded']} embedded in {report['seconds']:.2f} s -> {report['path']} (name {report['name']})")
    emit(report, as_json, lambda: print(line))


@index_app.command("search")
@command
def search(
    index: str = _INDEX,
    query: str = typer.Option(..., "--query", "-q", help="What to look for"),
    k: int = typer.Option(5, "-k", min=1, help="How many chunks"),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid (BM25 and embeddings fused), bm25 or dense"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
):
    """The chunks that best match a query."""
    from .retrieval import Index

    with Index.open(index) as ix:
        hits = ix.search(query, k=k, mode=mode)
    emit({"results": [{"id": h.id, "source": h.source, "score": h.score, "text": h.text} for h in hits]}, as_json,
         lambda: _show_hits(hits, query, mode))


def _show_hits(hits, query: str, mode: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(query)} ({mode})", show_lines=True)
    for column in ("#", "score", "source", "text"):
        table.add_column(column, overflow="fold")
    for n, h in enumerate(hits, 1):
        text = h.text if len(h.text) <= 400 else h.text[:400] + " ..."
        table.add_row(str(n), f"{h.score:.4f}", escape(f"{h.source} [{h.id}]"), escape(text))
    console().print(table)


@index_app.command("info")
@command
def info(index: str = _INDEX, as_json: bool = JSON, quiet: bool = QUIET):
    """What an index holds: documents, chunks, embedder, size, fingerprint."""
    from .retrieval import Index

    with Index.open(index) as ix:
        result = ix.info()
    width = max(map(len, result))
    emit(result, as_json, lambda: print("\n".join(f"{k:{width}}  {v}" for k, v in result.items())))


@index_app.command("list")
@command
def list_(as_json: bool = JSON, quiet: bool = QUIET):
    """Every registered index; folders that vanished show as missing."""
    from .registry.db import connect
    from .registry.indexes import list_indexes

    with connect(create=False) as conn:
        rows = list_indexes(conn) if conn is not None else []
    for row in rows:
        row["missing"] = not Path(row["path"]).is_dir()
    emit(rows, as_json, lambda: _show_indexes(rows))


def _show_indexes(rows: list[dict]) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        print("no indexes registered (build one with `tunery index build DOCS --out FOLDER`)")
        return
    table = Table()
    for column in ("name", "documents", "chunks", "embedder", "created", "path"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(escape(row["name"]), str(row["documents"]), str(row["chunks"]), row["embedder"], row["created"],
                      escape(row["path"]) + (" [red](missing)[/red]" if row["missing"] else ""))
    console().print(table)


@index_app.command("rm")
@command
def rm(name: str = typer.Argument(..., help="A registered index name"),
       delete: bool = typer.Option(False, "--delete", help="Also delete its folder (only if it holds nothing but the index)"),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask"),
       as_json: bool = JSON, quiet: bool = QUIET):
    """Unregister an index (and with --delete, remove its folder)."""
    import shutil

    from .errors import NotFound, TuneryError
    from .registry.db import connect
    from .registry.indexes import get, remove
    from .retrieval.store import DB_FILE, VECTORS_FILE

    with connect(create=False) as conn:
        row = get(conn, name) if conn is not None else None
        if row is None:
            raise NotFound(f"no index named {name!r}", hint="run `tunery index list` to see the registered names")
        folder = Path(row["path"])
        strangers = sorted(p.name for p in folder.iterdir() if p.name not in (DB_FILE, VECTORS_FILE)) \
            if delete and folder.is_dir() else []
        if strangers:  # never delete what tunery did not write
            raise TuneryError(f"{folder} holds files that are not the index's ({', '.join(strangers[:3])}); "
                              "delete it yourself, or drop --delete")
        if not yes:
            typer.confirm(f"unregister {name}" + (f" and delete {folder}?" if delete else "?"), abort=True)
        remove(conn, name)
    if delete and folder.is_dir():
        shutil.rmtree(folder)
    deleted = delete and not folder.exists()
    emit({"removed": name, "path": str(folder), "deleted": deleted}, as_json,
         lambda: print(f"removed {name}" + (f" and {folder}" if deleted else "")))
