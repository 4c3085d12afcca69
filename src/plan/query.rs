//! Planning the relational part: SELECT lists, WHERE, GROUP BY with aggregates, HAVING,
//! ORDER BY (by output name, ordinal or source column), DISTINCT, LIMIT, subqueries and
//! set operations. Column names are checked here, against each operator's columns.

use super::interpret::{plan_clauses, plan_interpretation, plan_prediction};
use super::*;
use crate::syntax::ast::{
    Cte, Expr, ExprKind, Ident, Join, JoinCondition, JoinKind, JoinSide, Query, QueryKind, Select, SelectItem, SetOp,
    Source, TableJoin,
};

/// Functions that exist only over a window (`… OVER (…)`).
pub const WINDOW_RANKINGS: &[&str] = &["row_number", "rank", "dense_rank"];

/// The first window function in `e`, if any.
pub fn find_window(e: &Expr) -> Option<&Expr> {
    match &e.kind {
        ExprKind::Window { .. } => Some(e),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => find_window(expr),
        ExprKind::Binary { left, right, .. } => find_window(left).or_else(|| find_window(right)),
        ExprKind::Call { args, .. } => args.iter().find_map(find_window),
        ExprKind::InList { expr, list, .. } => find_window(expr).or_else(|| list.iter().find_map(find_window)),
        _ => None,
    }
}

pub const AGGREGATES: &[&str] = &["sum", "mean", "avg", "min", "max", "count", "median", "std", "var"];
/// Scalar functions and how many arguments they take.
pub const SCALARS: &[(&str, usize, usize)] = &[
    ("abs", 1, 1),
    ("sqrt", 1, 1),
    ("exp", 1, 1),
    ("ln", 1, 1),
    ("round", 1, 2),
    ("floor", 1, 1),
    ("ceil", 1, 1),
    ("pow", 2, 2),
];

pub(super) fn plan_query(q: &Query, catalog: &dyn Catalog) -> Result<Node> {
    match &q.kind {
        QueryKind::Select(s) => plan_select(s, catalog),
        QueryKind::Predict(p) => plan_prediction(p, catalog),
        QueryKind::With { tables, body } => plan_with(tables, body, catalog),
        QueryKind::SetOp { op, left, right } => {
            let l = plan_query(left, catalog)?;
            let r = plan_query(right, catalog)?;
            if l.columns.len() != r.columns.len() {
                let word = match op {
                    SetOp::Union | SetOp::UnionAll => "UNION",
                    SetOp::Intersect => "INTERSECT",
                    SetOp::Except => "EXCEPT",
                };
                return Err(Error::query(format!(
                    "both sides of {word} must have the same number of columns: the left has {} ({}), the right {} ({})",
                    l.columns.len(),
                    l.columns.join(", "),
                    r.columns.len(),
                    r.columns.join(", ")
                ))
                .at(q.span));
            }
            let columns = l.columns.clone();
            Ok(Node::new(
                NodeKind::SetOp {
                    op: *op,
                    left: Box::new(l),
                    right: Box::new(r),
                },
                columns,
            ))
        }
    }
}

/// A name by which a SELECT may qualify columns (`s.score`), and the source columns it
/// reaches.
type Side = (String, Vec<String>);

fn plan_source(source: &Source, catalog: &dyn Catalog) -> Result<(Node, Vec<Side>)> {
    let named = |node: Node, alias: Option<&Ident>| {
        let sides = alias
            .map(|a| (a.name.clone(), node.columns.clone()))
            .into_iter()
            .collect();
        (node, sides)
    };
    match source {
        Source::Interpretation(i) => Ok((plan_interpretation(i, catalog)?, Vec::new())),
        Source::Predict(p) => Ok((plan_prediction(p, catalog)?, Vec::new())),
        Source::Influence(i) => Ok((super::influence::plan_influence(i, catalog)?, Vec::new())),
        Source::Tcav(t) => Ok((super::influence::plan_tcav(t, catalog)?, Vec::new())),
        Source::PredictJoin(j) => Ok((plan_predict_join(j, catalog)?, Vec::new())),
        Source::Subquery { query, alias } => Ok(named(plan_query(query, catalog)?, alias.as_ref())),
        Source::Join(j) => Ok((plan_join(j, catalog)?, Vec::new())),
        Source::Table { name, alias } => Ok(named(plan_table(name, catalog)?, Some(alias.as_ref().unwrap_or(name)))),
        Source::TableJoin(j) => plan_table_join(j, catalog),
    }
}

/// The catalog inside a WITH: its names so far, then whatever is outside.
struct WithScope<'a> {
    outer: &'a dyn Catalog,
    tables: Vec<(String, Vec<String>)>,
}

