"""ialgebra: ask *why* a neural network decided, with declarative queries.

An analyst loads a model and data, then asks which pixels, tokens or columns drove a
decision, at which layer, what changes if an input or an activation is edited, and where
two models (or a clean and an adversarial input) part ways — in IQL, a SQL-like language
whose answers are polars DataFrames. The engine is Rust; this package is a thin layer
over it::

    import ialgebra
    s = ialgebra.Session()
    s.load_model("cnn", "models/digits_cnn.safetensors", arch="models/digits_cnn.json")
    s.load_data("digits", x, labels=y)            # numpy arrays or torch tensors
    top = s.sql("SELECT row, col, attribution FROM cnn(digits[:input]) "
                "ORDER BY attribution DESC LIMIT 5", vars={"input": 17})
    s.picture("SELECT * FROM cnn(digits[0:4]) USING saliency")   # shown inline in Jupyter

The language is described in the repository's README (``\\help`` in the ``ialg`` shell).
A failed statement raises a :class:`QueryError` subclass whose message is the shell's
text, with a caret under the place; the session is unchanged by the failed statement.
Ctrl-C (KeyboardInterrupt) stops a running statement at its next step.

``ialgebra.ray`` runs one query over a dataset too large for one machine on a Ray cluster.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Union

import numpy as np
import polars as pl

from . import _ialgebra
from ._ialgebra import (
    BadValueError,
    CancelledError,
    DataError,
    FileError,
    ModelError,
    NamingError,
    ParseError,
    QueryError,
    RelationError,
    ShapeError,
)

__version__ = _ialgebra.__version__

__all__ = [
    "Session",
    "Output",
    "Picture",
    "Report",
    "from_torch",
    "keywords",
    "QueryError",
    "ParseError",
    "NamingError",
    "BadValueError",
    "ShapeError",
    "ModelError",
    "DataError",
    "FileError",
    "RelationError",
    "CancelledError",
]

Vars = Optional[Mapping[str, Union[int, float, str, bool]]]


class Output(NamedTuple):
    """One statement's result: ``kind`` is "table" (``value`` a polars DataFrame),
    "message" or "plan" (``value`` a str); ``statement`` is its text; ``warnings`` what
    the shell would print after it."""

    kind: str
    statement: str
    value: Union[pl.DataFrame, str]
    warnings: list


def _replace_atomically(path: Union[str, os.PathLike], write) -> None:
    """Has ``write(tmp)`` write a temporary file beside ``path``, then renames it to
    ``path``: the file is whole or not there, whatever happens on the way."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ialgebra-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_atomically(path: Union[str, os.PathLike], data: bytes) -> None:
    """Writes ``data`` to ``path`` whole or not at all."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _replace_atomically(path, write)


class Picture:
    """A PNG: the maps of a query's result (what ``EXPORT … TO 'f.png'`` draws). Jupyter
    shows it inline; ``save(path)`` writes it; ``data`` holds the bytes."""

    def __init__(self, data: bytes):
        self.data = bytes(data)

    @property
    def size(self) -> tuple:
        """(width, height) in pixels, read from the PNG header."""
        return int.from_bytes(self.data[16:20], "big"), int.from_bytes(self.data[20:24], "big")

    def _repr_png_(self) -> bytes:
        return self.data

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the PNG to ``path`` (atomically: whole or not at all)."""
        _write_atomically(path, self.data)

    def __repr__(self) -> str:
        w, h = self.size
        return f"<ialgebra.Picture {w}×{h} PNG, {len(self.data)} bytes>"


class Report:
    """A self-contained HTML report of a query's result (what ``EXPORT REPORT`` writes).
    Jupyter shows it inline (in an isolated frame); ``save(path)`` writes it."""

    def __init__(self, html: str):
        self.html = html

    def _repr_html_(self) -> str:
        import html as _html

        return (
            '<iframe style="width:100%;height:640px;border:1px solid #ddd" '
            f'srcdoc="{_html.escape(self.html, quote=True)}"></iframe>'
        )

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the report to ``path`` (atomically)."""
        _write_atomically(path, self.html.encode("utf-8"))

    def __repr__(self) -> str:
        return f"<ialgebra.Report {len(self.html)} characters of HTML>"


def _literal(value: Any) -> str:
    """``value`` as an IQL literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(float(value)) if isinstance(value, (float, np.floating)) else str(int(value))
    if isinstance(value, (str, os.PathLike)):
        return "'" + os.fspath(value).replace("'", "''") + "'"
    raise TypeError(f"cannot write {type(value).__name__} as a query value")


