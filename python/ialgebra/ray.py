"""One query over a dataset too large for one machine, on a Ray cluster.

The dataset is a Ray Dataset with an input-id column, a values column (one tensor per
row) and optionally a label column; :func:`from_numpy` makes one from arrays, and
``ray.data.read_parquet`` / ``read_numpy`` / ``read_images`` read files (add the id
column if the files have none). A pool of actors each holds an :class:`ialgebra.Session`
with the model loaded once (the ``setup`` script); every block of the dataset is loaded
into a worker's session under the query's dataset name, with its input ids kept, and
answered by the part of the query that one block can answer. Each block's result is
written as one Parquet partition, atomically (a temporary file, then a rename), named by
its input ids; the driver merges the partitions in input order with polars and runs the
rest of the query over them.

Which clauses run where (``plan(query)`` says it for a given query):

- WHERE: in every block.
- GROUP BY that includes ``input`` (every group is one input), its HAVING and the select
  list: in every block.
- ORDER BY … LIMIT n: each block keeps its own top n, the merge orders and cuts again;
  ORDER BY without LIMIT, and OFFSET: after the merge only.
- Grouping that spans inputs, aggregates over everything, window functions: every block
  keeps its rows (with the WHERE), the whole query runs after the merge.
- Joins, set operations, WITH, INFLUENCE, TCAV and the dataset-wide detectors do not split
  and are refused: run them in one session.

Failures: an actor that dies (its process killed, its node lost) is restarted and its
block retried — Ray Data's actor pools do so by default; an error in the query itself
is not retried but raised. A partition is never half-written; running the same job again
skips the inputs whose partitions are already there (a resumable audit); ``job.json``
in the folder names the job, and another query aimed at the folder is refused.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any, Mapping, Optional

import numpy as np
import polars as pl

from . import Session, _ialgebra, _replace_atomically, _write_atomically

__all__ = ["run", "plan", "from_numpy", "merge", "Result"]

MERGED = "merged"
ID, VALUES, LABEL = "input", "x", "label"


def plan(query: str) -> dict:
    """How ``query`` runs over blocks: ``dataset`` (the name every block is loaded under),
    ``pushed`` (the query each block runs), ``after`` (the query over the merged results,
    which it reads as the table ``merged``; None when the blocks' rows in input order are
    the answer) and ``placement`` (one line per clause: where it runs). Raises a
    :class:`ialgebra.QueryError` for a query that cannot run block by block."""
    return _ialgebra.split_for_blocks(query, MERGED)


def from_numpy(x: Any, labels: Any = None, ids: Any = None, blocks: Optional[int] = None):
    """A Ray Dataset of the arrays ``x`` (inputs first) and ``labels``, with an ``input``
    column of ids (default 0…N−1), in ``blocks`` blocks (default: about 256 inputs each)."""
    import pyarrow as pa
    import ray.data

    x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    n = len(x)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    blocks = blocks or max(1, -(-n // 256))
    tables = []
    for part in np.array_split(np.arange(n), blocks):
        columns = {
            ID: pa.array(ids[part], pa.int64()),
            VALUES: pa.FixedShapeTensorArray.from_numpy_ndarray(x[part]),
        }
        if labels is not None:
            columns[LABEL] = pa.array(np.asarray(labels, dtype=np.int64)[part], pa.int64())
        tables.append(pa.table(columns))
    return ray.data.from_arrow(tables)


def _partition_name(ids: np.ndarray) -> str:
    return f"part-{int(ids[0]):012d}-{int(ids[-1]):012d}-{len(ids)}"


class _Worker:
    """A Ray actor: a Session with the setup run once, answering blocks."""

    def __init__(self, setup, query, dataset, out, vars, cwd, columns, settings, done_ids, threads, shape):
        # The engine's thread pool, made at its first use, as wide as the CPUs Ray gave
        # this actor: two actors on two cores must not run four threads.
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        # On a local cluster the driver's folder is here too: relative paths in the
        # setup script then mean what they meant to the driver.
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.session = Session(progress=False, **settings)
        if vars:
            self.session._bind(vars)
        if setup.strip():
            self.session.execute(setup)
        self.query, self.dataset, self.out, self.columns = query, dataset, out, columns
        self.shape = shape
        # Inputs whose partitions an earlier run wrote (a resumed audit skips them).
        import ray

        if isinstance(done_ids, ray.ObjectRef):  # passed by reference: it may be large
            done_ids = ray.get(done_ids)
        self.done_ids = np.asarray(done_ids, dtype=np.int64)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict:
        id_column, values_column, label_column = self.columns
        ids = np.asarray(batch[id_column], dtype=np.int64)
        keep = ~np.isin(ids, self.done_ids)
        order = np.flatnonzero(keep)[np.argsort(ids[keep], kind="stable")]
        ids = ids[order]
        if len(ids) == 0:
            return {
                "partition": np.array([""]),
                "rows": np.array([-1], dtype=np.int64),
                "peak_rss": np.array([_peak_rss()], dtype=np.int64),
            }
        name = _partition_name(ids)
        final = os.path.join(self.out, name + ".parquet")
        if not os.path.exists(final):
            self._crash_once()
            labels = batch.get(label_column) if label_column else None
            self.session.load_data(
                self.dataset,
                self._values(batch[values_column])[order],
                labels=None if labels is None else np.asarray(labels)[order],
                ids=ids,
            )
            frame = self.session.sql(self.query)
            if frame is None:
                raise ValueError("the pushed query gave no table")
            # The ids first (the driver's record of what is done), then the partition:
            # the partition's rename is the commit.
            id_bytes = _npy_bytes(ids)
            _write_atomically(os.path.join(self.out, name + ".ids.npy"), id_bytes)
            _replace_atomically(final, frame.write_parquet)
            rows = frame.height
        else:
            rows = -1
        return {
            "partition": np.array([name]),
            "rows": np.array([rows], dtype=np.int64),
            "peak_rss": np.array([_peak_rss()], dtype=np.int64),
        }

    def _values(self, column) -> np.ndarray:
        """The block's inputs as one array: Parquet's list columns arrive as an array of
        arrays; ``shape`` gives each input its shape (a flat list of 64 → (1, 8, 8))."""
        values = np.asarray(column)
        if values.dtype == object:
            values = np.stack([np.asarray(v, dtype=np.float32) for v in values])
        if self.shape is not None:
            values = values.reshape((len(values),) + tuple(self.shape))
        return values

    def _crash_once(self) -> None:
        # Fault injection for the tests: with IALGEBRA_RAY_CRASH_ONCE=<folder>, the first
        # block any worker takes kills its process (before writing anything), once.
        folder = os.environ.get("IALGEBRA_RAY_CRASH_ONCE")
        if folder:
            marker = os.path.join(folder, "crashed")
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(17)


def _peak_rss() -> int:
    """This process's peak resident memory, in bytes (0 where unknown)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    except (ImportError, OSError):
        return 0


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _claim(out: str, job: dict) -> None:
    """Records which job the partitions in ``out`` belong to (job.json), or checks that a
    resumed run is the same job: partitions of another query must not be merged in."""
    import json

    path = os.path.join(out, "job.json")
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        if earlier != job:
            raise ValueError(
                f"{out} holds partitions of another job (query, setup or variables differ: "
                f"it ran {earlier['pushed']!r}); give this job a folder of its own"
            )
    else:
        _write_atomically(path, json.dumps(job, indent=1).encode())