impl Catalog for WithScope<'_> {
    fn model(&self, name: &str) -> Option<ModelInfo> {
        self.outer.model(name)
    }
    fn model_names(&self) -> Vec<String> {
        self.outer.model_names()
    }
    fn dataset(&self, name: &str) -> Option<DatasetInfo> {
        self.outer.dataset(name)
    }
    fn dataset_names(&self) -> Vec<String> {
        self.outer.dataset_names()
    }
    fn setting(&self, name: &str) -> Option<crate::ops::ParamValue> {
        self.outer.setting(name)
    }
    fn variable(&self, name: &str) -> Option<Literal> {
        self.outer.variable(name)
    }
    fn variable_names(&self) -> Vec<String> {
        self.outer.variable_names()
    }
    fn bind_model(&self, name: &str, sample_shape: &[usize]) -> Result<(String, ModelInfo)> {
        self.outer.bind_model(name, sample_shape)
    }
    fn table(&self, name: &str) -> Option<TableInfo> {
        match self.tables.iter().rev().find(|(n, _)| n == name) {
            Some((_, columns)) => Some(TableInfo {
                columns: columns.clone(),
                source: TableSource::With,
            }),
            None => self.outer.table(name),
        }
    }
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables.iter().rev().map(|(n, _)| n.clone()).collect();
        for outer in self.outer.table_names() {
            if !names.contains(&outer) {
                names.push(outer);
            }
        }
        names
    }
}

/// `WITH a AS (…), b AS (…) body`: each table planned with the ones before it in scope.
fn plan_with(tables: &[Cte], body: &Query, catalog: &dyn Catalog) -> Result<Node> {
    let mut scope = WithScope {
        outer: catalog,
        tables: Vec::new(),
    };
    let mut planned = Vec::new();
    for t in tables {
        if scope.tables.iter().any(|(n, _)| *n == t.name.name) {
            return Err(Error::name(format!("WITH names `{}` twice", t.name.name))
                .at(t.name.span)
                .hint("give each table its own name"));
        }
        let node = plan_query(&t.query, &scope)?;
        scope.tables.push((t.name.name.clone(), node.columns.clone()));
        planned.push((t.name.name.clone(), node));
    }
    let body = plan_query(body, &scope)?;
    let columns = body.columns.clone();
    Ok(Node::new(
        NodeKind::With {
            tables: planned,
            body: Box::new(body),
        },
        columns,
    ))
}

/// `FROM t`: a WITH name or a kept table; a model or dataset named here is a mistake
/// worth explaining.
fn plan_table(name: &Ident, catalog: &dyn Catalog) -> Result<Node> {
    if let Some(info) = catalog.table(&name.name) {
        return Ok(Node::new(
            NodeKind::Table {
                name: name.name.clone(),
                source: info.source,
            },
            info.columns,
        ));
    }
    let n = &name.name;
    if catalog.model(n).is_some() {
        let data = catalog.dataset_names().into_iter().next().unwrap_or_else(|| "d".into());
        return Err(Error::name(format!("`{n}` is a model: read it on a dataset"))
            .at(name.span)
            .hint(format!("FROM {n}({data}) USING saliency, or FROM PREDICT {n}({data})")));
    }
    if catalog.dataset(n).is_some() {
        let model = catalog.model_names().into_iter().next().unwrap_or_else(|| "m".into());
        return Err(
            Error::name(format!("`{n}` is a dataset: its rows come through a model"))
                .at(name.span)
                .hint(format!(
                    "FROM PREDICT {model}({n}), or FROM {model}({n}) USING saliency"
                )),
        );
    }
    Err(Error::unknown("table", n, &catalog.table_names(), "tables")
        .at(name.span)
        .hint("a table is a WITH name AS (SELECT …) before the query, or kept by LET name = (SELECT …)"))
}

