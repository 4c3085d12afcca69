//! pest pairs → typed AST, one `visit_<rule>` per grammar rule. The `Children` helper
//! makes each visitor read like its rule and checks that every child was consumed.

use std::sync::LazyLock;

use pest::Parser;
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest_derive::Parser;

use super::ast::*;
use crate::error::{Error, Result, Span};

#[derive(Parser)]
#[grammar = "../grammar/iql.pest"]
pub struct IqlParser;

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::op_or, Assoc::Left))
        .op(Op::infix(Rule::op_and, Assoc::Left))
        .op(Op::prefix(Rule::op_not))
        .op(Op::infix(Rule::op_eq, Assoc::Left)
            | Op::infix(Rule::op_ne, Assoc::Left)
            | Op::infix(Rule::op_lt, Assoc::Left)
            | Op::infix(Rule::op_le, Assoc::Left)
            | Op::infix(Rule::op_gt, Assoc::Left)
            | Op::infix(Rule::op_ge, Assoc::Left))
        .op(Op::postfix(Rule::is_null) | Op::postfix(Rule::in_list))
        .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
        .op(Op::infix(Rule::op_mul, Assoc::Left)
            | Op::infix(Rule::op_div, Assoc::Left)
            | Op::infix(Rule::op_mod, Assoc::Left))
        .op(Op::prefix(Rule::op_neg))
});

/// How deeply brackets may nest, and how many operators or set operations one
/// expression or query may chain: far beyond real queries, and shallow enough that the
/// recursive descent (and everything that walks the tree after it) cannot exhaust the
/// stack on hostile input.
pub const MAX_NESTING: usize = 100;
pub const MAX_CHAIN: usize = 2000;

/// Parses a script of statements separated by `;`.
pub fn parse_script(text: &str) -> Result<Script> {
    check_nesting(text)?;
    let mut pairs = IqlParser::parse(Rule::script, text).map_err(|e| convert_error(e, text))?;
    let script = pairs.next().ok_or_else(|| Error::syntax("empty parse"))?;
    let statements = script
        .into_inner()
        .filter(|p| p.as_rule() != Rule::EOI)
        .map(visit_statement)
        .collect::<Result<_>>()?;
    Ok(Script { statements })
}

/// The pair's text span without the whitespace pest's implicit skipping leaves at its end.
/// Rejects text whose brackets nest deeper than `MAX_NESTING`, before the parser recurses
/// into it. Strings and comments are skipped.
fn check_nesting(text: &str) -> Result<()> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'(' | b'[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Error::syntax(format!("brackets nest more than {MAX_NESTING} deep"))
                        .at(Span::new(i, i + 1))
                        .hint("split the query, or name intermediate results with LET"));
                }
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn span(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.start() + pair.as_str().trim_end().len())
}

/// The children of a pair, consumed in grammar order.
struct Children<'a> {
    inner: std::iter::Peekable<Pairs<'a, Rule>>,
    parent: Rule,
}

impl<'a> Children<'a> {
    fn of(pair: Pair<'a, Rule>) -> Self {
        let parent = pair.as_rule();
        Children {
            inner: pair.into_inner().peekable(),
            parent,
        }
    }
    /// The next child, which the grammar guarantees.
    fn next(&mut self) -> Result<Pair<'a, Rule>> {
        self.inner
            .next()
            .ok_or_else(|| Error::syntax(format!("internal: {:?} ended early", self.parent)))
    }
    /// The next child if it is of rule `rule`.
    fn take(&mut self, rule: Rule) -> Option<Pair<'a, Rule>> {
        if self.inner.peek().map(|p| p.as_rule()) == Some(rule) {
            self.inner.next()
        } else {
            None
        }
    }
    /// Skips keywords (kw_* rules).
    fn skip_keywords(&mut self) {
        while self.inner.peek().is_some_and(|p| is_keyword(p.as_rule())) {
            self.inner.next();
        }
    }
    fn done(mut self) {
        debug_assert!(self.inner.next().is_none(), "unconsumed child in {:?}", self.parent);
    }
}

fn visit_images(pair: Pair<Rule>) -> Result<Images> {
    let mut c = Children::of(pair);
    c.skip_keywords();
    let size = |p: Pair<Rule>| -> Result<u32> {
        let sp = span(&p);
        let mut pc = Children::of(p);
        pc.skip_keywords();
        let n = pc.next()?;
        pc.done();
        n.as_str()
            .parse::<u32>()
            .ok()
            .filter(|v| (1..=8192).contains(v))
            .ok_or_else(|| Error::value(format!("{} is not a size in pixels (1 to 8192)", n.as_str())).at(sp))
    };
    let resize = c.take(Rule::resize).map(size).transpose()?;
    let crop = c.take(Rule::crop).map(size).transpose()?;
    let normalize = c
        .take(Rule::normalize)
        .map(|p| -> Result<Normalize> {
            let sp = span(&p);
            let mut nc = Children::of(p);
            nc.next()?; // NORMALIZE
            if nc.take(Rule::kw_imagenet).is_some() {
                nc.done();
                return Ok(Normalize::Imagenet);
            }
            let triple = |t: Pair<Rule>| -> Result<[f64; 3]> {
                let values: Vec<f64> = t
                    .into_inner()
                    .map(|n| n.as_str().parse::<f64>().unwrap_or(f64::NAN))
                    .collect();
                match values[..] {
                    [a, b, c] if values.iter().all(|v| v.is_finite()) => Ok([a, b, c]),
                    _ => Err(Error::value("MEAN and STD take three numbers (r, g, b)").at(sp)),
                }
            };
            nc.skip_keywords();
            let mean = triple(nc.next()?)?;
            nc.skip_keywords();
            let std = triple(nc.next()?)?;
            nc.done();
            if std.iter().any(|s| *s <= 0.0) {
                return Err(Error::value("STD must be positive for every channel").at(sp));
            }
            Ok(Normalize::MeanStd(mean, std))
        })
        .transpose()?;
    c.done();
    Ok(Images {
        resize,
        crop,
        normalize,
    })
}

/// A clause of a keyword and a path (`ARCH 'a.json'`, `HEAD …`, `CLASSES …`).
fn visit_path_clause(pair: Pair<Rule>) -> Result<Value> {
    let mut c = Children::of(pair);
    c.skip_keywords();
    let path = visit_path(c.next()?)?;
    c.done();
    Ok(path)
}

fn is_keyword(rule: Rule) -> bool {
    format!("{rule:?}").starts_with("kw_")
}

