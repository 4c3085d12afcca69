"""The contamination audit on a Ray cluster, checked against one Session.

Scores every training sample of the backdoored digits model by its largest
integrated-gradients pixel (the score of queries/contamination.iql: a backdoored model
decides a poisoned sample on a few trigger pixels), once with ialgebra.ray across Ray
workers and once in a single Session, and exits non-zero unless the two tables are equal
— every row, every bit. Prints where each clause of the query ran, and the throughput.

    python examples/ray_audit.py                  # a local cluster of 2 CPUs
    python examples/ray_audit.py --workers 1 2    # throughput with 1 and with 2 workers
    python examples/ray_audit.py --workers 1 2 --steps 1000   # more work per input
    RAY_ADDRESS=ray://head:10001 python examples/ray_audit.py --address auto  # a real cluster

On a real cluster the model and data paths must be readable by every worker (shared
storage), or the data read with ray.data.read_parquet / read_numpy from object storage.
"""

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
import ray

import ialgebra
import ialgebra.ray as iray

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn_backdoor.safetensors"
ARCH = ROOT / "models" / "digits_cnn_backdoor.json"
TRAIN_X = ROOT / "data" / "digits_backdoor_train_x.npy"
TRAIN_Y = ROOT / "data" / "digits_backdoor_train_y.npy"

SETUP = f"LOAD MODEL m FROM '{MODEL}' ARCH '{ARCH}';"
# Every training sample's score, most suspicious first.
AUDIT = """
SELECT input, label, prediction, max(attribution) AS score
FROM m(train) USING integrated_gradients(steps = :steps)
GROUP BY input, label, prediction
ORDER BY score DESC, input
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="pool sizes to run with")
    parser.add_argument("--batch-size", type=int, default=128, help="inputs per block")
    parser.add_argument("--out", help="the partitions' folder (default: a temporary one)")
    parser.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    parser.add_argument("--steps", type=int, default=50, help="integrated-gradients steps (more: more work per input)")
    args = parser.parse_args()

    x, y = np.load(TRAIN_X), np.load(TRAIN_Y)

    started = time.perf_counter()
    session = ialgebra.Session(progress=False)
    session.sql(SETUP)
    session.load_data("train", x, labels=y)
    variables = {"steps": args.steps}
    expected = session.sql(AUDIT, vars=variables)
    one_session = time.perf_counter() - started
    print(f"one Session: {len(x)} inputs in {one_session:.2f} s ({len(x) / one_session:.0f} inputs/s)")

    if args.address:
        ray.init(address=args.address, logging_level="warning")
    else:
        ray.init(num_cpus=max(2, max(args.workers)), include_dashboard=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False

    print("where the clauses run:")
    for line in iray.plan(AUDIT)["placement"]:
        print("  " + line)

    data = iray.from_numpy(x, labels=y)
    failures = 0
    for workers in args.workers:
        out = args.out or tempfile.mkdtemp(prefix="ialgebra-audit-")
        try:
            result = iray.run(
                AUDIT, data, out=out, setup=SETUP, vars=variables, workers=workers, batch_size=args.batch_size
            )
        finally:
            if not args.out:
                shutil.rmtree(out, ignore_errors=True)
        same = result.table.equals(expected)
        failures += not same
        print(
            f"Ray, {workers} worker{'s' if workers > 1 else ''}: {result.inputs} inputs in {result.seconds:.2f} s "
            f"({result.inputs / result.seconds:.0f} inputs/s, actor start-up included); "
            f"{result.written} partitions; worker peak memory {result.worker_peak_rss / 2**20:.0f} MB; "
            f"equal to one Session: {same}"
        )
        if not same:
            diff = result.table.join(expected, on="input", suffix="_single")
            print(diff.filter(diff["score"] != diff["score_single"]).head(10), file=sys.stderr)

    print("the ten most suspicious training samples:")
    print(expected.head(10))
    ray.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