/// `left JOIN right USING (c, …) | ON l.x = r.y AND …`: an inner equi-join.
fn plan_table_join(j: &TableJoin, catalog: &dyn Catalog) -> Result<(Node, Vec<Side>)> {
    let side_name = |s: &Source, default: &str| match s {
        Source::Table { name, alias } => alias.as_ref().unwrap_or(name).name.clone(),
        Source::Subquery { alias: Some(a), .. } => a.name.clone(),
        _ => default.to_string(),
    };
    let names = [side_name(&j.left, "a"), side_name(&j.right, "b")];
    if names[0] == names[1] {
        return Err(Error::query(format!("both sides of JOIN are named `{}`", names[0]))
            .at(j.span)
            .hint("give them different names with AS"));
    }
    let (left, _) = plan_source(&j.left, catalog)?;
    let (right, _) = plan_source(&j.right, catalog)?;
    let missing = |side: usize, column: &Ident, node: &Node| {
        Error::unknown(
            "column",
            &column.name,
            &node.columns,
            &format!("columns of `{}`", names[side]),
        )
        .at(column.span)
    };
    let mut on: Vec<(String, String)> = Vec::new();
    // USING keeps one copy of each key; ON keeps both sides' columns.
    let using = matches!(j.condition, JoinCondition::Using(_));
    match &j.condition {
        JoinCondition::Using(columns) => {
            for c in columns {
                if !left.columns.contains(&c.name) {
                    return Err(missing(0, c, &left));
                }
                if !right.columns.contains(&c.name) {
                    return Err(missing(1, c, &right));
                }
                on.push((c.name.clone(), c.name.clone()));
            }
        }
        JoinCondition::On(pairs) => {
            // Each equality pairs a column of each side, in either order.
            let side_of = |e: &Expr| -> Result<(usize, String)> {
                let ExprKind::Column { qualifier, name } = &e.kind else {
                    return Err(Error::query("ON compares columns: a.column = b.column").at(e.span));
                };
                let found =
                    |side: usize, node: &Node| node.columns.contains(&name.name).then_some((side, name.name.clone()));
                let hit = match qualifier {
                    Some(q) if q.name == names[0] => found(0, &left).ok_or_else(|| missing(0, name, &left))?,
                    Some(q) if q.name == names[1] => found(1, &right).ok_or_else(|| missing(1, name, &right))?,
                    Some(q) => {
                        return Err(Error::unknown("table", &q.name, &names, "sides of this JOIN").at(q.span));
                    }
                    None => match (found(0, &left), found(1, &right)) {
                        (Some(l), None) => l,
                        (None, Some(r)) => r,
                        (Some(_), Some(_)) => {
                            return Err(Error::query(format!("`{}` is a column of both sides", name.name))
                                .at(e.span)
                                .hint(format!(
                                    "say which: {}.{} or {}.{}",
                                    names[0], name.name, names[1], name.name
                                )));
                        }
                        (None, None) => {
                            let mut both = left.columns.clone();
                            both.extend(right.columns.iter().cloned());
                            return Err(Error::unknown("column", &name.name, &both, "columns").at(e.span));
                        }
                    },
                };
                Ok(hit)
            };
            for (a, b) in pairs {
                let (sa, ca) = side_of(a)?;
                let (sb, cb) = side_of(b)?;
                if sa == sb {
                    return Err(
                        Error::query(format!("both columns of this equality are from `{}`", names[sa]))
                            .at(a.span.to(b.span))
                            .hint("ON pairs a column of each side: a.column = b.column"),
                    );
                }
                on.push(if sa == 0 { (ca, cb) } else { (cb, ca) });
            }
        }
    }
    // The result's columns: the keys once (USING), then each side's own; a name both
    // sides keep is qualified by the side's name.
    let keys: Vec<&String> = if using {
        on.iter().map(|(l, _)| l).collect()
    } else {
        Vec::new()
    };
    let kept = |node: &Node| -> Vec<String> { node.columns.iter().filter(|c| !keys.contains(c)).cloned().collect() };
    let (lk, rk) = (kept(&left), kept(&right));
    let out = |own: &[String], other: &[String], name: &str| -> Vec<(String, String)> {
        own.iter()
            .map(|c| {
                let shown = if other.contains(c) {
                    format!("{name}.{c}")
                } else {
                    c.clone()
                };
                (c.clone(), shown)
            })
            .collect()
    };
    let mut left_out: Vec<(String, String)> = keys.iter().map(|k| ((*k).clone(), (*k).clone())).collect();
    left_out.extend(out(&lk, &rk, &names[0]));
    let right_out = out(&rk, &lk, &names[1]);
    let columns: Vec<String> = left_out.iter().chain(&right_out).map(|(_, o)| o.clone()).collect();
    // A side's name reaches its columns that kept their own name.
    let reach = |outs: &[(String, String)]| -> Vec<String> {
        outs.iter().filter(|(c, o)| c == o).map(|(c, _)| c.clone()).collect()
    };
    let left_reach = reach(&left_out);
    let mut right_reach = reach(&right_out);
    right_reach.extend(keys.iter().map(|k| (*k).clone()));
    let condition = match &j.condition {
        JoinCondition::Using(_) => {
            let k: Vec<&str> = on.iter().map(|(l, _)| l.as_str()).collect();
            format!("{} ⋈ {} using ({})", names[0], names[1], k.join(", "))
        }
        JoinCondition::On(_) => {
            let k: Vec<String> = on
                .iter()
                .map(|(l, r)| format!("{}.{l} = {}.{r}", names[0], names[1]))
                .collect();
            format!("{} ⋈ {} on {}", names[0], names[1], k.join(" and "))
        }
    };
    let sides = vec![(names[0].clone(), left_reach), (names[1].clone(), right_reach)];
    Ok((
        Node::new(
            NodeKind::TableJoin {
                left: Box::new(left),
                right: Box::new(right),
                on,
                left_out,
                right_out,
                condition,
            },
            columns,
        ),
        sides,
    ))
}

/// Columns a JOIN keeps per side (qualified `a.` / `b.`); the rest are the shared keys.
const SIDE_COLUMNS: &[&str] = &[
    "input",
    "label",
    "prediction",
    "target",
    "value",
    "activation",
    "attribution",
    "probe_accuracy",
];