def _as_array(data: Any, dtype, what: str) -> np.ndarray:
    """A C-ordered numpy array of ``dtype`` from numpy, torch, or anything with
    ``__array__``."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor
        data = data.detach().cpu()
    try:
        array = np.asarray(data)
    except Exception as e:  # noqa: BLE001 - say which argument
        raise TypeError(f"{what}: expected an array (numpy, torch, or anything with __array__): {e}") from None
    if array.dtype == object:
        raise TypeError(f"{what}: expected numbers, got an array of Python objects")
    return np.ascontiguousarray(array, dtype=dtype)


def _tqdm():
    """tqdm's notebook widget where Jupyter's widgets are installed, its text bar
    elsewhere (tqdm.auto without ipywidgets warns, then draws text anyway)."""
    try:
        import ipywidgets  # noqa: F401

        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm
    return tqdm


class _ProgressBar:
    """A tqdm bar for one long statement, made at its first report."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.label = None

    def __call__(self, label: str, done: int, total: int, unit: str) -> None:
        if not self.enabled:
            return
        if unit == "done":
            self.close()
            return
        if self.bar is None or label != self.label:
            self.close()
            self.bar = _tqdm()(total=total, desc=label, unit=f" {unit}", leave=False)
            self.label = label
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Session:
    """An engine session: the models, data, tables, settings and caches of one analysis.

    ``Session(batch_size=64, seed=1)`` is ``Session()`` then ``SET batch_size = 64;
    SET seed = 1``. ``progress=False`` hides the progress bars of long statements.
    A session runs one statement at a time: a call from a second thread waits for the
    running one (statements run without the GIL, so other threads go on meanwhile).
    """

    def __init__(self, progress: bool = True, **settings: Any):
        self._s = _ialgebra.Session()
        # One statement at a time: a call from a second thread waits for the first.
        self._lock = threading.RLock()
        self.progress = progress
        self._temporary: list = []
        for name, value in settings.items():
            self.set(name, value)

    # Running statements -------------------------------------------------------------

    def _bind(self, vars: Vars) -> None:
        for name, value in (vars or {}).items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
            self._s.set_variable(name, text)

    def _run(self, engine_call, text: str, vars: Vars):
        """``engine_call(text, progress)`` with ``vars`` bound and a progress bar."""
        with self._lock:
            self._bind(vars)
            bar = _ProgressBar(self.progress)
            try:
                return engine_call(text, bar)
            finally:
                bar.close()

    def execute(self, text: str, vars: Vars = None) -> list:
        """Runs one or more statements; returns every statement's :class:`Output`, in order.

        ``vars`` binds script variables: ``vars={"input": 17}`` makes ``:input`` read 17
        (bindings stay for later statements, as ``--var`` does for the shell). A failed
        statement raises a :class:`QueryError` (the statements before it have run); a
        syntax error anywhere raises before anything runs.
        """
        raw = self._run(self._s.run, text, vars)
        return [
            Output(kind, statement, pl.DataFrame(value) if kind == "table" else value, warnings)
            for kind, statement, value, warnings in raw
        ]

    def sql(self, text: str, vars: Vars = None) -> Optional[pl.DataFrame]:
        """Runs one or more statements and returns the last one's table as a polars
        DataFrame, or None when the last statement gives no table (a LOAD, a SET).

        >>> s.sql("SELECT row, col, attribution FROM cnn(digits[:i]) "
        ...       "ORDER BY attribution DESC LIMIT 5", vars={"i": 17})   # doctest: +SKIP

        Raises a :class:`QueryError` subclass whose message is the shell's text (the line,
        a caret under the place, hints). Ctrl-C stops a running statement at its next step
        and raises KeyboardInterrupt; the session lives on.
        """
        outputs = self.execute(text, vars)
        if outputs and outputs[-1].kind == "table":
            return outputs[-1].value
        return None

    def set(self, name: str, value: Any) -> str:
        """``SET name = value`` (see SHOW SETTINGS for the names)."""
        return self.execute(f"SET {name} = {_literal(value)}")[-1].value

    # Loading ----------------------------------------------------------------------

    def load_model(
        self,
        name: str,
        path: Union[str, os.PathLike],
        arch: Union[str, os.PathLike, None] = None,
        classes: Union[str, os.PathLike, None] = None,
    ) -> str:
        """Loads a model as ``name``: an ONNX file, a Hugging Face folder, or a
        ``.safetensors`` / ``.pth`` file with its ``arch`` (architecture JSON). ``classes``
        names its outputs (a text file, one name per line). Returns the engine's message."""
        stmt = f"LOAD MODEL {name} FROM {_literal(path)}"
        if arch is not None:
            stmt += f" ARCH {_literal(arch)}"
        if classes is not None:
            stmt += f" CLASSES {_literal(classes)}"
        return self.execute(stmt)[-1].value

    def load_data(
        self,
        name: str,
        data: Any,
        labels: Any = None,
        ids: Any = None,
    ) -> str:
        """Loads an array held in memory as dataset ``name`` — no file in between.

        ``data``: numpy array, torch tensor, or anything with ``__array__``, inputs first:
        (N, C, H, W) or (N, H, W) images, (N, D) table rows, any other shape a tensor.
        Values are read as float32. ``labels``: N integers. ``ids``: N increasing input
        ids (default 0…N−1), for rows taken from a larger dataset. Returns the engine's
        message; NaN or infinity is refused unless ``SET allow_nonfinite = true``.
        """
        x = _as_array(data, np.float32, "data")
        y = None if labels is None else _as_array(labels, np.int64, "labels").reshape(-1)
        i = None if ids is None else _as_array(ids, np.int64, "ids").reshape(-1)
        with self._lock:
            return self._s.load_array(
                name,
                list(x.shape),
                x.tobytes(),
                None if y is None else y.tobytes(),
                None if i is None else i.tobytes(),
            )

    def table(self, name: str, frame: Any) -> str:
        """Keeps a table (a polars DataFrame, or anything with ``__arrow_c_stream__``) under
        ``name``, as ``LET name = (SELECT …)`` would: queries read it with ``FROM name`` and
        may join it with interpretation results."""
        if not hasattr(frame, "__arrow_c_stream__"):
            frame = pl.DataFrame(frame)
        with self._lock:
            return self._s.keep_table(name, frame)

    # Pictures and reports -----------------------------------------------------------

    def picture(self, query: str, vars: Vars = None) -> Picture:
        """Runs ``query`` (and any statements before it) and returns the picture of its
        result's maps — shown inline in Jupyter, ``.save(path)`` writes the PNG."""
        png = self._run(self._s.picture, query, vars)
        if png is None:
            raise BadValueError(
                "the query's result has no maps to draw (it needs an attribution or activation column)"
            )
        return Picture(png)

    def report(self, query: str, vars: Vars = None) -> Report:
        """Runs ``query`` and returns an HTML report of its result (inputs, maps,
        predictions) — shown inline in Jupyter, ``.save(path)`` writes it."""
        return Report(self._run(self._s.report, query, vars))

    # What the session holds -----------------------------------------------------------

    @property
    def models(self) -> list:
        """The names of the loaded models."""
        return self._s.model_names()

    @property
    def datasets(self) -> list:
        """The names of the loaded datasets."""
        return self._s.dataset_names()

    def complete(self, line: str, pos: Optional[int] = None) -> list:
        """What the shell's Tab would offer at ``pos`` (default: the end) of ``line``."""
        _, words = self._s.complete(line, len(line) if pos is None else pos)
        return words

    def __repr__(self) -> str:
        return f"<ialgebra.Session models={self.models} data={self.datasets}>"