fn visit_statement(pair: Pair<Rule>) -> Result<Statement> {
    let sp = span(&pair);
    let rule = pair.as_rule();
    // Feature visualizations written where a dataset goes, anywhere in the statement.
    let inline = pair
        .clone()
        .into_inner()
        .flatten()
        .filter(|p| p.as_rule() == Rule::dataset)
        .filter_map(|d| d.into_inner().next().filter(|p| p.as_rule() == Rule::visualize))
        .map(visit_visualize)
        .collect::<Result<Vec<_>>>()?;
    let mut c = Children::of(pair);
    c.skip_keywords();
    let kind = match rule {
        Rule::load_model => {
            let name = visit_ident(c.next()?)?;
            c.skip_keywords();
            let path = visit_path(c.next()?)?;
            let arch = c.take(Rule::arch_clause).map(visit_path_clause).transpose()?;
            let head = c.take(Rule::head_clause).map(visit_path_clause).transpose()?;
            let classes = c.take(Rule::classes_clause).map(visit_path_clause).transpose()?;
            let mut checkpoints = Vec::new();
            if let Some(cp) = c.take(Rule::checkpoints_clause) {
                let mut cc = Children::of(cp);
                cc.skip_keywords();
                while let Some(one) = cc.take(Rule::checkpoint) {
                    let mut oc = Children::of(one);
                    let path = visit_path(oc.next()?)?;
                    oc.skip_keywords();
                    let rate = oc.take(Rule::number_value).map(visit_int_value).transpose()?;
                    checkpoints.push((path, rate));
                }
            }
            StatementKind::LoadModel {
                name,
                path,
                arch,
                head,
                classes,
                checkpoints,
            }
        }
        Rule::load_data => {
            let name = visit_ident(c.next()?)?;
            c.skip_keywords();
            let path = visit_path(c.next()?)?;
            let shape = match c.take(Rule::shape_clause) {
                Some(s) => {
                    let sp = span(&s);
                    let mut sc = Children::of(s);
                    sc.skip_keywords();
                    let dims = sc
                        .inner
                        .by_ref()
                        .map(|d| {
                            d.as_str().parse::<usize>().map_err(|_| {
                                Error::syntax(format!("`{}` is too large for an axis", d.as_str())).at(span(&d))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Some((dims, sp))
                }
                None => None,
            };
            let mut labels = None;
            let mut label_column = None;
            let mut text = None;
            let mut images = None;
            if let Some(t) = c.take(Rule::text_column) {
                let mut tc = Children::of(t);
                tc.skip_keywords();
                text = Some(tc.take(Rule::ident).map(visit_ident).transpose()?);
                tc.done();
            } else if let Some(i) = c.take(Rule::images) {
                images = Some(visit_images(i)?);
            }
            if let Some(l) = c.take(Rule::labels_file) {
                let mut lc = Children::of(l);
                lc.skip_keywords();
                labels = Some(visit_path(lc.next()?)?);
                lc.done();
            } else if let Some(l) = c.take(Rule::label_column) {
                let mut lc = Children::of(l);
                lc.skip_keywords();
                label_column = Some(visit_ident(lc.next()?)?);
                lc.done();
            }
            let classes = c.take(Rule::classes_clause).map(visit_path_clause).transpose()?;
            StatementKind::LoadData {
                name,
                path,
                labels,
                label_column,
                text,
                images,
                classes,
                shape,
            }
        }
        Rule::show => {
            let what = c.next()?;
            let show = match what.as_rule() {
                Rule::show_models => Show::Models,
                Rule::show_data => Show::Data,
                Rule::show_methods => Show::Methods,
                Rule::show_cache => Show::Cache,
                Rule::show_settings => Show::Settings,
                _ => {
                    let mut lc = Children::of(what);
                    lc.skip_keywords();
                    let m = visit_ident(lc.next()?)?;
                    lc.done();
                    Show::Layers(m)
                }
            };
            StatementKind::Show(show)
        }
        Rule::set_stmt | Rule::var_stmt => {
            let name = visit_ident(c.next()?)?;
            let value = visit_value(c.next()?)?;
            if rule == Rule::set_stmt {
                StatementKind::Set { name, value }
            } else {
                StatementKind::Var { name, value }
            }
        }
        Rule::concept_stmt => {
            let name = visit_ident(c.next()?)?;
            StatementKind::Let {
                name,
                dataset: visit_dataset(c.next()?)?,
            }
        }
        Rule::let_stmt => {
            let name = visit_ident(c.next()?)?;
            let value = c.next()?;
            if value.as_rule() == Rule::attack {
                let sp = span(&value);
                let mut ac = Children::of(value);
                ac.skip_keywords();
                let method = visit_method_call(ac.next()?)?;
                ac.skip_keywords();
                let call = visit_model_call(ac.next()?)?;
                let clauses = visit_clauses(ac.inner)?;
                StatementKind::LetAttack {
                    name,
                    attack: Box::new(Attack {
                        method,
                        call,
                        clauses,
                        span: sp,
                    }),
                }
            } else if value.as_rule() == Rule::let_table {
                StatementKind::LetTable {
                    name,
                    query: visit_query(Children::of(value).next()?)?,
                }
            } else if value.as_rule() == Rule::visualize {
                StatementKind::LetVisualize {
                    name,
                    visualize: Box::new(visit_visualize(value)?),
                }
            } else {
                StatementKind::Let {
                    name,
                    dataset: visit_dataset(value)?,
                }
            }
        }
        Rule::export => {
            c.skip_keywords();
            let report = c.take(Rule::report).is_some();
            let query = visit_query(c.next()?)?;
            c.skip_keywords();
            let path = visit_path(c.next()?)?;
            let overwrite = c.take(Rule::overwrite).is_some();
            StatementKind::Export {
                query,
                path,
                overwrite,
                report,
            }
        }
        Rule::export_data => {
            let dataset = visit_dataset(c.next()?)?;
            c.skip_keywords();
            let path = visit_path(c.next()?)?;
            let overwrite = c.take(Rule::overwrite).is_some();
            StatementKind::ExportData {
                dataset,
                path,
                overwrite,
            }
        }
        Rule::plan_stmt => StatementKind::Plan(visit_query(c.next()?)?),
        Rule::query => {
            // the query rule has no keywords of its own: rebuild from the whole pair
            return Ok(Statement {
                kind: StatementKind::Query(visit_query_children(c, sp)?),
                span: sp,
                inline,
            });
        }
        other => {
            return Err(Error::syntax(format!("internal: unexpected statement {other:?}")).at(sp));
        }
    };
    c.done();
    Ok(Statement { kind, span: sp, inline })
}

fn visit_path(pair: Pair<Rule>) -> Result<Value> {
    let mut c = Children::of(pair);
    let v = visit_value_token(c.next()?)?;
    c.done();
    Ok(v)
}

fn visit_query(pair: Pair<Rule>) -> Result<Query> {
    let sp = span(&pair);
    visit_query_children(Children::of(pair), sp)
}

/// query = intersect_term ~ (set_op ~ intersect_term)*   (left-associative)
fn visit_query_children(mut c: Children, sp: Span) -> Result<Query> {
    let terms = c.inner.clone().count();
    if terms > MAX_NESTING {
        return Err(Error::syntax(format!("more than {MAX_NESTING} queries joined by set operations")).at(sp));
    }
    let tables = match c.take(Rule::with_clause) {
        Some(w) => Some(visit_with(w)?),
        None => None,
    };
    let mut left = visit_intersect(c.next()?)?;
    while let Some(op) = c.inner.next() {
        let op = match op.as_rule() {
            Rule::op_union_all => SetOp::UnionAll,
            Rule::op_union => SetOp::Union,
            _ => SetOp::Except,
        };
        let right = visit_intersect(c.next()?)?;
        let s = left.span.to(right.span);
        left = Query {
            kind: QueryKind::SetOp {
                op,
                left: Box::new(left),
                right: Box::new(right),
            },
            span: s,
        };
    }
    Ok(match tables {
        Some(tables) => Query {
            kind: QueryKind::With {
                tables,
                body: Box::new(left),
            },
            span: sp,
        },
        None => left,
    })
}

/// `WITH name AS (query), …`: the named queries in order.
fn visit_with(pair: Pair<Rule>) -> Result<Vec<Cte>> {
    let mut c = Children::of(pair);
    c.skip_keywords();
    let mut tables = Vec::new();
    while let Some(cte) = c.take(Rule::cte) {
        let mut tc = Children::of(cte);
        let name = visit_ident(tc.next()?)?;
        tc.skip_keywords();
        let query = visit_query(tc.next()?)?;
        tc.done();
        tables.push(Cte { name, query });
    }
    c.done();
    Ok(tables)
}

fn visit_intersect(pair: Pair<Rule>) -> Result<Query> {
    if pair.clone().into_inner().count() > MAX_NESTING {
        return Err(Error::syntax(format!("more than {MAX_NESTING} queries joined by INTERSECT")).at(span(&pair)));
    }
    let mut c = Children::of(pair);
    let mut left = visit_query_term(c.next()?)?;
    while c.take(Rule::op_intersect).is_some() {
        let right = visit_query_term(c.next()?)?;
        let s = left.span.to(right.span);
        left = Query {
            kind: QueryKind::SetOp {
                op: SetOp::Intersect,
                left: Box::new(left),
                right: Box::new(right),
            },
            span: s,
        };
    }
    c.done();
    Ok(left)
}

fn visit_query_term(pair: Pair<Rule>) -> Result<Query> {
    let sp = span(&pair);
    match pair.as_rule() {
        Rule::select => Ok(Query {
            kind: QueryKind::Select(Box::new(visit_select(pair)?)),
            span: sp,
        }),
        Rule::predict_query => Ok(Query {
            kind: QueryKind::Predict(Box::new(visit_predict(&mut Children::of(pair))?)),
            span: sp,
        }),
        _ => visit_query(pair),
    }
}

fn visit_select(pair: Pair<Rule>) -> Result<Select> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    c.skip_keywords();
    let distinct = c.take(Rule::distinct).is_some();
    let items = visit_select_list(c.next()?)?;
    c.skip_keywords();
    let from = visit_source(c.next()?)?;
    let mut select = Select {
        distinct,
        items,
        from,
        filter: None,
        group_by: vec![],
        having: None,
        order_by: vec![],
        limit: None,
        span: sp,
    };
    if let Some(w) = c.take(Rule::where_clause) {
        select.filter = Some(visit_clause_expr(w)?);
    }
    if let Some(g) = c.take(Rule::group_by) {
        let mut gc = Children::of(g);
        gc.skip_keywords();
        while let Some(e) = gc.take(Rule::expr) {
            select.group_by.push(visit_expr(e)?);
        }
        gc.done();
    }
    if let Some(h) = c.take(Rule::having) {
        select.having = Some(visit_clause_expr(h)?);
    }
    if let Some(o) = c.take(Rule::order_by) {
        let mut oc = Children::of(o);
        oc.skip_keywords();
        while let Some(item) = oc.take(Rule::order_item) {
            let (expr, descending) = visit_order_item(item)?;
            select.order_by.push(OrderItem { expr, descending });
        }
        oc.done();
    }
    if let Some(l) = c.take(Rule::limit) {
        let mut lc = Children::of(l);
        lc.skip_keywords();
        let count = visit_int_value(lc.next()?)?;
        lc.skip_keywords();
        let offset = lc.take(Rule::count_value).map(visit_int_value).transpose()?;
        lc.done();
        select.limit = Some(Limit { count, offset });
    }
    c.done();
    Ok(select)
}

fn visit_clause_expr(pair: Pair<Rule>) -> Result<Expr> {
    let mut c = Children::of(pair);
    c.skip_keywords();
    let e = visit_expr(c.next()?)?;
    c.done();
    Ok(e)
}

fn visit_select_list(pair: Pair<Rule>) -> Result<Vec<SelectItem>> {
    Children::of(pair)
        .inner
        .map(|item| {
            let sp = span(&item);
            let mut c = Children::of(item);
            if c.take(Rule::star).is_some() {
                return Ok(SelectItem::Wildcard(sp));
            }
            let expr = visit_expr(c.next()?)?;
            c.skip_keywords();
            let alias = c.take(Rule::ident).map(visit_ident).transpose()?;
            c.done();
            Ok(SelectItem::Expr { expr, alias })
        })
        .collect()
}

fn visit_source(pair: Pair<Rule>) -> Result<Source> {
    let mut c = Children::of(pair);
    let inner = c.next()?;
    c.done();
    match inner.as_rule() {
        Rule::table_source => visit_table_source(inner),
        Rule::predict_source => Ok(Source::Predict(Box::new(visit_predict(&mut Children::of(inner))?))),
        Rule::tcav_source => {
            let sp = span(&inner);
            let mut tc = Children::of(inner);
            tc.skip_keywords();
            let call = visit_model_call(tc.next()?)?;
            let at = tc.next()?;
            let mut ac = Children::of(at);
            ac.skip_keywords();
            let layer = visit_ident(ac.next()?)?;
            tc.skip_keywords();
            let mut concepts = Vec::new();
            while let Some(c) = tc.take(Rule::ident) {
                concepts.push(visit_ident(c)?);
            }
            let random = match tc.take(Rule::tcav_random) {
                Some(r) => {
                    let mut rc = Children::of(r);
                    rc.skip_keywords();
                    Some(visit_int_value(rc.next()?)?)
                }
                None => None,
            };
            let target = visit_clauses(tc.inner.by_ref())?.target;
            Ok(Source::Tcav(Box::new(Tcav {
                call,
                layer,
                concepts,
                random,
                target,
                span: sp,
            })))
        }
        Rule::influence_source => {
            let sp = span(&inner);
            let mut ic = Children::of(inner);
            ic.skip_keywords();
            let train = visit_model_call(ic.next()?)?;
            ic.skip_keywords();
            let test = visit_model_call(ic.next()?)?;
            let clauses = visit_clauses(ic.inner.by_ref())?;
            Ok(Source::Influence(Box::new(Influence {
                train,
                test,
                method: clauses.using,
                target: clauses.target,
                span: sp,
            })))
        }
        Rule::predict_join => {
            let sp = span(&inner);
            let mut jc = Children::of(inner);
            let side = |p: Pair<Rule>| -> Result<(Predict, Option<Ident>)> {
                let mut sc = Children::of(p);
                let predict = visit_predict(&mut sc)?;
                sc.skip_keywords();
                let alias = sc.take(Rule::ident).map(visit_ident).transpose()?;
                Ok((predict, alias))
            };
            let (left, left_alias) = side(jc.next()?)?;
            jc.take(Rule::op_join);
            let (right, right_alias) = side(jc.next()?)?;
            Ok(Source::PredictJoin(Box::new(PredictJoin {
                left,
                left_alias,
                right,
                right_alias,
                span: sp,
            })))
        }
        Rule::join_source => Ok(Source::Join(Box::new(visit_join(inner)?))),
        _ => Ok(Source::Interpretation(Box::new(visit_interpretation(inner)?))),
    }
}

/// A table, a subquery, or two of them joined (`… JOIN … USING (…) | ON …`).
fn visit_table_source(pair: Pair<Rule>) -> Result<Source> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    let left = visit_table_item(c.next()?)?;
    if c.inner.peek().is_none() {
        return Ok(left);
    }
    c.skip_keywords();
    let right = visit_table_item(c.next()?)?;
    let cond = c.next()?;
    let condition = match cond.as_rule() {
        Rule::join_using => {
            let mut cc = Children::of(cond);
            cc.skip_keywords();
            JoinCondition::Using(cc.inner.by_ref().map(visit_ident).collect::<Result<_>>()?)
        }
        _ => {
            let mut cc = Children::of(cond);
            let mut pairs = Vec::new();
            for equal in cc.inner.by_ref() {
                if is_keyword(equal.as_rule()) {
                    continue;
                }
                let mut ec = Children::of(equal);
                let a = visit_primary(ec.next()?)?;
                ec.next()?;
                let b = visit_primary(ec.next()?)?;
                ec.done();
                pairs.push((a, b));
            }
            JoinCondition::On(pairs)
        }
    };
    c.done();
    Ok(Source::TableJoin(Box::new(TableJoin {
        left,
        right,
        condition,
        span: sp,
    })))
}

/// One side of a table source: a table by name, a subquery, or a PREDICT (kept as the
/// subquery `(PREDICT …) AS p`, which prints back the same).
fn visit_table_item(pair: Pair<Rule>) -> Result<Source> {
    let sp = span(&pair);
    let rule = pair.as_rule();
    let mut c = Children::of(pair);
    let source = match rule {
        Rule::table_ref => {
            let name = visit_ident(c.next()?)?;
            c.skip_keywords();
            let alias = c.take(Rule::ident).map(visit_ident).transpose()?;
            Source::Table { name, alias }
        }
        Rule::predict_side => {
            let predict = visit_predict(&mut c)?;
            c.skip_keywords();
            let alias = c.take(Rule::ident).map(visit_ident).transpose()?;
            Source::Subquery {
                query: Box::new(Query {
                    kind: QueryKind::Predict(Box::new(predict)),
                    span: sp,
                }),
                alias,
            }
        }
        _ => {
            let query = visit_query(c.next()?)?;
            c.skip_keywords();
            let alias = c.take(Rule::ident).map(visit_ident).transpose()?;
            Source::Subquery {
                query: Box::new(query),
                alias,
            }
        }
    };
    c.done();
    Ok(source)
}

/// `expr [ASC | DESC]`: the expression and whether it sorts descending.
fn visit_order_item(item: Pair<Rule>) -> Result<(Expr, bool)> {
    let mut ic = Children::of(item);
    let expr = visit_expr(ic.next()?)?;
    let descending = ic
        .take(Rule::order_dir)
        .is_some_and(|d| d.as_str().eq_ignore_ascii_case("desc"));
    ic.done();
    Ok((expr, descending))
}

/// `PREDICT m(x) [TOP k]` from the children of a rule that starts with it.
fn visit_predict(c: &mut Children) -> Result<Predict> {
    c.skip_keywords();
    let call = visit_model_call(c.next()?)?;
    let top = match c.take(Rule::top_clause) {
        Some(t) => {
            let mut tc = Children::of(t);
            tc.skip_keywords();
            Some(visit_int_value(tc.next()?)?)
        }
        None => None,
    };
    Ok(Predict { call, top })
}

fn visit_interpretation(pair: Pair<Rule>) -> Result<Interpretation> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    let call = visit_model_call(c.next()?)?;
    let clauses = visit_clauses(c.inner.by_ref())?;
    Ok(Interpretation {
        call,
        clauses,
        span: sp,
    })
}

fn visit_join(pair: Pair<Rule>) -> Result<Join> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    let left = visit_join_side(c.next()?)?;
    let op = Children::of(c.next()?).next()?;
    let kind = if op.as_rule() == Rule::op_antijoin {
        JoinKind::AntiJoin
    } else {
        JoinKind::Join
    };
    let right = visit_join_side(c.next()?)?;
    let shared = visit_clauses(c.inner.by_ref())?;
    Ok(Join {
        kind,
        left,
        right,
        shared,
        span: sp,
    })
}

