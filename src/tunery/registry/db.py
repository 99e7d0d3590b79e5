"""The registry database: one SQLite file, TUNERY_HOME/registry.db.

WAL mode lets readers run beside one writer; every write is a short `BEGIN IMMEDIATE` transaction
(the write lock is taken up front, so two writers queue on the busy timeout instead of one failing
mid-transaction with "database is locked"). The schema is versioned with `PRAGMA user_version`:
MIGRATIONS is an ordered list, and a database at version N gets migrations N+1.. applied, each in
its own transaction, so a crash between two leaves a consistent older version.
"""

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import RegistryError
from ..home import tunery_home

DB_FILE = "registry.db"
BUSY_TIMEOUT_S = 30.0


def db_path() -> Path:
    return tunery_home() / DB_FILE


# -- migrations: append only; never edit one that has shipped -------------------------------------

def _m001_models(c: sqlite3.Connection) -> None:
    c.execute("""
        CREATE TABLE models (
            id TEXT PRIMARY KEY,              -- 32 hex digits; the short id is the first 8
            name TEXT NOT NULL UNIQUE,        -- ft:<base-name>:<suffix>:<short-id>
            suffix TEXT NOT NULL,
            status TEXT NOT NULL,             -- running | completed | failed | interrupted | cancelled
            method TEXT NOT NULL,
            base_ref TEXT NOT NULL,           -- what the run was given (--model)
            base_name TEXT NOT NULL,
            base_path TEXT NOT NULL,          -- the resolved folder at training time
            base_source TEXT NOT NULL,
            base_weights_sha256 TEXT,         -- content hash of config.json + *.safetensors
            base_tokenizer_sha256 TEXT,       -- content hash of tokenizer files + chat template
            config TEXT NOT NULL,             -- JSON: the fully resolved recipe
            data TEXT NOT NULL,               -- JSON: {"train": {...}, "val": {...}} files, hashes, counts
            versions TEXT NOT NULL,           -- JSON: tunery and library versions
            metrics TEXT,                     -- JSON: the run's final metrics
            run_dir TEXT NOT NULL,
            artifact TEXT NOT NULL,           -- adapter | model (a folder inside run_dir)
            derived_from TEXT,                -- id of the model this one re-trains; no foreign key,
                                              -- so lineage survives removing the ancestor
            pid INTEGER,
            error TEXT,
            created TEXT NOT NULL,
            finished TEXT
        )""")
    c.execute("CREATE INDEX models_run_dir ON models(run_dir)")
    c.execute("CREATE INDEX models_derived_from ON models(derived_from)")


def _m002_evals(c: sqlite3.Connection) -> None:
    c.execute("""
        CREATE TABLE evals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,               -- eval | compare | retrain | reeval
            data_file TEXT NOT NULL,
            data_sha256 TEXT NOT NULL,
            examples INTEGER NOT NULL,
            params TEXT NOT NULL,             -- JSON: metric names, options, max_new_tokens, limit
            results TEXT NOT NULL,            -- JSON: metric means
            base_ref TEXT,                    -- set when the adapter was applied to another base
            created TEXT NOT NULL
        )""")
    c.execute("CREATE INDEX evals_model ON evals(model_id, id)")


def _m003_hash_cache(c: sqlite3.Connection) -> None:
    # Weights are hashed once per (path, size, mtime, inode); a changed file gets a new key.
    c.execute("""
        CREATE TABLE file_hashes (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            sha256 TEXT NOT NULL
        )""")


def _m004_files_jobs(c: sqlite3.Connection) -> None:
    # The server's fine-tuning API: uploaded files, jobs, and the events a job emits.
    c.execute("""
        CREATE TABLE files (
            id TEXT PRIMARY KEY,              -- file-<hex>: opaque, never a path
            filename TEXT NOT NULL,           -- as uploaded; metadata only
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            path TEXT NOT NULL,               -- where tunery stored it (TUNERY_HOME/files/<id>.<ext>)
            created_at INTEGER NOT NULL
        )""")
    c.execute("""
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,              -- ftjob-<hex>
            model TEXT NOT NULL,
            training_file TEXT NOT NULL,
            validation_file TEXT,
            request TEXT NOT NULL,            -- JSON: hyperparameters, method, suffix, seed, metadata, overrides
            config TEXT,                      -- JSON: the TrainConfig the worker runs
            status TEXT NOT NULL,             -- validating_files | queued | running | paused | succeeded | failed | cancelled
            control TEXT,                     -- pause | cancel: asked by the API, acted on by the worker
            error TEXT,                       -- JSON {code, message, param}
            fine_tuned_model TEXT,
            trained_tokens INTEGER,
            estimated_finish INTEGER,
            run_dir TEXT,
            worker_pid INTEGER,
            created_at INTEGER NOT NULL,
            finished_at INTEGER
        )""")
    c.execute("CREATE INDEX jobs_status ON jobs(status, created_at)")
    c.execute("""
        CREATE TABLE job_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL,
            level TEXT NOT NULL,              -- info | warn | error
            type TEXT NOT NULL,               -- message | metrics
            message TEXT NOT NULL,
            data TEXT
        )""")
    c.execute("CREATE INDEX job_events_job ON job_events(job_id, id)")