/// `left JOIN right` / `left ANTIJOIN right` (DESIGN.md, "Join", "Anti-join").
fn plan_join(j: &Join, catalog: &dyn Catalog) -> Result<Node> {
    let clauses = |side: &JoinSide| {
        if side.parenthesized {
            side.interp.clauses.or(&j.shared)
        } else {
            j.shared.clone()
        }
    };
    let word = match j.kind {
        JoinKind::Join => "JOIN",
        JoinKind::AntiJoin => "ANTIJOIN",
    };
    let (lc, rc) = (clauses(&j.left), clauses(&j.right));
    for side in [&lc, &rc] {
        if let Some(u) = &side.using
            && crate::ops::detect::detector_info(&u.name.name).is_some()
        {
            return Err(
                Error::value(format!("{} scores one dataset, not a {word}", u.name.name))
                    .at(u.span)
                    .hint("score each side and join the tables on input"),
            );
        }
    }
    if let Some(e) = lc.evaluate.as_ref().or(rc.evaluate.as_ref()) {
        return Err(Error::value(format!("EVALUATE judges one interpretation, not a {word}"))
            .at(e.span)
            .hint("evaluate each side and join the tables: WITH a AS (SELECT * FROM m(d) USING x EVALUATE …), b AS (…) SELECT * FROM a JOIN b USING (input, metric)"));
    }
    let mut left = plan_clauses(&j.left.interp.call, &lc, catalog)?;
    let mut right = plan_clauses(&j.right.interp.call, &rc, catalog)?;
    let names = [
        j.left.alias.as_ref().map_or("a".to_string(), |a| a.name.clone()),
        j.right.alias.as_ref().map_or("b".to_string(), |a| a.name.clone()),
    ];
    if names[0] == names[1] {
        return Err(Error::query(format!("both sides of {word} are named `{}`", names[0]))
            .at(j.right.alias.as_ref().map_or(j.span, |a| a.span))
            .hint("give them different names with AS"));
    }
    if j.kind == JoinKind::AntiJoin {
        let (NodeKind::Attribute(a), NodeKind::Attribute(b)) = (&mut left.kind, &mut right.kind) else {
            return Err(Error::query("internal: JOIN sides are interpretations").at(j.span));
        };
        if let Some(given) = lc.baseline.as_ref().or(rc.baseline.as_ref()) {
            return Err(
                Error::value("ANTIJOIN explains each side against the other: it sets the baselines itself")
                    .at(given.span)
                    .hint("leave out BASELINE"),
            );
        }
        if !a.method.uses_baseline() {
            return Err(Error::value(format!(
                "ANTIJOIN explains each side against the other as its baseline, and {} takes no baseline",
                a.method.name()
            ))
            .at(j.span)
            .hint(format!("use one that does: {}", crate::ops::baseline_methods())));
        }
        if a.model == b.model {
            // One model on two inputs: each against the other as the baseline.
            a.baseline = BaselineSpec::Data(b.data.clone());
            b.baseline = BaselineSpec::Data(a.data.clone());
            a.against_other_side = true;
            b.against_other_side = true;
        } else if a.data == b.data {
            // Two models on one input: the difference of their target outputs.
            if !a.method.maps_differences() {
                return Err(Error::value(format!(
                    "{} of a difference of two models is not the difference of their maps",
                    a.method.name()
                ))
                .at(j.span)
                .hint("use integrated_gradients, deeplift, occlusion, feature_ablation or shapley_sampling"));
            }
            if a.layer.is_some() || a.through.is_some() {
                return Err(Error::value(
                    "an ANTIJOIN of two models explains the difference of their outputs at the input; it does not combine with AT LAYER or THROUGH LAYER",
                )
                .at(j.span));
            }
            a.contrast = Some(b.model.clone());
            b.contrast = Some(a.model.clone());
            b.target = match &a.target {
                TargetSpec::Predicted => TargetSpec::PredictedBy(a.model.clone()),
                other => other.clone(),
            };
        } else {
            return Err(Error::value(
                "ANTIJOIN compares one model on two inputs, or two models on one input; these sides differ in both",
            )
            .at(j.span));
        }
    }
    let keys_of = |n: &Node| -> Vec<String> {
        n.columns
            .iter()
            .filter(|c| !SIDE_COLUMNS.contains(&c.as_str()))
            .cloned()
            .collect()
    };
    let keys = keys_of(&left);
    if keys != keys_of(&right) {
        return Err(Error::query(format!(
            "the sides of {word} do not describe the same features: the left has keys ({}), the right ({})",
            keys.join(", "),
            keys_of(&right).join(", ")
        ))
        .at(j.span)
        .hint("both sides need the same modality, layer, WINDOW and GRANULARITY"));
    }
    let mut columns = vec!["input".to_string()];
    columns.extend(keys.iter().cloned());
    for (name, side) in names.iter().zip([&left, &right]) {
        for c in side.columns.iter().filter(|c| SIDE_COLUMNS.contains(&c.as_str())) {
            columns.push(format!("{name}.{c}"));
        }
    }
    columns.push("attribution".to_string());
    Ok(Node::new(
        NodeKind::Join {
            kind: j.kind,
            left: Box::new(left),
            right: Box::new(right),
            names,
            keys,
        },
        columns,
    ))
}

