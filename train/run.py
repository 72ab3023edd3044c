"""Ray job entry point for training: the same as ``reidstream train``, runnable as a script.

On a Ray cluster (the job's RAY_ADDRESS is picked up, so the run joins that cluster)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python train/run.py train/configs/transreid_vitb16_gpu.yaml

Locally (starts a local Ray)::

    python train/run.py train/configs/transreid_hybrid_cpu.yaml train.epochs=5
    python train/run.py --resume runs/train/transreid-hybrid-cpu
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when not installed

from reidstream.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