fn visit_join_side(pair: Pair<Rule>) -> Result<JoinSide> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    let first = c.next()?;
    let (interp, parenthesized) = if first.as_rule() == Rule::interpretation {
        (visit_interpretation(first)?, true)
    } else {
        let call = visit_model_call(first)?;
        (
            Interpretation {
                call,
                clauses: Clauses::default(),
                span: sp,
            },
            false,
        )
    };
    c.skip_keywords();
    let alias = c.take(Rule::ident).map(visit_ident).transpose()?;
    c.done();
    Ok(JoinSide {
        interp,
        parenthesized,
        alias,
    })
}

fn visit_clauses<'a>(pairs: impl Iterator<Item = Pair<'a, Rule>>) -> Result<Clauses> {
    let mut interp = Clauses::default();
    for clause in pairs {
        let csp = span(&clause);
        let rule = clause.as_rule();
        let twice = |name: &str| Error::syntax(format!("{name} is given twice")).at(csp);
        let mut cc = Children::of(clause);
        cc.skip_keywords();
        match rule {
            Rule::using_clause => {
                if interp.using.is_some() {
                    return Err(twice("USING"));
                }
                interp.using = Some(visit_method_call(cc.next()?)?);
            }
            Rule::target_clause => {
                if interp.target.is_some() {
                    return Err(twice("TARGET"));
                }
                let t = cc.next()?;
                let tsp = span(&t);
                let inner = Children::of(t).next()?;
                let kind = match inner.as_rule() {
                    Rule::target_predicted => TargetKind::Predicted,
                    Rule::target_similarity => {
                        let mut sc = Children::of(inner);
                        sc.skip_keywords();
                        TargetKind::Similarity(sc.inner.by_ref().map(visit_dataset).collect::<Result<Vec<_>>>()?)
                    }
                    Rule::target_label => TargetKind::Label,
                    Rule::target_unit => {
                        let mut uc = Children::of(inner);
                        let layer = visit_ident(uc.next()?)?;
                        let index = uc.inner.by_ref().map(visit_int_value).collect::<Result<Vec<_>>>()?;
                        TargetKind::Unit { layer, index }
                    }
                    _ => TargetKind::Class(visit_int_value(inner)?),
                };
                interp.target = Some(Target { kind, span: tsp });
            }
            Rule::baseline_clause => {
                if interp.baseline.is_some() {
                    return Err(twice("BASELINE"));
                }
                let b = cc.next()?;
                let bsp = span(&b);
                let inner = Children::of(b).next()?;
                let kind = match inner.as_rule() {
                    Rule::baseline_zero => BaselineKind::Zero,
                    Rule::baseline_mean => {
                        let mut mc = Children::of(inner);
                        mc.skip_keywords();
                        BaselineKind::Mean(mc.take(Rule::dataset).map(visit_dataset).transpose()?)
                    }
                    Rule::baseline_constant => BaselineKind::Constant(visit_value_token(Children::of(inner).next()?)?),
                    _ => BaselineKind::Data(visit_dataset(inner)?),
                };
                interp.baseline = Some(Baseline { kind, span: bsp });
            }
            Rule::window_clause => {
                if interp.window.is_some() {
                    return Err(twice("WINDOW"));
                }
                let kind = visit_window(cc.next()?)?;
                interp.window = Some(Window { kind, span: csp });
            }
            Rule::granularity_clause => {
                if interp.granularity.is_some() {
                    return Err(twice("GRANULARITY"));
                }
                let g = cc.next()?;
                let gsp = span(&g);
                let inner = Children::of(g).next()?;
                let kind = match inner.as_rule() {
                    Rule::gran_pixel => GranularityKind::Pixel,
                    Rule::gran_column => GranularityKind::Column,
                    Rule::gran_token => GranularityKind::Token,
                    Rule::gran_word => GranularityKind::Word,
                    rule => {
                        let mut pc = Children::of(inner);
                        pc.skip_keywords();
                        let k = visit_int_value(pc.next()?)?;
                        if rule == Rule::gran_segment {
                            GranularityKind::Segment(k)
                        } else {
                            GranularityKind::Patch(k)
                        }
                    }
                };
                interp.granularity = Some(Granularity { kind, span: gsp });
            }
            Rule::at_layer_clause => {
                if interp.at_layer.is_some() {
                    return Err(twice("AT LAYER"));
                }
                let l = cc.next()?;
                interp.at_layer = Some(if l.as_rule() == Rule::all_layers {
                    // Every layer: a name no layer can have unquoted.
                    Ident {
                        name: "*".into(),
                        span: span(&l),
                    }
                } else {
                    visit_ident(l)?
                });
            }
            Rule::evaluate_clause => {
                if interp.evaluate.is_some() {
                    return Err(twice("EVALUATE"));
                }
                let mut metrics = Vec::new();
                while let Some(m) = cc.take(Rule::method_call) {
                    metrics.push(visit_method_call(m)?);
                }
                interp.evaluate = Some(Evaluate { metrics, span: csp });
            }
            Rule::through_clause => {
                if interp.through.is_some() {
                    return Err(twice("THROUGH LAYER"));
                }
                let l = cc.next()?;
                let layer = if l.as_rule() == Rule::all_layers {
                    None
                } else {
                    Some(visit_ident(l)?)
                };
                interp.through = Some(Through { layer, span: csp });
            }
            other => {
                return Err(Error::syntax(format!("internal: unexpected clause {other:?}")).at(csp));
            }
        }
    }
    Ok(interp)
}

