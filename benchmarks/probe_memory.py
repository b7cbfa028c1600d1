"""Peak memory of issue 21's data-file probes: each probe runs in a child process, which prints its ru_maxrss.

Run: ``.venv/bin/python benchmarks/probe_memory.py`` (docs/reliability.md quotes its output); ``--tiny``
runs two of the probes, a quick check that the script runs (tests/benchmarks/test_scripts.py). Before
issue 21 the same inputs took 2.3 GB (gzip bomb), 2.1 GB (sparse IDX) and the memory cap (memo bomb).
"""

import gzip
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROBES = {
    "gzip bomb (1 MB gz -> 200 MiB)": "from ies.experiments.datafiles import read_idx; read_idx(P + '/bomb.gz', 1)",
    "sparse IDX (4 KB on disk, 78 MB apparent)": "from ies.experiments.datafiles import read_idx; read_idx(P + '/sparse', 3)",
    "memo-bomb labels in test_batch": "from ies.experiments.datafiles import read_cifar; read_cifar('cifar10', P)",
    "ndarray((10**12,)) pickle": "from ies.experiments.datafiles import load_pickle_restricted as f; f(P + '/nd.pkl')",
    "baseline: import only": "import ies.experiments.datafiles",
}


def make_inputs(d: Path) -> None:
    (d / "bomb.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(200 << 20), 1))
    with open(d / "sparse", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 100_000, 28, 28))
        f.truncate(16 + 100_000 * 784)
    (d / "nd.pkl").write_bytes(b"cnumpy\nndarray\nI1000000000000\n\x85\x85R.")
    root = d / "cifar-10-batches-py"
    root.mkdir()
    bomb: list = [0] * 1000
    for _ in range(2):
        bomb = [bomb] * 1000  # shared references: 10**9 numbers as an array, a few KB as a pickle
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"labels": bomb if name == "test_batch" else [0] * 20,
                         b"data": np.zeros((20, 3072), np.uint8)}, f)


def main() -> None:
    d = Path(tempfile.mkdtemp())
    try:
        make_inputs(d)
        tiny = "--tiny" in sys.argv[1:]
        for name, code in PROBES.items():
            if tiny and not name.startswith(("sparse", "baseline")):
                continue
            child = (f"P = {str(d)!r}\ntry:\n    {code}\nexcept ValueError as e:\n    print('refused:', str(e)[:100])\n"
                     "import resource\nprint('peak RSS MiB', round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))")
            r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
            print(f"{name}: {' | '.join(r.stdout.split(chr(10)))} {r.stderr.strip()[-200:]}")
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
