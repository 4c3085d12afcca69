//! Pictures of attribution relations (`EXPORT <query> TO 'f.png'`): a heatmap over the
//! image for each input (and each side of a JOIN / ANTIJOIN, each channel of a layer
//! relation), in a diverging colour map centred on zero with a colour bar, labelled with
//! the input id, target and prediction; bar charts for tabular attributions. Drawn with
//! plotters on an in-memory bitmap (DejaVu Sans for the text), encoded with png.

use plotters::prelude::*;
use plotters::style::FontStyle;
use polars::prelude::*;

use crate::error::{Error, Result};

/// Pixels of one heatmap (square), of a panel's title strip, of the gaps, and of the
/// colour bar's column.
pub const MAP: u32 = 192;
pub const TITLE: u32 = 22;
pub const GAP: u32 = 12;
pub const BAR_COLUMN: u32 = 84;
/// Panels per row before wrapping.
pub const PER_ROW: usize = 6;
/// Bar charts are wider, and give each bar this many pixels.
const CHART_WIDTH: u32 = 420;
const BAR_ROW: u32 = 12;

/// A photo to draw maps over: RGB values in [0, 1], channels first.
#[derive(Clone, Debug)]
pub struct Photo {
    pub height: usize,
    pub width: usize,
    pub rgb: Vec<f32>,
}

impl Photo {
    /// The photo's colour at (y, x) of a `(h, w)` drawing of it.
    fn at(&self, (y, x): (usize, usize), (h, w): (usize, usize)) -> [f32; 3] {
        let (py, px) = (
            (y * self.height / h.max(1)).min(self.height - 1),
            (x * self.width / w.max(1)).min(self.width - 1),
        );
        let plane = self.height * self.width;
        [0, 1, 2].map(|c| self.rgb[c * plane + py * self.width + px])
    }
}

enum Content {
    /// `base`: the input's value at each cell (0..1 images are shown as ink on paper
    /// beneath the heat), when the relation has it; `photo`: the photo the input came
    /// from, which the map is blended over instead (Captum's blended heat map).
    Map {
        height: usize,
        width: usize,
        cells: Vec<Option<f32>>,
        base: Vec<Option<f32>>,
        photo: Option<std::sync::Arc<Photo>>,
    },
    /// The photo itself, beside its maps.
    Photo(std::sync::Arc<Photo>),
    Bars {
        labels: Vec<String>,
        values: Vec<f32>,
    },
    /// A text's tokens in order, each on a box coloured by its attribution.
    Tokens {
        words: Vec<String>,
        values: Vec<f32>,
    },
}

/// Token boxes: a line's height, pixels per character, and the panel's width.
const TOKEN_LINE: u32 = 22;
const CHAR_WIDTH: u32 = 8;
const TEXT_WIDTH: u32 = 600;

/// Where each token's box goes: (x offset, line) within a panel, wrapping at its width.
fn token_layout(words: &[String]) -> (Vec<(u32, u32)>, u32) {
    let (mut x, mut line) = (0u32, 0u32);
    let mut at = Vec::with_capacity(words.len());
    for w in words {
        let width = token_width(w);
        if x > 0 && x + width > TEXT_WIDTH {
            x = 0;
            line += 1;
        }
        at.push((x, line));
        x += width + 4;
    }
    (at, line + 1)
}

fn token_width(word: &str) -> u32 {
    word.chars().count().min(40) as u32 * CHAR_WIDTH + 8
}

struct Panel {
    title: String,
    content: Content,
}

/// The PNG bytes of a relation's picture.
pub fn render_png(df: &DataFrame) -> Result<Vec<u8>> {
    render_png_over(df, &|_| None)
}