fn visit_visualize(pair: Pair<Rule>) -> Result<Visualize> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    c.skip_keywords();
    let model = visit_ident(c.next()?)?;
    let objective = match c.take(Rule::vis_layer) {
        Some(l) => {
            let mut lc = Children::of(l);
            lc.skip_keywords();
            let layer = visit_ident(lc.next()?)?;
            let which = lc.next()?;
            lc.done();
            let rule = which.as_rule();
            let mut wc = Children::of(which);
            wc.skip_keywords();
            let every = wc.take(Rule::all_layers).is_some();
            let mut values = Vec::new();
            while let Some(v) = wc.take(Rule::int_value) {
                values.push(visit_int_value(v)?);
            }
            wc.done();
            match rule {
                Rule::vis_channel => VisObjective::Channel {
                    layer,
                    channel: if every { None } else { values.into_iter().next() },
                },
                _ => VisObjective::Unit { layer, index: values },
            }
        }
        None => {
            let clauses = visit_clauses(std::iter::once(c.next()?))?;
            let target = clauses.target.ok_or_else(|| {
                Error::syntax("VISUALIZE needs AT LAYER l CHANNEL k, AT LAYER l UNIT (…) or TARGET k").at(sp)
            })?;
            VisObjective::Target(target)
        }
    };
    let mut params = Vec::new();
    if let Some(ps) = c.take(Rule::vis_params) {
        let mut pc = Children::of(ps);
        while let Some(p) = pc.take(Rule::param) {
            let mut one = Children::of(p);
            let name = visit_ident(one.next()?)?;
            let value = visit_value(one.next()?)?;
            one.done();
            params.push(Param { name, value });
        }
        pc.done();
    }
    c.done();
    Ok(Visualize {
        model,
        objective,
        params,
        span: sp,
    })
}