/// `PREDICT m(x) AS a JOIN PREDICT m2(y) AS b`: the two prediction relations side by side,
/// input by input (in order; one input on a side pairs with every input of the other),
/// with what changed from a to b.
fn plan_predict_join(j: &ast::PredictJoin, catalog: &dyn Catalog) -> Result<Node> {
    let left = plan_prediction(&j.left, catalog)?;
    let right = plan_prediction(&j.right, catalog)?;
    let names = [
        j.left_alias.as_ref().map_or("a".to_string(), |a| a.name.clone()),
        j.right_alias.as_ref().map_or("b".to_string(), |a| a.name.clone()),
    ];
    if names[0] == names[1] {
        return Err(Error::query(format!("both sides of JOIN are named `{}`", names[0]))
            .at(j.right_alias.as_ref().map_or(j.span, |a| a.span))
            .hint("give them different names with AS"));
    }
    let logits = |n: &Node| n.columns.iter().filter(|c| c.starts_with("logit_")).count();
    if logits(&left) != logits(&right) {
        return Err(Error::shape(format!(
            "the predictions have {} and {} outputs; a before/after JOIN compares models with the same outputs",
            logits(&left),
            logits(&right)
        ))
        .at(j.span));
    }
    let mut columns = vec!["input".to_string()];
    for (name, side) in names.iter().zip([&left, &right]) {
        columns.extend(side.columns.iter().map(|c| format!("{name}.{c}")));
    }
    columns.extend(["prediction_changed".to_string(), "confidence_change".to_string()]);
    columns.extend((0..logits(&left)).map(|k| format!("logit_{k}_change")));
    Ok(Node::new(
        NodeKind::Join {
            kind: JoinKind::Join,
            left: Box::new(left),
            right: Box::new(right),
            names,
            keys: Vec::new(),
        },
        columns,
    ))
}

/// GROUP BY keys, the aggregates the query computes (each named), and HAVING.
type Grouping = (Vec<(String, Expr)>, Vec<(String, Expr)>, Option<Expr>);