def keywords() -> list:
    """Every keyword of the query language."""
    return _ialgebra.keywords()


def from_torch(
    module: Any,
    example_input: Any,
    name: str = "model",
    session: Optional[Session] = None,
    path: Union[str, os.PathLike, None] = None,
) -> Session:
    """Exports a torch module to ONNX (torch must be installed) and loads it as ``name``
    into ``session`` (a new one by default), which is returned.

    ``example_input`` is one batch the module accepts (its shape fixes the model's input
    shape; the batch dimension stays dynamic). The ONNX file goes to ``path``, or to a
    temporary file that is removed after loading.
    """
    import torch  # noqa: F401 - a clear ImportError when torch is missing

    session = session or Session()
    module = module.eval()
    if path is None:
        # Kept while the session lives: SHOW MODELS names the file, and it is the
        # model's architecture.
        folder = tempfile.TemporaryDirectory(prefix="ialgebra-")
        session._temporary.append(folder)
        path = os.path.join(folder.name, f"{name}.onnx")
    path = os.fspath(path)
    kwargs = dict(
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=17,
    )
    import warnings

    with warnings.catch_warnings():
        # TorchScript's exporter: needs no onnxscript, and the engine reads both exporters'
        # graphs; torch ≥ 2.9 warns that it is no longer the default.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(module, (example_input,), path, dynamo=False, **kwargs)
        except TypeError:  # torch before 2.5 has no `dynamo` argument
            torch.onnx.export(module, (example_input,), path, **kwargs)
    session.load_model(name, path)
    return session
