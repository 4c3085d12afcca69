//! The relational operators of a plan, run on polars: each IQL expression becomes a
//! polars expression, each operator a lazy-frame step.

use polars::prelude::*;

use super::State;
use super::interpret::{run_attribution, run_prediction};
use crate::error::{Error, Result};
use crate::plan::{Node, NodeKind};
use crate::syntax::ast::{BinaryOp, Expr as Ast, ExprKind, JoinKind, SetOp, UnaryOp};

/// Runs a query plan to a DataFrame: first its subqueries, whose results become
/// literals, then the plan.
pub(super) fn run(node: &Node, state: &mut State) -> Result<DataFrame> {
    let subqueries = has_subquery(node);
    let edits = has_activation_edits(node);
    if subqueries || edits {
        let mut node = node.clone();
        if subqueries {
            node.try_map_exprs(&mut |e| with_subqueries_run(e, state))?;
        }
        if edits {
            state.bind_edited_models(&mut node, false)?;
        }
        return Ok(build(&node, state)?.collect()?);
    }
    Ok(build(node, state)?.collect()?)
}

/// Whether an interpretation or prediction below runs on a model with activation edits.
fn has_activation_edits(node: &Node) -> bool {
    let own = match &node.kind {
        NodeKind::Attribute(a) => !a.data.activation_edits().is_empty(),
        NodeKind::Predict(p) => !p.data.activation_edits().is_empty(),
        _ => false,
    };
    own || node.inputs().into_iter().any(has_activation_edits)
}

fn has_subquery(node: &Node) -> bool {
    let mut found = false;
    let mut probe = node.clone();
    let _ = probe.try_map_exprs::<()>(&mut |e| {
        found |= expr_has_subquery(e);
        Ok(e.clone())
    });
    found
}

pub(super) fn expr_has_subquery(e: &Ast) -> bool {
    if matches!(e.kind, ExprKind::Subquery(_)) {
        return true;
    }
    let mut found = false;
    let _ = e.map_children::<()>(&mut |c| {
        found |= expr_has_subquery(c);
        Ok(c.clone())
    });
    found
}

/// `e` with each subquery run: `x IN (SELECT …)` becomes a list of the values it gave,
/// a scalar subquery its one value (NULL when it gave no row).
fn with_subqueries_run(e: &Ast, state: &mut State) -> Result<Ast> {
    let run_one = |q: &crate::syntax::ast::Query, state: &mut State| -> Result<Vec<Ast>> {
        let node = crate::plan::plan_subquery(q, &*state)?;
        let df = run(&node, state)?;
        let column = df
            .columns()
            .first()
            .ok_or_else(|| Error::query("a subquery gave no column"))?;
        let values = column.as_materialized_series().cast(&DataType::Float64).ok();
        (0..df.height())
            .map(|i| {
                let kind = match column.get(i)? {
                    AnyValue::Null => ExprKind::Null,
                    AnyValue::String(s) => ExprKind::Str(s.to_string()),
                    AnyValue::StringOwned(s) => ExprKind::Str(s.to_string()),
                    AnyValue::Boolean(b) => ExprKind::Bool(b),
                    _ => match values.as_ref().and_then(|v| v.f64().ok()).and_then(|v| v.get(i)) {
                        Some(n) => ExprKind::Number(n),
                        None => ExprKind::Null,
                    },
                };
                Ok(Ast { kind, span: e.span })
            })
            .collect()
    };
    match &e.kind {
        ExprKind::InList {
            expr: inner,
            list,
            negated,
        } if matches!(list.as_slice(), [q] if matches!(q.kind, ExprKind::Subquery(_))) => {
            let ExprKind::Subquery(q) = &list[0].kind else {
                unreachable!("matched above")
            };
            let values = run_one(q, state)?;
            Ok(Ast {
                kind: ExprKind::InList {
                    expr: Box::new(with_subqueries_run(inner, state)?),
                    list: values,
                    negated: *negated,
                },
                span: e.span,
            })
        }
        ExprKind::Subquery(q) => {
            let mut values = run_one(q, state)?;
            if values.len() > 1 {
                return Err(Error::query(format!(
                    "a subquery used as a value gave {} rows; it must give at most one",
                    values.len()
                ))
                .at(e.span)
                .hint("aggregate it (max, sum, …) or add LIMIT 1"));
            }
            Ok(values.pop().unwrap_or(Ast {
                kind: ExprKind::Null,
                span: e.span,
            }))
        }
        _ => e.map_children(&mut |c| with_subqueries_run(c, state)),
    }
}