def _done(out: str) -> dict:
    """The partitions already written: name → their input ids."""
    done = {}
    for path in glob.glob(os.path.join(out, "part-*.parquet")):
        name = os.path.basename(path)[: -len(".parquet")]
        ids_path = os.path.join(out, name + ".ids.npy")
        if os.path.exists(ids_path):
            done[name] = np.load(ids_path)
    return done


def merge(out: str, done: Optional[dict] = None) -> pl.DataFrame:
    """The partitions in ``out`` (``done``: as :func:`_done` read them), concatenated in
    input order."""
    names = sorted(_done(out) if done is None else done)
    if not names:
        raise FileNotFoundError(f"no partitions in {out}")
    frames = [pl.read_parquet(os.path.join(out, n + ".parquet")) for n in names]
    return pl.concat(frames, how="vertical_relaxed")


class Result:
    """What :func:`run` did: ``table`` (the answer), ``plan`` (see :func:`plan`), the
    partitions written now and skipped as already there, the inputs in the partitions,
    the seconds the blocks took, and the largest peak resident memory of a worker
    (bytes)."""

    def __init__(self, table, plan, written, skipped, inputs, seconds, worker_peak_rss=0):
        self.table, self.plan = table, plan
        self.written, self.skipped, self.inputs, self.seconds = written, skipped, inputs, seconds
        self.worker_peak_rss = worker_peak_rss

    def __repr__(self) -> str:
        return (
            f"<ialgebra.ray.Result {self.table.height} rows; {self.written} partitions written, "
            f"{self.skipped} already there; {self.inputs} inputs in {self.seconds:.1f} s>"
        )