fn plan_select(s: &Select, catalog: &dyn Catalog) -> Result<Node> {
    let (mut node, sides) = plan_source(&s.from, catalog)?;
    let scope = Scope {
        columns: node.columns.clone(),
        sides,
    };

    if let Some(w) = &s.filter {
        if let Some(agg) = find_aggregate(w) {
            return Err(Error::query("aggregates are not allowed in WHERE")
                .at(agg.span)
                .hint("filter groups with HAVING"));
        }
        if let Some(win) = find_window(w) {
            return Err(Error::query("window functions are not allowed in WHERE")
                .at(win.span)
                .hint("compute it in a subquery: SELECT … FROM (SELECT …, row_number() OVER (…) AS r FROM …) WHERE r <= 5"));
        }
        let predicate = scope.resolve(w, catalog)?;
        node = node.then(|input| NodeKind::Filter { input, predicate });
    }

    let aggregate_mode = !s.group_by.is_empty()
        || s.having.is_some()
        || s.items
            .iter()
            .any(|i| matches!(i, SelectItem::Expr { expr, .. } if find_aggregate(expr).is_some()));

    // Named output expressions; with grouping, the keys, aggregates and HAVING too.
    let mut outputs: Vec<(String, Expr)> = Vec::new();
    let mut grouping: Option<Grouping> = None;

    if aggregate_mode {
        let windowed = s.items.iter().find_map(|i| match i {
            SelectItem::Expr { expr, .. } => find_window(expr),
            _ => None,
        });
        if let Some(win) = windowed.or_else(|| s.group_by.iter().find_map(find_window)) {
            return Err(
                Error::query("window functions do not combine with GROUP BY or aggregates in one SELECT")
                    .at(win.span)
                    .hint("group in a subquery, then apply the window function to its rows"),
            );
        }
        // GROUP BY keys: a source expression, or the alias of a select item.
        let mut keys: Vec<(String, Expr)> = Vec::new();
        for g in &s.group_by {
            let expr = match &g.kind {
                ExprKind::Column { qualifier: None, name } if !scope.has(&name.name) => {
                    match s.items.iter().find_map(|i| match i {
                        SelectItem::Expr { expr, alias: Some(a) } if a.name == name.name => Some(expr),
                        _ => None,
                    }) {
                        Some(aliased) => aliased,
                        None => g,
                    }
                }
                ExprKind::Number(_) => {
                    return Err(Error::query("GROUP BY takes columns or expressions, not positions").at(g.span));
                }
                _ => g,
            };
            if let Some(agg) = find_aggregate(expr) {
                return Err(Error::query("aggregates are not allowed in GROUP BY").at(agg.span));
            }
            let resolved = scope.resolve(expr, catalog)?;
            keys.push((output_name(&resolved), resolved));
        }
        let mut aggs: Vec<(String, Expr)> = Vec::new();
        for item in &s.items {
            match item {
                SelectItem::Wildcard(sp) => {
                    return Err(Error::query("SELECT * cannot be combined with GROUP BY or aggregates")
                        .at(*sp)
                        .hint("list the grouped columns and aggregates"));
                }
                SelectItem::Expr { expr, alias } => {
                    let resolved = scope.resolve(expr, catalog)?;
                    let rewritten = rewrite_grouped(&resolved, &keys, &mut aggs)?;
                    let name = alias
                        .as_ref()
                        .map(|a| a.name.clone())
                        .unwrap_or_else(|| output_name(&resolved));
                    outputs.push((name, rewritten));
                }
            }
        }
        let having = s
            .having
            .as_ref()
            .map(|h| {
                scope
                    .resolve(h, catalog)
                    .and_then(|r| rewrite_grouped(&r, &keys, &mut aggs))
            })
            .transpose()?;
        grouping = Some((keys, aggs, having));
    } else {
        for item in &s.items {
            match item {
                SelectItem::Wildcard(_) => {
                    for c in &scope.columns {
                        outputs.push((c.clone(), column(c, s.span)));
                    }
                }
                SelectItem::Expr { expr, alias } => {
                    let resolved = scope.resolve(expr, catalog)?;
                    let name = alias
                        .as_ref()
                        .map(|a| a.name.clone())
                        .unwrap_or_else(|| output_name(&resolved));
                    outputs.push((name, resolved));
                }
            }
        }
    }

    // ORDER BY keys: an output (by name or position), else an expression over the source
    // (rewritten over the groups when grouping) computed as a hidden output.
    let out_names: Vec<String> = outputs.iter().map(|(n, _)| n.clone()).collect();
    let mut sort_keys: Vec<(Expr, bool)> = Vec::new();
    let mut hidden = 0usize;
    for o in &s.order_by {
        let key = match order_output(&o.expr, &out_names)? {
            Some(name) => column(&name, o.expr.span),
            None => {
                let resolved = scope.resolve(&o.expr, catalog)?;
                let expr = match &mut grouping {
                    Some((keys, aggs, _)) => rewrite_grouped(&resolved, keys, aggs)?,
                    None => resolved,
                };
                let name = format!("__order{hidden}");
                hidden += 1;
                outputs.push((name.clone(), expr));
                column(&name, o.expr.span)
            }
        };
        sort_keys.push((key, o.descending));
    }

    if let Some((keys, aggs, having)) = grouping {
        let mut columns: Vec<String> = keys.iter().map(|(n, _)| n.clone()).collect();
        columns.extend(aggs.iter().map(|(n, _)| n.clone()));
        node = Node::new(
            NodeKind::Aggregate {
                input: Box::new(node),
                keys,
                aggregates: aggs,
            },
            columns,
        );
        if let Some(h) = having {
            node = node.then(|input| NodeKind::Filter { input, predicate: h });
        }
    }

    dedupe_names(&mut outputs);
    let columns: Vec<String> = outputs.iter().map(|(n, _)| n.clone()).collect();
    node = Node::new(
        NodeKind::Project {
            input: Box::new(node),
            exprs: outputs.clone(),
        },
        columns,
    );
    if s.distinct {
        if hidden > 0 {
            return Err(Error::query("with SELECT DISTINCT, ORDER BY must use selected columns").at(s.span));
        }
        node = node.then(|input| NodeKind::Distinct { input });
    }
    if !sort_keys.is_empty() {
        node = node.then(|input| NodeKind::Sort { input, keys: sort_keys });
    }
    if let Some(l) = &s.limit {
        let count = resolve_int(&l.count, catalog, "LIMIT")?;
        let offset = l
            .offset
            .as_ref()
            .map(|o| resolve_int(o, catalog, "OFFSET"))
            .transpose()?
            .unwrap_or(0);
        if count < 0 {
            return Err(
                Error::value(format!("LIMIT is the number of rows to keep: 0 or more, got {count}")).at(l.count.span),
            );
        }
        if let (Some(o), true) = (&l.offset, offset < 0) {
            return Err(
                Error::value(format!("OFFSET is the number of rows to skip: 0 or more, got {offset}")).at(o.span),
            );
        }
        node = node.then(|input| NodeKind::Limit {
            input,
            count: count as usize,
            offset: offset as usize,
        });
    }
    if hidden > 0 {
        let visible: Vec<(String, Expr)> = outputs
            .iter()
            .filter(|(n, _)| !n.starts_with("__order"))
            .map(|(n, _)| (n.clone(), column(n, s.span)))
            .collect();
        let columns = visible.iter().map(|(n, _)| n.clone()).collect();
        node = Node::new(
            NodeKind::Project {
                input: Box::new(node),
                exprs: visible,
            },
            columns,
        );
    }
    Ok(node)
}

