"""ialgebra.ray on a local Ray cluster (two CPUs): the merged table equals one Session's,
a dead worker's block is retried, a rerun skips what is written, and what cannot run
block by block is refused before anything starts."""

import os
import pathlib

import numpy as np
import pytest
from conftest import ROOT, require

ray = require("ray")
import ialgebra  # noqa: E402
import ialgebra.ray as iray  # noqa: E402

MODEL = ROOT / "models" / "digits_cnn_backdoor.safetensors"
ARCH = ROOT / "models" / "digits_cnn_backdoor.json"
SETUP = f"LOAD MODEL m FROM '{MODEL}' ARCH '{ARCH}';"
AUDIT = (
    "SELECT input, label, prediction, max(attribution) AS score FROM m(train) "
    "USING integrated_gradients GROUP BY input, label, prediction ORDER BY score DESC, input LIMIT 40"
)
N = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    crash = tmp_path_factory.mktemp("crash")
    # The first block any worker takes kills its process, once (see _Worker._crash_once);
    # workers inherit the driver's environment.
    os.environ["IALGEBRA_RAY_CRASH_ONCE"] = str(crash)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield crash
    ray.shutdown()
    os.environ.pop("IALGEBRA_RAY_CRASH_ONCE", None)


@pytest.fixture(scope="module")
def train():
    x = np.load(ROOT / "data" / "digits_backdoor_train_x.npy")[:N]
    y = np.load(ROOT / "data" / "digits_backdoor_train_y.npy")[:N]
    return x, y


def single(query, x, y):
    s = ialgebra.Session(progress=False)
    s.sql(SETUP)
    s.load_data("train", x, labels=y)
    return s.sql(query)


def test_the_plan_says_where_each_clause_runs():
    p = iray.plan(AUDIT)
    assert p["dataset"] == "train"
    assert p["pushed"].endswith("GROUP BY input, label, prediction ORDER BY score DESC, input LIMIT 40")
    assert p["after"] == "SELECT * FROM merged ORDER BY score DESC, input LIMIT 40"
    assert p["placement"] == [
        "GROUP BY input, label, prediction: in each block (each group is one input)",
        "ORDER BY score DESC, input LIMIT 40: in each block (its top 40) and after the merge",
    ]
    with pytest.raises(ialgebra.RelationError) as info:
        iray.plan("SELECT * FROM m(train) USING spectral_signature AT LAYER fc1")
    assert "^" in str(info.value)


def test_a_dead_worker_is_retried_and_the_merge_equals_one_session(cluster, train, tmp_path):
    x, y = train
    result = iray.run(AUDIT, iray.from_numpy(x, y, blocks=4), out=tmp_path, setup=SETUP, batch_size=64)
    assert (cluster / "crashed").exists(), "the fault injection did not fire"
    expected = single(AUDIT, x, y)
    assert result.table.equals(expected), f"{result.table}\n!=\n{expected}"
    assert result.inputs == N and result.skipped == 0 and result.written >= 5
    # The whole audit, unsorted and uncut, also equals (every row, every bit).
    full = "SELECT input, label, max(attribution) AS score FROM m(train) GROUP BY input, label"
    out = iray.run(full, iray.from_numpy(x, y), out=tmp_path / "full", setup=SETUP, batch_size=100)
    assert out.plan["after"] is None
    assert out.table.equals(single(full, x, y))


def test_a_rerun_skips_written_partitions_and_ignores_partial_files(cluster, train, tmp_path):
    x, y = train
    data = iray.from_numpy(x, y, blocks=3)
    first = iray.run(AUDIT, data, out=tmp_path, setup=SETUP, batch_size=100)
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert len(parts) == first.written >= 3
    # A lost partition, and a half-written file as a crash mid-write would leave.
    parts[1].unlink()
    (tmp_path / (parts[0].name + ".123.tmp")).write_bytes(b"PAR1 half")
    again = iray.run(AUDIT, data, out=tmp_path, setup=SETUP, batch_size=100)
    assert (again.written, again.skipped) == (1, len(parts) - 1)
    assert again.table.equals(first.table)
    # Nothing left to do: nothing is attributed.
    third = iray.run(AUDIT, data, out=tmp_path, setup=SETUP, batch_size=100)
    assert third.written == 0 and third.table.equals(first.table)
    # Another query must not merge the first one's partitions.
    with pytest.raises(ValueError, match="another job"):
        iray.run(AUDIT.replace("max(", "min("), data, out=tmp_path, setup=SETUP)


def test_groups_across_inputs_are_finished_after_the_merge(cluster, train, tmp_path):
    x, y = train
    q = (
        "SELECT label, count(*) AS pixels, max(attribution) AS peak FROM m(train) USING saliency "
        "WHERE row >= 4 GROUP BY label ORDER BY label"
    )
    p = iray.plan(q)
    assert p["pushed"] == "SELECT * FROM m(train) USING saliency WHERE row >= 4"
    result = iray.run(q, iray.from_numpy(x, y), out=tmp_path, setup=SETUP, batch_size=128)
    assert result.table.equals(single(q, x, y))


def test_what_cannot_split_is_refused_before_ray_starts(tmp_path):
    with pytest.raises(ialgebra.RelationError):
        iray.run("SELECT * FROM m(train[0:5])", data=None, out=tmp_path, setup=SETUP)
    assert not any(pathlib.Path(tmp_path).iterdir())


def test_a_parquet_dataset_with_flat_rows(cluster, train, tmp_path):
    # What a data lake holds: a Parquet file of ids, flat feature lists and labels.
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = train
    flat = x.reshape(len(x), -1)
    table = pa.table(
        {
            "id": pa.array(np.arange(len(x)) + 1000, pa.int64()),
            "pixels": pa.array(list(flat), pa.list_(pa.float32())),
            "digit": pa.array(y, pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=64)
    data = ray.data.read_parquet(str(tmp_path / "train.parquet"))
    q = "SELECT input, label, prediction FROM PREDICT m(train) ORDER BY input"
    result = iray.run(
        q, data, out=tmp_path / "out", setup=SETUP, batch_size=80,
        id_column="id", values_column="pixels", label_column="digit", shape=(1, 8, 8),
    )
    expected = single(q, x, y).with_columns(input=np.arange(len(x)) + 1000)
    assert result.table.equals(expected)