fn build(node: &Node, state: &mut State) -> Result<LazyFrame> {
    Ok(match &node.kind {
        NodeKind::Attribute(a) => run_attribution(state, a)?.lazy(),
        NodeKind::Predict(p) => run_prediction(state, p)?.lazy(),
        NodeKind::Influence(i) => super::influence::run_influence(state, i)?.lazy(),
        NodeKind::Detect(d) => super::detect::run_detection(state, d)?.lazy(),
        NodeKind::Tcav(t) => super::tcav::run_tcav(state, t)?.lazy(),
        NodeKind::Filter { input, predicate } => build(input, state)?.filter(expr(predicate)?),
        NodeKind::Aggregate {
            input,
            keys,
            aggregates,
        } => {
            if let Some(df) = stream_aggregate(input, keys, aggregates, state)? {
                return Ok(df.lazy());
            }
            aggregate(build(input, state)?, keys, aggregates)?
        }
        NodeKind::Project { input, exprs } => {
            let cols = exprs
                .iter()
                .map(|(name, e)| Ok(expr(e)?.alias(name.as_str())))
                .collect::<Result<Vec<_>>>()?;
            build(input, state)?.select(cols)
        }
        NodeKind::Sort { input, keys } => {
            let by = keys.iter().map(|(e, _)| expr(e)).collect::<Result<Vec<_>>>()?;
            let desc: Vec<bool> = keys.iter().map(|(_, d)| *d).collect();
            let opts = SortMultipleOptions::default()
                .with_order_descending_multi(desc)
                .with_nulls_last(true)
                .with_maintain_order(true);
            build(input, state)?.sort_by_exprs(by, opts)
        }
        NodeKind::Limit { input, count, offset } => {
            build(input, state)?.slice(*offset as i64, (*count).min(IdxSize::MAX as usize) as IdxSize)
        }
        NodeKind::Distinct { input } => build(input, state)?.unique_stable(None, UniqueKeepStrategy::First),
        NodeKind::SetOp { op, left, right } => {
            let l = build(left, state)?.collect()?;
            let r = build(right, state)?.collect()?;
            set_op(*op, l, r)?.lazy()
        }
        NodeKind::With { tables, body } => run_with(tables, body, state)?.lazy(),
        NodeKind::Table { name, source } => state.table_frame(name, *source)?.lazy(),
        NodeKind::TableJoin {
            left,
            right,
            on,
            left_out,
            right_out,
            ..
        } => {
            let l = build(left, state)?.collect()?;
            let r = build(right, state)?.collect()?;
            table_join(l, r, on, left_out, right_out)?
        }
        NodeKind::Join {
            kind,
            left,
            right,
            names,
            keys,
        } => {
            let l = build(left, state)?.collect()?;
            let r = build(right, state)?.collect()?;
            join(*kind, l, r, names, keys)?
                .lazy()
                .select(node.columns.iter().map(|c| col(c.as_str())).collect::<Vec<_>>())
        }
    })
}

/// A WITH: each table computed once, in order, and visible by name (to the later ones,
/// the body, and the subqueries in them) until the body has run.
fn run_with(tables: &[(String, Node)], body: &Node, state: &mut State) -> Result<DataFrame> {
    fn each(tables: &[(String, Node)], body: &Node, state: &mut State) -> Result<DataFrame> {
        for (name, node) in tables {
            let df = run(node, state)?;
            state.with_frames.push((name.clone(), df));
        }
        run(body, state)
    }
    let depth = state.with_frames.len();
    let result = each(tables, body, state);
    state.with_frames.truncate(depth);
    result
}

