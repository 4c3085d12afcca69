//! SQL beyond the basics: subqueries in expressions (`IN (SELECT …)`, scalar `(SELECT …)`)
//! and window functions (`row_number() / rank() / dense_rank() / aggregates OVER
//! (PARTITION BY … ORDER BY …)`), each against the same numbers computed by hand.

use ialgebra::exec::Session;

use crate::common::*;

fn loaded() -> Session {
    session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';",
    )
}

#[test]
fn in_subquery_filters_and_pushes_down() {
    let mut s = loaded();
    let wrong = column_f64(
        &query(
            &mut s,
            "SELECT input FROM PREDICT cnn(digits) WHERE prediction != label ORDER BY input",
        ),
        "input",
    );
    assert_eq!(wrong.len(), 23);
    let before = s.stats().attributed_inputs;
    let df = query(
        &mut s,
        "SELECT input, sum(attribution) AS total FROM cnn(digits) USING saliency
         WHERE input IN (SELECT input FROM PREDICT cnn(digits) WHERE prediction != label)
         GROUP BY input ORDER BY input",
    );
    assert_eq!(column_f64(&df, "input"), wrong);
    // The subquery's result was pushed below the method: only those inputs attributed.
    assert_eq!(s.stats().attributed_inputs - before, 23);
    let df = query(
        &mut s,
        "SELECT count(*) AS n FROM PREDICT cnn(digits) WHERE input NOT IN (SELECT input FROM PREDICT cnn(digits) WHERE correct)",
    );
    assert_eq!(column_f64(&df, "n"), vec![23.0]);
}

#[test]
fn scalar_subqueries() {
    let mut s = loaded();
    let df = query(
        &mut s,
        "SELECT input, confidence FROM PREDICT cnn(digits)
         WHERE confidence = (SELECT min(confidence) FROM PREDICT cnn(digits))",
    );
    assert_eq!(df.height(), 1);
    let all = column_f64(
        &query(&mut s, "SELECT confidence FROM PREDICT cnn(digits)"),
        "confidence",
    );
    let min = all.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(column_f64(&df, "confidence")[0], min);
    let df = query(
        &mut s,
        "SELECT (SELECT count(*) FROM PREDICT cnn(digits[0:7])) * 2 AS n FROM PREDICT cnn(digits[0])",
    );
    assert_eq!(column_f64(&df, "n"), vec![14.0]);
    // No row: NULL.
    let df = query(
        &mut s,
        "SELECT (SELECT input FROM PREDICT cnn(digits[0:3]) WHERE input > 10) AS none FROM PREDICT cnn(digits[0])",
    );
    assert!(column_f64(&df, "none")[0].is_nan());
}

#[test]
fn window_functions_match_a_manual_ranking() {
    let mut s = loaded();
    let df = query(
        &mut s,
        "SELECT input, feature, attribution,
                row_number() OVER (PARTITION BY input ORDER BY attribution DESC) AS r,
                attribution / sum(attribution) OVER (PARTITION BY input) AS share,
                count(*) OVER () AS n
         FROM cnn(digits[0:3]) USING integrated_gradients ORDER BY input, feature",
    );
    let (input, attribution) = (column_f64(&df, "input"), column_f64(&df, "attribution"));
    let (r, share, n) = (column_f64(&df, "r"), column_f64(&df, "share"), column_f64(&df, "n"));
    assert!(n.iter().all(|&v| v == 192.0));
    for i in 0..3 {
        let rows: Vec<usize> = (0..df.height()).filter(|&k| input[k] == i as f64).collect();
        let mut order = rows.clone();
        // Descending; ties in the order of the rows (ordinal), as row_number does.
        order.sort_by(|&a, &b| attribution[b].partial_cmp(&attribution[a]).unwrap());
        for (rank, &k) in order.iter().enumerate() {
            assert_eq!(r[k], (rank + 1) as f64, "input {i}, row {k}");
        }
        let total: f64 = rows.iter().map(|&k| share[k]).sum();
        assert!((total - 1.0).abs() < 1e-4, "shares of input {i} sum to {total}");
    }
    // rank leaves gaps after ties, dense_rank does not; `value` of a digit has many ties.
    let df = query(
        &mut s,
        "SELECT value, rank() OVER (ORDER BY value) AS r, dense_rank() OVER (ORDER BY value) AS d
         FROM cnn(digits[0]) USING saliency ORDER BY value",
    );
    let (v, rk, d) = (column_f64(&df, "value"), column_f64(&df, "r"), column_f64(&df, "d"));
    for k in 0..v.len() {
        let below = v.iter().filter(|&&x| x < v[k]).count();
        let mut distinct: Vec<f64> = v.iter().copied().filter(|&x| x < v[k]).collect();
        distinct.dedup();
        assert_eq!(rk[k], (below + 1) as f64);
        assert_eq!(d[k], (distinct.len() + 1) as f64);
    }
}