fn visit_method_call(pair: Pair<Rule>) -> Result<MethodCall> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    let name = visit_ident(c.next()?)?;
    let mut params = Vec::new();
    while let Some(p) = c.take(Rule::param) {
        let mut pc = Children::of(p);
        let pname = visit_ident(pc.next()?)?;
        let value = visit_value(pc.next()?)?;
        pc.done();
        params.push(Param { name: pname, value });
    }
    c.done();
    Ok(MethodCall { name, params, span: sp })
}

fn visit_model_call(pair: Pair<Rule>) -> Result<ModelCall> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    let model = visit_ident(c.next()?)?;
    let data = visit_dataset(c.next()?)?;
    c.done();
    Ok(ModelCall { model, data, span: sp })
}

fn visit_dataset(pair: Pair<Rule>) -> Result<DatasetExpr> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    let (name, visualize) = match c.take(Rule::visualize) {
        Some(v) => {
            let v = visit_visualize(v)?;
            let name = Ident {
                name: v.to_string(),
                span: v.span,
            };
            (name, Some(Box::new(v)))
        }
        None => (visit_ident(c.next()?)?, None),
    };
    let index = match c.take(Rule::index_spec) {
        None => None,
        Some(spec) => {
            let inner = Children::of(spec).next()?;
            Some(if inner.as_rule() == Rule::slice {
                let mut sc = Children::of(inner);
                let start = sc
                    .take(Rule::slice_start)
                    .map(|p| Children::of(p).next().and_then(visit_int_value))
                    .transpose()?;
                let end = sc
                    .take(Rule::slice_end)
                    .map(|p| Children::of(p).next().and_then(visit_int_value))
                    .transpose()?;
                sc.done();
                Index::Range { start, end }
            } else {
                Index::One(visit_int_value(inner)?)
            })
        }
    };
    let edits = c.inner.by_ref().map(visit_edit).collect::<Result<Vec<_>>>()?;
    Ok(DatasetExpr {
        name,
        visualize,
        index,
        edits,
        span: sp,
    })
}

/// A window (`rows a:b, cols c:d`, `columns x, y`) or, in `WITH SET c = v`, one column.
fn visit_window(w: Pair<Rule>) -> Result<WindowKind> {
    if w.as_rule() == Rule::column_item {
        return Ok(WindowKind::Columns(vec![visit_column_item(w)?]));
    }
    Ok(if w.as_rule() == Rule::window_image {
        let ranges = w
            .into_inner()
            .map(|r| {
                let rsp = span(&r);
                let mut rc = Children::of(r);
                let axis_pair = rc.next()?;
                let axis = match axis_pair.as_str().to_lowercase().as_str() {
                    "rows" => Axis::Rows,
                    "cols" => Axis::Cols,
                    "tokens" => Axis::Tokens,
                    "positions" => Axis::Positions,
                    _ => Axis::Channels,
                };
                let start = visit_int_value(rc.next()?)?;
                let end = visit_int_value(rc.next()?)?;
                rc.done();
                Ok(WindowRange {
                    axis,
                    start,
                    end,
                    span: rsp,
                })
            })
            .collect::<Result<_>>()?;
        WindowKind::Image(ranges)
    } else {
        let mut wc = Children::of(w);
        wc.skip_keywords();
        let items = wc.inner.map(visit_column_item).collect::<Result<_>>()?;
        WindowKind::Columns(items)
    })
}

