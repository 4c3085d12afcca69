//! Optimizer rules over the logical plan. Each rule has a name, which PLAN prints where
//! it rewrote something:
//!
//! - `push_input_predicates`: the conjuncts of a WHERE over an attribution that read only
//!   per-input columns (`input`, `label`, `prediction`, `target`) move below the method, so
//!   it runs only on the inputs that pass (`WHERE prediction != label` over a whole
//!   dataset attributes the misclassified inputs alone).
//! - `push_input_limit`: a LIMIT above an attribution, with nothing between them that
//!   reorders or merges rows (a Project, or one GROUP BY input), records how many inputs
//!   it can see, so the method runs only on those.
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

/// The optimizer's rules as plan text before and after, on a small fake catalog (no
/// model runs: the planner sees the session only through `Catalog`).
#[cfg(test)]
mod tests {
    use crate::data::Modality;
    use crate::error::Result;
    use crate::ops::ParamValue;
    use crate::plan::{Catalog, DatasetInfo, Literal, ModelInfo, Node, Plan};

    /// One 1×8×8 CNN `m` with ten outputs and one dataset `d` of 20 labelled digits.
    struct Fake;

    impl Catalog for Fake {
        fn model(&self, name: &str) -> Option<ModelInfo> {
            (name == "m").then(|| ModelInfo {
                input_shape: vec![1, 8, 8],
                output_len: 10,
                layers: vec!["conv1".into(), "relu1".into(), "flatten".into(), "fc".into()],
                layer_shapes: vec![vec![4, 8, 8], vec![4, 8, 8], vec![256], vec![10]],
                aliases: Vec::new(),
                sequence_input: false,
                volume_input: false,
                dynamic: false,
                text_length: None,
                classes: None,
            })
        }
        fn model_names(&self) -> Vec<String> {
            vec!["m".into()]
        }
        fn dataset(&self, name: &str) -> Option<DatasetInfo> {
            (name == "d").then(|| DatasetInfo {
                len: 20,
                sample_shape: vec![1, 8, 8],
                modality: Modality::Image {
                    channels: 1,
                    height: 8,
                    width: 8,
                },
                has_labels: true,
                id_range: (0, 19),
                classes: None,
            })
        }
        fn dataset_names(&self) -> Vec<String> {
            vec!["d".into()]
        }
        fn setting(&self, _: &str) -> Option<ParamValue> {
            None
        }
        fn variable(&self, _: &str) -> Option<Literal> {
            None
        }
        fn variable_names(&self) -> Vec<String> {
            Vec::new()
        }
    }

    /// The plan of `text` without the optimizer, and with it.
    fn before_after(text: &str) -> Result<(String, String)> {
        let script = crate::syntax::parse(text)?;
        let crate::syntax::ast::StatementKind::Query(q) = &script.statements[0].kind else {
            panic!("{text} is not a query");
        };
        let raw: Node = super::super::query::plan_query(q, &Fake)?;
        let Plan::Query(optimized) = super::super::plan(&script.statements[0], &Fake)? else {
            panic!("{text} did not plan as a query");
        };
        Ok((raw.to_string(), optimized.to_string()))
    }

    #[test]
    fn push_input_predicates_moves_per_input_conjuncts_below_the_method() {
        let (before, after) =
            before_after("SELECT row, col FROM m(d) USING saliency WHERE prediction != label AND attribution > 0.5")
                .unwrap();
        assert_eq!(
            before,
            "Project row, col
  └─ Filter (prediction != label) AND (attribution > 0.5)
    └─ Attribute m(d) USING saliency(abs = true)
       target predicted, window all features, granularity feature
"
        );
        assert_eq!(
            after,
            "Project row, col
  └─ Filter attribution > 0.5
    └─ Attribute m(d) USING saliency(abs = true)
       only inputs where prediction != label  [rule push_input_predicates]
       target predicted, window all features, granularity feature
"
        );
    }

    #[test]
    fn push_input_limit_runs_the_method_on_the_first_inputs_only() {
        let (before, after) =
            before_after("SELECT input, sum(attribution) AS s FROM m(d) USING saliency GROUP BY input LIMIT 3")
                .unwrap();
        assert!(!before.contains("rule push_input_limit"), "{before}");
        assert!(
            after.contains("only the first 3 inputs  [rule push_input_limit]"),
            "{after}"
        );
        // rows, not inputs, without the GROUP BY input
        let (_, after) = before_after("SELECT * FROM m(d) USING saliency LIMIT 70").unwrap();
        assert!(
            after.contains("only the inputs of the first 70 rows  [rule push_input_limit]"),
            "{after}"
        );
        // an ORDER BY between them may reorder rows: nothing is pushed
        let (_, after) = before_after("SELECT * FROM m(d) USING saliency ORDER BY attribution DESC LIMIT 5").unwrap();
        assert!(!after.contains("push_input_limit"), "{after}");
    }

    #[test]
    fn neither_rule_touches_a_method_whose_inputs_depend_on_each_other() {
        let (before, after) =
            before_after("SELECT * FROM m(d) USING feature_permutation WHERE input < 5 LIMIT 10").unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn the_rules_reach_inside_a_with() {
        let (_, after) = before_after(
            "WITH s AS (SELECT input, max(attribution) AS a FROM m(d) USING saliency WHERE label = 3 GROUP BY input) SELECT * FROM s",
        )
        .unwrap();
        assert!(
            after.contains("only inputs where label = 3  [rule push_input_predicates]"),
            "{after}"
        );
    }
}
