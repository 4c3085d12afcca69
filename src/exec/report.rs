//! EXPORT REPORT and the pictures drawn over photos: what a query reads (its `model(data)`
//! sources), each source's reading of the inputs, and the photos behind the maps.

use super::*;

impl State {
    /// The photo of each input id, when the query's first `model(data)` reads a dataset
    /// of photos (de-normalised back to what Resize and CenterCrop gave).
    pub(super) fn photo_lookup(
        &self,
        query: &crate::plan::Node,
    ) -> Option<impl Fn(i64) -> Option<crate::output::picture::Photo> + use<>> {
        let (_, data) = all_sources(query).into_iter().next()?;
        let dataset = self.dataset(&data.name).ok()?;
        let photos = dataset.photos.clone()?;
        let (height, width) = match dataset.modality {
            crate::data::Modality::Image { height, width, .. } => (height, width),
            _ => return None,
        };
        Some(move |id: i64| {
            let row = dataset.position_of(id)?;
            Some(crate::output::picture::Photo {
                height,
                width,
                rgb: photos.denormalize(&dataset.row(row).ok()?),
            })
        })
    }

    /// The HTML of EXPORT REPORT: each input of the result with its picture, what each
    /// `model(data)` of the query predicts for it (both sides of a JOIN) with the top
    /// classes, the query's maps, the query, its plan and the table.
    pub(super) fn report(&mut self, query: &crate::plan::Node, text: &str, df: &DataFrame) -> Result<String> {
        let sources = all_sources(query);
        let (_, data) = sources
            .first()
            .cloned()
            .ok_or_else(|| Error::value("a report needs a query over model(data)"))?;
        let dataset = self.dataset(&data.name)?;
        let photo_of = self.photo_lookup(query);
        // The inputs the result names, in order; without an `input` column, those queried.
        let ids: Vec<i64> = match df.column("input") {
            Ok(c) => {
                let mut ids: Vec<i64> = Vec::new();
                for v in c.cast(&polars::prelude::DataType::Int64)?.i64()?.iter().flatten() {
                    if !ids.contains(&v) {
                        ids.push(v);
                    }
                }
                ids
            }
            Err(_) => self.select(&data)?.ids(),
        };
        let rows: Vec<usize> = ids.iter().filter_map(|&id| dataset.position_of(id)).collect();
        let sel = Selection {
            dataset: dataset.clone(),
            rows,
        };
        // Each source's reading of the inputs (its own data, edits applied), by input id.
        let mut readings: Vec<std::collections::HashMap<i64, crate::output::report::SideFacts>> = Vec::new();
        for (model, data) in &sources {
            let all = self.select(data)?;
            let rows: Vec<usize> = ids.iter().filter_map(|&id| all.dataset.position_of(id)).collect();
            let side = Selection {
                dataset: all.dataset.clone(),
                rows,
            };
            let logits = forward::logits(self, model, &side, &[])?;
            let source = format!("{model}({data})");
            readings.push(
                side.rows
                    .iter()
                    .zip(&logits)
                    .map(|(&r, l)| {
                        let top = top_classes(l, 3);
                        let facts = crate::output::report::SideFacts {
                            source: source.clone(),
                            label: side.dataset.label(r),
                            prediction: top.first().map_or(0, |t| t.0),
                            top,
                        };
                        (side.dataset.id(r), facts)
                    })
                    .collect(),
            );
        }
        let image = match dataset.modality {
            crate::data::Modality::Image {
                channels,
                height,
                width,
            } => Some((channels, height, width)),
            _ => None,
        };
        let inputs = sel
            .rows
            .iter()
            .map(|&r| {
                // A photo is shown as the photo (de-normalised), other images scaled.
                let picture = match &photo_of {
                    Some(photo) => photo(dataset.id(r))
                        .and_then(|p| crate::output::picture::input_png(&p.rgb, (3, p.height, p.width)).ok()),
                    None => {
                        image.and_then(|shape| crate::output::picture::input_png(&dataset.row(r).ok()?, shape).ok())
                    }
                };
                let id = dataset.id(r);
                crate::output::report::ReportInput {
                    id,
                    sides: readings.iter_mut().filter_map(|side| side.remove(&id)).collect(),
                    picture,
                }
            })
            .collect();
        let names: Vec<String> = sources.iter().map(|(m, d)| format!("{m}({d})")).collect();
        crate::output::report::render_html(&crate::output::report::Report {
            query: text,
            plan: &query.to_string(),
            sources: &names,
            inputs,
            table: df,
            photo_of: &|id| photo_of.as_ref().and_then(|f| f(id)),
        })
    }
}

/// Every model(data) the query reads, in plan order, each once.
fn all_sources(node: &crate::plan::Node) -> Vec<(String, DatasetRef)> {
    use crate::plan::NodeKind;
    let mut out: Vec<(String, DatasetRef)> = Vec::new();
    let mut add = |m: &str, d: &DatasetRef| {
        if !out.iter().any(|(om, od)| om == m && od == d) {
            out.push((m.to_string(), d.clone()));
        }
    };
    pub(super) fn walk(node: &crate::plan::Node, add: &mut dyn FnMut(&str, &DatasetRef)) {
        match &node.kind {
            NodeKind::Attribute(a) => add(&a.model, &a.data),
            NodeKind::Predict(p) => add(&p.model, &p.data),
            NodeKind::Detect(d) => add(&d.model, &d.data),
            NodeKind::Tcav(t) => add(&t.model, &t.data),
            NodeKind::Influence(i) => {
                add(&i.model, &i.train);
                add(&i.model, &i.test);
            }
            _ => node.inputs().into_iter().for_each(|n| walk(n, add)),
        }
    }
    walk(node, &mut add);
    out
}

/// The `k` most probable classes of one output's logits (softmax), best first.
fn top_classes(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    let mut top: Vec<(usize, f32)> = logits.iter().map(|v| (v - max).exp() / z).enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(k);
    top
}