fn visit_column_item(item: Pair<Rule>) -> Result<ColumnItem> {
    let inner = Children::of(item).next()?;
    match inner.as_rule() {
        Rule::column_range => {
            let isp = span(&inner);
            let mut rc = Children::of(inner);
            let start = visit_int_value(rc.next()?)?;
            let end = visit_int_value(rc.next()?)?;
            Ok(ColumnItem::Range { start, end, span: isp })
        }
        Rule::string => {
            let v = visit_value_token(inner)?;
            let name = match v.kind {
                ValueKind::Str(name) => name,
                other => format!("{other:?}"),
            };
            Ok(ColumnItem::Name(Ident { name, span: v.span }))
        }
        _ => Ok(ColumnItem::Name(visit_ident(inner)?)),
    }
}

fn visit_edit(pair: Pair<Rule>) -> Result<Edit> {
    let sp = span(&pair);
    let mut c = Children::of(pair);
    c.skip_keywords();
    let inner = c.next()?;
    let rule = inner.as_rule();
    let isp = span(&inner);
    let mut ic = Children::of(inner);
    ic.skip_keywords();
    let number = |p: Pair<Rule>| visit_int_value(p);
    let kind = match rule {
        Rule::edit_set => {
            let window = Window {
                kind: visit_window(ic.next()?)?,
                span: isp,
            };
            let value = number(ic.next()?)?;
            EditKind::Set { window, value }
        }
        Rule::edit_mask => EditKind::Mask {
            window: Window {
                kind: visit_window(ic.next()?)?,
                span: isp,
            },
        },
        Rule::edit_noise => {
            let stdev = number(ic.next()?)?;
            let seed = ic.inner.next().map(visit_int_value).transpose()?;
            EditKind::Noise { stdev, seed }
        }
        Rule::edit_layer => {
            let layer = visit_ident(ic.next()?)?;
            let mut index = Vec::new();
            while let Some(v) = ic.take(Rule::int_value) {
                index.push(visit_int_value(v)?);
            }
            let act = ic.next()?;
            let arule = act.as_rule();
            let mut ac = Children::of(act);
            ac.skip_keywords();
            let action = match arule {
                Rule::layer_set => LayerAction::Set(number(ac.next()?)?),
                Rule::layer_scale => LayerAction::Scale(number(ac.next()?)?),
                _ => LayerAction::From(Box::new(visit_dataset(ac.next()?)?)),
            };
            EditKind::Layer { layer, index, action }
        }
        _ => EditKind::Blur {
            sigma: number(ic.next()?)?,
        },
    };
    Ok(Edit { kind, span: sp })
}

fn visit_int_value(pair: Pair<Rule>) -> Result<Value> {
    let inner = Children::of(pair).next()?;
    visit_value_token(inner)
}

fn visit_value(pair: Pair<Rule>) -> Result<Value> {
    let inner = Children::of(pair).next()?;
    visit_value_token(inner)
}

/// A literal token: number, integer, unsigned, string, boolean, variable or word.
fn visit_value_token(pair: Pair<Rule>) -> Result<Value> {
    let sp = span(&pair);
    let text = pair.as_str();
    let kind = match pair.as_rule() {
        Rule::number | Rule::integer | Rule::unsigned => ValueKind::Number(
            text.parse()
                .map_err(|_| Error::syntax(format!("`{text}` is not a number")).at(sp))?,
        ),
        Rule::string => ValueKind::Str(unquote(text)),
        Rule::boolean => ValueKind::Bool(text.eq_ignore_ascii_case("true")),
        Rule::variable => ValueKind::Var(text[1..].to_string()),
        Rule::word => ValueKind::Word(text.to_string()),
        other => return Err(Error::syntax(format!("internal: unexpected value {other:?}")).at(sp)),
    };
    Ok(Value { kind, span: sp })
}

fn unquote(text: &str) -> String {
    text[1..text.len() - 1].replace("''", "'")
}

fn visit_ident(pair: Pair<Rule>) -> Result<Ident> {
    let sp = span(&pair);
    let inner = Children::of(pair).next()?;
    let text = inner.as_str();
    let name = if inner.as_rule() == Rule::quoted_ident {
        text[1..text.len() - 1].to_string()
    } else {
        text.to_string()
    };
    Ok(Ident { name, span: sp })
}

fn visit_expr(pair: Pair<Rule>) -> Result<Expr> {
    let operators = pair
        .clone()
        .into_inner()
        .filter(|p| format!("{:?}", p.as_rule()).starts_with("op_"))
        .count();
    if operators > MAX_CHAIN {
        return Err(Error::syntax(format!(
            "an expression of {operators} operators is more than this engine takes ({MAX_CHAIN})"
        ))
        .at(span(&pair)));
    }
    PRATT
        .map_primary(visit_primary)
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let sp = span(&op).to(rhs.span);
            let op = if op.as_rule() == Rule::op_not {
                UnaryOp::Not
            } else {
                UnaryOp::Neg
            };
            Ok(Expr {
                kind: ExprKind::Unary {
                    op,
                    expr: Box::new(rhs),
                },
                span: sp,
            })
        })
        .map_postfix(|lhs, op| {
            let lhs = lhs?;
            let sp = lhs.span.to(span(&op));
            let rule = op.as_rule();
            let mut c = Children::of(op);
            // IS [NOT] NULL has its keyword first, [NOT] IN its negation first.
            c.skip_keywords();
            let negated = c.take(Rule::negated).is_some();
            c.skip_keywords();
            let kind = if rule == Rule::is_null {
                ExprKind::IsNull {
                    expr: Box::new(lhs),
                    negated,
                }
            } else if c.inner.clone().count() > MAX_CHAIN {
                return Err(Error::syntax(format!("an IN list of more than {MAX_CHAIN} items")).at(sp));
            } else {
                let list = c
                    .inner
                    .map(|p| {
                        if p.as_rule() == Rule::query {
                            let sp = span(&p);
                            Ok(Expr {
                                kind: ExprKind::Subquery(Box::new(visit_query(p)?)),
                                span: sp,
                            })
                        } else {
                            visit_expr(p)
                        }
                    })
                    .collect::<Result<_>>()?;
                ExprKind::InList {
                    expr: Box::new(lhs),
                    list,
                    negated,
                }
            };
            Ok(Expr { kind, span: sp })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let op = match op.as_rule() {
                Rule::op_or => BinaryOp::Or,
                Rule::op_and => BinaryOp::And,
                Rule::op_eq => BinaryOp::Eq,
                Rule::op_ne => BinaryOp::NotEq,
                Rule::op_lt => BinaryOp::Lt,
                Rule::op_le => BinaryOp::LtEq,
                Rule::op_gt => BinaryOp::Gt,
                Rule::op_ge => BinaryOp::GtEq,
                Rule::op_add => BinaryOp::Add,
                Rule::op_sub => BinaryOp::Sub,
                Rule::op_mul => BinaryOp::Mul,
                Rule::op_div => BinaryOp::Div,
                _ => BinaryOp::Mod,
            };
            let sp = lhs.span.to(rhs.span);
            Ok(Expr {
                kind: ExprKind::Binary {
                    op,
                    left: Box::new(lhs),
                    right: Box::new(rhs),
                },
                span: sp,
            })
        })
        .parse(pair.into_inner())
}