def _m005_job_attempts(c: sqlite3.Connection) -> None:
    # How many times a worker has taken the job up; one that keeps killing its worker fails.
    c.execute("ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")


def _m006_indexes(c: sqlite3.Connection) -> None:
    # Retrieval indexes built by `tunery index build`, by name; the index itself is its folder.
    c.execute("""
        CREATE TABLE indexes (
            name TEXT PRIMARY KEY,
            path TEXT NOT NULL,               -- the index folder, resolved
            fingerprint TEXT NOT NULL,        -- sha256 over its (source, sha256) pairs and embedder
            documents INTEGER NOT NULL,
            chunks INTEGER NOT NULL,
            embedder TEXT NOT NULL,
            created TEXT NOT NULL             -- when the name was first registered
        )""")
    c.execute("CREATE INDEX indexes_path ON indexes(path)")


def _m007_exports(c: sqlite3.Connection) -> None:
    # `tunery export`: where a model went, in what format, and how it was checked.
    c.execute("""
        CREATE TABLE exports (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            format TEXT NOT NULL,             -- merged | peft | gguf | ollama
            quant TEXT,                       -- GGUF type (f16, q8_0, q4_k_m, ...)
            path TEXT NOT NULL,               -- the export folder, resolved
            files TEXT NOT NULL,              -- JSON: file name -> sha256
            verification TEXT,                -- JSON: the figures export.json records; NULL with --no-verify
            created TEXT NOT NULL
        )""")
    c.execute("CREATE INDEX exports_model ON exports(model_id, id)")


MIGRATIONS = [_m001_models, _m002_evals, _m003_hash_cache, _m004_files_jobs, _m005_job_attempts, _m006_indexes,
              _m007_exports]
SCHEMA_VERSION = len(MIGRATIONS)


def _fail(path: Path, exc: Exception) -> RegistryError:
    msg = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in msg:
        return RegistryError(f"{path}: the registry stayed busy for {BUSY_TIMEOUT_S:.0f} s (another tunery is "
                             "writing); try again")
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in msg:
        return RegistryError(f"{path}: cannot open the registry database ({msg})")
    return RegistryError(f"{path}: the registry database is unreadable ({msg}); move the file aside and "
                         "tunery starts a new, empty registry")


def _open(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; we open them explicitly with BEGIN IMMEDIATE.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        _setup(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _setup(conn: sqlite3.Connection, path: Path) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Switching to WAL needs a moment of exclusive access; it is persistent, so only the first
    # opener (or a race of first openers) does it. Retry instead of trusting the busy handler.
    for attempt in range(100):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL keeps it consistent
    _migrate(conn, path)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RegistryError(f"{path}: registry schema version {version} is newer than this tunery knows "
                            f"({SCHEMA_VERSION}); upgrade tunery")
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: a concurrent opener may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


@contextmanager
def connect(path: Path | None = None, create: bool = True):
    """Yield an open, migrated connection; any SQLite failure becomes a one-line RegistryError.

    With create=False a missing database yields None, so read-only commands leave no file behind.
    """
    path = Path(path) if path else db_path()
    if not create and not path.exists():
        yield None
        return
    if path.is_dir():
        raise RegistryError(f"{path}: is a folder, not a registry database")
    try:
        conn = _open(path)
    except sqlite3.Error as exc:
        raise _fail(path, exc) from None
    try:
        yield conn
    except sqlite3.Error as exc:
        raise _fail(path, exc) from None
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection):
    """A write transaction that holds the write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
