"""The Python API over the engine: frames equal the CLI's tables, numpy/torch/array-like
inputs, variables, errors as exceptions with the shell's caret text, cancellation,
progress, pictures and reports, tables handed in from polars."""

import _thread
import io
import os
import subprocess
import threading
import time

import numpy as np
import polars as pl
import pytest

import ialgebra
from conftest import CNN, CNN_ARCH, DIGITS_X, DIGITS_Y, ROOT, ialg_binary, require

SETUP = (
    f"LOAD MODEL cnn FROM '{CNN}' ARCH '{CNN_ARCH}'; "
    f"LOAD DATA digits FROM '{DIGITS_X}' LABELS '{DIGITS_Y}';"
)

# Queries of the quickstart's kinds: prediction, attribution, window, granularity,
# aggregation over a dataset, a join of two views.
QUERIES = [
    "SELECT input, label, prediction, confidence, correct FROM PREDICT cnn(digits[17])",
    "SELECT row, col, value, attribution FROM cnn(digits[17]) USING integrated_gradients(steps = 50) "
    "ORDER BY attribution DESC LIMIT 10",
    "SELECT sum(attribution) AS window_total, count(*) AS pixels FROM cnn(digits[17]) "
    "USING integrated_gradients WINDOW rows 4:8, cols 0:8",
    "SELECT group, row, col, size, attribution FROM cnn(digits[17]) USING occlusion "
    "WINDOW rows 4:8, cols 0:8 GRANULARITY patch(2) ORDER BY attribution DESC, group",
    "SELECT input, label, max(attribution) AS peak FROM cnn(digits[0:40]) USING saliency "
    "GROUP BY input, label ORDER BY peak DESC, input LIMIT 7",
]


def cli_csv(query: str) -> str:
    out = subprocess.run(
        [ialg_binary(), "--format", "csv", "-c", SETUP + " " + query],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    # The CLI prints the LOAD messages first; the table is the CSV after them.
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith("loaded "))
    return "\n".join(lines[start:]) + "\n"


@pytest.mark.parametrize("query", QUERIES)
def test_frames_equal_the_cli_tables(session, query):
    frame = session.sql(query)
    assert isinstance(frame, pl.DataFrame)
    expected = pl.read_csv(io.StringIO(cli_csv(query)), schema=frame.schema)
    # Exact: the same engine, the same numbers, and the same column types.
    assert frame.equals(expected), f"{frame}\n!=\n{expected}"
    assert frame.columns == expected.columns


def test_sql_returns_the_last_table_or_none(session):
    assert session.sql("SET seed = 3") is None
    frame = session.sql("SET seed = 4; SELECT input FROM PREDICT cnn(digits[0:3])")
    assert frame["input"].to_list() == [0, 1, 2]
    outputs = session.execute("SHOW MODELS; PLAN SELECT * FROM cnn(digits[0]); SET steps = 20")
    assert [o.kind for o in outputs] == ["table", "plan", "message"]
    assert outputs[0].value["model"].to_list() == ["cnn"]
    assert outputs[1].value.startswith("Project")
    assert outputs[2].statement == "SET steps = 20"


def test_variables_bind_colon_names(session):
    by_var = session.sql(
        "SELECT row, col, attribution FROM cnn(digits[:input]) ORDER BY attribution DESC LIMIT 5",
        vars={"input": 17},
    )
    literal = session.sql("SELECT row, col, attribution FROM cnn(digits[17]) ORDER BY attribution DESC LIMIT 5")
    assert by_var.equals(literal)
    # The Captum number the engine's tests pin (IG, 50 steps, zero baseline) at (7, 6)
    # of input 17 — through Python as through Rust.
    at = session.sql(
        "SELECT attribution FROM cnn(digits[:i]) USING integrated_gradients(steps = 50) WHERE row = :r AND col = 6",
        vars={"i": 17, "r": 7},
    )
    assert at.height == 1