fn visit_primary(pair: Pair<Rule>) -> Result<Expr> {
    let sp = span(&pair);
    let kind = match pair.as_rule() {
        Rule::expr => return visit_expr(pair),
        Rule::null => ExprKind::Null,
        Rule::scalar_subquery => ExprKind::Subquery(Box::new(visit_query(Children::of(pair).next()?)?)),
        Rule::function_call => {
            let mut c = Children::of(pair);
            let name = visit_ident(c.next()?)?;
            let star = c.take(Rule::star).is_some();
            let mut args = Vec::new();
            while let Some(a) = c.take(Rule::expr) {
                args.push(visit_expr(a)?);
            }
            let call = ExprKind::Call { name, args, star };
            match c.take(Rule::over_clause) {
                None => call,
                Some(over) => {
                    let mut oc = Children::of(over);
                    oc.skip_keywords();
                    let mut partition = Vec::new();
                    if let Some(p) = oc.take(Rule::partition_by) {
                        let mut pc = Children::of(p);
                        pc.skip_keywords();
                        while let Some(e) = pc.take(Rule::expr) {
                            partition.push(visit_expr(e)?);
                        }
                    }
                    let mut order = Vec::new();
                    if let Some(o) = oc.take(Rule::window_order) {
                        let mut wc = Children::of(o);
                        wc.skip_keywords();
                        while let Some(item) = wc.take(Rule::order_item) {
                            order.push(visit_order_item(item)?);
                        }
                    }
                    ExprKind::Window {
                        call: Box::new(Expr { kind: call, span: sp }),
                        partition,
                        order,
                    }
                }
            }
        }
        Rule::column_ref => {
            let mut c = Children::of(pair);
            let first = visit_ident(c.next()?)?;
            match c.take(Rule::ident) {
                Some(second) => ExprKind::Column {
                    qualifier: Some(first),
                    name: visit_ident(second)?,
                },
                None => ExprKind::Column {
                    qualifier: None,
                    name: first,
                },
            }
        }
        _ => match visit_value_token(pair)?.kind {
            ValueKind::Number(n) => ExprKind::Number(n),
            ValueKind::Str(s) => ExprKind::Str(s),
            ValueKind::Bool(b) => ExprKind::Bool(b),
            ValueKind::Var(v) => ExprKind::Var(v),
            ValueKind::Word(w) => ExprKind::Str(w),
        },
    };
    Ok(Expr { kind, span: sp })
}

/// Human names for grammar rules in "expected …" messages.
fn rule_name(rule: &Rule) -> String {
    let s = format!("{rule:?}");
    if let Some(kw) = s.strip_prefix("kw_") {
        return kw.to_uppercase();
    }
    match rule {
        Rule::EOI => "end of input".into(),
        Rule::ident | Rule::bare_ident | Rule::quoted_ident => "a name".into(),
        Rule::string | Rule::path => "a quoted string ('...')".into(),
        Rule::number | Rule::unsigned | Rule::integer | Rule::int_value | Rule::number_value => "a number".into(),
        Rule::variable => "a variable (:name)".into(),
        Rule::value => "a value".into(),
        Rule::expr | Rule::literal | Rule::primary | Rule::column_ref | Rule::function_call => "an expression".into(),
        Rule::select_item | Rule::select_list => "a column or expression".into(),
        Rule::star => "`*`".into(),
        Rule::dataset => "a dataset (name, name[i] or name[a:b])".into(),
        Rule::query | Rule::select | Rule::intersect_term => "a query (SELECT …, PREDICT … or WITH …)".into(),
        Rule::statement => "a statement".into(),
        Rule::op_eq => "`=`".into(),
        Rule::op_ne => "`!=`".into(),
        Rule::op_lt | Rule::op_le | Rule::op_gt | Rule::op_ge => "a comparison".into(),
        Rule::op_add | Rule::op_sub | Rule::op_mul | Rule::op_div | Rule::op_mod => "an operator".into(),
        Rule::op_or | Rule::op_and => "AND / OR".into(),
        Rule::op_union | Rule::op_union_all | Rule::op_except | Rule::op_intersect => {
            "UNION / INTERSECT / EXCEPT".into()
        }
        Rule::is_null | Rule::in_list => "IS / IN".into(),
        Rule::using_clause => "USING".into(),
        Rule::target_clause => "TARGET".into(),
        Rule::baseline_clause => "BASELINE".into(),
        Rule::window_clause => "WINDOW".into(),
        Rule::granularity_clause => "GRANULARITY".into(),
        Rule::where_clause => "WHERE".into(),
        Rule::group_by => "GROUP BY".into(),
        Rule::having => "HAVING".into(),
        Rule::order_by => "ORDER BY".into(),
        Rule::limit => "LIMIT".into(),
        Rule::count_value => "a count".into(),
        Rule::order_dir => "ASC / DESC".into(),
        Rule::overwrite => "OVERWRITE".into(),
        Rule::param => "a parameter (name = value)".into(),
        Rule::method_call => "a method name".into(),
        Rule::load_model | Rule::load_data => "LOAD".into(),
        Rule::show => "SHOW".into(),
        Rule::set_stmt => "SET".into(),
        Rule::var_stmt => "VAR".into(),
        Rule::let_stmt => "LET".into(),
        Rule::export | Rule::export_data => "EXPORT".into(),
        Rule::visualize => "VISUALIZE".into(),
        Rule::vis_layer => "AT LAYER".into(),
        Rule::vis_channel => "CHANNEL".into(),
        Rule::vis_unit => "UNIT".into(),
        Rule::vis_params => "`(` parameters `)`".into(),
        Rule::plan_stmt => "PLAN".into(),
        Rule::predict_query | Rule::predict_source => "PREDICT".into(),
        Rule::subquery => "`(`".into(),
        Rule::source | Rule::interpretation | Rule::model_call | Rule::table_source | Rule::table_ref => {
            "model(data), PREDICT model(data), a table or a (subquery)".into()
        }
        Rule::with_clause => "WITH".into(),
        Rule::cte => "name AS (query)".into(),
        Rule::let_table => "`(` query `)`".into(),
        Rule::join_using => "USING (columns)".into(),
        Rule::join_on => "ON a.column = b.column".into(),
        Rule::join_equal => "a.column = b.column".into(),
        Rule::window_range | Rule::window_axis => "rows a:b / cols a:b / channels a:b".into(),
        Rule::window_columns => "COLUMNS".into(),
        Rule::granularity => "pixel, patch(k) or column".into(),
        Rule::target => "PREDICTED, LABEL or a class index".into(),
        Rule::baseline => "zero, mean, a number or a dataset".into(),
        Rule::labels_file => "LABELS".into(),
        Rule::shape_clause => "SHAPE (…)".into(),
        Rule::label_column => "LABEL COLUMN".into(),
        Rule::distinct => "DISTINCT".into(),
        Rule::slice | Rule::index_spec => "an index or a slice a:b".into(),
        Rule::join_op | Rule::op_join | Rule::op_antijoin => "JOIN or ANTIJOIN".into(),
        Rule::script => "a statement".into(),
        Rule::arch_clause => "ARCH".into(),
        Rule::head_clause => "HEAD".into(),
        Rule::classes_clause => "CLASSES".into(),
        Rule::text_column => "TEXT".into(),
        Rule::images => "IMAGES".into(),
        Rule::resize => "RESIZE".into(),
        Rule::crop => "CROP".into(),
        Rule::normalize => "NORMALIZE".into(),
        Rule::triple => "three numbers (a, b, c)".into(),
        Rule::show_models
        | Rule::show_data
        | Rule::show_methods
        | Rule::show_layers
        | Rule::show_cache
        | Rule::show_settings => "MODELS, DATA, METHODS, LAYERS OF, CACHE or SETTINGS".into(),
        Rule::attack => "ATTACK".into(),
        Rule::report => "REPORT".into(),
        Rule::top_clause => "TOP".into(),
        Rule::predict_join | Rule::predict_side => "PREDICT".into(),
        Rule::join_source | Rule::join_side => "model(data)".into(),
        Rule::edit => "WITH (an edit)".into(),
        Rule::edit_layer => "LAYER".into(),
        Rule::layer_set => "= value".into(),
        Rule::layer_scale => "SCALE".into(),
        Rule::layer_from => "FROM".into(),
        Rule::donor => "a dataset".into(),
        Rule::edit_set => "SET".into(),
        Rule::edit_mask => "MASK".into(),
        Rule::edit_noise => "NOISE(…)".into(),
        Rule::edit_blur => "BLUR(…)".into(),
        Rule::slice_start | Rule::slice_end => "a number".into(),
        Rule::at_layer_clause => "AT LAYER".into(),
        Rule::through_clause => "THROUGH LAYER".into(),
        Rule::evaluate_clause => "EVALUATE".into(),
        Rule::influence_source => "INFLUENCE OF m(train) ON m(test)".into(),
        Rule::tcav_source => "TCAV m(d) AT LAYER l CONCEPTS (…)".into(),
        Rule::tcav_random => "RANDOM n".into(),
        Rule::concept_stmt => "CONCEPT".into(),
        Rule::checkpoints_clause => "CHECKPOINTS (…)".into(),
        Rule::checkpoint => "a checkpoint file ('e1.safetensors' [RATE r])".into(),
        Rule::all_layers => "`*`".into(),
        Rule::target_similarity => "SIMILARITY(…)".into(),
        Rule::target_unit => "a unit layer[i, …]".into(),
        Rule::target_predicted => "PREDICTED".into(),
        Rule::target_label => "LABEL".into(),
        Rule::baseline_zero => "ZERO".into(),
        Rule::baseline_mean => "MEAN".into(),
        Rule::baseline_constant => "a number".into(),
        Rule::window_image => "rows a:b / cols a:b / channels a:b".into(),
        Rule::column_item => "a column".into(),
        Rule::column_range => "a range of columns a:b".into(),
        Rule::gran_pixel
        | Rule::gran_patch
        | Rule::gran_segment
        | Rule::gran_column
        | Rule::gran_token
        | Rule::gran_word => "pixel, patch(k), segment(k), column, token or word".into(),
        Rule::order_item => "an expression".into(),
        Rule::op_not | Rule::negated => "NOT".into(),
        Rule::op_neg => "`-`".into(),
        Rule::scalar_subquery => "(SELECT …)".into(),
        Rule::over_clause => "OVER".into(),
        Rule::partition_by => "PARTITION BY".into(),
        Rule::window_order => "ORDER BY".into(),
        Rule::word => "a word".into(),
        Rule::boolean => "true or false".into(),
        Rule::null => "NULL".into(),
        Rule::layer_ident | Rule::dotted_ident => "a layer name".into(),
        Rule::reserved | Rule::ident_start | Rule::ident_char => "a name".into(),
        Rule::set_op => "UNION / INTERSECT / EXCEPT".into(),
        Rule::query_term => "a query (SELECT … or PREDICT …)".into(),
        Rule::table_item | Rule::join_right => "a table or a (subquery)".into(),
        Rule::join_condition => "USING (columns) or ON a.column = b.column".into(),
        Rule::interp_clause => "USING, TARGET, BASELINE, WINDOW, GRANULARITY, AT LAYER or THROUGH LAYER".into(),
        Rule::unsigned_body => "a number".into(),
        _ => s.replace('_', " "),
    }
}

