//! One query over the blocks of a dataset too large for one machine: which clauses each
//! block runs on its own (pushed into the workers) and which run once, over the blocks'
//! results merged in input order (after). The Python package's `ialgebra.ray` runs the
//! split; the engine only decides it, so that every front end splits alike.
//!
//! Each block is loaded under the dataset's own name with its input ids kept, so the
//! pushed query is the user's text, less what spans blocks:
//! - WHERE is row-local: always pushed.
//! - GROUP BY that includes `input` makes every group one input, hence inside one block:
//!   pushed with HAVING and the select list. Any other grouping, an aggregate without
//!   GROUP BY, or a window function spans blocks: each block keeps its rows (`SELECT *`
//!   with the WHERE), and the whole query runs after, over the merged rows.
//! - ORDER BY … LIMIT n is pushed as a per-block top n (the global top n is among the
//!   blocks' top n) and runs again after; ORDER BY alone and OFFSET run after only.
//! - DISTINCT runs in each block and again after.

use crate::error::{Error, Result};
use crate::syntax::{
    self,
    ast::{Expr, ExprKind, Ident, Limit, OrderItem, QueryKind, Select, SelectItem, Source, StatementKind},
};

use super::query::{find_aggregate, find_window};

/// How one query runs over blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSplit {
    /// The dataset the blocks are parts of (each block is loaded under this name).
    pub dataset: String,
    /// The query each block runs.
    pub pushed: String,
    /// The query over the merged blocks, which it reads as the table named when splitting;
    /// None when the blocks' results, concatenated in input order, are the answer.
    pub after: Option<String>,
    /// Each clause and where it runs, one line each (for the user).
    pub placement: Vec<String>,
}