/// The picture of a relation whose inputs are photos: `photo_of(input id)` gives each
/// input's photo, drawn beside its maps and beneath them.
pub fn render_png_over(df: &DataFrame, photo_of: &dyn Fn(i64) -> Option<Photo>) -> Result<Vec<u8>> {
    let panels = panels(df, photo_of)?;
    if panels.is_empty() {
        return Err(Error::value("nothing to draw: the query returned no rows"));
    }
    let (panel_width, panel_height) = match &panels[0].content {
        Content::Bars { values, .. } => (CHART_WIDTH, MAP.max(BAR_ROW * values.len() as u32)),
        Content::Tokens { .. } => {
            let lines = panels
                .iter()
                .map(|p| match &p.content {
                    Content::Tokens { words, .. } => token_layout(words).1,
                    _ => 1,
                })
                .max()
                .unwrap_or(1);
            (TEXT_WIDTH, lines * TOKEN_LINE)
        }
        Content::Map { .. } | Content::Photo(_) => (MAP, MAP),
    };
    let size = (panel_width, panel_height);
    let columns = panels.len().min(PER_ROW);
    let rows = panels.len().div_ceil(PER_ROW);
    let width = GAP + columns as u32 * (panel_width + GAP) + BAR_COLUMN;
    let height = GAP + rows as u32 * (TITLE + panel_height + GAP);
    let limit = panels
        .iter()
        .flat_map(|p| match &p.content {
            Content::Map { cells, .. } => cells.iter().flatten().copied().collect::<Vec<_>>(),
            Content::Bars { values, .. } | Content::Tokens { values, .. } => values.clone(),
            Content::Photo(_) => Vec::new(),
        })
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let limit = if limit > 0.0 { limit } else { 1.0 };
    register_font();
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let draw_err = |e: DrawingAreaErrorKind<_>| Error::io(format!("cannot draw the picture: {e}"));
        root.fill(&WHITE).map_err(draw_err)?;
        let font = ("sans-serif", 13).into_font().color(&BLACK);
        for (k, panel) in panels.iter().enumerate() {
            let (x, y) = panel_origin(k, size);
            // A long title (a JOIN side's method and the input's target and prediction)
            // is set smaller, then cut, so that it stays over its own panel.
            let (mut title, mut points) = (panel.title.clone(), 13.0);
            let fits = |t: &str, points: f64| {
                let style = ("sans-serif", points).into_font().color(&BLACK);
                root.estimate_text_size(t, &style)
                    .map_or(true, |(w, _)| w <= panel_width)
            };
            while !fits(&title, points) && points > 10.0 {
                points -= 1.0;
            }
            while !fits(&title, points) && title.chars().count() > 2 {
                title.pop();
                while title.ends_with(' ') {
                    title.pop();
                }
                title.pop();
                title.push('…');
            }
            let style = ("sans-serif", points).into_font().color(&BLACK);
            root.draw(&Text::new(title, (x as i32, y as i32 + 4), style))
                .map_err(draw_err)?;
            let top = (y + TITLE) as i32;
            match &panel.content {
                Content::Photo(photo) => {
                    let (h, w) = (photo.height, photo.width);
                    let side = (MAP / h.max(w).max(1) as u32).max(1);
                    let (dh, dw) = (side as usize * h, side as usize * w);
                    for y in 0..dh {
                        for x in 0..dw {
                            let [r, g, b] = photo.at((y, x), (dh, dw)).map(|v| (v * 255.0).round() as u8);
                            root.draw_pixel((x as i32 + x0_of(k, size), y as i32 + top), &RGBColor(r, g, b))
                                .map_err(draw_err)?;
                        }
                    }
                }
                Content::Map {
                    height: h,
                    width: w,
                    cells,
                    photo: Some(photo),
                    ..
                } => {
                    // Drawn pixel by pixel: the photo at its own resolution, the map's
                    // cell over it, blended by the size of the attribution.
                    let side = (MAP / (*h).max(*w).max(1) as u32).max(1) as usize;
                    let (dh, dw) = (side * h, side * w);
                    for y in 0..dh {
                        for x in 0..dw {
                            let under = photo.at((y, x), (dh, dw));
                            let colour = match cells[(y / side) * w + x / side] {
                                Some(v) if v.is_finite() => blend(under, v / limit),
                                _ => RGBColor(220, 220, 220),
                            };
                            root.draw_pixel((x as i32 + x0_of(k, size), y as i32 + top), &colour)
                                .map_err(draw_err)?;
                        }
                    }
                }
                Content::Map {
                    height: h,
                    width: w,
                    cells,
                    base,
                    photo: None,
                } => {
                    for r in 0..*h {
                        for c in 0..*w {
                            let (x0, y0, x1, y1) = cell_rect(k, (*h, *w), (r, c));
                            // Paper white, ink grey by the input's value.
                            let paper = base[r * w + c]
                                .filter(|v| v.is_finite())
                                .map_or(255.0, |v| 255.0 - 150.0 * v.clamp(0.0, 1.0));
                            let colour = match cells[r * w + c] {
                                Some(v) if v.is_finite() => heat(v / limit, paper),
                                _ => RGBColor(220, 220, 220),
                            };
                            root.draw(&Rectangle::new(
                                [(x0 as i32, y0 as i32), (x1 as i32, y1 as i32)],
                                colour.filled(),
                            ))
                            .map_err(draw_err)?;
                        }
                    }
                }
                Content::Tokens { words, values } => {
                    let (at, _) = token_layout(words);
                    for ((word, v), (dx, line)) in words.iter().zip(values).zip(at) {
                        let x0 = (x + dx) as i32;
                        let y0 = top + (line * TOKEN_LINE) as i32;
                        let x1 = x0 + token_width(word) as i32;
                        root.draw(&Rectangle::new(
                            [(x0, y0), (x1, y0 + TOKEN_LINE as i32 - 4)],
                            diverging(v / limit).filled(),
                        ))
                        .map_err(draw_err)?;
                        let shown: String = word.chars().take(40).collect();
                        root.draw(&Text::new(shown, (x0 + 4, y0 + 3), font.clone()))
                            .map_err(draw_err)?;
                    }
                }
                Content::Bars { labels, values } => {
                    // Horizontal bars around a zero line in the middle of the panel.
                    let row_h = BAR_ROW;
                    let label_w = 150i32;
                    let zero = x as i32 + label_w + (panel_width as i32 - label_w) / 2;
                    let half = (panel_width as i32 - label_w) / 2 - 4;
                    let small = ("sans-serif", 11).into_font().color(&BLACK);
                    for (i, (label, v)) in labels.iter().zip(values).enumerate() {
                        let yy = top + (i as u32 * row_h) as i32;
                        let len = ((v / limit) * half as f32).round() as i32;
                        let (a, b) = if len >= 0 {
                            (zero, zero + len)
                        } else {
                            (zero + len, zero)
                        };
                        root.draw(&Rectangle::new(
                            [(a, yy + 1), (b.max(a + 1), yy + row_h as i32 - 1)],
                            diverging(v / limit).filled(),
                        ))
                        .map_err(draw_err)?;
                        let shown: String = label.chars().take(22).collect();
                        root.draw(&Text::new(shown, (x as i32, yy), small.clone()))
                            .map_err(draw_err)?;
                    }
                    root.draw(&PathElement::new(
                        vec![(zero, top), (zero, top + panel_height as i32)],
                        BLACK,
                    ))
                    .map_err(draw_err)?;
                }
            }
        }
        // The colour bar: +limit at the top, 0 in the middle, −limit at the bottom.
        let bx = (width - BAR_COLUMN + 10) as i32;
        let (by, bh) = ((GAP + TITLE) as i32, MAP as i32);
        for i in 0..bh {
            let v = 1.0 - 2.0 * i as f32 / (bh - 1) as f32;
            root.draw(&Rectangle::new(
                [(bx, by + i), (bx + 16, by + i + 1)],
                diverging(v).filled(),
            ))
            .map_err(draw_err)?;
        }
        let small = ("sans-serif", 11).into_font().color(&BLACK);
        for (v, at) in [(limit, by), (0.0, by + bh / 2 - 6), (-limit, by + bh - 12)] {
            root.draw(&Text::new(format_tick(v), (bx + 20, at), small.clone()))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    encode(&buffer, width, height)
}

/// The left edge of panel `k`.
fn x0_of(k: usize, size: (u32, u32)) -> i32 {
    panel_origin(k, size).0 as i32
}

/// The heat colour of `t` in [−1, 1] over a photo's colour: the photo shows where the
/// attribution is zero, the map's colour takes over (to 75 %) as |t| grows.
fn blend(photo: [f32; 3], t: f32) -> RGBColor {
    let t = t.clamp(-1.0, 1.0);
    let end = if t >= 0.0 {
        [178.0, 24.0, 43.0]
    } else {
        [33.0, 102.0, 172.0]
    };
    let a = 0.75 * t.abs();
    let mix = |c: usize| (photo[c] * 255.0 * (1.0 - a) + end[c] * a).round().clamp(0.0, 255.0) as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

/// Top-left corner of panel `k` of panels of `(width, height)`.
fn panel_origin(k: usize, (width, height): (u32, u32)) -> (u32, u32) {
    let (row, col) = ((k / PER_ROW) as u32, (k % PER_ROW) as u32);
    (GAP + col * (width + GAP), GAP + row * (TITLE + height + GAP))
}

/// The pixel box (x0, y0, x1, y1) of cell (r, c) of an h × w heatmap in panel `k`:
/// tests use it to find a pixel's colour.
pub fn cell_rect(k: usize, (h, w): (usize, usize), (r, c): (usize, usize)) -> (u32, u32, u32, u32) {
    let (x, y) = panel_origin(k, (MAP, MAP));
    let y = y + TITLE;
    let side = MAP / h.max(w).max(1) as u32;
    (
        x + c as u32 * side,
        y + r as u32 * side,
        x + (c as u32 + 1) * side,
        y + (r as u32 + 1) * side,
    )
}

/// Blue (negative) – white (zero) – red (positive), `t` in [−1, 1] (ColorBrewer RdBu ends).
pub fn diverging(t: f32) -> RGBColor {
    heat(t, 255.0)
}

/// The diverging map over a grey `paper` level: at zero the paper shows, at ±1 the colour.
fn heat(t: f32, paper: f32) -> RGBColor {
    let t = t.clamp(-1.0, 1.0);
    let (end, s) = if t >= 0.0 {
        ((178.0, 24.0, 43.0), t)
    } else {
        ((33.0, 102.0, 172.0), -t)
    };
    let mix = |e: f32| (paper + (e - paper) * s).round().clamp(0.0, 255.0) as u8;
    RGBColor(mix(end.0), mix(end.1), mix(end.2))
}

fn format_tick(v: f32) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

fn register_font() {
    // Registering twice is harmless; the font is compiled in, so it cannot be missing.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
}

fn encode(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let fail = |e: png::EncodingError| Error::io(format!("cannot encode the picture: {e}"));
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(rgb).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(out)
}

/// The panels of a relation: per input, per side (`a.attribution`, `b.attribution`, … of
/// a join), per channel of a layer map.
fn panels(df: &DataFrame, photo_of: &dyn Fn(i64) -> Option<Photo>) -> Result<Vec<Panel>> {
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let has = |c: &str| names.iter().any(|n| n == c);
    // The sides: `x.attribution` columns of a join, else `attribution`.
    let mut sides: Vec<(String, String)> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".attribution").map(|s| (s.to_string(), n.clone())))
        .collect();
    if sides.is_empty() {
        if !has("attribution") {
            return Err(picture_error(&names));
        }
        sides.push((String::new(), "attribution".into()));
    }
    let text = has("token") && has("text");
    let image = !text && has("row") && has("col");
    if !text && !image && !has("column") {
        return Err(picture_error(&names));
    }
    let n = df.height();
    let ints = |c: &str| -> Result<Option<Vec<Option<i64>>>> {
        if !has(c) {
            return Ok(None);
        }
        let col = df.column(c)?.cast(&DataType::Int64)?;
        Ok(Some(col.i64()?.iter().collect()))
    };
    let floats = |c: &str| -> Result<Vec<Option<f32>>> {
        let col = df.column(c)?.cast(&DataType::Float32)?;
        Ok(col.f32()?.iter().collect())
    };
    let inputs = ints("input")?.unwrap_or_else(|| vec![None; n]);
    let channels = ints("channel")?.unwrap_or_else(|| vec![Some(0); n]);
    let distinct_channels = {
        let mut c: Vec<i64> = channels.iter().flatten().copied().collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let per_channel = image && distinct_channels.len() > 1;
    // GRANULARITY patch(k): a row per patch at its top-left pixel, the patch filled.
    let grouped = has("group") && has("size");
    // Inputs in order of first appearance.
    let mut order: Vec<Option<i64>> = Vec::new();
    for i in &inputs {
        if !order.contains(i) {
            order.push(*i);
        }
    }
    let (rows, cols) = if image {
        let r = ints("row")?.unwrap_or_default();
        let c = ints("col")?.unwrap_or_default();
        (r, c)
    } else {
        (Vec::new(), Vec::new())
    };
    let (height, width) = if image {
        (
            rows.iter().flatten().max().map_or(0, |m| *m as usize + 1),
            cols.iter().flatten().max().map_or(0, |m| *m as usize + 1),
        )
    } else {
        (0, 0)
    };
    if image && (height == 0 || width == 0 || height * width > 1 << 20) {
        return Err(Error::value(format!(
            "cannot draw a {height} × {width} map: rows and cols must be small non-negative coordinates"
        )));
    }
    let labels: Vec<String> = if image {
        Vec::new()
    } else {
        let c = df
            .column(if text { "text" } else { "column" })?
            .cast(&DataType::String)?;
        c.str()?.iter().map(|s| s.unwrap_or("").to_string()).collect()
    };
    let token_order = ints("token")?;
    // Each side's columns, read once: attributions, input values, targets, predictions
    // (a side's own `a.target`, else the shared `target`).
    struct Side {
        name: String,
        values: Vec<Option<f32>>,
        base: Vec<Option<f32>>,
        targets: Option<Vec<Option<i64>>>,
        predictions: Option<Vec<Option<i64>>>,
    }
    let sides = sides
        .iter()
        .map(|(name, column)| -> Result<Side> {
            let own =
                |c: &str| -> Result<Option<Vec<Option<i64>>>> { Ok(ints(&qualified_name(name, c))?.or(ints(c)?)) };
            let value_column = qualified_name(name, "value");
            Ok(Side {
                name: name.clone(),
                values: floats(column)?,
                base: if has(&value_column) {
                    floats(&value_column)?
                } else {
                    vec![None; n]
                },
                targets: own("target")?,
                predictions: own("prediction")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut panels = Vec::new();
    for input in &order {
        let picked: Vec<usize> = (0..n).filter(|&k| inputs[k] == *input).collect();
        // A photo input: the photo first, then its maps drawn over it.
        let photo = if image {
            input.and_then(photo_of).map(std::sync::Arc::new)
        } else {
            None
        };
        if let (Some(p), Some(id)) = (&photo, input) {
            panels.push(Panel {
                title: format!("input {id} · photo"),
                content: Content::Photo(p.clone()),
            });
        }
        for s in &sides {
            let (side, values, base_values) = (&s.name, &s.values, &s.base);
            // The first row's value: the same on every row of an input.
            let first =
                |column: &Option<Vec<Option<i64>>>| column.as_ref().and_then(|v| picked.first().and_then(|&k| v[k]));
            let mut title = match input {
                Some(i) => format!("input {i}"),
                None => "all rows".to_string(),
            };
            if !side.is_empty() {
                title = format!("{side}: {title}");
            }
            if let Some(t) = first(&s.targets) {
                title.push_str(&format!(" · target {t}"));
            }
            if let Some(p) = first(&s.predictions) {
                title.push_str(&format!(" · pred {p}"));
            }
            if image {
                let groups: Vec<Option<i64>> = if per_channel {
                    distinct_channels.iter().map(|c| Some(*c)).collect()
                } else {
                    vec![None]
                };
                for g in groups {
                    // Patches of a photo cover the whole photo, past the last start.
                    let (h, w) = match &photo {
                        Some(p) if grouped && p.height >= height && p.width >= width => (p.height, p.width),
                        _ => (height, width),
                    };
                    let mut cells = vec![None; h * w];
                    let mut base = vec![None; h * w];
                    for &k in &picked {
                        if g.is_some() && channels[k] != g {
                            continue;
                        }
                        if let (Some(r), Some(c), Some(v)) = (rows[k], cols[k], values[k])
                            && r >= 0
                            && c >= 0
                        {
                            let at = r as usize * w + c as usize;
                            // Channels drawn together add up at a position.
                            cells[at] = Some(cells[at].unwrap_or(0.0) + v);
                            base[at] = base_values[k];
                        }
                    }
                    if grouped {
                        fill_groups(&mut cells, h, w);
                    }
                    let title = match g {
                        Some(ch) => format!("{title} · ch {ch}"),
                        None => title.clone(),
                    };
                    panels.push(Panel {
                        title,
                        content: Content::Map {
                            height: h,
                            width: w,
                            cells,
                            base,
                            photo: photo.clone(),
                        },
                    });
                }
            } else if text {
                // Tokens in their order in the text.
                let mut ordered = picked.clone();
                if let Some(order) = &token_order {
                    ordered.sort_by_key(|&k| order[k]);
                }
                panels.push(Panel {
                    title,
                    content: Content::Tokens {
                        words: ordered.iter().map(|&k| labels[k].clone()).collect(),
                        values: ordered.iter().map(|&k| values[k].unwrap_or(0.0)).collect(),
                    },
                });
            } else {
                panels.push(Panel {
                    title,
                    content: Content::Bars {
                        labels: picked.iter().map(|&k| labels[k].clone()).collect(),
                        values: picked.iter().map(|&k| values[k].unwrap_or(0.0)).collect(),
                    },
                });
            }
        }
    }
    Ok(panels)
}

/// Patches are given at their top-left cells, on a grid: every other cell takes the value
/// of the patch it lies in (the nearest start above and to the left).
fn fill_groups(cells: &mut [Option<f32>], height: usize, width: usize) {
    let starts = |along_rows: bool| -> Vec<usize> {
        let mut s: Vec<usize> = (0..height * width)
            .filter(|&i| cells[i].is_some())
            .map(|i| if along_rows { i / width } else { i % width })
            .collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let (rows, cols) = (starts(true), starts(false));
    let last_at_or_before = |s: &[usize], v: usize| s.iter().rev().find(|&&x| x <= v).copied();
    let filled: Vec<Option<f32>> = (0..height * width)
        .map(|i| {
            cells[i].or_else(|| {
                let r = last_at_or_before(&rows, i / width)?;
                let c = last_at_or_before(&cols, i % width)?;
                cells[r * width + c]
            })
        })
        .collect();
    cells.copy_from_slice(&filled);
}

fn qualified_name(side: &str, column: &str) -> String {
    if side.is_empty() {
        column.to_string()
    } else {
        format!("{side}.{column}")
    }
}

fn picture_error(names: &[String]) -> Error {
    Error::value(format!(
        "a picture needs `row`, `col` and `attribution` (images), `column` and `attribution` (tabular data) or `token`, `text` and `attribution` (text); the query gives {}",
        names.join(", ")
    ))
    .hint("export the attribution relation itself, e.g. EXPORT SELECT * FROM m(d[0]) USING … TO 'map.png'")
}

/// A grid of input images (a dataset's, e.g. feature visualizations: `EXPORT v TO
/// 'v.png'`), each titled, at the heatmaps' size, each scaled to its own range as
/// `input_png` does (one channel as ink on paper, three as colour).
pub fn inputs_png(panels: &[(String, &[f32])], (channels, height, width): (usize, usize, usize)) -> Result<Vec<u8>> {
    if panels.is_empty() {
        return Err(Error::value("nothing to draw: the dataset picks no inputs"));
    }
    if height == 0 || width == 0 {
        return Err(Error::value("cannot draw an input of no pixels"));
    }
    let columns = panels.len().min(PER_ROW);
    let rows = panels.len().div_ceil(PER_ROW);
    let size = (MAP, MAP);
    let (total_w, total_h) = (
        GAP + columns as u32 * (MAP + GAP),
        GAP + rows as u32 * (TITLE + MAP + GAP),
    );
    register_font();
    let mut buffer = vec![255u8; (total_w * total_h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (total_w, total_h)).into_drawing_area();
        let draw_err = |e: DrawingAreaErrorKind<_>| Error::io(format!("cannot draw the picture: {e}"));
        let style = ("sans-serif", 13).into_font().color(&BLACK);
        let side = (MAP as usize / height.max(width)).max(1);
        let plane = height * width;
        for (k, (title, values)) in panels.iter().enumerate() {
            let (x, y) = panel_origin(k, size);
            root.draw(&Text::new(title.clone(), (x as i32, y as i32 + 4), style.clone()))
                .map_err(draw_err)?;
            let (lo, hi) = values
                .iter()
                .filter(|v| v.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
            let span = if hi > lo { hi - lo } else { 1.0 };
            let level = |v: f32| -> u8 { (255.0 * ((v - lo) / span).clamp(0.0, 1.0)).round() as u8 };
            for py in 0..height * side {
                for px in 0..width * side {
                    let at = (py / side) * width + px / side;
                    let colour = if channels == 3 {
                        let [r, g, b] = [0, 1, 2].map(|c| level(values[c * plane + at]));
                        RGBColor(r, g, b)
                    } else {
                        let v = 255 - level(values[at]);
                        RGBColor(v, v, v)
                    };
                    root.draw_pixel((x as i32 + px as i32, (y + TITLE) as i32 + py as i32), &colour)
                        .map_err(draw_err)?;
                }
            }
        }
        root.present().map_err(draw_err)?;
    }
    encode(&buffer, total_w, total_h)
}

/// A PNG of one input image (channels × height × width values), scaled to its own range
/// (dark = high, as ink on paper) and enlarged to about `MAP / 2` pixels; three channels
/// are shown as colour.
pub fn input_png(values: &[f32], (channels, height, width): (usize, usize, usize)) -> Result<Vec<u8>> {
    if height == 0 || width == 0 || values.len() < channels * height * width {
        return Err(Error::value("cannot draw an input of no pixels"));
    }
    let scale = ((MAP / 2) as usize / height.max(width)).max(1);
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let level = |v: f32| -> u8 { (255.0 * (1.0 - ((v - lo) / span).clamp(0.0, 1.0))).round() as u8 };
    let (w, h) = ((width * scale) as u32, (height * scale) as u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as usize {
        for x in 0..w as usize {
            let at = (y / scale) * width + x / scale;
            let plane = height * width;
            let px = if channels == 3 {
                // colour images keep their colours (bright = high)
                [0, 1, 2].map(|c| 255 - level(values[c * plane + at]))
            } else {
                [level(values[at]); 3]
            };
            rgb.extend_from_slice(&px);
        }
    }
    encode(&rgb, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text relation (`token`, `text`, `attribution`) draws its tokens in order, each on
    /// a box of its sign's colour, wrapping long texts onto more lines.
    #[test]
    fn text_relations_draw_coloured_tokens() {
        let words = ["the", "film", "was", "not", "good", "at", "all"];
        let attribution = [0.0f32, 0.2, 0.0, -1.5, 2.0, 0.0, -0.1];
        // rows out of token order: the picture sorts them
        let order = [6i64, 5, 4, 3, 2, 1, 0];
        let df = df!(
            "input" => vec![0i64; 7],
            "token" => order.to_vec(),
            "text" => order.iter().map(|&t| words[t as usize]).collect::<Vec<_>>(),
            "attribution" => order.iter().map(|&t| attribution[t as usize]).collect::<Vec<_>>(),
        )
        .unwrap();
        let png = render_png(&df).unwrap();
        let mut reader = png::Decoder::new(png.as_slice()).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width, GAP + TEXT_WIDTH + GAP + BAR_COLUMN);
        assert_eq!(info.height, GAP + TITLE + TOKEN_LINE + GAP);
        let (at, lines) = token_layout(&words.map(String::from));
        assert_eq!(lines, 1);
        let colour = |k: usize| {
            // the box's left edge, beside the text
            let x = GAP + at[k].0 + 2;
            let y = GAP + TITLE + 2;
            let p = ((y * info.width + x) * 3) as usize;
            (buf[p] as i32, buf[p + 1] as i32, buf[p + 2] as i32)
        };
        let (r, _, b) = colour(4);
        assert!(r > b + 100, "`good` (positive) is red: {r} {b}");
        let (r, _, b) = colour(3);
        assert!(b > r + 50, "`not` (negative) is blue: {r} {b}");
        assert_eq!(colour(0), (255, 255, 255), "zero is white");
        // a long text wraps
        let long: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
        assert!(token_layout(&long).1 > 1);
    }
}