/// An inner join on pairs of equal columns (`on`: left column, right column), the left's
/// rows in order, each with its matches on the right in their order; the kept columns
/// renamed as `left_out` / `right_out` say.
fn table_join(
    left: DataFrame,
    right: DataFrame,
    on: &[(String, String)],
    left_out: &[(String, String)],
    right_out: &[(String, String)],
) -> Result<LazyFrame> {
    let mut left_keys = Vec::new();
    let mut right_keys = Vec::new();
    let mut left_cols: Vec<Expr> = left_out
        .iter()
        .map(|(c, o)| col(c.as_str()).alias(o.as_str()))
        .collect();
    let mut right_cols: Vec<Expr> = right_out
        .iter()
        .map(|(c, o)| col(c.as_str()).alias(o.as_str()))
        .collect();
    for (i, (l, r)) in on.iter().enumerate() {
        let (lt, rt) = (left.column(l)?.dtype().clone(), right.column(r)?.dtype().clone());
        // Keys compare as values: an integer id meets a float id, text only text.
        let common = if lt == rt {
            None
        } else if lt.is_primitive_numeric() && rt.is_primitive_numeric() {
            Some(DataType::Float64)
        } else {
            let kind = |t: &DataType| match t {
                t if t.is_primitive_numeric() => "numbers",
                DataType::String => "text",
                DataType::Boolean => "true/false",
                _ => "other values",
            };
            return Err(Error::value(format!(
                "JOIN compares `{l}` on the left, {}, with `{r}` on the right, {}: a key must hold the same kind of value on both sides",
                kind(&lt),
                kind(&rt)
            )));
        };
        let key = |c: &str, name: String| match &common {
            Some(t) => col(c).cast(t.clone()).alias(name),
            None => col(c).alias(name),
        };
        left_cols.push(key(l, format!("__left_key{i}")));
        right_cols.push(key(r, format!("__right_key{i}")));
        left_keys.push(col(format!("__left_key{i}").as_str()));
        right_keys.push(col(format!("__right_key{i}").as_str()));
    }
    let mut args = JoinArgs::new(JoinType::Inner);
    args.maintain_order = MaintainOrderJoin::LeftRight;
    let out: Vec<Expr> = left_out.iter().chain(right_out).map(|(_, o)| col(o.as_str())).collect();
    Ok(left
        .lazy()
        .select(left_cols)
        .join(right.lazy().select(right_cols), left_keys, right_keys, args)
        .select(out))
}

fn aggregate(lf: LazyFrame, keys: &[(String, Ast)], aggregates: &[(String, Ast)]) -> Result<LazyFrame> {
    let aggs = aggregates
        .iter()
        .map(|(name, e)| Ok(expr(e)?.alias(name.as_str())))
        .collect::<Result<Vec<_>>>()?;
    Ok(if keys.is_empty() {
        lf.select(aggs)
    } else {
        let by = keys
            .iter()
            .map(|(name, e)| Ok(expr(e)?.alias(name.as_str())))
            .collect::<Result<Vec<_>>>()?;
        lf.group_by_stable(by).agg(aggs)
    })
}

/// Bytes a relation row costs while a streamed chunk is built and aggregated: measured
/// 146 per row of a ten-column image relation (peak RSS against chunk size), the columns
/// themselves being 68.
const ROW_BYTES: usize = 160;

/// A GROUP BY that keeps inputs apart (its keys include `input`) over an attribution
/// (through filters) streams: the inputs are attributed, filtered and aggregated a chunk
/// at a time, so that only one chunk's relation is in memory (`SET memory_mb` sizes the
/// chunks). No group spans two chunks, so the result is the one the whole relation gives.
fn stream_aggregate(
    input: &Node,
    keys: &[(String, Ast)],
    aggregates: &[(String, Ast)],
    state: &mut State,
) -> Result<Option<DataFrame>> {
    let by_input = keys
        .iter()
        .any(|(_, e)| matches!(&e.kind, ExprKind::Column { name, .. } if name.name == "input"));
    let mut filters = Vec::new();
    let mut node = input;
    let attribution = loop {
        match &node.kind {
            NodeKind::Filter { input, predicate } => {
                filters.push(predicate);
                node = input;
            }
            // Stacked maps (THROUGH LAYER *) order their groups layer by layer; a method
            // whose inputs' results depend on each other (feature permutation) needs them
            // all at once.
            NodeKind::Attribute(a)
                if !matches!(a.through, Some(crate::plan::ThroughSpec::All(_)))
                    && a.all_layers.is_empty()
                    && a.method.each_input_alone() =>
            {
                break a;
            }
            _ => return Ok(None),
        }
    };
    if !by_input {
        return Ok(None);
    }
    let (ids, per_input) = super::interpret::extent(state, attribution)?;
    // Half the budget for the chunk's relation, half for the batches that attribute it.
    let chunk = ((state.settings.memory_mb << 19) / (per_input.max(1) * ROW_BYTES)).max(1);
    if ids.len() <= chunk {
        return Ok(None);
    }
    let mut parts = Vec::new();
    // The inputs are chosen (filtered, limited) once; each chunk attributes its share.
    for part_ids in ids.chunks(chunk) {
        let mut part = attribution.as_ref().clone();
        part.chunk = Some(part_ids.to_vec());
        let mut lf = run_attribution(state, &part)?.lazy();
        for p in filters.iter().rev() {
            lf = lf.filter(expr(p)?);
        }
        parts.push(aggregate(lf, keys, aggregates)?.collect()?);
        state.stats.streamed_chunks += 1;
    }
    let mut out = parts.remove(0);
    for p in &parts {
        out.vstack_mut(p)?;
    }
    Ok(Some(out))
}