#[test]
fn subquery_and_window_errors() {
    let mut s = loaded();
    let cases = [
        (
            "SELECT input FROM PREDICT cnn(digits) WHERE input IN (SELECT input, label FROM PREDICT cnn(digits))",
            "gives one column; this one gives 2",
        ),
        (
            "SELECT (SELECT input FROM PREDICT cnn(digits[0:3])) AS x FROM PREDICT cnn(digits[0])",
            "gave 3 rows",
        ),
        (
            "SELECT input FROM cnn(digits[0]) WHERE row_number() OVER (ORDER BY attribution) < 3",
            "not allowed in WHERE",
        ),
        (
            "SELECT input, row_number() FROM cnn(digits[0])",
            "is a window function: add OVER",
        ),
        (
            "SELECT rank() OVER (PARTITION BY input) FROM cnn(digits[0])",
            "needs one ORDER BY",
        ),
        (
            "SELECT sum(attribution) OVER (ORDER BY feature) FROM cnn(digits[0])",
            "running total",
        ),
        (
            "SELECT input, sum(attribution), rank() OVER (ORDER BY input) FROM cnn(digits[0]) GROUP BY input",
            "do not combine with GROUP BY",
        ),
        (
            "SELECT lag(attribution) OVER (ORDER BY feature) FROM cnn(digits[0])",
            "unknown window function",
        ),
        (
            "SELECT input FROM PREDICT cnn(digits) WHERE input IN (SELECT nothing FROM PREDICT cnn(digits))",
            "unknown column `nothing`",
        ),
    ];
    assert_errors(&mut s, &cases);
    assert_eq!(query(&mut s, "SELECT * FROM PREDICT cnn(digits[0])").height(), 1);
}

/// LIMIT and OFFSET say what a count must be: a negative, fractional or huge one is a
/// value error naming the clause (a negative one used to be a syntax error).
#[test]
fn limits_say_what_a_count_is() {
    let mut s = loaded();
    assert_errors(
        &mut s,
        &[
            (
                "SELECT input FROM PREDICT cnn(digits) LIMIT -1",
                "LIMIT is the number of rows to keep: 0 or more, got -1",
            ),
            (
                "SELECT input FROM PREDICT cnn(digits) LIMIT 2.5",
                "LIMIT must be a whole number, got 2.5",
            ),
            (
                "SELECT input FROM PREDICT cnn(digits) LIMIT 99999999999999999999",
                "LIMIT is too large",
            ),
            (
                "SELECT input FROM PREDICT cnn(digits) LIMIT 2 OFFSET -3",
                "OFFSET is the number of rows to skip",
            ),
        ],
    );
    let rows = query(
        &mut s,
        "SELECT input FROM PREDICT cnn(digits) ORDER BY input LIMIT 2 OFFSET 1",
    );
    assert_eq!(column_f64(&rows, "input"), vec![1.0, 2.0]);
}
