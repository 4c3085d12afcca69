//! The engine for Python: `ialgebra._ialgebra`, wrapped by the pure-Python `ialgebra`
//! package (docstrings, polars frames, progress bars, pictures). Thin over
//! `Session::execute`: statements run on a thread of their own while the calling thread
//! waits without the GIL, so Ctrl-C (KeyboardInterrupt) can cancel them between steps and
//! a progress callback can be called in Python as they go.
//!
//! Tables cross to Python through the Arrow C stream interface (`__arrow_c_stream__`), so
//! polars takes the engine's buffers without a copy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ialgebra::error::{Error, ErrorKind};
use ialgebra::exec::{Output, Session};
use ialgebra::output::progress::ProgressReport;
use ialgebra::syntax::ast::Statement;
use polars::prelude::{CompatLevel, DataFrame};
use polars_arrow::array::{Array, StructArray};
use polars_arrow::datatypes::{ArrowDataType, Field as ArrowField};
use polars_arrow::ffi::{ArrowArrayStream, ArrowArrayStreamReader, export_iterator};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyDict, PyList};

create_exception!(
    _ialgebra,
    QueryError,
    PyException,
    "A statement failed. str(e) is the shell's text: the message, the line with a caret under the place, and hints. Attributes: kind, message, hints, line, column."
);
create_exception!(_ialgebra, ParseError, QueryError, "The text does not parse.");
create_exception!(
    _ialgebra,
    NamingError,
    QueryError,
    "A name (model, dataset, layer, column, method, parameter, variable) is unknown or taken."
);
create_exception!(
    _ialgebra,
    BadValueError,
    QueryError,
    "A parameter or literal is out of range or of the wrong type."
);
create_exception!(
    _ialgebra,
    ShapeError,
    QueryError,
    "Shapes do not fit (data vs model, weights vs architecture)."
);
create_exception!(
    _ialgebra,
    ModelError,
    QueryError,
    "A model file or architecture is unreadable or inconsistent."
);
create_exception!(
    _ialgebra,
    DataError,
    QueryError,
    "Data are unreadable or hold values the engine refuses (NaN, wrong dtype)."
);
create_exception!(_ialgebra, FileError, QueryError, "Reading or writing a file failed.");
create_exception!(
    _ialgebra,
    RelationError,
    QueryError,
    "The relational part of a query failed (types, expressions)."
);
create_exception!(_ialgebra, CancelledError, QueryError, "The statement was cancelled.");

/// Where the error text says the query came from: as `ialg -c` says it.
const ORIGIN: &str = "<command>";

/// The Python exception of an engine error: its kind's class, the caret text as message.
fn to_py_err(py: Python<'_>, err: &Error, text: &str) -> PyErr {
    let rendered = err.render(text, ORIGIN).trim_end().to_string();
    let e = match err.kind {
        ErrorKind::Syntax => ParseError::new_err(rendered),
        ErrorKind::Name => NamingError::new_err(rendered),
        ErrorKind::Value => BadValueError::new_err(rendered),
        ErrorKind::Shape => ShapeError::new_err(rendered),
        ErrorKind::Model => ModelError::new_err(rendered),
        ErrorKind::Data => DataError::new_err(rendered),
        ErrorKind::Io => FileError::new_err(rendered),
        ErrorKind::Query => RelationError::new_err(rendered),
        ErrorKind::Cancelled => CancelledError::new_err(rendered),
    };
    let value = e.value(py);
    let (line, column) = match err.span.filter(|s| s.start <= text.len()) {
        Some(span) => {
            let (line, col, _) = ialgebra::error::locate(text, span.start);
            (Some(line), Some(col + 1))
        }
        None => (None, None),
    };
    // Attributes are a convenience; the message already says everything.
    let _ = value.setattr("kind", err.kind.label());
    let _ = value.setattr("message", err.message.as_str());
    let _ = value.setattr("hints", err.hints.clone());
    let _ = value.setattr("line", line);
    let _ = value.setattr("column", column);
    e
}

/// A table on its way to Python: polars reads it through `__arrow_c_stream__`.
#[pyclass(module = "ialgebra._ialgebra", name = "Frame", frozen)]
struct Frame {
    df: DataFrame,
}

