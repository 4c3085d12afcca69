//! EXPORT REPORT: one self-contained HTML file (no external URL; pictures inlined as
//! data URIs; styles and the table's sorting and filtering inlined) with, per input, the
//! input, its prediction and top classes, and the query's maps (side by side for a JOIN
//! or ANTIJOIN), then the query text, its plan and the result table.

use base64::Engine;
use polars::prelude::*;

use super::picture;
use crate::error::Result;

/// What the report shows of one input.
pub struct ReportInput {
    pub id: i64,
    /// What each `model(data)` of the query makes of it (both sides of a JOIN).
    pub sides: Vec<SideFacts>,
    /// A PNG of the input (images only).
    pub picture: Option<Vec<u8>>,
}

/// One model's reading of one input.
pub struct SideFacts {
    /// `model(data)`, as the query names it.
    pub source: String,
    pub label: Option<i64>,
    pub prediction: usize,
    /// The most probable classes with their softmax probability, best first.
    pub top: Vec<(usize, f32)>,
}

pub struct Report<'a> {
    pub query: &'a str,
    pub plan: &'a str,
    /// The query's `model(data)` sources, in order.
    pub sources: &'a [String],
    pub inputs: Vec<ReportInput>,
    pub table: &'a DataFrame,
    /// The photo of an input, for datasets of photos (maps are drawn over it).
    pub photo_of: &'a dyn Fn(i64) -> Option<picture::Photo>,
}

/// The most table rows the page carries (the rest are counted, not shown).
const MAX_ROWS: usize = 2000;

pub fn render_html(r: &Report) -> Result<String> {
    let mut h = String::with_capacity(64 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str(&format!("<title>ialgebra report: {}</title>\n", escape(r.query)));
    h.push_str(STYLE);
    h.push_str("</head>\n<body>\n");
    let sources: Vec<String> = r.sources.iter().map(|s| format!("<b>{}</b>", escape(s))).collect();
    h.push_str(&format!(
        "<h1>ialgebra report</h1>\n<p class=\"meta\">{} · {} input(s) · {} row(s) · ialgebra {}</p>\n",
        sources.join(" · "),
        r.inputs.len(),
        r.table.height(),
        env!("CARGO_PKG_VERSION")
    ));
    h.push_str(&format!(
        "<h2>Query</h2>\n<pre class=\"query\">{}</pre>\n",
        escape(r.query)
    ));
    h.push_str("<h2>Inputs</h2>\n");
    for input in &r.inputs {
        h.push_str(&format!("<section class=\"input\" id=\"input-{}\">\n", input.id));
        h.push_str(&format!("<h3>input {}</h3>\n<div class=\"row\">\n", input.id));
        if let Some(png) = &input.picture {
            h.push_str(&figure(png, "the input"));
        }
        // Each side's reading of the input, side by side.
        for side in &input.sides {
            h.push_str("<div class=\"facts\"><table class=\"small\">");
            if input.sides.len() > 1 {
                h.push_str(&format!("<tr><th colspan=\"2\">{}</th></tr>", escape(&side.source)));
            }
            h.push_str(&format!(
                "<tr><th>label</th><td>{}</td></tr><tr><th>prediction</th><td>{}</td></tr>",
                side.label.map_or("—".to_string(), |l| l.to_string()),
                side.prediction
            ));
            h.push_str("<tr><th colspan=\"2\">top classes</th></tr>");
            for (class, p) in &side.top {
                h.push_str(&format!(
                    "<tr><td>{class}</td><td><span class=\"bar\" style=\"width:{:.0}px\"></span> {:.3}</td></tr>",
                    p * 80.0,
                    p
                ));
            }
            h.push_str("</table></div>\n");
        }
        // The query's maps of this input (every side of a join in one picture).
        if let Some(png) = maps_of(r.table, input.id, r.photo_of) {
            h.push_str(&figure(&png, "attributions"));
        }
        h.push_str("</div>\n</section>\n");
    }
    h.push_str(&format!(
        "<h2>Plan</h2>\n<pre class=\"plan\">{}</pre>\n",
        escape(r.plan)
    ));
    h.push_str("<h2>Result</h2>\n<p><input id=\"filter\" type=\"search\" placeholder=\"filter rows…\" oninput=\"filterRows()\"> <span class=\"meta\">click a column to sort</span></p>\n");
    h.push_str(&table_html(r.table));
    h.push_str(SCRIPT);
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

/// The picture of one input's rows, if the relation can be drawn.
fn maps_of(table: &DataFrame, id: i64, photo_of: &dyn Fn(i64) -> Option<picture::Photo>) -> Option<Vec<u8>> {
    let rows = table
        .clone()
        .lazy()
        .filter(col("input").cast(DataType::Int64).eq(lit(id)))
        .collect()
        .ok()?;
    if rows.height() == 0 {
        return None;
    }
    picture::render_png_over(&rows, photo_of).ok()
}

fn figure(png: &[u8], caption: &str) -> String {
    format!(
        "<figure><img alt=\"{caption}\" src=\"data:image/png;base64,{}\"><figcaption>{caption}</figcaption></figure>\n",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

fn table_html(df: &DataFrame) -> String {
    let mut h = String::from("<table id=\"result\" class=\"data\">\n<thead><tr>");
    for (i, name) in df.get_column_names().iter().enumerate() {
        h.push_str(&format!("<th onclick=\"sortBy({i})\">{}</th>", escape(name)));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    let shown = df.height().min(MAX_ROWS);
    for r in 0..shown {
        h.push_str("<tr>");
        for c in df.columns() {
            let v = match c.get(r) {
                Ok(AnyValue::Null) | Err(_) => String::new(),
                Ok(AnyValue::Float32(f)) => super::table::format_float(f as f64),
                Ok(AnyValue::Float64(f)) => super::table::format_float(f),
                Ok(AnyValue::String(s)) => s.to_string(),
                Ok(v) => v.to_string(),
            };
            h.push_str(&format!("<td>{}</td>", escape(&v)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
    if df.height() > shown {
        h.push_str(&format!(
            "<p class=\"meta\">{} more rows not shown (EXPORT the query to .csv or .parquet for all of them)</p>\n",
            df.height() - shown
        ));
    }
    h
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = r#"<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #777; font-size: 90%; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
section.input { border-top: 1px solid #ddd; padding: 0.5em 0; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; } figcaption { color: #777; font-size: 85%; }
figure img { image-rendering: pixelated; max-width: 100%; }
table.small th { text-align: left; padding-right: 1em; }
.bar { display: inline-block; height: 0.7em; background: #b2182b; }
table.data { border-collapse: collapse; font-size: 85%; }
table.data th { cursor: pointer; background: #eee; position: sticky; top: 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
</style>
"#;

const SCRIPT: &str = r#"<script>
function sortBy(i) {
  const body = document.querySelector('#result tbody');
  const rows = Array.from(body.rows);
  const th = document.querySelectorAll('#result th')[i];
  const up = th.dataset.dir !== 'up';
  document.querySelectorAll('#result th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = up ? 'up' : 'down';
  const key = r => { const t = r.cells[i].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}
function filterRows() {
  const q = document.getElementById('filter').value.toLowerCase();
  document.querySelectorAll('#result tbody tr').forEach(r => {
    r.style.display = r.textContent.toLowerCase().includes(q) ? '' : 'none';
  });
}
</script>
"#;
