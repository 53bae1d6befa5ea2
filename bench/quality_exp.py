"""Quality runs on real data, one process, methods in sequence: python bench/quality_exp.py TASK DATA TRAIN_SIZE "method:key=val,..." ...

TRAIN_SIZE 0 means all; keys set TrainConfig fields (epochs, lr, virtual_tokens, patience, schedule, train_anchors=1),
seed and dtype the run's, shots/selection/template/candidates the hard settings; opt=adamw|adafactor sets the
method's optimizer for that run. Prints one JSON line per method (accuracy on the evaluation split).
With QUALITY_OUT=DIR set, each run's directory (predictions.jsonl, metrics.json, artifact) is kept as DIR/METHOD-SEED.
"""
import os, sys, json, time
from pathlib import Path
from promptlab.allocator import keep_freed_memory
keep_freed_memory()  # ~20% faster training; these runs measure accuracy, not peak memory
from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.pipeline import load_data, run_one
from promptlab.tasks import get_task
from promptlab.methods import get_method
task_name, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
bb = load_backbone("minilm"); task = get_task(task_name)
for spec in sys.argv[4:]:
    method, _, kv = spec.partition(":")
    cfg = RunConfig(task=task_name, data=data or None, method=method, batch_size=64)
    cfg.train.train_size = n or None
    cls = type(get_method(method))
    declared = cls.__dict__.get("optimizer")  # restored after the run: the next spec gets the method's own
    for item in filter(None, kv.split(",")):
        k, v = item.split("=")
        if k == "opt": cls.optimizer = v; continue
        if k in ("seed", "dtype"):
            setattr(cfg, k, type(getattr(cfg, k))(v)); continue
        if k in ("shots", "selection", "template", "candidates"):
            setattr(cfg.hard, k, type(getattr(cfg.hard, k))(v) if getattr(cfg.hard, k) is not None else v); continue
        cur = getattr(cfg.train, k)
        if cur is None:  # optional fields: numbers (lr, prefix_projection) or words (init)
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(cur, bool):  # bool("0") would be True
            v = v.lower() in ("1", "true", "yes")
        setattr(cfg.train, k, type(cur)(v) if cur is not None else v)
    t = time.time()
    out = Path(os.environ["QUALITY_OUT"]) / f"{method}-{cfg.seed}" if os.environ.get("QUALITY_OUT") else None
    r = run_one(cfg, bb, task, load_data(task, cfg), out=out)
    m = r.metrics
    print(json.dumps({"spec": spec, "seed": cfg.seed, "acc": round(m["metrics"]["accuracy"], 4), "params": m["trainable_params"],
                      "pct": m["trainable_percent"], "train_s": m["train_seconds"], "best_epoch": r.predictor.extras.get("best_epoch"),
                      "hist": [(h.get("epoch"), round(h.get("train_loss", 0), 3), round(h.get("dev_score") or 0, 3)) for h in m.get("history") or []]}), flush=True)
    if declared is None:
        cls.__dict__.get("optimizer") is not None and delattr(cls, "optimizer")
    else:
        cls.optimizer = declared