#[pymethods]
impl Frame {
    /// The table as an Arrow C stream (the Arrow PyCapsule interface).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The engine's own types are what it answers with; a requested schema is ignored,
        // as the interface allows.
        let _ = requested_schema;
        let stream = export_frame(&self.df);
        // The stream's own Drop releases it unless a consumer took it (and nulled its
        // `release`), as the interface asks of a capsule's destructor.
        PyCapsule::new_with_value(py, stream, c"arrow_array_stream")
    }

    fn __len__(&self) -> usize {
        self.df.height()
    }
}

/// The frame as an Arrow C stream of struct arrays, one per chunk.
fn export_frame(df: &DataFrame) -> ArrowArrayStream {
    let mut df = df.clone();
    df.rechunk_mut();
    let level = CompatLevel::newest();
    let fields: Vec<ArrowField> = df.columns().iter().map(|c| c.field().to_arrow(level)).collect();
    let dtype = ArrowDataType::Struct(fields);
    let batches: Vec<Box<dyn Array>> = df
        .iter_chunks(level, false)
        .map(|batch| {
            let height = batch.height();
            Box::new(StructArray::new(dtype.clone(), height, batch.into_arrays(), None)) as Box<dyn Array>
        })
        .collect();
    export_iterator(
        Box::new(batches.into_iter().map(Ok)),
        ArrowField::new("".into(), dtype, false),
    )
}

/// A frame from anything with `__arrow_c_stream__` (a polars or pyarrow table).
fn import_frame(obj: &Bound<'_, PyAny>) -> PyResult<DataFrame> {
    let capsule = obj.call_method0("__arrow_c_stream__").map_err(|_| {
        PyTypeError::new_err("expected a table (a polars DataFrame, or anything with __arrow_c_stream__)")
    })?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer = capsule.pointer_checked(Some(c"arrow_array_stream"))?;
    // Take the stream: the capsule keeps an empty one (release = null), which its
    // destructor leaves alone.
    let stream = unsafe { std::ptr::replace(pointer.as_ptr() as *mut ArrowArrayStream, ArrowArrayStream::empty()) };
    let bad = |e: polars::prelude::PolarsError| PyValueError::new_err(format!("cannot read the table: {e}"));
    let mut reader = unsafe { ArrowArrayStreamReader::try_new(Box::new(stream)) }.map_err(bad)?;
    let mut frame: Option<DataFrame> = None;
    while let Some(array) = unsafe { reader.next() } {
        let array = array.map_err(bad)?;
        let Some(structs) = array.as_any().downcast_ref::<StructArray>() else {
            return Err(PyValueError::new_err(
                "the table's stream does not hold rows (struct arrays)",
            ));
        };
        let part = DataFrame::try_from(structs.clone()).map_err(bad)?;
        frame = Some(match frame {
            None => part,
            Some(mut f) => {
                f.vstack_mut(&part).map_err(bad)?;
                f
            }
        });
    }
    frame.ok_or_else(|| PyValueError::new_err("the table's stream holds no chunks"))
}

/// What a script asked for besides its outputs.
#[derive(Clone, Copy)]
enum Want {
    Outputs,
    Picture,
    Report,
}

/// What a script gave: each statement's output, and the picture or report asked for.
struct Ran {
    outputs: Vec<(String, Output, Vec<String>)>,
    extra: Option<Result<Vec<u8>, Error>>,
}

/// An engine session (wrapped by `ialgebra.Session`).
#[pyclass(module = "ialgebra._ialgebra", name = "Session")]
struct PySession {
    inner: Session,
    latest: Arc<Mutex<Option<ProgressReport>>>,
}

#[pymethods]
impl PySession {
    #[new]
    fn new() -> Self {
        let mut inner = Session::new();
        let latest: Arc<Mutex<Option<ProgressReport>>> = Arc::default();
        let sink = latest.clone();
        inner.set_progress_observer(Arc::new(move |r: &ProgressReport| {
            if let Ok(mut slot) = sink.lock() {
                *slot = Some(r.clone());
            }
        }));
        // Python draws the bar (tqdm); the engine's own stderr line would double it.
        inner.set_terminal_progress(false);
        PySession { inner, latest }
    }

    /// Binds `:name` for the statements that follow.
    fn set_variable(&mut self, name: &str, value: &str) {
        self.inner.set_variable(name, value);
    }

