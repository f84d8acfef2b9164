"""One scoring loop of `bench_scoring.py`, timed in a fresh process so that its OpenMP setting is its own.

    python -I benchmarks/scoring_loops.py CASE FOLDER WEIGHTS DEVICE ROUNDS BATCH    -> one JSON line on stdout

libgomp reads its spin setting once, when torch is imported, so the bare model loop at torch's defaults and the
loops under the command's thread policy (`iqa_plugins.runtime`) cannot share a process. Cases:
- `bare_torch_defaults`: `metric(batch)` on decoded, stacked tensors; torch's own threads and OpenMP waits;
- `bare_policy`: the same loop under the command's policy (threads, bounded OpenMP spin);
- `command`: the command's loop after its model is built, under its policy: decode (in this process or in
  decoding workers, as the policy says) + score + CSV write.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    case, folder, weights, device_name, rounds, batch_size = argv
    if case != "bare_torch_defaults":
        from iqa_plugins.runtime import bound_openmp_spin

        bound_openmp_spin()  # before torch is imported, as the command does
    import torch

    from iqa_plugins.runtime import apply_plan, plan_threads
    from iqa_plugins.scoring import Failure, collect_images, load_metric, score_paths
    from iqa_plugins.scoring_output import ScoreWriter

    device, batch_size = torch.device(device_name), int(batch_size)
    plan = plan_threads(device.type)
    if case != "bare_torch_defaults":
        apply_plan(plan)
    metric = load_metric("drexperts", {"pretrained_model_path": weights}, device_name)
    paths, _ = collect_images([folder])

    if case == "command":
        out = Path(folder).parent / "loop.csv"

        def run() -> None:
            with open(out, "w", newline="") as handle:
                writer = ScoreWriter(handle, "csv", [metric.spec])
                for row in score_paths(paths, [metric], batch_size=batch_size, num_workers=plan.workers):
                    assert not isinstance(row, Failure), row  # every benchmark photo scores
                    writer.write(row)
            assert sum(1 for _ in open(out)) == len(paths) + 1
    else:
        from iqa_plugins.io import read_image

        images = [torch.from_numpy(read_image(p).transpose(2, 0, 1).copy()) for p in paths]
        batches = [torch.stack(images[i:i + batch_size]).to(device) for i in range(0, len(images), batch_size)]

        def run() -> None:
            with torch.inference_mode():
                for batch in batches:
                    metric.model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    run()  # warm-up
    seconds = []
    for _ in range(int(rounds)):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "images": len(paths), "torch_threads": torch.get_num_threads(),
                      "workers": plan.workers if case == "command" else 0}))


if __name__ == "__main__":
    main(sys.argv[1:])
