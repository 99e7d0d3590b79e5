"""GGUF files made by llama.cpp's own converter and quantizer (the optional extra `tunery[gguf]`).

The converter (`convert_hf_to_gguf.py` with its `conversion/` package and `gguf-py`) is not in
llama-cpp-python's wheel, only in its source package, which vendors llama.cpp. tunery takes it
from the source package of the llama-cpp-python version installed (fetched once from the package
index with pip and unpacked into TUNERY_HOME/llama.cpp/VERSION), or from a llama.cpp checkout
named by TUNERY_LLAMA_CPP. So the converter always matches the runtime that loads its files.

Invariants:
- 16-bit files come from the converter; every other quant is made by llama.cpp's quantizer from
  the f16 file, so a quantized export's size ratio is measured against the f16 it came from.
- The converter runs in its own process with its own `gguf-py` first on the path: the PyPI
  `gguf` tunery imports is never mixed with the converter's.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import TuneryError
from ..home import tunery_home
from ..progress import say
from ..models.llamacpp import EXTRA, llama_cpp_module

# name -> llama.cpp's LLAMA_FTYPE_* constant (None: written by the converter at that type)
QUANTS = {"f16": None, "bf16": None, "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
          "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
FLOAT_QUANTS = ("f16", "bf16")
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
_CONVERTER_DIRS = ("conversion", "gguf-py")


def check_quant(quant: str) -> str:
    if quant not in QUANTS:
        raise TuneryError(f"quant: {quant!r} is not one of {', '.join(QUANTS)}")
    return quant


def converter() -> Path:
    """Path of convert_hf_to_gguf.py for the installed llama.cpp runtime, fetched once."""
    named = os.environ.get("TUNERY_LLAMA_CPP")
    if named:
        script = Path(named) / "convert_hf_to_gguf.py"
        if not script.is_file():
            raise TuneryError(f"TUNERY_LLAMA_CPP={named}: no convert_hf_to_gguf.py there (point it at a llama.cpp checkout)")
        return script
    version = llama_cpp_module().__version__
    folder = tunery_home() / "llama.cpp" / version
    script = folder / "convert_hf_to_gguf.py"
    if not script.is_file():
        _fetch_converter(version, folder)
    return script


def _fetch_converter(version: str, folder: Path) -> None:
    say(f"fetching llama.cpp's converter from the llama-cpp-python {version} source package (once) ...")
    with tempfile.TemporaryDirectory(prefix="tunery-llama-cpp-") as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
                              "--no-binary", ":all:", "-q", "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if got.returncode or not sdists:
            why = (got.stderr.strip().splitlines() or ["no source package"])[-1]
            raise TuneryError(f"cannot fetch llama-cpp-python {version}'s source package for its GGUF converter ({why}); "
                              "or set TUNERY_LLAMA_CPP to a llama.cpp checkout")
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent if folder.parent.exists() else None))
        with tarfile.open(sdists[0]) as tar:
            root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
            wanted = [m for m in tar.getmembers() if m.name.startswith(root) and
                      (m.name[len(root):] in _CONVERTER_FILES or m.name[len(root):].split("/")[0] in _CONVERTER_DIRS)]
            for m in wanted:
                m.name = m.name[len(root):]
            tar.extractall(staging, members=wanted, filter="data")
    if not (staging / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise TuneryError(f"llama-cpp-python {version}'s source package has no vendor/llama.cpp/convert_hf_to_gguf.py")
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(folder)
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)


def convert(model_dir: Path, out_file: Path, outtype: str) -> None:
    """llama.cpp's converter: a transformers model folder to one GGUF file of `outtype` (f16 | bf16)."""
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    done = subprocess.run([sys.executable, str(converter()), str(model_dir), "--outfile", str(out_file),
                           "--outtype", outtype], capture_output=True, text=True, env=env)
    if done.returncode == 0 and out_file.is_file():
        return
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    why = next((line for line in reversed(lines) if "Error" in line or "not supported" in line.lower()),
               lines[-1] if lines else f"exit status {done.returncode}")
    if "ModuleNotFoundError" in why:
        why += f" (the converter's dependencies come with: {EXTRA})"
    elif "pre-tokenizer was not recognized" in why or "BPE pre-tokenizer" in done.stderr:
        why = "its tokenizer's pre-tokenizer is not one llama.cpp knows, so llama.cpp would split text differently"
    raise TuneryError(f"llama.cpp's converter cannot convert this model: {why.strip()}")


def quantize(src: Path, dst: Path, quant: str) -> None:
    """llama.cpp's quantizer: the f16 GGUF `src` to `dst` at `quant` (q8_0, q4_k_m, ...)."""
    import ctypes

    ll = llama_cpp_module()
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, QUANTS[quant])
    params.nthread = os.cpu_count() or 2
    rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise TuneryError(f"llama.cpp's quantizer failed to make {quant} from {src.name} (status {rc})")
