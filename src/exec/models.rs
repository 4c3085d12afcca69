//! The models a plan runs: loaded ones, ones bound to a shape (symbolic input axes), and
//! ones with activation edits (`m(d WITH LAYER …)`), each a model instance of its own in the
//! caches.

use super::*;

impl State {
    pub(super) fn model(&self, name: &str) -> Result<LoadedModel> {
        if let Some(m) = self.models.get(name).or_else(|| self.edited.get(name)) {
            return Ok(m.clone());
        }
        if let Some(m) = self.bound_model(name)? {
            return Ok(m);
        }
        Err(Error::unknown("model", name, &self.model_names(), "loaded models"))
    }

    /// `m[3×48×48]`: the model `m`, whose input has symbolic axes, bound to that shape
    /// (the binding is kept by the graph; the name is what the planner gave it).
    pub(super) fn bound_model(&self, name: &str) -> Result<Option<LoadedModel>> {
        let Some((base, dims)) = name.strip_suffix(']').and_then(|n| n.rsplit_once('[')) else {
            return Ok(None);
        };
        let Some(loaded) = self.models.get(base) else {
            return Ok(None);
        };
        let shape: Vec<usize> = dims.split('×').filter_map(|d| d.parse().ok()).collect();
        let model = match (&loaded.model.dynamic, &loaded.model.lengths, shape.as_slice()) {
            (Some(graph), _, _) => graph.bind(&shape)?,
            (None, Some(lengths), [length]) => lengths.bind(*length)?,
            _ => return Ok(None),
        };
        if let Some(c) = &loaded.classes
            && c.len() != model.output_len()
        {
            return Err(Error::shape(format!(
                "`{base}` names {} classes (CLASSES) but has {} outputs on inputs of shape {}",
                c.len(),
                model.output_len(),
                crate::data::fmt_shape(&shape)
            )));
        }
        // A binding is a model instance of its own in the caches, fixed by (base, shape).
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(loaded.id, &shape), &mut h);
        let id = (1 << 63) | (std::hash::Hasher::finish(&h) >> 1);
        Ok(Some(LoadedModel {
            base: model.clone(),
            model,
            id,
            arch: loaded.arch.clone(),
            classes: loaded.classes.clone(),
            checkpoints: loaded.checkpoints.clone(),
        }))
    }

    /// The name of `base` with the activation edits `edits` applied, registering that
    /// model on first use (again when the base model or a donor's activations changed).
    pub(super) fn edited_model(&mut self, base: &str, edits: &[&ActivationEdit]) -> Result<String> {
        let mut per_input = self.patches_per_input(base, edits)?;
        if per_input.len() > 1 {
            return Err(Error::value(
                "FROM with several donors pairs them with the inputs in PREDICT only; here one donor serves every input",
            ));
        }
        let patches = per_input.pop().unwrap_or_default();
        let texts: Vec<String> = edits.iter().map(|e| e.to_string()).collect();
        let name = format!("{base} with {}", texts.join(", with "));
        let base_model = self.model(base)?.model.clone();
        let current = self.edited.get(&name).is_some_and(|m| {
            m.model.patches == patches
                && m.model.layers.len() == base_model.layers.len()
                && Arc::ptr_eq(&m.base, &base_model)
        });
        if !current {
            let id = self.next_model_id;
            self.next_model_id += 1;
            let loaded = self.model(base)?;
            self.edited.insert(
                name.clone(),
                LoadedModel {
                    model: Arc::new(base_model.with_patches(patches)),
                    id,
                    arch: loaded.arch,
                    base: base_model,
                    classes: loaded.classes,
                    checkpoints: loaded.checkpoints,
                },
            );
        }
        Ok(name)
    }

    /// The patches of `edits` on `base`: one list for every input, or — when a FROM names
    /// several donors (PREDICT pairs donor i with input i) — one list per donor.
    pub(crate) fn patches_per_input(&mut self, base: &str, edits: &[&ActivationEdit]) -> Result<Vec<Vec<Patch>>> {
        let mut lists: Vec<Vec<Patch>> = vec![Vec::new()];
        for e in edits {
            let layer = self
                .model(base)?
                .model
                .layer_index(&e.layer.name)
                .ok_or_else(|| Error::name(format!("`{base}` has no layer `{}` to edit", e.layer.name)))?;
            let actions: Vec<PatchAction> = match &e.action {
                ActivationAction::Set(v) => vec![PatchAction::Set(*v)],
                ActivationAction::Scale(v) => vec![PatchAction::Scale(*v)],
                ActivationAction::From(donor) => {
                    let sel = self.select(donor)?;
                    if sel.is_empty() {
                        return Err(Error::value(format!("`{donor}` holds no input to patch from")));
                    }
                    let values = forward::hook_values(self, base, &sel, layer, &[], None)?;
                    values
                        .iter()
                        .map(|v| PatchAction::Values(v[e.units.clone()].to_vec()))
                        .collect()
                }
            };
            if actions.len() > 1 && lists.len() > 1 && actions.len() != lists.len() {
                return Err(Error::value(format!(
                    "two FROM edits name {} and {} donors; they pair up input by input",
                    lists.len(),
                    actions.len()
                )));
            }
            if actions.len() > 1 && lists.len() == 1 {
                lists = vec![lists[0].clone(); actions.len()];
            }
            let count = lists.len();
            for (i, list) in lists.iter_mut().enumerate() {
                list.push(Patch {
                    layer,
                    units: e.units.clone(),
                    action: actions[if actions.len() == 1 { 0 } else { i % count }].clone(),
                });
            }
        }
        Ok(lists)
    }

    /// Points every interpretation and prediction whose inputs carry activation edits at
    /// the model with those edits — inside a WITH only if `through_with` (a WITH's parts
    /// are bound when they run, and binding twice would apply the edits twice).
    pub(super) fn bind_edited_models(&mut self, node: &mut Node, through_with: bool) -> Result<()> {
        match &mut node.kind {
            NodeKind::Attribute(a) => {
                let edits: Vec<ActivationEdit> = a.data.activation_edits().into_iter().cloned().collect();
                if !edits.is_empty() {
                    let edits: Vec<&ActivationEdit> = edits.iter().collect();
                    a.model = self.edited_model(&a.model, &edits)?;
                    if let Some(c) = &a.contrast {
                        a.contrast = Some(self.edited_model(&c.clone(), &edits)?);
                    }
                    if let TargetSpec::PredictedBy(m) = &a.target {
                        a.target = TargetSpec::PredictedBy(self.edited_model(&m.clone(), &edits)?);
                    }
                }
            }
            NodeKind::Predict(p) => {
                let edits: Vec<ActivationEdit> = p.data.activation_edits().into_iter().cloned().collect();
                // Several donors: run_prediction patches each input from its own.
                let paired = edits.iter().any(|e| match &e.action {
                    ActivationAction::From(d) => self.select(d).is_ok_and(|s| s.len() > 1),
                    _ => false,
                });
                if !edits.is_empty() && !paired {
                    let edits: Vec<&ActivationEdit> = edits.iter().collect();
                    p.model = self.edited_model(&p.model, &edits)?;
                    // The edited model applies them now.
                    p.data.edits.retain(|e| !matches!(e, crate::plan::EditSpec::Layer(_)));
                }
            }
            _ => {}
        }
        if matches!(node.kind, NodeKind::With { .. }) && !through_with {
            return Ok(());
        }
        for input in node.inputs_mut() {
            self.bind_edited_models(input, through_with)?;
        }
        Ok(())
    }
}