/// The position of each row's input among the relation's inputs (first appearance
/// order), which pairs the i-th input of one side with the i-th of the other.
fn pair_index(df: &DataFrame) -> Result<(Vec<i64>, usize)> {
    let inputs = df.column("input")?.cast(&DataType::Int64)?;
    let mut seen: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let pairs = inputs
        .i64()?
        .iter()
        .map(|v| {
            let next = seen.len() as i64;
            *seen.entry(v.unwrap_or(-1)).or_insert(next)
        })
        .collect();
    Ok((pairs, seen.len()))
}

/// JOIN / ANTIJOIN: the sides matched on their key columns (and input by input), the
/// other columns qualified by the sides' names; `attribution` is the mean of the sides
/// (join) or the left side (anti-join).
fn join(kind: JoinKind, left: DataFrame, right: DataFrame, names: &[String; 2], keys: &[String]) -> Result<DataFrame> {
    // Two prediction relations (before / after) rather than two interpretations.
    let predictions = left.column("attribution").is_err() && left.column("confidence").is_ok();
    let logits = left
        .get_column_names()
        .iter()
        .filter(|c| c.starts_with("logit_"))
        .count();
    let mut sides = Vec::new();
    let mut counts = Vec::new();
    for (mut df, name) in [(left, &names[0]), (right, &names[1])] {
        let (pairs, count) = pair_index(&df)?;
        counts.push(count);
        let renames: Vec<Expr> = df
            .get_column_names()
            .iter()
            .map(|c| {
                if keys.iter().any(|k| k.as_str() == c.as_str()) {
                    col(c.as_str())
                } else {
                    col(c.as_str()).alias(format!("{name}.{c}"))
                }
            })
            .chain([col("__pair")])
            .collect();
        df.with_column(Column::new("__pair".into(), pairs))?;
        // A constant key, so that sides without keys can pair every row with every row.
        let height = df.height();
        df.with_column(Column::new("__all".into(), vec![0i32; height]))?;
        sides.push(
            df.lazy()
                .select(renames.into_iter().chain([col("__all")]).collect::<Vec<_>>()),
        );
    }
    let mut on: Vec<Expr> = keys.iter().map(|k| col(k.as_str())).collect();
    on.push(col("__all"));
    if counts[0] == counts[1] {
        on.push(col("__pair"));
    } else if counts[0] != 1 && counts[1] != 1 {
        return Err(Error::value(format!(
            "the sides hold {} and {} inputs: give both the same number (they pair up in order), or one input on a side",
            counts[0], counts[1]
        )));
    }
    let right = sides.pop().expect("two sides");
    let left = sides.pop().expect("two sides");
    let right = if counts[0] == counts[1] {
        right
    } else {
        right.drop(by_name(["__pair"], true, false))
    };
    let mut args = JoinArgs::new(JoinType::Inner);
    args.nulls_equal = true;
    let q = |side: usize, c: &str| col(format!("{}.{c}", names[side]).as_str());
    let mut derived = vec![q(0, "input").alias("input")];
    if predictions {
        // Before (left) / after (right): what changed.
        derived.push(q(0, "prediction").neq(q(1, "prediction")).alias("prediction_changed"));
        derived.push((q(1, "confidence") - q(0, "confidence")).alias("confidence_change"));
        for k in 0..logits {
            let c = format!("logit_{k}");
            derived.push((q(1, &c) - q(0, &c)).alias(format!("{c}_change")));
        }
    } else {
        derived.push(match kind {
            JoinKind::Join => ((q(0, "attribution") + q(1, "attribution")) / lit(2.0f32)).alias("attribution"),
            JoinKind::AntiJoin => q(0, "attribution").alias("attribution"),
        });
    }
    let out = left
        .with_row_index("__left_row", None)
        .join(right, on.clone(), on, args)
        .sort(["__left_row"], SortMultipleOptions::default())
        .with_columns(derived)
        .collect()?;
    Ok(out)
}