    /// Runs `text`; returns [(kind, statement, value, warnings)] with kind "table" (value
    /// a Frame), "message" or "plan" (value a str). Raises QueryError at the first failed
    /// statement (after the outputs before it are lost to the caller, as in the shell's
    /// script mode). `progress(label, done, total, unit)` is called as long statements go.
    #[pyo3(signature = (text, progress=None))]
    fn run<'py>(
        &mut self,
        py: Python<'py>,
        text: &str,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let ran = self.run_text(py, text, Want::Outputs, progress.as_ref())?;
        outputs_to_py(py, ran.outputs)
    }

    /// Runs `text` and returns the PNG of its last statement's result (what EXPORT … TO
    /// 'f.png' draws), or None when that result has no maps.
    #[pyo3(signature = (text, progress=None))]
    fn picture<'py>(
        &mut self,
        py: Python<'py>,
        text: &str,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        match self.run_text(py, text, Want::Picture, progress.as_ref())?.extra {
            Some(Ok(png)) => Ok(Some(PyBytes::new(py, &png))),
            Some(Err(e)) => Err(to_py_err(py, &e, text)),
            None => Ok(None),
        }
    }

    /// Runs `text` and returns the HTML report of its last statement's result (what
    /// EXPORT REPORT … writes).
    #[pyo3(signature = (text, progress=None))]
    fn report<'py>(&mut self, py: Python<'py>, text: &str, progress: Option<Bound<'py, PyAny>>) -> PyResult<String> {
        match self.run_text(py, text, Want::Report, progress.as_ref())?.extra {
            Some(Ok(html)) => String::from_utf8(html).map_err(|e| PyValueError::new_err(e.to_string())),
            Some(Err(e)) => Err(to_py_err(py, &e, text)),
            None => Err(BadValueError::new_err("the last statement gave no table to report on")),
        }
    }

    /// Loads an array as dataset `name`: `shape` (N first) and its float32 values in C
    /// order as bytes; labels and ids as int64 bytes.
    #[pyo3(signature = (name, shape, values, labels=None, ids=None))]
    fn load_array(
        &mut self,
        py: Python<'_>,
        name: &str,
        shape: Vec<usize>,
        values: &[u8],
        labels: Option<&[u8]>,
        ids: Option<&[u8]>,
    ) -> PyResult<String> {
        let values: Vec<f32> = values
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ints = |b: &[u8]| -> Vec<i64> {
            b.chunks_exact(8)
                .map(|c| i64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        };
        let labels = labels.map(ints);
        let ids = ids.map(ints);
        let text = format!("load_data('{name}')");
        match self.inner.load_array(name, &shape, values, labels, ids) {
            Ok(out) => Ok(message_of(out)),
            Err(e) => Err(to_py_err(py, &e, &text)),
        }
    }

    /// Keeps a table (anything with `__arrow_c_stream__`) under `name`.
    fn keep_table(&mut self, py: Python<'_>, name: &str, table: &Bound<'_, PyAny>) -> PyResult<String> {
        let frame = import_frame(table)?;
        match self.inner.keep_table(name, frame, "a table from Python") {
            Ok(out) => Ok(message_of(out)),
            Err(e) => Err(to_py_err(py, &e, name)),
        }
    }

    /// Names of the loaded models.
    fn model_names(&self) -> Vec<String> {
        self.inner.model_names()
    }

    /// Names of the loaded datasets.
    fn dataset_names(&self) -> Vec<String> {
        self.inner.dataset_names()
    }

    /// Completions of `line` at character `pos`: (replaced from, candidates).
    fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let byte = line.char_indices().nth(pos).map_or(line.len(), |(b, _)| b);
        let (start, words) = self.inner.complete(line, byte);
        (line[..start].chars().count(), words)
    }
}

impl PySession {
    /// Runs a script on a thread of its own; this thread waits without the GIL, checking
    /// for Ctrl-C and passing progress to `progress` every 100 ms. The first failed
    /// statement is raised as its QueryError (as a script stops there).
    fn run_text(
        &mut self,
        py: Python<'_>,
        text: &str,
        want: Want,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Ran> {
        let script = match ialgebra::syntax::parse(text) {
            Ok(s) => s,
            Err(e) => return Err(to_py_err(py, &e, text)),
        };
        let cancel = self.inner.cancel_flag();
        let session = &mut self.inner;
        let latest = self.latest.clone();
        let finished = AtomicBool::new(false);
        let finished = &finished;
        let script = &script;
        let mut interrupted: Option<PyErr> = None;
        let ran = std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                let ran = run_statements(session, &script.statements, text, want);
                finished.store(true, Ordering::Release);
                ran
            });
            loop {
                // Without the GIL: other Python threads run while the engine works.
                let done = py.detach(|| {
                    for _ in 0..20 {
                        if finished.load(Ordering::Acquire) {
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    false
                });
                if done {
                    break;
                }
                if interrupted.is_none()
                    && let Err(e) = py.check_signals()
                {
                    // Ctrl-C: the statement stops at its next step; we wait for it.
                    cancel.store(true, Ordering::Relaxed);
                    interrupted = Some(e);
                }
                report_progress(&latest, progress);
            }
            worker.join()
        });
        report_progress(&latest, progress);
        if let Some(p) = progress {
            p.call1(("", 0usize, 0usize, "done"))?;
        }
        if let Some(e) = interrupted {
            return Err(e);
        }
        match ran {
            Ok(Ok(ran)) => Ok(ran),
            Ok(Err(e)) => Err(to_py_err(py, &e, text)),
            Err(_) => Err(PyException::new_err(
                "the engine's worker thread failed; the session may have lost its last statement",
            )),
        }
    }
}