/// An ORDER BY key that names an output column (by name or 1-based position).
fn order_output(expr: &Expr, outputs: &[String]) -> Result<Option<String>> {
    match &expr.kind {
        ExprKind::Number(n) => {
            let k = *n as usize;
            if n.fract() != 0.0 || k < 1 || k > outputs.len() {
                return Err(
                    Error::query(format!("ORDER BY position {n} is not between 1 and {}", outputs.len())).at(expr.span),
                );
            }
            Ok(Some(outputs[k - 1].clone()))
        }
        ExprKind::Column { qualifier: None, name } if outputs.contains(&name.name) => Ok(Some(name.name.clone())),
        _ => Ok(None),
    }
}

fn column(name: &str, span: Span) -> Expr {
    Expr {
        kind: ExprKind::Column {
            qualifier: None,
            name: Ident {
                name: name.to_string(),
                span,
            },
        },
        span,
    }
}

/// The name of an unaliased output: a column keeps its name, anything else is its text.
fn output_name(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Column { name, .. } => name.name.clone(),
        _ => e.to_string(),
    }
}

fn dedupe_names(outputs: &mut [(String, Expr)]) {
    let mut seen: Vec<String> = Vec::new();
    for (name, _) in outputs.iter_mut() {
        let base = name.clone();
        let mut k = 1;
        while seen.contains(name) {
            *name = format!("{base}_{k}");
            k += 1;
        }
        seen.push(name.clone());
    }
}

pub fn find_aggregate(e: &Expr) -> Option<&Expr> {
    match &e.kind {
        ExprKind::Call { name, .. } if AGGREGATES.contains(&name.name.to_lowercase().as_str()) => Some(e),
        ExprKind::Call { args, .. } => args.iter().find_map(find_aggregate),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => find_aggregate(expr),
        ExprKind::Binary { left, right, .. } => find_aggregate(left).or_else(|| find_aggregate(right)),
        ExprKind::InList { expr, list, .. } => find_aggregate(expr).or_else(|| list.iter().find_map(find_aggregate)),
        _ => None,
    }
}

/// Rewrites an expression over grouped rows: group keys and aggregate calls become
/// columns of the Aggregate operator; any other column is an error.
fn rewrite_grouped(e: &Expr, keys: &[(String, Expr)], aggs: &mut Vec<(String, Expr)>) -> Result<Expr> {
    let text = e.to_string();
    if let Some((name, _)) = keys.iter().find(|(_, k)| k.to_string() == text) {
        return Ok(column(name, e.span));
    }
    match &e.kind {
        ExprKind::Call { name, args, .. } if AGGREGATES.contains(&name.name.to_lowercase().as_str()) => {
            for a in args {
                if let Some(inner) = find_aggregate(a) {
                    return Err(Error::query("aggregates cannot be nested").at(inner.span));
                }
            }
            if !aggs.iter().any(|(n, _)| *n == text) {
                aggs.push((text.clone(), e.clone()));
            }
            Ok(column(&text, e.span))
        }
        ExprKind::Column { name, .. } => Err(Error::query(format!(
            "column `{}` must appear in GROUP BY or be used in an aggregate",
            name.name
        ))
        .at(e.span)),
        _ => e.map_children(&mut |c| rewrite_grouped(c, keys, aggs)),
    }
}

/// The columns visible to a SELECT: its source's, some reachable also as `name.column`
/// (a source's alias, a joined side's name).
struct Scope {
    columns: Vec<String>,
    sides: Vec<Side>,
}

