//! Terminal rendering of a DataFrame, in the manner of DuckDB's shell: a box with names
//! and types, numbers right-aligned with six significant digits (as psql prints float4),
//! columns dropped from the middle to fit the width, rows from the middle past a limit.

use polars::prelude::*;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_lowercase().as_str() {
            "table" => Some(Format::Table),
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Renders a frame: a table at most `width` characters wide showing at most `max_rows`
/// rows, or CSV / JSON text of every row.
pub fn render(df: &DataFrame, format: Format, width: usize, max_rows: usize) -> Result<String> {
    match format {
        Format::Table => Ok(table(df, width, max_rows)),
        Format::Csv | Format::Json => {
            let mut buf = Vec::new();
            super::export::write_to(
                &mut df.clone(),
                &mut buf,
                if format == Format::Csv {
                    crate::output::export::ExportFormat::Csv
                } else {
                    crate::output::export::ExportFormat::Json
                },
            )?;
            String::from_utf8(buf).map_err(|e| Error::io(e.to_string()))
        }
    }
}

/// A float with six significant digits, like C's %g.
pub fn format_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return "0".into();
    }
    let exp = x.abs().log10().floor() as i32;
    if (-4..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        let s = format!("{x:.decimals$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s == "-0" { "0".into() } else { s }
    } else {
        let s = format!("{x:.5e}");
        // 1.23450e-7 → 1.2345e-07
        let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        let e: i32 = e.parse().unwrap_or(0);
        format!("{mantissa}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    }
}

fn cell(col: &Column, row: usize) -> String {
    match col.get(row) {
        Ok(AnyValue::Null) => "NULL".into(),
        Ok(AnyValue::Float32(v)) => format_float(v as f64),
        Ok(AnyValue::Float64(v)) => format_float(v),
        Ok(AnyValue::String(s)) => s.to_string(),
        Ok(AnyValue::StringOwned(s)) => s.to_string(),
        Ok(AnyValue::Boolean(b)) => b.to_string(),
        Ok(v) => v.to_string(),
        Err(_) => "?".into(),
    }
}

fn type_name(dtype: &DataType) -> String {
    match dtype {
        DataType::Int64 => "int".into(),
        DataType::Int32
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Int16
        | DataType::Int8
        | DataType::UInt8
        | DataType::UInt16 => "int".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::String => "text".into(),
        DataType::Boolean => "bool".into(),
        other => other.to_string(),
    }
}

fn is_numeric(dtype: &DataType) -> bool {
    dtype.is_primitive_numeric()
}

fn table(df: &DataFrame, width: usize, max_rows: usize) -> String {
    let height = df.height();
    let shown_rows: Vec<usize> = if height <= max_rows.max(2) {
        (0..height).collect()
    } else {
        let head = max_rows.max(2) / 2;
        (0..head).chain(height - head..height).collect()
    };
    let cols = df.columns();
    // Every column's cells, then as many columns as fit, taken from both ends.
    let rendered: Vec<(String, String, Vec<String>, bool)> = cols
        .iter()
        .map(|c| {
            (
                c.name().to_string(),
                type_name(c.dtype()),
                shown_rows.iter().map(|&r| cell(c, r)).collect(),
                is_numeric(c.dtype()),
            )
        })
        .collect();
    let widths: Vec<usize> = rendered
        .iter()
        .map(|(n, t, cells, _)| {
            cells
                .iter()
                .map(|s| s.chars().count())
                .chain([n.chars().count(), t.chars().count()])
                .max()
                .unwrap_or(1)
        })
        .collect();
    let mut keep: Vec<usize> = (0..rendered.len()).collect();
    let total = |ks: &[usize], gap: bool| -> usize {
        ks.iter().map(|&i| widths[i] + 3).sum::<usize>() + 1 + if gap { 4 } else { 0 }
    };
    let mut dropped = false;
    while keep.len() > 1 && total(&keep, dropped) > width {
        keep.remove(keep.len() / 2);
        dropped = true;
    }
    let gap_at = if dropped { Some(keep.len().div_ceil(2)) } else { None };
    // Build the lines.
    let mut segments: Vec<Option<usize>> = keep.iter().map(|&i| Some(i)).collect();
    if let Some(g) = gap_at {
        segments.insert(g, None);
    }
    let seg_width = |s: &Option<usize>| s.map_or(1, |i| widths[i]);
    let border = |l: &str, m: &str, r: &str| -> String {
        let parts: Vec<String> = segments.iter().map(|s| "─".repeat(seg_width(s) + 2)).collect();
        format!("{l}{}{r}", parts.join(m))
    };
    let line = |f: &dyn Fn(&Option<usize>) -> String| -> String {
        let parts: Vec<String> = segments.iter().map(f).collect();
        format!("│{}│", parts.join("│"))
    };
    let mut out = Vec::new();
    out.push(border("┌", "┬", "┐"));
    out.push(line(&|s| match s {
        Some(i) => format!(" {:<w$} ", rendered[*i].0, w = widths[*i]),
        None => " … ".into(),
    }));
    out.push(line(&|s| match s {
        Some(i) => format!(" {:<w$} ", rendered[*i].1, w = widths[*i]),
        None => "   ".into(),
    }));
    out.push(border("├", "┼", "┤"));
    let half = if shown_rows.len() < height {
        shown_rows.len() / 2
    } else {
        usize::MAX
    };
    for r in 0..shown_rows.len() {
        if r == half {
            out.push(line(&|s| match s {
                Some(i) => format!(" {:^w$} ", "·", w = widths[*i]),
                None => "   ".into(),
            }));
        }
        out.push(line(&|s| match s {
            Some(i) => {
                let (_, _, cells, numeric) = &rendered[*i];
                if *numeric {
                    format!(" {:>w$} ", cells[r], w = widths[*i])
                } else {
                    format!(" {:<w$} ", cells[r], w = widths[*i])
                }
            }
            None => " … ".into(),
        }));
    }
    out.push(border("└", "┴", "┘"));
    let mut footer = format!("{height} row{}", if height == 1 { "" } else { "s" });
    if shown_rows.len() < height {
        footer.push_str(&format!(
            " ({} shown, {} hidden)",
            shown_rows.len(),
            height - shown_rows.len()
        ));
    }
    if dropped {
        footer.push_str(&format!(
            ", {} column{} ({} hidden; use --format csv for all)",
            cols.len(),
            if cols.len() == 1 { "" } else { "s" },
            cols.len() - keep.len()
        ));
    }
    out.push(footer);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_have_six_significant_digits() {
        assert_eq!(format_float(0.123456789), "0.123457");
        assert_eq!(format_float(123456.7), "123457");
        assert_eq!(format_float(1234567.0), "1.23457e+06");
        assert_eq!(format_float(0.0000123456), "1.23456e-05");
        assert_eq!(format_float(-2.5), "-2.5");
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(-0.0000001), "-1e-07");
    }

    #[test]
    fn tables_fit_and_truncate() {
        let df = df!("input" => (0..100i64).collect::<Vec<_>>(), "attribution" => (0..100).map(|i| i as f32 / 3.0).collect::<Vec<_>>(), "column" => (0..100).map(|i| format!("c{i}")).collect::<Vec<_>>()).unwrap();
        let t = table(&df, 80, 10);
        assert!(t.contains("100 rows (10 shown, 90 hidden)"), "{t}");
        assert!(t.contains("32.6667"), "{t}");
        let narrow = table(&df, 24, 10);
        assert!(
            narrow
                .lines()
                .all(|l| l.chars().count() <= 24 || l.starts_with("100 rows")),
            "{narrow}"
        );
        assert!(narrow.contains("hidden; use --format csv"));
    }
}