/// Splits `text` (one query over one model's interpretation or predictions of a dataset)
/// for a run over blocks of that dataset; `merged` names the table of the merged results
/// that the after query reads.
pub fn split_for_blocks(text: &str, merged: &str) -> Result<BlockSplit> {
    let script = syntax::parse(text)?;
    let [stmt] = script.statements.as_slice() else {
        return Err(Error::query(format!(
            "a distributed run takes one query, not {} statements",
            script.statements.len()
        ))
        .hint("put LOAD and SET statements in the setup script"));
    };
    let StatementKind::Query(query) = &stmt.kind else {
        return Err(Error::query("a distributed run takes a query (SELECT … or PREDICT …)").at(stmt.span));
    };
    let select = match &query.kind {
        QueryKind::Select(s) => s.as_ref(),
        QueryKind::Predict(p) => {
            let dataset = block_dataset(&p.call.data)?;
            return Ok(BlockSplit {
                dataset,
                pushed: query.to_string(),
                after: None,
                placement: vec!["PREDICT: in each block (one row per input)".into()],
            });
        }
        _ => return Err(not_distributable(query.span)),
    };
    let dataset = match &select.from {
        Source::Interpretation(i) => {
            if let Some(m) = &i.clauses.using
                && crate::ops::detect::DETECTORS
                    .iter()
                    .any(|d| d.name.eq_ignore_ascii_case(&m.name.name))
            {
                return Err(Error::query(format!(
                    "`{}` compares every input of the dataset with the others, so it cannot run block by block",
                    m.name
                ))
                .at(m.span)
                .hint("run it in one session")
                .hint("or run it on a sample that fits one machine"));
            }
            if let Some(b) = &i.clauses.baseline
                && matches!(b.kind, syntax::ast::BaselineKind::Mean(_))
            {
                return Err(
                    Error::query("a mean baseline is the mean of the whole dataset, which no block holds")
                        .at(b.span)
                        .hint("compute the mean once, save it as an array and give BASELINE that dataset"),
                );
            }
            block_dataset(&i.call.data)?
        }
        Source::Predict(p) => block_dataset(&p.call.data)?,
        _ => return Err(not_distributable(query.span)),
    };
    for e in select_exprs(select) {
        if let Some(span) = find(e, &|k| matches!(k, ExprKind::Subquery(_))) {
            return Err(Error::query("a subquery reads the whole dataset, which no block holds")
                .at(span)
                .hint("run the subquery first and bind its value with a variable (:name)"));
        }
    }

    let aggregated = !select.group_by.is_empty()
        || select.having.is_some()
        || select.items.iter().any(|item| match item {
            SelectItem::Expr { expr, .. } => find_aggregate(expr).is_some(),
            SelectItem::Wildcard(_) => false,
        });
    let windowed = select_exprs(select).any(|e| find_window(e).is_some());
    let per_input = select.group_by.iter().any(
        |g| matches!(&g.kind, ExprKind::Column { qualifier: None, name } if name.name.eq_ignore_ascii_case("input")),
    );
    let merged_table = Source::Table {
        name: Ident {
            name: merged.to_string(),
            span: select.span,
        },
        alias: None,
    };
    let mut placement = Vec::new();
    if let Some(w) = &select.filter {
        placement.push(format!("WHERE {w}: in each block"));
    }

    if (aggregated && !per_input) || windowed {
        // The rows each block holds, merged, then the whole query over them.
        let pushed = Select {
            distinct: false,
            items: vec![SelectItem::Wildcard(select.span)],
            from: select.from.clone(),
            filter: select.filter.clone(),
            group_by: Vec::new(),
            having: None,
            order_by: Vec::new(),
            limit: None,
            span: select.span,
        };
        let after = Select {
            from: merged_table,
            filter: None,
            ..select.clone()
        };
        let why = if windowed {
            "a window function spans blocks"
        } else if select.group_by.is_empty() {
            "an aggregate over all rows spans blocks"
        } else {
            "groups without `input` span blocks"
        };
        placement.push(format!(
            "SELECT … {}: after the merge ({why}; each block keeps its rows)",
            clause_list(select)
        ));
        return Ok(BlockSplit {
            dataset,
            pushed: pushed.to_string(),
            after: Some(after.to_string()),
            placement,
        });
    }

    if !select.group_by.is_empty() {
        let keys: Vec<String> = select.group_by.iter().map(|e| e.to_string()).collect();
        placement.push(format!(
            "GROUP BY {}: in each block (each group is one input)",
            keys.join(", ")
        ));
    }
    if let Some(h) = &select.having {
        placement.push(format!("HAVING {h}: in each block"));
    }
    let outputs = output_names(select);
    let order_after = select
        .order_by
        .iter()
        .map(|o| {
            Ok(OrderItem {
                expr: over_outputs(&o.expr, select, &outputs)?,
                descending: o.descending,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let order_text = |items: &[OrderItem]| {
        items
            .iter()
            .map(|o| format!("{}{}", o.expr, if o.descending { " DESC" } else { "" }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut pushed = select.clone();
    // Each block keeps at most LIMIT + OFFSET rows of its own order: enough for any
    // row of the global answer.
    pushed.limit = match &select.limit {
        None => None,
        Some(l) => Some(Limit {
            count: match &l.offset {
                None => l.count.clone(),
                Some(_) => syntax::ast::Value {
                    kind: syntax::ast::ValueKind::Number(limit_rows(l)? as f64),
                    span: l.count.span,
                },
            },
            offset: None,
        }),
    };
    if pushed.limit.is_none() {
        pushed.order_by.clear();
    }
    if select.distinct {
        placement.push("DISTINCT: in each block and after the merge".into());
    }
    match (&select.limit, select.order_by.is_empty()) {
        (Some(l), false) => placement.push(format!(
            "ORDER BY {} LIMIT {}: in each block (its top {}) and after the merge",
            order_text(&select.order_by),
            l.count,
            limit_label(l)
        )),
        (Some(l), true) => placement.push(format!(
            "LIMIT {}: in each block and after the merge (the first rows in input order)",
            l.count
        )),
        (None, false) => placement.push(format!("ORDER BY {}: after the merge", order_text(&select.order_by))),
        (None, true) => {}
    }
    if let Some(o) = select.limit.as_ref().and_then(|l| l.offset.as_ref()) {
        placement.push(format!("OFFSET {o}: after the merge"));
    }
    let after = (select.distinct || !select.order_by.is_empty() || select.limit.is_some()).then(|| {
        Select {
            distinct: select.distinct,
            items: vec![SelectItem::Wildcard(select.span)],
            from: merged_table,
            filter: None,
            group_by: Vec::new(),
            having: None,
            order_by: order_after,
            limit: select.limit.clone(),
            span: select.span,
        }
        .to_string()
    });
    if placement.is_empty() || after.is_none() {
        placement.push("the rest: in each block; the blocks' rows, in input order, are the answer".into());
    }
    Ok(BlockSplit {
        dataset,
        pushed: pushed.to_string(),
        after,
        placement,
    })
}

fn not_distributable(span: crate::error::Span) -> Error {
    Error::query("a distributed run reads one model's attributions or predictions of one dataset")
        .at(span)
        .hint("SELECT … FROM m(d) USING … [WHERE …] [GROUP BY input …] [ORDER BY … LIMIT n], or PREDICT m(d)")
        .hint("joins, set operations, WITH, INFLUENCE and TCAV run in one session")
}

/// The dataset a block replaces: a plain name (blocks hold rows by input id, not position).
fn block_dataset(data: &syntax::ast::DatasetExpr) -> Result<String> {
    if data.visualize.is_some() {
        return Err(Error::query("VISUALIZE makes its own inputs; there is no dataset to split").at(data.span));
    }
    if data.index.is_some() {
        return Err(
            Error::query("a distributed run takes the whole dataset, not a slice of it")
                .at(data.span)
                .hint("choose inputs with WHERE input … instead (pushed into every block)"),
        );
    }
    Ok(data.name.name.clone())
}

fn limit_rows(l: &Limit) -> Result<u64> {
    let number = |v: &syntax::ast::Value| match &v.kind {
        syntax::ast::ValueKind::Number(n) if *n >= 0.0 && n.fract() == 0.0 => Ok(*n as u64),
        _ => Err(Error::query(format!(
            "a distributed run needs LIMIT and OFFSET as whole numbers, not {v}"
        ))
        .hint("bind variables before splitting")),
    };
    Ok(number(&l.count)? + l.offset.as_ref().map(number).transpose()?.unwrap_or(0))
}

fn limit_label(l: &Limit) -> String {
    limit_rows(l).map_or_else(|_| l.count.to_string(), |n| n.to_string())
}

fn clause_list(select: &Select) -> String {
    let mut words = Vec::new();
    if !select.group_by.is_empty() {
        words.push("GROUP BY");
    }
    if select.having.is_some() {
        words.push("HAVING");
    }
    if !select.order_by.is_empty() {
        words.push("ORDER BY");
    }
    if select.limit.is_some() {
        words.push("LIMIT");
    }
    if words.is_empty() {
        String::new()
    } else {
        words.join(", ")
    }
}

/// Every expression of the select list, WHERE, GROUP BY, HAVING and ORDER BY.
fn select_exprs(select: &Select) -> impl Iterator<Item = &Expr> {
    select
        .items
        .iter()
        .filter_map(|i| match i {
            SelectItem::Expr { expr, .. } => Some(expr),
            SelectItem::Wildcard(_) => None,
        })
        .chain(select.filter.iter())
        .chain(select.group_by.iter())
        .chain(select.having.iter())
        .chain(select.order_by.iter().map(|o| &o.expr))
}

/// The span of the first sub-expression of `e` (itself included) that `hit` accepts.
fn find(e: &Expr, hit: &dyn Fn(&ExprKind) -> bool) -> Option<crate::error::Span> {
    if hit(&e.kind) {
        return Some(e.span);
    }
    // The shared traversal, stopped by the first hit.
    e.map_children(&mut |c| match find(c, hit) {
        Some(span) => Err(span),
        None => Ok(c.clone()),
    })
    .err()
}

/// The names of the query's output columns that can be named again after the merge;
/// None for `*` (every column of the source is an output).
fn output_names(select: &Select) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for item in &select.items {
        match item {
            SelectItem::Wildcard(_) => return None,
            SelectItem::Expr { alias: Some(a), .. } => names.push(a.name.clone()),
            SelectItem::Expr { expr, alias: None } => {
                if let ExprKind::Column { name, .. } = &expr.kind {
                    names.push(name.name.clone());
                }
            }
        }
    }
    Some(names)
}

/// An ORDER BY key rewritten over the query's output columns (the merged table has
/// nothing else): a select-list expression becomes its alias.
fn over_outputs(key: &Expr, select: &Select, outputs: &Option<Vec<String>>) -> Result<Expr> {
    for item in &select.items {
        if let SelectItem::Expr { expr, alias: Some(a) } = item
            && expr.to_string() == key.to_string()
        {
            return Ok(Expr {
                kind: ExprKind::Column {
                    qualifier: None,
                    name: a.clone(),
                },
                span: key.span,
            });
        }
    }
    let Some(outputs) = outputs else {
        return Ok(key.clone());
    };
    let unknown = find(
        key,
        &|k| matches!(k, ExprKind::Column { name, .. } if !outputs.iter().any(|o| o.eq_ignore_ascii_case(&name.name))),
    );
    match unknown.or_else(|| find_aggregate(key).map(|a| a.span)) {
        None => Ok(key.clone()),
        Some(span) => Err(Error::query(
            "ORDER BY across blocks runs over the merged results, so it can name only the query's output columns",
        )
        .at(span)
        .hint("select the key (with an alias, e.g. max(attribution) AS score) and order by it")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(q: &str) -> BlockSplit {
        match split_for_blocks(q, "merged") {
            Ok(s) => s,
            Err(e) => panic!("{}", e.render(q, "<test>")),
        }
    }

    #[test]
    fn per_input_scores_push_everything_but_the_global_order() {
        let s = split(
            "SELECT input, label, max(attribution) AS score FROM m(train) USING integrated_gradients \
             WHERE label = 7 GROUP BY input, label ORDER BY score DESC, input LIMIT 140",
        );
        assert_eq!(s.dataset, "train");
        assert_eq!(
            s.pushed,
            "SELECT input, label, max(attribution) AS score FROM m(train) USING integrated_gradients \
             WHERE label = 7 GROUP BY input, label ORDER BY score DESC, input LIMIT 140"
        );
        assert_eq!(
            s.after.as_deref(),
            Some("SELECT * FROM merged ORDER BY score DESC, input LIMIT 140")
        );
        assert!(
            s.placement
                .iter()
                .any(|p| p.starts_with("GROUP BY input, label: in each block"))
        );
    }

    #[test]
    fn an_order_key_from_the_select_list_becomes_its_alias() {
        let s =
            split("SELECT input, max(attribution) AS score FROM m(d) GROUP BY input ORDER BY max(attribution) DESC");
        assert_eq!(
            s.pushed,
            "SELECT input, max(attribution) AS score FROM m(d) GROUP BY input"
        );
        assert_eq!(s.after.as_deref(), Some("SELECT * FROM merged ORDER BY score DESC"));
        let err = split_for_blocks(
            "SELECT input FROM m(d) GROUP BY input ORDER BY max(attribution)",
            "merged",
        )
        .expect_err("a key that is not an output");
        assert!(err.message.contains("output columns"), "{}", err.message);
    }

    #[test]
    fn offset_keeps_limit_plus_offset_per_block() {
        let s = split("SELECT * FROM m(d) ORDER BY attribution DESC LIMIT 5 OFFSET 10");
        assert_eq!(s.pushed, "SELECT * FROM m(d) ORDER BY attribution DESC LIMIT 15");
        assert_eq!(
            s.after.as_deref(),
            Some("SELECT * FROM merged ORDER BY attribution DESC LIMIT 5 OFFSET 10")
        );
    }

    #[test]
    fn row_local_queries_need_nothing_after() {
        let s = split("SELECT input, row, col, attribution FROM m(d) USING saliency WHERE attribution > 0.1");
        assert_eq!(s.after, None);
        let s = split("PREDICT m(d)");
        assert_eq!((s.pushed.as_str(), s.after), ("PREDICT m(d)", None));
    }

    #[test]
    fn groups_across_inputs_run_after_the_merge() {
        let s = split("SELECT label, avg(attribution) AS a FROM m(d) WHERE row < 5 GROUP BY label ORDER BY a");
        assert_eq!(s.pushed, "SELECT * FROM m(d) WHERE row < 5");
        assert_eq!(
            s.after.as_deref(),
            Some("SELECT label, avg(attribution) AS a FROM merged GROUP BY label ORDER BY a")
        );
        let s = split("SELECT count(*) AS n FROM m(d)");
        assert_eq!(s.after.as_deref(), Some("SELECT count(*) AS n FROM merged"));
    }

    #[test]
    fn what_cannot_run_by_block_is_refused_with_a_reason() {
        for (q, says) in [
            ("SELECT * FROM m(d[0:10])", "not a slice"),
            (
                "SELECT * FROM m(d) USING spectral_signature AT LAYER fc1",
                "compares every input",
            ),
            ("SELECT * FROM m(d) BASELINE MEAN", "mean baseline"),
            ("SELECT * FROM m(d) WHERE input IN (SELECT input FROM m(d))", "subquery"),
            ("LOAD DATA d FROM 'x.npy'", "takes a query"),
            ("SELECT 1 AS a FROM t", "one model"),
        ] {
            let err = split_for_blocks(q, "merged").expect_err(q);
            assert!(err.message.contains(says), "{q}: {}", err.message);
        }
    }
}