/// The words a statement starts with.
pub const STATEMENT_WORDS: &[&str] = &[
    "CONCEPT", "EXPORT", "LET", "LOAD", "PLAN", "PREDICT", "SELECT", "SET", "SHOW", "VAR", "WITH",
];

/// Converts pest's error once, at the boundary: a span and a sentence naming what was
/// expected in words a user knows.
fn convert_error(err: pest::error::Error<Rule>, text: &str) -> Error {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match err.location {
        InputLocation::Pos(p) => (p, p + 1),
        InputLocation::Span((s, e)) => (s, e.max(s + 1)),
    };
    let message = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            // Operators are many tokens but one idea to a reader.
            let operator = |r: &Rule| {
                matches!(
                    r,
                    Rule::kw_and
                        | Rule::kw_or
                        | Rule::kw_is
                        | Rule::kw_in
                        | Rule::op_and
                        | Rule::op_or
                        | Rule::op_eq
                        | Rule::op_ne
                        | Rule::op_lt
                        | Rule::op_le
                        | Rule::op_gt
                        | Rule::op_ge
                        | Rule::op_add
                        | Rule::op_sub
                        | Rule::op_mul
                        | Rule::op_div
                        | Rule::op_mod
                        | Rule::is_null
                        | Rule::in_list
                        | Rule::negated
                )
            };
            let mut names: Vec<String> = positives
                .iter()
                .map(|r| {
                    if operator(r) {
                        "an operator".to_string()
                    } else {
                        rule_name(r)
                    }
                })
                .collect();
            // DISTINCT is optional where a select list is expected; naming it only distracts.
            if names.len() > 1 {
                names.retain(|n| n != "DISTINCT");
            }
            names.sort();
            names.dedup();
            match names.len() {
                0 => "unexpected input".to_string(),
                1 => format!("expected {}", names[0]),
                _ => {
                    let last = names.pop().unwrap_or_default();
                    format!("expected {} or {last}", names.join(", "))
                }
            }
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    // Where a statement should begin, pest can only say that the script failed: name
    // the statements, and the one a misspelt first word was probably meant to be.
    // The same after a `;`, where pest lists the statements' first words.
    let after_semicolon = text.get(..start).is_some_and(|t| t.trim_end().ends_with(';'));
    if message == "expected a statement" || (after_semicolon && message.contains("EXPORT, LET, LOAD")) {
        let word: String = text
            .get(start..)
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let known: Vec<String> = STATEMENT_WORDS.iter().map(|w| w.to_string()).collect();
        let end = start + word.len().max(1);
        let mut err = Error::syntax(format!("expected a statement: {}", STATEMENT_WORDS.join(", ")));
        if let Some(guess) = crate::error::closest(&word, &known) {
            err = err.hint(format!("did you mean {guess}?"));
        }
        return err.at(Span::new(start, end));
    }
    Error::syntax(message).at(Span::new(start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "expected …" message never shows a grammar-internal name: every rule whose name
    /// is not a plain word has a name a user knows.
    #[test]
    fn every_rule_has_a_name_for_users() {
        let internal: Vec<String> = Rule::all_rules()
            .iter()
            .filter(|r| {
                let raw = format!("{r:?}");
                raw.contains('_') && !raw.starts_with("kw_") && rule_name(r) == raw.replace('_', " ")
            })
            .map(|r| format!("{r:?}"))
            .collect();
        assert!(internal.is_empty(), "rules without a user's name: {internal:?}");
    }
}
