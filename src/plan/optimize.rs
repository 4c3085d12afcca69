//! Optimizer rules over the logical plan. Each rule has a name, which PLAN prints where
//! it rewrote something:
//!
//! - `push_input_predicates`: the conjuncts of a WHERE over an attribution that read only
//!   per-input columns (`input`, `label`, `prediction`, `target`) move below the method, so
//!   it runs only on the inputs that pass (`WHERE prediction != label` over a whole
//!   dataset attributes the misclassified inputs alone).

use super::logical::{INPUT_COLUMNS, Node, NodeKind};
use crate::syntax::ast::{BinaryOp, Expr, ExprKind};

pub fn optimize(node: Node) -> Node {
    push_input_predicates(node)
}

fn push_input_predicates(node: Node) -> Node {
    let Node { kind, columns } = node;
    let kind = match kind {
        NodeKind::Filter { input, predicate } => {
            let input = push_input_predicates(*input);
            match input.kind {
                NodeKind::Attribute(mut a) => {
                    let (pushed, kept): (Vec<Expr>, Vec<Expr>) = conjuncts(predicate)
                        .into_iter()
                        .partition(|c| reads_only(c, INPUT_COLUMNS));
                    let mut pushed = pushed.into_iter();
                    if let Some(first) = pushed.next() {
                        let mut all = a
                            .input_filter
                            .take()
                            .into_iter()
                            .chain(std::iter::once(first))
                            .chain(pushed);
                        let start = all.next().expect("at least one conjunct");
                        a.input_filter = Some(all.fold(start, and));
                    }
                    let attribute = Node {
                        kind: NodeKind::Attribute(a),
                        columns: input.columns,
                    };
                    match kept.into_iter().reduce(and) {
                        Some(rest) => NodeKind::Filter {
                            input: Box::new(attribute),
                            predicate: rest,
                        },
                        None => return attribute_with(attribute, columns),
                    }
                }
                other => NodeKind::Filter {
                    input: Box::new(Node {
                        kind: other,
                        columns: input.columns,
                    }),
                    predicate,
                },
            }
        }
        NodeKind::Aggregate {
            input,
            keys,
            aggregates,
        } => NodeKind::Aggregate {
            input: Box::new(push_input_predicates(*input)),
            keys,
            aggregates,
        },
        NodeKind::Project { input, exprs } => NodeKind::Project {
            input: Box::new(push_input_predicates(*input)),
            exprs,
        },
        NodeKind::Sort { input, keys } => NodeKind::Sort {
            input: Box::new(push_input_predicates(*input)),
            keys,
        },
        NodeKind::Limit { input, count, offset } => NodeKind::Limit {
            input: Box::new(push_input_predicates(*input)),
            count,
            offset,
        },
        NodeKind::Distinct { input } => NodeKind::Distinct {
            input: Box::new(push_input_predicates(*input)),
        },
        NodeKind::SetOp { op, left, right } => NodeKind::SetOp {
            op,
            left: Box::new(push_input_predicates(*left)),
            right: Box::new(push_input_predicates(*right)),
        },
        NodeKind::Join {
            kind,
            left,
            right,
            names,
            keys,
        } => NodeKind::Join {
            kind,
            left: Box::new(push_input_predicates(*left)),
            right: Box::new(push_input_predicates(*right)),
            names,
            keys,
        },
        leaf @ (NodeKind::Attribute(_) | NodeKind::Predict(_)) => leaf,
    };
    Node { kind, columns }
}

/// A filter that vanished into its attribution keeps the filter's column list.
fn attribute_with(node: Node, columns: Vec<String>) -> Node {
    Node {
        kind: node.kind,
        columns,
    }
}

fn and(a: Expr, b: Expr) -> Expr {
    let span = a.span;
    Expr {
        kind: ExprKind::Binary {
            op: BinaryOp::And,
            left: Box::new(a),
            right: Box::new(b),
        },
        span,
    }
}

fn conjuncts(e: Expr) -> Vec<Expr> {
    match e.kind {
        ExprKind::Binary {
            op: BinaryOp::And,
            left,
            right,
        } => {
            let mut out = conjuncts(*left);
            out.extend(conjuncts(*right));
            out
        }
        kind => vec![Expr { kind, span: e.span }],
    }
}

/// Whether every column `e` reads is one of `columns` (and it reads at least one).
fn reads_only(e: &Expr, columns: &[&str]) -> bool {
    let mut ok = true;
    let mut any = false;
    visit_columns(e, &mut |name| {
        any = true;
        ok &= columns.contains(&name);
    });
    ok && any
}

fn visit_columns(e: &Expr, f: &mut dyn FnMut(&str)) {
    if let ExprKind::Column { name, .. } = &e.kind {
        f(&name.name);
    }
    let _ = e.map_children::<()>(&mut |c| {
        visit_columns(c, f);
        Ok(c.clone())
    });
}
