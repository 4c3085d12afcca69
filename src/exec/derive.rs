//! Datasets derived by running something: adversarial attacks (`LET a = ATTACK …`) and
//! feature visualizations (`LET v = VISUALIZE …`).

use super::*;

impl State {
    /// Runs an attack and keeps its result as the dataset `name`; says how many
    /// predictions it changed.
    pub(super) fn attack(&mut self, name: &str, spec: &crate::plan::AttackSpec, text: &str) -> Result<String> {
        let sel = self.select(&spec.data)?;
        if sel.is_empty() {
            return Err(Error::value(format!("`{}` picks no inputs to attack", spec.data)));
        }
        // An attack on a model with activation edits attacks the edited model.
        let edits: Vec<ActivationEdit> = spec.data.activation_edits().into_iter().cloned().collect();
        let model_name = if edits.is_empty() {
            spec.model.clone()
        } else {
            self.edited_model(&spec.model, &edits.iter().collect::<Vec<_>>())?
        };
        let model = self.model(&model_name)?.model.clone();
        let labels = sel.labels();
        let classes: Vec<usize> = match spec.target {
            Some(k) => vec![k; sel.len()],
            None => labels
                .iter()
                .zip(sel.ids())
                .map(|(l, id)| match l {
                    Some(l) if *l >= 0 && (*l as usize) < model.output_len() => Ok(*l as usize),
                    _ => Err(Error::value(format!(
                        "input {id} has no label among the model's {} classes to attack",
                        model.output_len()
                    ))),
                })
                .collect::<Result<_>>()?,
        };
        // Clamp to the data's range unless told otherwise (digits: [0, 1]).
        let whole = &sel.dataset;
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for r in 0..whole.len() {
            for &v in whole.row(r)?.iter() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        let bounds = (spec.bounds.0.unwrap_or(lo), spec.bounds.1.unwrap_or(hi));
        let cancel = self.cancel.clone();
        let mut control = crate::ops::Control::new(&cancel);
        let steps = match spec.attack {
            crate::ops::attack::Attack::Fgsm { .. } => 1,
            crate::ops::attack::Attack::Pgd { steps, .. } => steps,
        };
        let progress = self.progress(
            format!("ATTACK {} ON {}", spec.attack.name(), spec.model),
            sel.len() * steps,
            "input-steps",
        );
        let report = crate::output::progress::reporter(&progress);
        control.on_progress = Some(&report);
        let adversarial = crate::ops::attack::perturb(
            &model,
            &sel.values()?,
            &sel.ids(),
            &classes,
            &spec.attack,
            spec.target.is_some(),
            bounds,
            self.batch_rows(&model)
                .min(sel.len().div_ceil(rayon::current_num_threads())),
            &control,
        )?;
        let d = model.input_len();
        let mut derived = sel.dataset.subset(name, text, &sel.rows)?;
        let mut next = 0;
        derived.edit_rows(|_, row| {
            row.copy_from_slice(&adversarial[next * d..(next + 1) * d]);
            next += 1;
        })?;
        let derived = Arc::new(derived);
        let before = forward::logits(self, &model_name, &sel, &[])?;
        let after = forward::logits(self, &model_name, &Selection::all(derived.clone()), &[])?;
        let argmax = |v: &Vec<f32>| interpret::argmax(v);
        let changed = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| argmax(a) != argmax(b))
            .count();
        let accuracy = |logits: &[Vec<f32>]| {
            let right = logits
                .iter()
                .zip(&labels)
                .filter(|(l, y)| y.is_some_and(|y| y == argmax(l) as i64))
                .count();
            right as f32 / logits.len().max(1) as f32
        };
        let mut msg = format!(
            "{name} = {text}: {} inputs, {changed} predictions changed",
            derived.len()
        );
        if labels.iter().all(|l| l.is_some()) {
            msg.push_str(&format!(
                " (accuracy {:.2} → {:.2})",
                accuracy(&before),
                accuracy(&after)
            ));
        }
        self.datasets.insert(name.to_string(), derived);
        Ok(msg)
    }

    /// Renders a feature visualization and keeps its images as the dataset `name` (ids
    /// 0.., no labels); says how far the objective rose.
    pub(super) fn visualize(
        &mut self,
        name: &str,
        spec: &crate::plan::logical::VisualizeSpec,
        text: &str,
    ) -> Result<String> {
        let model = self.model(&spec.model)?.model.clone();
        let mut vis = spec.visualization.clone();
        if let Some(path) = &spec.init {
            let shown = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read {shown}: {e}")))?;
            vis.init = Some(data::npy::read_npy(&bytes, &shown)?.to_f32());
        }
        let cancel = self.cancel.clone();
        let mut control = crate::ops::Control::new(&cancel);
        let progress = self.progress(format!("VISUALIZE {}", spec.model), vis.steps, "steps");
        let report = crate::output::progress::reporter(&progress);
        control.on_progress = Some(&report);
        let rendered = crate::ops::visualize::render(&model, &vis, &control)?;
        let shape = model.input_shape.clone();
        let modality = match shape.as_slice() {
            [channels, height, width] => data::Modality::Image {
                channels: *channels,
                height: *height,
                width: *width,
            },
            [d] => data::Modality::Tabular {
                columns: (0..*d).map(|i| format!("x{i}")).collect(),
            },
            _ => data::Modality::Tensor,
        };
        let n = rendered.start.len();
        let mut ds = data::Dataset::new(name, text, shape, modality, rendered.images, None)?;
        // Normalised images are shown as the images they stand for.
        ds.photos = vis
            .normalize
            .map(|(mean, std)| Arc::new(data::photos::Photos { mean, std }));
        self.datasets.insert(name.to_string(), Arc::new(ds));
        let fmt = |v: &[f32]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
        Ok(format!(
            "{name} = {text}: {n} image{}, objective {} → {} after {} steps",
            if n == 1 { "" } else { "s" },
            fmt(&rendered.start),
            fmt(&rendered.end),
            vis.steps
        ))
    }
}