impl Scope {
    fn has(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c == name)
    }

    /// Checks every column and function, replaces script variables by their values and
    /// qualified names by the column they denote.
    fn resolve(&self, e: &Expr, catalog: &dyn Catalog) -> Result<Expr> {
        let kind = match &e.kind {
            ExprKind::Column { qualifier, name } => {
                let full = match qualifier {
                    Some(q) => format!("{}.{}", q.name, name.name),
                    None => name.name.clone(),
                };
                let resolved = if self.has(&full) {
                    full
                } else if qualifier.as_ref().is_some_and(|q| {
                    self.sides
                        .iter()
                        .any(|(side, reach)| *side == q.name && reach.contains(&name.name))
                }) && self.has(&name.name)
                {
                    name.name.clone()
                } else {
                    let visible: Vec<String> = self.columns.iter().filter(|c| !c.starts_with("__")).cloned().collect();
                    return Err(Error::unknown("column", &full, &visible, "columns").at(e.span));
                };
                ExprKind::Column {
                    qualifier: None,
                    name: Ident {
                        name: resolved,
                        span: name.span,
                    },
                }
            }
            ExprKind::Window { call, partition, order } => {
                let ExprKind::Call { name, args, star } = &call.kind else {
                    return Err(Error::query("OVER follows a function call").at(e.span));
                };
                let lower = name.name.to_lowercase();
                let ranking = WINDOW_RANKINGS.contains(&lower.as_str());
                if ranking {
                    if !args.is_empty() || *star {
                        return Err(Error::query(format!("{lower}() takes no arguments")).at(call.span));
                    }
                    if order.len() != 1 {
                        return Err(Error::query(format!(
                            "{lower}() OVER (…) needs one ORDER BY expression to rank by"
                        ))
                        .at(e.span)
                        .hint(format!("{lower}() OVER (PARTITION BY input ORDER BY attribution DESC)")));
                    }
                } else if AGGREGATES.contains(&lower.as_str()) {
                    if !order.is_empty() {
                        return Err(Error::query(format!(
                            "{lower}(…) OVER with ORDER BY (a running total) is not supported"
                        ))
                        .at(e.span)
                        .hint("aggregate over the whole partition: OVER (PARTITION BY …)"));
                    }
                    if !*star && args.len() != 1 {
                        return Err(Error::query(format!("{} takes one argument", name.name)).at(call.span));
                    }
                } else {
                    let mut known: Vec<String> = WINDOW_RANKINGS.iter().map(|s| s.to_string()).collect();
                    known.extend(AGGREGATES.iter().map(|s| s.to_string()));
                    return Err(
                        Error::unknown("window function", &name.name, &known, "window functions").at(name.span),
                    );
                }
                let args = args
                    .iter()
                    .map(|a| self.resolve(a, catalog))
                    .collect::<Result<Vec<_>>>()?;
                ExprKind::Window {
                    call: Box::new(Expr {
                        kind: ExprKind::Call {
                            name: Ident {
                                name: lower,
                                span: name.span,
                            },
                            args,
                            star: *star,
                        },
                        span: call.span,
                    }),
                    partition: partition
                        .iter()
                        .map(|p| self.resolve(p, catalog))
                        .collect::<Result<_>>()?,
                    order: order
                        .iter()
                        .map(|(o, d)| Ok((self.resolve(o, catalog)?, *d)))
                        .collect::<Result<_>>()?,
                }
            }
            ExprKind::Subquery(q) => {
                // Planned here for its errors; the executor runs it before the query.
                let node = plan_query(q, catalog)?;
                if node.columns.len() != 1 {
                    return Err(Error::query(format!(
                        "a subquery in an expression gives one column; this one gives {} ({})",
                        node.columns.len(),
                        node.columns.join(", ")
                    ))
                    .at(e.span)
                    .hint("select the one column the expression compares with"));
                }
                return Ok(e.clone());
            }
            ExprKind::Var(v) => match variable(v, e.span, catalog)? {
                Literal::Number(n) => ExprKind::Number(n),
                Literal::Text(t) => ExprKind::Str(t),
                Literal::Bool(b) => ExprKind::Bool(b),
            },
            ExprKind::Call { name, args, star } => {
                let lower = name.name.to_lowercase();
                let is_agg = AGGREGATES.contains(&lower.as_str());
                if *star && lower != "count" {
                    return Err(Error::query(format!("only count takes *, not {}", name.name)).at(e.span));
                }
                if is_agg {
                    if !*star && args.len() != 1 {
                        return Err(Error::query(format!("{} takes one argument", name.name)).at(e.span));
                    }
                } else if let Some((_, min, max)) = SCALARS.iter().find(|(n, _, _)| *n == lower) {
                    if args.len() < *min || args.len() > *max {
                        let want = if min == max {
                            min.to_string()
                        } else {
                            format!("{min} or {max}")
                        };
                        return Err(Error::query(format!(
                            "{} takes {want} argument(s), got {}",
                            name.name,
                            args.len()
                        ))
                        .at(e.span));
                    }
                } else if WINDOW_RANKINGS.contains(&lower.as_str()) {
                    return Err(Error::query(format!("{lower}() is a window function: add OVER (…)"))
                        .at(e.span)
                        .hint(format!("{lower}() OVER (PARTITION BY input ORDER BY attribution DESC)")));
                } else {
                    let mut known: Vec<String> = AGGREGATES.iter().map(|s| s.to_string()).collect();
                    known.extend(SCALARS.iter().map(|(n, _, _)| n.to_string()));
                    return Err(Error::unknown("function", &name.name, &known, "functions").at(name.span));
                }
                let mut call = e.map_children(&mut |c| self.resolve(c, catalog))?;
                if let ExprKind::Call { name, .. } = &mut call.kind {
                    name.name = lower;
                }
                return Ok(call);
            }
            _ => return e.map_children(&mut |c| self.resolve(c, catalog)),
        };
        Ok(Expr { kind, span: e.span })
    }
}
