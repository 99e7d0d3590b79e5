"""`tunery serve`: bind safely, then run uvicorn."""

import ipaddress
import sys
from typing import Optional

import typer

from ..errors import ConfigError


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # what a keyless server's Host header may say


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; non-loopback needs --api-key"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNERY_API_KEY",
                                          help="Bearer key required on every route"),
    max_adapters: int = typer.Option(8, "--max-adapters", min=1, help="LoRA adapters kept loaded per base"),
    max_upload_mb: int = typer.Option(512, "--max-upload-mb", min=1, help="Largest file accepted by POST /v1/files"),
    jobs: bool = typer.Option(True, "--jobs/--no-jobs", help="Run fine-tuning jobs in a worker process"),
    base: list[str] = typer.Option([], "--base", help="A base model clients may name: NAME=REF (any model "
                                   "reference; a .gguf file for --engine llamacpp) or REF; repeatable. Registered "
                                   "fine-tunes are always servable (with llamacpp: through their GGUF export)"),
    engine: str = typer.Option("pytorch", "--engine", help="pytorch: tunery's own engine (runs, LoRA adapters, "
                               "batching); llamacpp: llama.cpp on GGUF files (the `tunery[gguf]` extra)"),
    max_models: int = typer.Option(2, "--max-models", min=1, help="GGUF files kept loaded (--engine llamacpp)"),
):
    """Serve models through an OpenAI-compatible API."""
    if not is_loopback(host) and not api_key:
        raise ConfigError(f"host: refusing to bind {host} (reachable from other machines) without --api-key")
    from .catalog import Catalog, parse_bases

    catalog = Catalog(parse_bases(base), engine=engine)
    if engine == "llamacpp":
        from ..models.llamacpp import llama_cpp_module

        llama_cpp_module()  # without the extra: its one-line error, before anything else
    catalog.check()
    _check_port_free(host, port)
    import uvicorn

    from .app import create_app

    if engine == "llamacpp":
        from .llamacpp_engine import LlamaCppEngine

        served = LlamaCppEngine(resolver=catalog.gguf, max_models=max_models)
    else:
        from .engine import Engine

        served = Engine(max_adapters=max_adapters, resolver=catalog.resolve)
    app = create_app(served, api_key=api_key, jobs_worker=jobs, max_upload_bytes=max_upload_mb * 2**20,
                     catalog=catalog, allowed_hosts=None if api_key else LOOPBACK_NAMES + (host,))
    shown = f"[{host}]" if ":" in host else host
    print(f"tunery: the API at http://{shown}:{port}/v1, the console at http://{shown}:{port}/"
          + (" (log in with the API key)" if api_key else ""), file=sys.stderr, flush=True)
    # On SIGTERM / Ctrl-C: stop taking requests, give those in flight a few seconds, then stop
    # generation at the next token (the lifespan's engine.close()).
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


def _check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"port: cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