/// SQL set operations: columns match by position; INTERSECT / EXCEPT / UNION remove
/// duplicates, UNION ALL keeps them; NULLs compare equal (IS NOT DISTINCT FROM).
fn set_op(op: SetOp, left: DataFrame, right: DataFrame) -> Result<DataFrame> {
    let names: Vec<PlSmallStr> = left.get_column_names().into_iter().cloned().collect();
    let mut lcols = Vec::new();
    let mut rcols = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (lc, rc) = (&left.columns()[i], &right.columns()[i]);
        let (lt, rt) = (lc.dtype().clone(), rc.dtype().clone());
        let common = if lt == rt {
            lt
        } else if lt.is_primitive_numeric() && rt.is_primitive_numeric() {
            DataType::Float64
        } else {
            DataType::String
        };
        lcols.push(col(lc.name().clone()).cast(common.clone()).alias(name.clone()));
        rcols.push(col(rc.name().clone()).cast(common).alias(name.clone()));
    }
    let l = left.lazy().select(lcols);
    let r = right.lazy().select(rcols);
    let on: Vec<Expr> = names.iter().map(|n| col(n.clone())).collect();
    // Joins do not keep row order: number the left rows and sort back by that number.
    let joined = |how: JoinType| {
        let mut args = JoinArgs::new(how);
        args.nulls_equal = true;
        l.clone()
            .with_row_index("__left_row", None)
            .join(r.clone(), on.clone(), on.clone(), args)
            .sort(["__left_row"], SortMultipleOptions::default())
            .drop(by_name(["__left_row"], true, false))
            .unique_stable(None, UniqueKeepStrategy::First)
    };
    let out = match op {
        SetOp::UnionAll => concat([l, r], UnionArgs::default())?,
        SetOp::Union => concat([l, r], UnionArgs::default())?.unique_stable(None, UniqueKeepStrategy::First),
        SetOp::Intersect => joined(JoinType::Semi),
        SetOp::Except => joined(JoinType::Anti),
    };
    Ok(out.collect()?)
}

