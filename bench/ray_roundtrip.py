"""Ray's own cost of one fan-out call, the floor under a single gallery query.

    python bench/ray_roundtrip.py [--actors 2] [--calls 500]

Times ``ray.get([a.search.remote(q) for a in actors])`` with actors that do no work (a
256-d query in, ten results out), then the same fan-out as a Ray Compiled Graph (beta:
shared-memory channels instead of a task per call). Prints p50 / p99 per call in ms and the
CPU model: what a sharded search pays before FAISS does anything (BENCHMARKS.md, "On the
Intel Xeon the issue was filed on"), and how busy the actors are while nobody calls: a
compiled graph's readers poll their channels, which on a 2-core node costs the pipeline a core
per actor (why the gallery does not use one).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import psutil


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    import ray
    from ray.dag import InputNode, MultiOutputNode

    from reidstream.device import cpu_model

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0.25)
    class Idle:
        def search(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return q[:, :10].copy(), np.zeros((q.shape[0], 10), np.int64)

        def pid(self) -> int:
            return os.getpid()

    actors = [Idle.remote() for _ in range(args.actors)]
    query = np.random.default_rng(0).random((1, 256), dtype=np.float32)

    procs = [psutil.Process(pid) for pid in ray.get([a.pid.remote() for a in actors])]

    def idle_busy(seconds: float = 3.0) -> str:
        """Each actor's CPU use while no call is made, in % of one core."""
        for p in procs:
            p.cpu_percent(None)
        time.sleep(seconds)
        return ", ".join(f"{p.cpu_percent(None):.0f} %" for p in procs)

    def timed(call) -> str:
        call()  # warm-up
        ms = []
        for _ in range(args.calls):
            start = time.perf_counter()
            call()
            ms.append((time.perf_counter() - start) * 1000)
        return f"{np.percentile(ms, 50):.2f} / {np.percentile(ms, 99):.2f}"

    print(f"# {cpu_model()}, {args.actors} actors, {args.calls} calls; ms per call p50 / p99")
    print("plain tasks    ", timed(lambda: ray.get([a.search.remote(query) for a in actors])),
          "; idle actors busy", idle_busy())
    with InputNode() as inp:
        dag = MultiOutputNode([a.search.bind(inp) for a in actors])
    compiled = dag.experimental_compile()
    try:
        print("compiled graph ", timed(lambda: ray.get(compiled.execute(query))),
              "; idle actors busy", idle_busy())
    finally:
        compiled.teardown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