/// The newest progress report, if any, handed to Python.
fn report_progress(latest: &Mutex<Option<ProgressReport>>, progress: Option<&Bound<'_, PyAny>>) {
    let report = latest.lock().ok().and_then(|mut r| r.take());
    if let (Some(r), Some(p)) = (report, progress) {
        // A failing callback must not stop the statement.
        let _ = p.call1((r.label, r.done, r.total, r.unit));
    }
}

fn run_statements(session: &mut Session, statements: &[Statement], text: &str, want: Want) -> Result<Ran, Error> {
    let mut ran = Ran {
        outputs: Vec::new(),
        extra: None,
    };
    for stmt in statements {
        let shown = text
            .get(stmt.span.start..stmt.span.end)
            .map_or_else(|| stmt.to_string(), |s| s.trim().to_string());
        let out = session.execute_statement(stmt)?;
        ran.outputs.push((shown, out, session.take_warnings()));
    }
    let last = statements.last().zip(ran.outputs.last());
    ran.extra = match (want, last) {
        (Want::Outputs, _) | (_, None) => None,
        (Want::Picture, Some((stmt, (_, Output::Table(df), _)))) => session.picture_of(stmt, df).map(Ok),
        (Want::Report, Some((stmt, (_, Output::Table(df), _)))) => {
            Some(session.report_of(stmt, df).map(String::into_bytes))
        }
        (_, Some(_)) => None,
    };
    Ok(ran)
}

fn message_of(out: Output) -> String {
    match out {
        Output::Message(m) | Output::Plan(m) => m,
        Output::Table(df) => format!("{} rows", df.height()),
    }
}

fn outputs_to_py(py: Python<'_>, outputs: Vec<(String, Output, Vec<String>)>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for (statement, out, warnings) in outputs {
        let (kind, value): (&str, Py<PyAny>) = match out {
            Output::Table(df) => ("table", Py::new(py, Frame { df })?.into_any()),
            Output::Message(m) => ("message", m.into_pyobject(py)?.into_any().unbind()),
            Output::Plan(p) => ("plan", p.into_pyobject(py)?.into_any().unbind()),
        };
        list.append((kind, statement, value, warnings))?;
    }
    Ok(list)
}

/// How a query runs over blocks of a dataset (`ialgebra.ray`): a dict with dataset,
/// pushed, after (or None) and placement (a line per clause).
#[pyfunction]
fn split_for_blocks<'py>(py: Python<'py>, text: &str, merged: &str) -> PyResult<Bound<'py, PyDict>> {
    let split = ialgebra::plan::distribute::split_for_blocks(text, merged).map_err(|e| to_py_err(py, &e, text))?;
    let d = PyDict::new(py);
    d.set_item("dataset", split.dataset)?;
    d.set_item("pushed", split.pushed)?;
    d.set_item("after", split.after)?;
    d.set_item("placement", split.placement)?;
    Ok(d)
}

/// Every keyword of the language.
#[pyfunction]
fn keywords() -> Vec<&'static str> {
    ialgebra::syntax::KEYWORDS.clone()
}

#[pymodule]
fn _ialgebra(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PySession>()?;
    m.add_class::<Frame>()?;
    m.add_function(wrap_pyfunction!(split_for_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(keywords, m)?)?;
    m.add("QueryError", py.get_type::<QueryError>())?;
    m.add("ParseError", py.get_type::<ParseError>())?;
    m.add("NamingError", py.get_type::<NamingError>())?;
    m.add("BadValueError", py.get_type::<BadValueError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("RelationError", py.get_type::<RelationError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
