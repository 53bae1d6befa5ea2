"""`promptlab serve`: load the backbone once, every named prompt, then run uvicorn until a signal.

Shutdown is graceful: on SIGINT/SIGTERM uvicorn stops accepting connections, waits for the requests in
flight (up to --graceful-timeout seconds), then the app drains its queue and stops the model thread.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..backbones import Backbone, load_backbone
from ..errors import ConfigError
from ..placement import load_kwargs
from ..tasks import task_names
from .app import Limits, ServerState, create_app
from .engine import Engine
from .registry import Servable, is_hard_spec, load_servable, parse_prompt_arg
from .vllm_proxy import VllmClient, VllmEngine


def build_state(backbone: Backbone, prompt_args: list[str], limits: Limits | None = None, token: str | None = None,
                artifact_roots: list[str] | None = None, kv_cache: bool = True,
                data: dict[str, str] | None = None, engine: Engine | None = None) -> ServerState:
    """`data`: task name -> its data (`--data TASK=PATH`), for hard prompts' demonstrations and searches and for
    tasks that read their label names from data — at start and for prompts loaded later by PUT. `engine`: another
    engine over `backbone` (--engine vllm); by default promptlab's own."""
    engine = engine if engine is not None else Engine(backbone, kv_cache=kv_cache)
    data = dict(data or {})
    prompts: dict[str, Servable] = {}
    for arg in prompt_args:
        name, value = parse_prompt_arg(arg)
        if name in prompts:
            raise ConfigError(f"--prompt name '{name}' is given twice; give each prompt its own name")
        s = load_servable(name, value, backbone, data=data)
        engine.attach(s)
        prompts[name] = s
    known = set(task_names()) | {s.task.name for s in prompts.values()}
    stray = sorted(set(data) - known)
    if stray:  # a typo would otherwise leave few-shot without its demos, silently
        raise ConfigError(f"--data names task '{stray[0]}', which is neither a registered task nor one a --prompt "
                          f"serves; use one of {', '.join(sorted(known))}")
    roots = artifact_roots if artifact_roots else [os.getcwd()]
    return ServerState(backbone, engine, prompts, limits or Limits(), token or None,
                       [Path(r).expanduser().resolve() for r in roots], data=data)


def parse_data_args(values: list[str]) -> dict[str, str]:
    """`--data TASK=PATH`, repeatable: checked before the model loads."""
    out: dict[str, str] = {}
    for v in values:
        task, sep, path = v.partition("=")
        task, path = task.strip(), path.strip()
        if not sep or not task or not path:
            raise ConfigError(f"--data '{v}' needs TASK=PATH, e.g. --data sst2=../shared/data/sst2")
        if task in out:
            raise ConfigError(f"--data gives task '{task}' twice; give each task one path")
        if not Path(path).expanduser().exists():
            raise ConfigError(f"--data {task}={path}: no such file or directory; pass the task's data file or folder")
        out[task] = path
    return out


def check_listen(host: str, port: int) -> None:
    """Bind once before the model loads: uvicorn reports a taken port or an unknown host only after, in its
    own format and exit status."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host '{host}' cannot be resolved ({e.strerror}); use an address such as 127.0.0.1 or "
                          "0.0.0.0") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None


def serve(args: Any) -> None:
    import uvicorn

    if not args.prompt:
        raise ConfigError("serve needs at least one --prompt NAME=DIR or NAME=METHOD:TASK (e.g. zs=zero-shot:sentiment)")
    for flag in ("max_batch", "max_queue", "max_inputs", "max_body_bytes", "max_input_chars"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_wait_ms < 0:
        raise ConfigError("--max-wait-ms must be 0 or more")
    if not args.graceful_timeout >= 0:
        raise ConfigError(f"--graceful-timeout must be 0 or more seconds, got {args.graceful_timeout}; e.g. 30")
    if not 0 < args.body_timeout < float("inf"):
        raise ConfigError(f"--body-timeout must be more than 0 seconds, got {args.body_timeout}; e.g. 30")
    data = parse_data_args(args.data)
    for root in args.artifact_root:
        if not Path(root).expanduser().is_dir():
            raise ConfigError(f"--artifact-root '{root}' is not a directory; pass a directory PUT may load artifacts "
                              "from")
    check_listen(args.host, args.port)
    token = args.token or os.environ.get("PROMPTLAB_TOKEN") or None
    vllm = _vllm_client(args)  # before the model loads: a wrong URL costs no load
    placed = load_kwargs(args.device_map, args.max_memory, args.offload_dir)
    if placed and args.device != "auto":
        raise ConfigError(f"--device {args.device} and --device-map {args.device_map} both say where the model goes; "
                          "keep one")
    backbone = load_backbone(args.model, dtype=args.dtype, device=args.device, placement=placed)
    engine = VllmEngine(backbone, vllm) if vllm is not None else None
    limits = Limits(max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs,
                    max_input_chars=args.max_input_chars, max_batch=args.max_batch,
                    max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, body_timeout_s=args.body_timeout)
    state = build_state(backbone, args.prompt, limits, token, args.artifact_root, kv_cache=not args.no_kv_cache,
                        data=data, engine=engine)
    app = create_app(state)
    names = ", ".join(f"{n} ({s.method}, {s.task.name})" for n, s in state.prompts.items())
    via = f" via vLLM at {vllm.url} ({vllm.model})" if vllm is not None else ""
    print(f"promptlab: serving {names} on {backbone.name}{via} at http://{args.host}:{args.port} "
          f"(docs /docs; admin {'on' if token else 'off: no --token'})", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print("promptlab: warning: listening beyond loopback; PUT/DELETE stay off without a token", flush=True)
    # uvicorn drains, then raises the signal again under the handler it found: SIGTERM's default would end the
    # process with -15 after a clean drain; exit 0 instead, as service managers expect of a graceful stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                  timeout_graceful_shutdown=args.graceful_timeout)).run()


def _vllm_client(args: Any) -> VllmClient | None:
    """--engine vllm: reach the vLLM server before the model loads, so a wrong URL costs no load."""
    engine, url = getattr(args, "engine", "promptlab"), getattr(args, "vllm_url", None)
    if engine != "vllm":
        if url:
            raise ConfigError("--vllm-url is read with --engine vllm only; add --engine vllm or drop it")
        return None
    if not url:
        raise ConfigError("--engine vllm needs --vllm-url URL, the address of a vLLM server started with "
                          "--enable-prompt-embeds, e.g. --vllm-url http://127.0.0.1:8001")
    if args.no_kv_cache:
        raise ConfigError("--no-kv-cache is for --engine promptlab; vLLM manages its own cache")
    return VllmClient(url, args.vllm_model or None)


__all__ = ["build_state", "is_hard_spec", "serve"]
