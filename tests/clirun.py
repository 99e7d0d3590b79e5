"""The CLI in-process, through typer's CliRunner: the same `tunery.cli.run` the `tunery` script
calls, with its stdout, stderr and exit code captured, and no interpreter start per call.

`tunery_cli(...)` returns an object shaped like subprocess.CompletedProcess (returncode, stdout,
stderr), so a test reads the same whether it runs the CLI here or as a process (the `process`
lane runs the real `tunery` script where the process boundary is what is under test).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

TUNERY = str(Path(sys.executable).with_name("tunery"))  # the installed script, for the process lane


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def one_line_error(out) -> str:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def tunery_cli(*args, home=None, input: str | None = None, env: dict | None = None) -> Result:
    from tunery import cli

    environ = dict(env or {})
    if home is not None:
        environ["TUNERY_HOME"] = str(home)
    runner = CliRunner()
    cwd = os.getcwd()
    with runner.isolation(input=input, env=environ) as (out, err, _):
        try:
            code = cli.run([str(a) for a in args])
        except SystemExit as exc:  # click may exit on its own for --help
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os.chdir(cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        return Result(code, out.getvalue().decode(), err.getvalue().decode())
