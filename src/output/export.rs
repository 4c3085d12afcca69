//! EXPORT: CSV, Parquet or JSON, written to a temporary file in the target's directory
//! and then moved into place, so a failure never leaves a half-written file; an existing
//! file is replaced only with OVERWRITE (and even then atomically).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use polars::prelude::*;

use crate::error::{Error, Result};

/// The file an EXPORT writes (the planner picks it from the file name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Parquet,
    Json,
    /// A picture of the relation (heatmaps or bar charts).
    Png,
    /// A self-contained HTML report (EXPORT REPORT).
    Report,
}

/// Serialises a frame to a writer in the given format.
pub fn write_to(df: &mut DataFrame, out: &mut dyn Write, format: ExportFormat) -> Result<()> {
    let res = match format {
        ExportFormat::Csv => CsvWriter::new(out).include_header(true).finish(df),
        ExportFormat::Json => JsonWriter::new(out).with_json_format(JsonFormat::Json).finish(df),
        ExportFormat::Parquet => ParquetWriter::new(out).finish(df).map(|_| ()),
        ExportFormat::Png => {
            let bytes = super::picture::render_png(df)?;
            return out
                .write_all(&bytes)
                .map_err(|e| Error::io(format!("cannot write the picture: {e}")));
        }
        ExportFormat::Report => {
            return Err(Error::value("internal: a report is written by EXPORT REPORT"));
        }
    };
    res.map_err(|e| {
        Error::io(format!(
            "cannot write the result: {}",
            e.to_string().lines().next().unwrap_or("")
        ))
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Removes the temporary files of earlier exports to `target` whose process is gone (it
/// was killed before it could clean up). Only where /proc tells which processes live.
fn remove_stale_temps(target: &Path) {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else {
            continue;
        };
        // `<pid>.<counter>`: stale when that process no longer runs.
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "export".into());
    let unique = format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    target.with_file_name(unique)
}

/// Writes `df` to `path` atomically. Without `overwrite`, an existing file is an error and
/// stays untouched.
pub fn write_frame(df: &mut DataFrame, path: &Path, format: ExportFormat, overwrite: bool) -> Result<()> {
    write_atomically(path, overwrite, &mut |file| write_to(df, file, format))
}

/// Writes a file atomically: `fill` writes a temporary file beside `path`, which then
/// takes its place (never replacing an existing file without `overwrite`).
pub fn write_atomically(
    path: &Path,
    overwrite: bool,
    fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let shown = path.display().to_string();
    if path.is_dir() {
        return Err(Error::io(format!("cannot export to {shown}: it is a directory")));
    }
    if !overwrite && path.exists() {
        return Err(Error::io(format!("{shown} already exists")).hint("add OVERWRITE to replace it"));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create directory {}: {e}", parent.display())))?;
    }
    remove_stale_temps(path);
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = fs::File::create(&tmp).map_err(|e| Error::io(format!("cannot write {shown}: {e}")))?;
        fill(&mut file)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("cannot write {shown}: {e}")))?;
        drop(file);
        if overwrite {
            fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot write {shown}: {e}")))
        } else {
            // A hard link fails if the target appeared meanwhile: no clobbering, no race.
            match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(Error::io(format!("{shown} already exists")).hint("add OVERWRITE to replace it"))
                }
                Err(_) => {
                    if path.exists() {
                        return Err(Error::io(format!("{shown} already exists")).hint("add OVERWRITE to replace it"));
                    }
                    fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot write {shown}: {e}")))
                }
            }
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}
