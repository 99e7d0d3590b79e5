"""Recording and querying fine-tuned models: one row per training run, its evaluations, lineage.

Every function takes an open connection (see db.connect) so a command does its reads and writes
on one connection, and every write is one short transaction.
"""

import json
import os
import re
import shutil
import sqlite3
import uuid
from pathlib import Path

from ..errors import RegistryError
from ..files import file_digest, now
from ..run_folder import RunFolder, RunInfo
from .db import db_path, transaction
from .hashing import tokenizer_hash, weights_hash

JSON_COLUMNS = ("config", "data", "versions", "metrics")


def slug(text: str) -> str:
    """A name part: no ':' (the separator) and nothing a shell or a URL would trip on."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "model"


def model_name(base_name: str, suffix: str, model_id: str) -> str:
    return f"ft:{slug(base_name)}:{slug(suffix)}:{model_id[:8]}"


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"tunery": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "accelerate", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def base_locator(reference: str, base) -> str:
    """How to find the base again from any folder: an absolute path for paths, else the name."""
    path = Path(str(reference)).expanduser()
    return str(path.resolve()) if base.source in ("folder", "gguf", "run") and path.exists() else str(reference)


# -- training runs ------------------------------------------------------------------------------

def record_start(conn, run_dir: Path, resolved: dict, info: RunInfo, base) -> tuple[str, str]:
    """Insert the run (or, on resume, mark its row running again). Returns (id, name) for run.json.

    A row belongs to one folder. A resumed folder whose run.json names a model registered at
    another folder that still names that model (a copy of a run folder) is a new model, with its
    own id and name: the original's row is never touched. A model whose registered folder is gone
    or names another model now (the folder was moved) follows the folder."""
    run_dir = Path(run_dir).resolve()
    w_hash = weights_hash(conn, base.path, base.adapter)  # before the transaction: hashing can take seconds
    t_hash = tokenizer_hash(conn, base.tokenizer_path, resolved.get("template"))
    suffix = slug(resolved.get("suffix") or Path(resolved["data"]).stem)
    data = {"train": info.data.public(), "val": info.val.public() if info.val else None}
    values = {
        "suffix": suffix, "status": "running", "method": resolved["method"],
        "base_ref": base_locator(resolved["model"], base), "base_name": base.name, "base_path": str(base.path),
        "base_source": base.source, "base_weights_sha256": w_hash, "base_tokenizer_sha256": t_hash,
        "config": json.dumps(resolved | {"suffix": suffix}, default=str), "data": json.dumps(data),
        "versions": json.dumps(versions()), "run_dir": str(run_dir), "artifact": info.artifact,
        "derived_from": resolved.get("derived_from"), "pid": os.getpid(), "created": info.started,
    }
    with transaction(conn):
        model_id, name = info.id, info.name
        row = conn.execute("SELECT run_dir FROM models WHERE id = ?", (model_id,)).fetchone() if model_id else None
        if row and row["run_dir"] != str(run_dir) and RunFolder(row["run_dir"]).owner_id() == model_id:
            model_id, name, row = None, None, None  # a copy: the original keeps its row
        model_id = model_id or uuid.uuid4().hex
        name = name or model_name(base.name, suffix, model_id)
        if row:
            sets = ", ".join(f"{k} = :{k}" for k in values if k != "created")
            conn.execute(f"UPDATE models SET {sets}, error = NULL, finished = NULL WHERE id = :id",
                         values | {"id": model_id})
        else:
            values |= {"name": name}
            conn.execute(f"INSERT INTO models (id, {', '.join(values)}) VALUES (:id, {', '.join(':' + k for k in values)})",
                         values | {"id": model_id})
    return model_id, name


def record_finish(conn, info: RunInfo) -> None:
    with transaction(conn):
        conn.execute("UPDATE models SET status = 'completed', metrics = ?, finished = ?, error = NULL WHERE id = ?",
                     (json.dumps(info.final.model_dump() if info.final else None), info.finished, info.id))


def record_failure(conn, model_id: str, status: str, error: str, finished: str) -> None:
    with transaction(conn):
        conn.execute("UPDATE models SET status = ?, error = ?, finished = ? WHERE id = ? AND status = 'running'",
                     (status, error[:2000], finished, model_id))


# -- lookups ------------------------------------------------------------------------------------

def _row(r: sqlite3.Row | None) -> dict | None:
    if r is None:
        return None
    d = dict(r)
    for k in JSON_COLUMNS:
        d[k] = json.loads(d[k]) if d.get(k) else None
    d["short_id"] = d["id"][:8]
    if d["status"] == "running" and not pid_alive(d.get("pid")):
        # killed outright (SIGKILL, power loss): the process could not record its end
        d["status"] = "interrupted"
        d["error"] = d.get("error") or f"the training process (pid {d.get('pid')}) ended without recording an outcome"
    d["files"] = files_state(d)
    return d


def files_state(row: dict) -> str:
    """ok | missing (the artifact folder is gone) | none (the run has not shipped weights yet) |
    replaced (another run now owns the folder)."""
    run = RunFolder(row["run_dir"])
    owner = run.owner_id()  # a later run may reuse a folder
    if owner is not None and owner != row["id"]:
        return "replaced"
    if run.artifact(row["artifact"]).is_dir():
        return "ok"
    if row["status"] == "completed" or not run.path.is_dir():
        return "missing"
    return "none"


def find(conn, ref: str) -> dict | None:
    """A model by name, id, short id (8+ hex digits) or run folder; None when there is none."""
    if conn is None:
        return None
    ref = str(ref).strip()
    r = conn.execute("SELECT * FROM models WHERE name = ? OR id = ?", (ref, ref)).fetchone()
    if r is None and re.fullmatch(r"[0-9a-f]{8,31}", ref):
        hits = conn.execute("SELECT * FROM models WHERE id LIKE ? LIMIT 2", (ref + "%",)).fetchall()
        if len(hits) > 1:
            raise RegistryError(f"{ref!r} matches more than one model id; give more digits or the name")
        r = hits[0] if hits else None
    if r is None and Path(ref).expanduser().is_dir():
        folder = Path(ref).expanduser().resolve()
        r = conn.execute("SELECT * FROM models WHERE id = ? AND run_dir = ?",
                         (RunFolder(folder).owner_id(), str(folder))).fetchone()
    return _row(r)


def get(conn, ref: str) -> dict:
    row = find(conn, ref)
    if row is None:
        if conn is None:
            raise RegistryError(f"model {ref!r} is not in the registry (there is no registry at {db_path()} yet)",
                                hint="train a model first: `tunery train --data FILE`")
        raise RegistryError(f"model {ref!r} is not in the registry", hint="run `tunery models list` to see the names")
    return row


def list_models(conn) -> list[dict]:
    if conn is None:
        return []
    return [_row(r) for r in conn.execute("SELECT * FROM models ORDER BY created, rowid")]


def lineage(conn, ref: str) -> dict:
    """Ancestors (oldest first) through derived_from, and every descendant with its parent."""
    row = get(conn, ref)
    ancestors, seen, parent = [], {row["id"]}, row["derived_from"]
    while parent and parent not in seen:
        seen.add(parent)
        p = _row(conn.execute("SELECT * FROM models WHERE id = ?", (parent,)).fetchone())
        if p is None:
            ancestors.insert(0, {"id": parent, "name": None, "removed": True})
            break
        ancestors.insert(0, p)
        parent = p["derived_from"]
    descendants = [_row(r) for r in conn.execute("""
        WITH RECURSIVE tree(id) AS (
            SELECT id FROM models WHERE derived_from = ?
            UNION SELECT m.id FROM models m JOIN tree t ON m.derived_from = t.id)
        SELECT m.* FROM models m JOIN tree USING (id) ORDER BY m.created, m.rowid""", (row["id"],))]
    for r in (row, *descendants):
        r["exports"] = exports(conn, r["id"])
    return {"model": row, "ancestors": ancestors, "descendants": descendants}


# -- evaluations --------------------------------------------------------------------------------

def record_eval(conn, model_id: str, kind: str, data_file: str, examples: int, params: dict, results: dict,
                base_ref: str | None = None) -> None:
    path = Path(data_file).resolve()
    with transaction(conn):
        conn.execute("INSERT INTO evals (model_id, kind, data_file, data_sha256, examples, params, results, base_ref, "
                     "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (model_id, kind, str(path), file_digest(path), examples, json.dumps(params),
                      json.dumps(results), base_ref, now()))


def evals(conn, model_id: str) -> list[dict]:
    out = []
    for r in conn.execute("SELECT * FROM evals WHERE model_id = ? ORDER BY id", (model_id,)):
        d = dict(r)
        d["params"], d["results"] = json.loads(d["params"]), json.loads(d["results"])
        out.append(d)
    return out


# -- exports ------------------------------------------------------------------------------------

def record_export(conn, model_id: str, record: dict) -> None:
    """One `tunery export` (the record export.json holds) against the model it came from."""
    with transaction(conn):
        conn.execute("INSERT INTO exports (model_id, format, quant, path, files, verification, created) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (model_id, record["format"], record.get("quant"), str(Path(record["out"]).resolve()),
                      json.dumps(record["files"]), json.dumps(record["verification"]) if record.get("verification") else None,
                      record["created"]))


def exports(conn, model_id: str) -> list[dict]:
    out = []
    for r in conn.execute("SELECT * FROM exports WHERE model_id = ? ORDER BY id", (model_id,)):
        d = dict(r)
        d["files"] = json.loads(d["files"])
        d["verification"] = json.loads(d["verification"]) if d["verification"] else None
        out.append(d)
    return out


# -- removal ------------------------------------------------------------------------------------

def remove(conn, ref: str) -> dict:
    """Delete a model's row and its run folder together.

    The folder is first renamed aside (atomic, same filesystem), then the row is deleted in a
    transaction; if that fails the folder is renamed back. Only after the commit are the files
    deleted, so no row ever points at a half-deleted folder. Returns the removed row.
    """
    row = get(conn, ref)
    if row["status"] == "running" and pid_alive(row["pid"]):
        raise RegistryError(f"{row['name']} is still training (pid {row['pid']}); stop it first")
    run = Path(row["run_dir"])
    owns_folder = run.is_dir() and row["files"] != "replaced"  # a reused folder is another model's now
    strangers = sorted(p.name for p in run.iterdir() if p.name not in RunFolder.ENTRIES and not p.name.startswith(".")) \
        if owns_folder else []
    if strangers:  # e.g. a run trained with --out . into a project folder: never delete the project
        raise RegistryError(f"{run} holds files tunery did not write ({', '.join(strangers[:3])}); move them out "
                            "or delete the folder yourself, then run `tunery models rm` again")
    trash = run.with_name(f".tunery-removed-{row['id']}")
    if owns_folder:
        os.replace(run, trash)
    try:
        with transaction(conn):
            conn.execute("DELETE FROM models WHERE id = ?", (row["id"],))
    except BaseException:
        if owns_folder:
            os.replace(trash, run)
        raise
    if owns_folder:
        shutil.rmtree(trash, ignore_errors=True)
    row["files_removed"] = owns_folder
    return row


def pid_alive(pid: int | None) -> bool:
    """Is a process with this id running (on this machine)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(conn, ref: str) -> dict:
    """A model's full record: its row, evaluations, parent's name, and (while training) the latest step."""
    row = get(conn, ref)
    row["evals"] = evals(conn, row["id"])
    row["exports"] = exports(conn, row["id"])
    if row["derived_from"]:
        parent = conn.execute("SELECT name FROM models WHERE id = ?", (row["derived_from"],)).fetchone()
        row["derived_from_name"] = parent["name"] if parent else None
    if row["status"] == "running":  # updated as it goes: the run folder's metrics are the live view
        try:
            rows = RunFolder(row["run_dir"]).read_metrics()
        except (OSError, ValueError):
            rows = []
        row["live"] = rows[-1] if rows else None
    return row
