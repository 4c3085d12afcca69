//! Optimizer rules over the logical plan. Each rule has a name, which PLAN prints where
//! it rewrote something:
//!
//! - `push_input_predicates`: the conjuncts of a WHERE over an attribution that read only
//!   per-input columns (`input`, `label`, `prediction`, `target`) move below the method, so
//!   it runs only on the inputs that pass (`WHERE prediction != label` over a whole
//!   dataset attributes the misclassified inputs alone).
//!
//! Neither rule applies to a method whose result for one input depends on the others
//! (feature permutation shuffles among them).

use super::logical::{INPUT_COLUMNS, InputLimit, Node, NodeKind, TableSource};
use crate::syntax::ast::{BinaryOp, Expr, ExprKind};

pub fn optimize(node: Node) -> Node {
    push_input_limit(push_input_predicates(node))
}

/// Finds each LIMIT and, where the path down to an attribution keeps rows in input
/// order, records how many inputs it can see.
fn push_input_limit(mut node: Node) -> Node {
    if let NodeKind::Limit { input, count, offset } = &mut node.kind {
        let rows = count.saturating_add(*offset);
        limit_inputs(input, rows, false);
    }
    map_inputs(node, push_input_limit)
}

/// Walks down from a LIMIT of `rows` rows; `grouped` once a GROUP BY input was passed.
fn limit_inputs(node: &mut Node, rows: usize, grouped: bool) {
    match &mut node.kind {
        NodeKind::Project { input, .. } => limit_inputs(input, rows, grouped),
        NodeKind::Aggregate { input, keys, .. } if !grouped => {
            let by_input = matches!(keys.as_slice(), [(_, e)] if matches!(&e.kind, ExprKind::Column { name, .. } if name.name == "input"));
            if by_input {
                limit_inputs(input, rows, true);
            }
        }
        // Stacked maps (THROUGH LAYER *) put every input in each layer's block.
        NodeKind::Attribute(a)
            if !matches!(a.through, Some(super::logical::ThroughSpec::All(_))) && a.method.each_input_alone() =>
        {
            a.input_limit = Some(if grouped {
                InputLimit::Inputs(rows)
            } else {
                InputLimit::Rows(rows)
            });
        }
        // Anything else may reorder, drop or merge rows.
        _ => {}
    }
}

/// Applies `f` to the inputs of a node (a WITH's tables and body too).
fn map_inputs(mut node: Node, f: fn(Node) -> Node) -> Node {
    for input in node.inputs_mut() {
        // Moved out and back: `f` takes its node by value.
        let placeholder = Node::new(
            NodeKind::Table {
                name: String::new(),
                source: TableSource::With,
            },
            Vec::new(),
        );
        let taken = std::mem::replace(input, placeholder);
        *input = f(taken);
    }
    node
}

fn push_input_predicates(node: Node) -> Node {
    let Node { kind, columns } = map_inputs(node, push_input_predicates);
    let NodeKind::Filter { input, predicate } = kind else {
        return Node { kind, columns };
    };
    let NodeKind::Attribute(mut a) = input.kind else {
        return Node {
            kind: NodeKind::Filter { input, predicate },
            columns,
        };
    };
    if !a.method.each_input_alone() {
        return Node {
            kind: NodeKind::Filter {
                input: Box::new(Node {
                    kind: NodeKind::Attribute(a),
                    columns: input.columns,
                }),
                predicate,
            },
            columns,
        };
    }
    let (pushed, kept): (Vec<Expr>, Vec<Expr>) = conjuncts(predicate)
        .into_iter()
        .partition(|c| reads_only(c, INPUT_COLUMNS));
    a.input_filter = a.input_filter.take().into_iter().chain(pushed).reduce(and);
    let attribute = Node {
        kind: NodeKind::Attribute(a),
        columns: input.columns,
    };
    match kept.into_iter().reduce(and) {
        Some(rest) => Node {
            kind: NodeKind::Filter {
                input: Box::new(attribute),
                predicate: rest,
            },
            columns,
        },
        // The filter vanished into its attribution; its column list stays.
        None => Node {
            kind: attribute.kind,
            columns,
        },
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