/// An IQL expression (already resolved by the planner) as a polars expression.
pub fn expr(e: &Ast) -> Result<Expr> {
    Ok(match &e.kind {
        ExprKind::Column { name, .. } => col(name.name.as_str()),
        ExprKind::Number(n) => {
            if n.fract() == 0.0 && n.abs() < 9e15 {
                lit(*n as i64)
            } else {
                lit(*n)
            }
        }
        ExprKind::Str(s) => lit(s.clone()),
        ExprKind::Bool(b) => lit(*b),
        ExprKind::Null => lit(NULL),
        ExprKind::Var(v) => {
            return Err(Error::query(format!("internal: unresolved variable :{v}")).at(e.span));
        }
        ExprKind::Subquery(_) => {
            return Err(Error::query("internal: a subquery that was not run").at(e.span));
        }
        ExprKind::Window { call, partition, order } => {
            let ExprKind::Call { name, .. } = &call.kind else {
                return Err(Error::query("internal: OVER without a call").at(e.span));
            };
            let method = match name.name.as_str() {
                // Ties: row_number takes the order of the rows, rank leaves gaps, dense_rank not.
                "row_number" => Some(RankMethod::Ordinal),
                "rank" => Some(RankMethod::Min),
                "dense_rank" => Some(RankMethod::Dense),
                _ => None,
            };
            let value = match (method, order.first()) {
                // row_number numbers ties in the order of the rows: an ordinal rank in
                // ascending order does, so descending ranks the negated key.
                (Some(RankMethod::Ordinal), Some((key, true))) => (lit(0) - expr(key)?)
                    .rank(
                        RankOptions {
                            method: RankMethod::Ordinal,
                            descending: false,
                        },
                        None,
                    )
                    .cast(DataType::Int64),
                (Some(method), Some((key, descending))) => expr(key)?
                    .rank(
                        RankOptions {
                            method,
                            descending: *descending,
                        },
                        None,
                    )
                    .cast(DataType::Int64),
                _ => expr(call)?,
            };
            // No PARTITION BY: the whole relation is one partition.
            let partition: Vec<Expr> = if partition.is_empty() {
                vec![lit(1)]
            } else {
                partition.iter().map(expr).collect::<Result<_>>()?
            };
            value.over(partition)?
        }
        ExprKind::Unary {
            op: UnaryOp::Not,
            expr: inner,
        } => expr(inner)?.not(),
        ExprKind::Unary {
            op: UnaryOp::Neg,
            expr: inner,
        } => -expr(inner)?,
        ExprKind::Binary { op, left, right } => {
            let (l, r) = (expr(left)?, expr(right)?);
            match op {
                BinaryOp::Or => l.or(r),
                BinaryOp::And => l.and(r),
                BinaryOp::Eq => l.eq(r),
                BinaryOp::NotEq => l.neq(r),
                BinaryOp::Lt => l.lt(r),
                BinaryOp::LtEq => l.lt_eq(r),
                BinaryOp::Gt => l.gt(r),
                BinaryOp::GtEq => l.gt_eq(r),
                BinaryOp::Add => l + r,
                BinaryOp::Sub => l - r,
                BinaryOp::Mul => l * r,
                // `/` divides as numbers do (1 / 2 = 0.5), as in DuckDB.
                BinaryOp::Div => l.true_div(r),
                BinaryOp::Mod => l % r,
            }
        }
        ExprKind::Call { name, args, star } => {
            let arg = |i: usize| -> Result<Expr> { expr(&args[i]) };
            match name.name.as_str() {
                "count" if *star => len(),
                "count" => arg(0)?.count(),
                "sum" => arg(0)?.sum(),
                "mean" | "avg" => arg(0)?.mean(),
                "min" => arg(0)?.min(),
                "max" => arg(0)?.max(),
                "median" => arg(0)?.median(),
                "std" => arg(0)?.std(1),
                "var" => arg(0)?.var(1),
                "abs" => arg(0)?.abs(),
                "sqrt" => arg(0)?.sqrt(),
                "exp" => arg(0)?.exp(),
                "ln" => arg(0)?.log(lit(std::f64::consts::E)),
                "floor" => arg(0)?.floor(),
                "ceil" => arg(0)?.ceil(),
                "pow" => arg(0)?.pow(arg(1)?),
                "round" => {
                    let decimals = match args.get(1).map(|a| &a.kind) {
                        None => 0,
                        Some(ExprKind::Number(n)) if *n >= 0.0 && n.fract() == 0.0 => *n as u32,
                        Some(_) => {
                            return Err(
                                Error::query("round's second argument must be a whole number of decimals ≥ 0")
                                    .at(e.span),
                            );
                        }
                    };
                    arg(0)?.round(decimals, RoundMode::HalfAwayFromZero)
                }
                other => {
                    return Err(Error::query(format!("internal: unknown function {other}")).at(e.span));
                }
            }
        }
        ExprKind::IsNull { expr: inner, negated } => {
            let x = expr(inner)?;
            if *negated { x.is_not_null() } else { x.is_null() }
        }
        ExprKind::InList {
            expr: inner,
            list,
            negated,
        } => {
            let x = expr(inner)?;
            // OR the comparisons as a balanced tree, so a long list stays shallow.
            let mut terms: Vec<Expr> = list
                .iter()
                .map(|item| Ok(x.clone().eq(expr(item)?)))
                .collect::<Result<_>>()?;
            while terms.len() > 1 {
                terms = terms
                    .chunks(2)
                    .map(|p| {
                        if p.len() == 2 {
                            p[0].clone().or(p[1].clone())
                        } else {
                            p[0].clone()
                        }
                    })
                    .collect();
            }
            let any = terms.pop().unwrap_or_else(|| lit(false));
            if *negated { any.not() } else { any }
        }
    })
}