def test_numpy_torch_and_array_likes_load_without_files(session):
    x = np.load(DIGITS_X)
    y = np.load(DIGITS_Y)
    from_file = session.sql("SELECT input, row, col, attribution FROM cnn(digits[0:5]) USING saliency")

    class ArrayLike:  # what a tensor of another library looks like to numpy
        def __array__(self, dtype=None, copy=None):
            return x[:5].astype(np.float64)

    for data in (x[:5], x[:5].astype(np.float64), ArrayLike(), x[:5].tolist()):
        msg = session.load_data("mem", data, labels=y[:5])
        assert msg == "loaded data mem: 5 inputs of shape [1, 8, 8], with labels"
        frame = session.sql("SELECT input, row, col, attribution FROM cnn(mem) USING saliency")
        assert frame.equals(from_file)
    # ids keep the input ids of rows taken from a larger dataset.
    session.load_data("part", x[10:13], labels=y[10:13], ids=[10, 11, 12])
    assert session.sql("SELECT input, label FROM PREDICT cnn(part)")["input"].to_list() == [10, 11, 12]
    assert set(session.datasets) >= {"digits", "mem", "part"}


def test_torch_tensors_load_and_from_torch_exports():
    torch = require("torch")
    x = np.load(DIGITS_X)[:4]
    s = ialgebra.Session(progress=False)
    s.load_model("cnn", CNN, arch=CNN_ARCH)
    s.load_data("t", torch.tensor(x, requires_grad=True))
    s.load_data("n", x)
    q = "SELECT input, row, col, attribution FROM cnn({}) USING saliency"
    assert s.sql(q.format("t")).equals(s.sql(q.format("n")))

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    s2 = ialgebra.from_torch(net, torch.zeros(1, 1, 8, 8), name="lin")
    s2.load_data("n", x)
    pred = s2.sql("SELECT input, prediction FROM PREDICT lin(n)")
    expected = net(torch.tensor(x)).argmax(1).tolist()
    assert pred["prediction"].to_list() == expected
    # Saliency of a linear model is its weight row of the predicted class.
    sal = s2.sql("SELECT feature, attribution FROM lin(n[0]) USING saliency ORDER BY feature")
    w = net[1].weight.detach().numpy()[expected[0]]
    np.testing.assert_allclose(sal["attribution"].to_numpy(), np.abs(w), rtol=1e-5, atol=1e-6)


