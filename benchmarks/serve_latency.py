"""Serving: requests/s and p50/p99 latency of `vaectl serve` on loopback at batch 1 and 64, in
reconstruct and score mode; in-process, the registered pyfunc's images/s in both modes (and the
score's two parts: the exported program and bzip2), and reconstruction throughput of ONNX
Runtime vs torch.export vs eager torch.

Needs a registered model (run `make repro` first). Sequential requests from one client, a
bounded number of them, to 127.0.0.1 only.

    python benchmarks/serve_latency.py --model vae-mnist@champion --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"server did not answer {url} within {seconds} s")


def http_latencies(port: int, batch: int, requests: int, mode: str) -> np.ndarray:
    inputs = np.random.default_rng(0).random((batch, 784)).round(3).tolist()
    body = json.dumps({"inputs": inputs, "params": {"mode": mode}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        times.append(time.perf_counter() - began)
    return np.array(times)


def rate(fn, images: int, seconds: float = 3.0) -> float:
    """Images per second of `fn` (which handles `images` of them), run for about `seconds`."""
    fn()
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        fn()
        calls += 1
    return calls * images / (time.perf_counter() - began)


def in_process(export_dir: Path, batch: int) -> dict[str, float]:
    import onnxruntime

    from vaectl.checkpoints import load_trained
    from vaectl.data import manifest_sha256
    from vaectl.export import Reconstruct

    x = np.random.default_rng(0).random((batch, 784), dtype=np.float32)
    session = onnxruntime.InferenceSession(
        str(export_dir / "reconstruct.onnx"), providers=["CPUExecutionProvider"]
    )
    program = torch.export.load(export_dir / "reconstruct.pt2").module()
    model, _, _ = load_trained(Path("models/vae"), "vae", manifest_sha256(Path("data/prepared")), "vaectl")
    eager = Reconstruct(model).eval()
    runners = {
        "onnxruntime": lambda: session.run(None, {"x": x}),
        "torch.export": lambda: program(torch.from_numpy(x)),
        "eager torch": lambda: eager(torch.from_numpy(x)),
    }
    with torch.no_grad():
        return {name: rate(fn, batch) for name, fn in runners.items()}


def pyfunc_rates(model_uri: str) -> dict[str, float]:
    """In-process images/s of the registered pyfunc (verified bundle, as `vaectl predict` loads
    it) by mode and batch, and of the score's two parts at batch 64."""
    import tempfile

    from vaectl import registry, scoring
    from vaectl.tracking import registry_client

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        _, _, bundle, _ = registry.download_verified(model_uri, Path(tmp))
        model = registry_client.load_pyfunc(str(bundle))
        program = torch.export.load(bundle / "artifacts" / "score.pt2").module()
        latent_dim = model.unwrap_python_model().latent_dim
        for batch in (1, 64):
            x = np.random.default_rng(0).random((batch, 784), dtype=np.float32)
            for mode in ("reconstruct", "score"):
                rates[f"pyfunc {mode}, batch {batch}"] = rate(
                    lambda x=x, mode=mode: model.predict(x, params={"mode": mode}), batch
                )
        uniforms, eps = scoring.fixed_draws(latent_dim)
        binary = scoring.binarised(x, uniforms)
        with torch.no_grad():
            rates["score program alone, batch 64"] = rate(
                lambda: program(torch.from_numpy(binary), torch.from_numpy(eps)), 64
            )
        rates["bzip2 code lengths alone, batch 64"] = rate(lambda: scoring.compressed_bits(binary), 64)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vae-mnist@champion")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vaectl", "serve", args.model, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", 120)
        print(f"{args.model} served by MLflow on loopback, {args.requests} sequential requests each")
        print(f"{'mode':>12}{'batch':>6}{'req/s':>9}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for mode in ("reconstruct", "score"):
            for batch in (1, 64):
                http_latencies(port, batch, 5, mode)  # warm-up
                t = http_latencies(port, batch, args.requests, mode)
                print(
                    f"{mode:>12}{batch:>6}{len(t) / t.sum():>9.1f}{batch * len(t) / t.sum():>10.0f}"
                    f"{np.percentile(t, 50) * 1e3:>9.1f}{np.percentile(t, 99) * 1e3:>9.1f}"
                )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"in-process, {torch.get_num_threads()} threads (images/s):")
    for name, found in pyfunc_rates(args.model).items():
        print(f"  {name:<36}{found:>10.0f}")
    print("in-process reconstruction, batch 64 (images/s):")
    for name, found in in_process(Path("export/vae"), 64).items():
        print(f"  {name:<12}{found:>10.0f}")


if __name__ == "__main__":
    main()