def run(
    query: str,
    data,
    out: str,
    setup: str = "",
    vars: Optional[Mapping[str, Any]] = None,
    workers: int = 2,
    batch_size: int = 256,
    settings: Optional[Mapping[str, Any]] = None,
    id_column: str = ID,
    values_column: str = VALUES,
    label_column: Optional[str] = LABEL,
    cpus_per_worker: float = 1,
    shape: Optional[tuple] = None,
) -> Result:
    """Runs ``query`` over the Ray Dataset ``data`` on ``workers`` actors and returns a
    :class:`Result` whose ``table`` is the answer one Session would give.

    ``setup`` is the script each worker runs once (LOAD MODEL …, SET …); the query's
    dataset need not exist there — every block is loaded under its name. ``out`` is the
    folder of partitions: a second run with the same ``out`` skips what is done. Blocks
    of ``batch_size`` inputs go to the workers (a worker holds one block's inputs and
    their attributions at a time). ``vars`` binds ``:name`` in setup and query;
    ``settings`` are the workers' session settings (``{"memory_mb": 1024}``). Each worker
    takes ``cpus_per_worker`` CPUs from Ray and runs that many engine threads. The data's
    columns are ``id_column`` (int64 input ids), ``values_column`` (one array per input)
    and ``label_column`` (optional); ``shape`` reshapes each input (rows read from
    Parquet as flat lists: ``shape=(1, 8, 8)``).
    """
    import ray
    import ray.data

    split = plan(query)
    os.makedirs(out, exist_ok=True)
    out = os.path.abspath(out)
    _claim(out, {"pushed": split["pushed"], "setup": setup, "vars": {k: str(v) for k, v in (vars or {}).items()}})
    settings = dict(settings or {})
    done = _done(out)
    done_ids = np.concatenate(list(done.values())) if done else np.empty(0, dtype=np.int64)
    if label_column and label_column not in data.schema().names:
        label_column = None
    started = time.perf_counter()
    cluster_cpus = ray.cluster_resources().get("CPU", 0)
    if workers * cpus_per_worker >= cluster_cpus:
        # A pool that takes every CPU would starve the tasks reading the data (Ray Data
        # schedules reads as tasks upstream of the actors): read it first, into Ray's
        # object store (which spills to disk). With CPUs to spare, reads stream into the
        # workers instead.
        data = data.materialize()
    summary = data.map_batches(
        _Worker,
        fn_constructor_args=(
            setup,
            split["pushed"],
            split["dataset"],
            out,
            dict(vars or {}),
            os.getcwd(),
            (id_column, values_column, label_column),
            settings,
            ray.put(done_ids),
            max(1, int(cpus_per_worker)),
            None if shape is None else tuple(int(d) for d in shape),
        ),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        # A worker that dies is started again and its block retried: Ray Data's actor
        # pools restart actors and retry their tasks by default.
    ).take_all()
    seconds = time.perf_counter() - started
    written = sum(1 for r in summary if r["rows"] >= 0)
    partitions = _done(out)
    merged = merge(out, partitions)
    inputs = sum(len(v) for v in partitions.values())
    if split["after"] is None:
        table = merged
    else:
        driver = Session(progress=False, **settings)
        if vars:
            driver._bind(vars)
        driver.table(MERGED, merged)
        table = driver.sql(split["after"])
    peak = max((int(r["peak_rss"]) for r in summary), default=0)
    return Result(table, split, written, len(done), inputs, seconds, peak)