def essence(error_text: str) -> tuple:
    """An error's message, the text its caret underlines, and its hints."""
    lines = error_text.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error["))
    lines = lines[start:]
    underlined = None
    for above, below in zip(lines, lines[1:]):
        if set(below.split("|")[-1].strip()) == {"^"} and "|" in above:
            source = above.split("|", 1)[1][1:]
            caret = below.split("|", 1)[1][1:]
            begin = len(caret) - len(caret.lstrip())
            underlined = source[begin : len(caret.rstrip())]
    return lines[0], underlined, [line for line in lines if line.startswith("  = help")]


def test_bad_input_raises_the_shells_text_and_the_session_survives(session):
    cases = [
        ("SELEC * FROM cnn(digits)", ialgebra.ParseError, "syntax"),
        ("SELECT * FROM cnn(digits) AT LAYER nope", ialgebra.NamingError, "name"),
        ("SELECT * FROM cnn(digits) USING integrated_gradients(steps = -1)", ialgebra.BadValueError, "value"),
        ("LOAD MODEL bad FROM 'no/such/file.onnx'", ialgebra.QueryError, None),
    ]
    for query, cls, kind in cases:
        with pytest.raises(cls) as info:
            session.sql(query)
        err = info.value
        assert isinstance(err, ialgebra.QueryError)
        if kind:
            assert err.kind == kind
        # What `ialg -c` prints: the message, the text under the caret, the hints.
        cli = subprocess.run(
            [ialg_binary(), "-c", SETUP + "\n" + query], capture_output=True, text=True
        )
        assert cli.returncode != 0
        assert essence(str(err)) == essence(cli.stderr), f"{err}\n---\n{cli.stderr}"
        assert "^" in str(err) and "-->" in str(err)
    with pytest.raises(ialgebra.ParseError) as info:
        session.sql("SELEC * FROM cnn(digits)")
    assert str(info.value).splitlines() == [
        "error[syntax]: expected a statement: CONCEPT, EXPORT, LET, LOAD, PLAN, PREDICT, SELECT, SET, SHOW, VAR, WITH",
        " --> <command>:1:1",
        "  |",
        "1 | SELEC * FROM cnn(digits)",
        "  | ^^^^^",
        "  = help: did you mean SELECT?",
    ]
    assert (info.value.line, info.value.column) == (1, 1)
    with pytest.raises(ialgebra.DataError):
        bad = np.load(DIGITS_X)[:3].copy()
        bad[1, 0, 2, 3] = np.nan
        session.load_data("bad", bad)
    with pytest.raises(ialgebra.ShapeError):
        session.load_data("flat", np.zeros(5))
    with pytest.raises(TypeError):
        session.load_data("objects", np.array([object()]))
    # Nothing was lost.
    assert session.sql("SELECT count(*) AS n FROM PREDICT cnn(digits)")["n"][0] == 397
    assert "bad" not in session.datasets


def test_ctrl_c_cancels_a_running_statement_and_the_session_lives(session):
    # One input, a million IG steps: minutes unless cancelled.
    threading.Timer(1.0, _thread.interrupt_main).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        session.sql("SELECT * FROM cnn(digits[3]) USING integrated_gradients(steps = 1000000)")
    assert time.monotonic() - started < 30
    assert session.sql("SELECT prediction FROM PREDICT cnn(digits[3])").height == 1


def test_long_statements_report_progress(session):
    seen = []
    session._s.run(
        "SELECT * FROM cnn(digits[3]) USING integrated_gradients(steps = 30000)",
        lambda label, done, total, unit: seen.append((label, done, total, unit)),
    )
    reports = [r for r in seen if r[3] != "done"]
    assert reports, "no progress reported during a long statement"
    assert all(total > 0 and 0 <= done <= total for _, done, total, _ in reports)
    assert seen[-1][3] == "done"


def test_the_progress_bar_draws_with_tqdm(session, capsys):
    session.progress = True
    session.sql("SELECT * FROM cnn(digits[3]) USING integrated_gradients(steps = 30000)")
    err = capsys.readouterr().err
    assert "steps" in err and "%" in err


def test_pictures_and_reports(session, tmp_path):
    pic = session.picture("SELECT * FROM cnn(digits[0:4]) USING saliency")
    assert pic.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert pic._repr_png_() == pic.data
    width, height = pic.size
    assert width > height > 0
    # The same bytes EXPORT … TO 'f.png' writes.
    exported = tmp_path / "e.png"
    session.sql(f"EXPORT SELECT * FROM cnn(digits[0:4]) USING saliency TO '{exported}'")
    assert exported.read_bytes() == pic.data
    pic.save(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes() == pic.data
    with pytest.raises(ialgebra.BadValueError):
        session.picture("SELECT input FROM PREDICT cnn(digits[0:2])")

    report = session.report("SELECT * FROM cnn(digits[0:2]) USING saliency")
    assert report.html.lstrip().lower().startswith("<!doctype html")
    assert "srcdoc=" in report._repr_html_()
    report.save(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == report.html
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_polars_tables_join_interpretation_results(session):
    notes = pl.DataFrame({"input": [0, 1, 2], "note": ["a", "b", "c"]})
    assert session.table("notes", notes).startswith("kept table notes: 3 rows")
    joined = session.sql(
        "SELECT p.input, p.prediction, n.note FROM (PREDICT cnn(digits[0:3])) AS p "
        "JOIN notes AS n ON p.input = n.input"
    )
    assert joined["note"].to_list() == ["a", "b", "c"]
    with pytest.raises(ialgebra.NamingError):
        session.table("cnn", notes)


def test_settings_and_completion():
    s = ialgebra.Session(progress=False, batch_size=16, seed=7)
    settings = s.sql("SHOW SETTINGS")
    row = dict(zip(settings["name"], settings["value"]))
    assert row["batch_size"] == "16" and row["seed"] == "7"
    s.load_model("cnn", CNN, arch=CNN_ARCH)
    assert "integrated_gradients" in s.complete("SELECT * FROM cnn(d) USING integ")
    assert "select" in ialgebra.keywords()
    assert s.models == ["cnn"]


def test_help_is_useful():
    doc = ialgebra.Session.sql.__doc__
    assert "polars" in doc and "DataFrame" in doc and "QueryError" in doc
    assert ialgebra.__doc__ and "Session" in ialgebra.__doc__


def test_a_second_thread_waits_for_the_running_statement(session):
    results = {}

    def long():
        results["long"] = session.sql("SELECT * FROM cnn(digits[3]) USING integrated_gradients(steps = 20000)")

    worker = threading.Thread(target=long)
    worker.start()
    time.sleep(0.3)
    # The engine runs without the GIL, so this thread runs meanwhile; its statement
    # waits for the session instead of failing.
    quick = session.sql("SELECT prediction FROM PREDICT cnn(digits[0])")
    worker.join()
    assert quick.height == 1 and results["long"].height == 64
