"""One MiniLM forward in training mode (dropout on) over 32 short sentences, 12 times, 2 threads; prints the median (bench/README.md, "Threads on
a shared machine"). Run it alone, then two at once, each under the setting to compare:

    env -u GOMP_SPINCOUNT python bench/experiments/omp_spin.py alone     # libgomp's default
    env -u GOMP_SPINCOUNT python bench/experiments/omp_spin.py A & env -u GOMP_SPINCOUNT python bench/experiments/omp_spin.py B
"""
import sys, time

import torch  # before promptlab: the environment's GOMP_SPINCOUNT, not promptlab's default, is what torch reads

from promptlab.backbones import load_backbone

bb = load_backbone("minilm")
bb.model.train()  # dropout: many small parallel regions per layer, as in a training step
enc = bb.tokenizer(["a rather long sentence about a movie that was quite good and also somewhat bad"] * 32,
                   return_tensors="pt", padding=True)
times = []
for _ in range(12):
    t = time.perf_counter()
    bb.model(**enc).last_hidden_state.mean().item()
    times.append(time.perf_counter() - t)
times.sort()
print(sys.argv[1] if len(sys.argv) > 1 else "run", "median step", round(times[len(times) // 2], 4), "s,",
      torch.get_num_threads(), "threads", flush=True)
