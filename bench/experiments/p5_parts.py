"""Where P5's time goes, part by part: python bench/experiments/p5_parts.py (bench/work/t5seed from bench/run.py).

Each part is timed by wrapping the function; four runs of the bench's own preprocess job in one process."""
import sys, time
from pathlib import Path
BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
import run as R
from promptlab.tasks import hotpotqa as H
from promptlab import backbones as B
spec = {"argv": ["train", "--method", "prompt-tuning", "--task", "hotpotqa", "--data", str(R.DATA), "--model", str(BENCH / "work" / "t5seed"), "--max-input-tokens", "512", "--max-new-tokens", "63", "--out", "/tmp/x"], "examples": 300, "batch": 8, "threads": 1}
T = {}
def timed(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        t = time.perf_counter()
        try: return f(*a, **k)
        finally: T[name] = T.get(name, 0) + time.perf_counter() - t
    setattr(mod, name, g)
timed(H, "_count_words"); timed(H, "_plan"); timed(H, "_count"); timed(H, "survival_stats"); timed(H, "fit_context")
timed(B.Backbone, "lm_batch")
for i in range(4):
    T.clear(); r = R.job_preprocess(spec)
    print(r["seconds"], {k: round(v, 3) for k, v in T.items()}, flush=True)

# The seed's own tokeniser calls without datasets.map (its preprocess(), as in ../shared/peer/seed_recipe.py)
import json
rows = json.loads(R.DATA.read_text())[:300]
tok = R._setup(R._cli_config(spec["argv"]))[2].tokenizer
texts = [(f"question: {r['question']} context: " + " ".join(f"{t}: {' '.join(s)}" for t, s in r["context"]), r["answer"])
         for r in rows]
for i in range(3):
    t = time.perf_counter()
    for q, a in texts:
        tok(q, truncation=True, padding="max_length", max_length=512)
        tok(a, truncation=True, padding="max_length", max_length=64)
    print("seed tokeniser calls alone", round(time.perf_counter() - t, 3), flush=True)
