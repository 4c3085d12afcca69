//! Parse → Display → parse gives the same tree (spans aside), for every saved query, every
//! statement of the .slt files, and some tricky cases; and printing is idempotent.

use ialgebra::syntax::parse;

use crate::common::root;

/// Debug text of a tree with every `Span { start: …, end: … }` removed.
fn without_spans(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(at) = rest.find("Span {") {
        out.push_str(&rest[..at]);
        let close = rest[at..].find('}').map_or(rest.len(), |c| at + c + 1);
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

fn check(text: &str, origin: &str) {
    let first = parse(text).unwrap_or_else(|e| panic!("{origin}: {}", e.render(text, origin)));
    let printed = first.to_string();
    let second = parse(&printed).unwrap_or_else(|e| {
        panic!(
            "{origin}: the printed form does not parse:\n{printed}\n{}",
            e.render(&printed, "printed")
        )
    });
    assert_eq!(
        without_spans(&format!("{first:?}")),
        without_spans(&format!("{second:?}")),
        "{origin}: the tree changed through\n{printed}"
    );
    assert_eq!(printed, second.to_string(), "{origin}: printing is not idempotent");
}

const TRICKY: &[&str] = &[
    "LET p = d[0:5] WITH SET rows 6:8, cols 6:8 = 1.0 WITH MASK columns a, 'b c', 3:5 WITH NOISE(0.1, 3) WITH BLUR(:s);",
    "SELECT * FROM m(d[1] WITH SET mean_radius = -0.5) JOIN m(d[2] WITH NOISE(0.2)) USING saliency;",
    "EXPORT REPORT SELECT * FROM m(d[1]) JOIN m2(d[1]) USING saliency TO 'r.html' OVERWRITE;",
    "SELECT * FROM (m(d[1]) USING saliency WINDOW rows 0:4) AS x JOIN m2(d[1]) AS y USING integrated_gradients(steps = 5) TARGET 3;",
    "SELECT a.attribution, y.value FROM m(d) ANTIJOIN (m(e) AT LAYER conv2) AS y AT LAYER fc1 USING layer_integrated_gradients;",
    "SELECT * FROM m(d) TARGET conv2[1, 2, 3] USING neuron_gradient THROUGH LAYER *;",
    "SELECT * FROM m(d[0:3]) THROUGH LAYER \"odd name\" TARGET fc1[:unit];",
    "SELECT method, avg(value) FROM m(d) USING saliency EVALUATE deletion(steps = 10, fill = 'blur'), sparseness GROUP BY method;",
    "SELECT * FROM m(d) EVALUATE infidelity(samples = :n) WHERE value > 0.1;",
    "SELECT * FROM INFLUENCE OF m(train) ON m(test[3] WITH SET rows 6:8, cols 6:8 = 1) USING tracin(layers = 'all', normalize = true) TARGET 0 ORDER BY influence DESC LIMIT 10;",
    "SELECT input, influence FROM INFLUENCE OF m(train) ON m(train);",
    "SELECT * FROM m(train) USING activation_clustering(dims = 5) AT LAYER fc1 WHERE suspicious;",
    "CONCEPT stripes = d[0:30] WITH SET rows 0:2, cols 0:8 = 1;",
    "LOAD MODEL m FROM 'e3.safetensors' ARCH 'm.json' CHECKPOINTS ('e1.safetensors' RATE 0.1, 'e2.safetensors', :third RATE :lr);",
    "SELECT concept, p_value FROM TCAV m(d[0:50]) AT LAYER fc1 CONCEPTS (stripes, dots) RANDOM 20 TARGET 7;",
    "SELECT a - -b, -(a + b) * c, NOT a = b AND c OR d FROM m(d);",
    "SELECT * FROM m(d) WHERE x NOT IN (1, 2.5, 'a''b') AND y IS NOT NULL OR z IS NULL;",
    "SELECT \"group\", \"weird name\", target FROM m(d[:i]) TARGET :t BASELINE mean(x) WINDOW rows :a:4, cols 0:8;",
    "SELECT count(*), sum(x) AS s FROM (SELECT * FROM PREDICT m(d[3:])) AS sub GROUP BY y HAVING sum(x) > 1e-3 ORDER BY 2 DESC LIMIT 5 OFFSET 1;",
    "(SELECT a FROM m(d)) UNION ALL ((SELECT a FROM m(d)) INTERSECT (SELECT a FROM m(d))) EXCEPT (SELECT a FROM m(d));",
    "LOAD DATA c FROM :path LABEL COLUMN diagnosis; LOAD MODEL m FROM 'a.pth' ARCH 'a.json'; SET method = saliency; SET x = 'text'; VAR v = -2.5e10;",
    "EXPORT SELECT * FROM m(d[0:10]) USING occlusion(window = 2, stride = 1) GRANULARITY patch(2) TO 'out.parquet' OVERWRITE; PLAN PREDICT m(d);",
    "SELECT * FROM m(d[0:0]) USING integrated_gradients(rule = riemann_trapezoid, steps = 5) WINDOW columns 0:3, a, 'b c' GRANULARITY column;",
    "SHOW MODELS; SHOW DATA; SHOW METHODS; SHOW LAYERS OF m; SHOW CACHE; SHOW SETTINGS; LET e = d[:5];",
    "LET adv = ATTACK pgd(eps = 0.1, steps = 20, random_start = true) ON m(d[0:100] WITH NOISE(0.1)) TARGET 3;",
    "LET attack = ATTACK fgsm(eps = :e) ON m(attack[0:2]);",
    "LOAD MODEL t FROM 'dir' HEAD 'h.safetensors'; LOAD MODEL o FROM 'm.onnx'; LOAD DATA s FROM 's.csv' TEXT COLUMN sentence LABEL COLUMN topic; LOAD DATA w FROM 'w.txt' TEXT;",
    "SELECT token, text FROM t(s[0]) USING integrated_gradients TARGET similarity(s[0], s[1] WITH SET columns 0:1 = 0) WINDOW tokens 1:4 GRANULARITY word;",
    "SELECT head, query, key FROM t(s) AT LAYER encoder.layer.3.attention USING layer_activation TARGET similarity(s[2]) BASELINE mask GRANULARITY token;",
    "SELECT * FROM PREDICT t(s WITH LAYER encoder.layer.0.attention[1] = 0) WHERE text = 'x';",
    "SELECT * FROM PREDICT m(d[17] WITH LAYER conv2[3] = 0 WITH LAYER fc1 SCALE -0.5 WITH LAYER fc2[1, 2] FROM d[4] WITH BLUR(1));",
    "SELECT * FROM m(d WITH LAYER l FROM e) WHERE input IN (SELECT input FROM PREDICT m(d) WHERE NOT correct) AND x > (SELECT max(y) FROM (SELECT 1 AS y FROM m(d)));",
    "SELECT x NOT IN (SELECT a FROM m(d)), (SELECT count(*) FROM PREDICT m(d)) + 1 FROM m(d);",
    "SELECT row_number() OVER (PARTITION BY input, a ORDER BY x DESC, y) AS r, sum(x) OVER (), rank() OVER (ORDER BY x) FROM m(d);",
    "SELECT * FROM m(d) JOIN m(e) AT LAYER * USING layer_activation;",
    "SELECT * FROM PREDICT m(d) TOP 3 AS before JOIN PREDICT m(d WITH MASK rows 0:2, cols 0:2) AS after WHERE prediction_changed;",
    "PREDICT m(d[0::n]) TOP :k;",
    "SELECT * FROM mlp(c[0]) WINDOW columns a, 'has \"quote\" and ''apostrophe''', \"odd[name\";",
    "SELECT ((SELECT max(x) FROM PREDICT m(d))) + (1), x IN ((SELECT a FROM m(d))), (((x))) FROM m(d);",
    "-- a comment\nSELECT /* inline */ x FROM m(d) -- trailing\n;",
    "WITH a AS (SELECT input FROM PREDICT m(d)), \"b c\" AS ((SELECT * FROM a) UNION (SELECT 1 AS input FROM a)) SELECT * FROM \"b c\" AS x WHERE input IN (WITH z AS (SELECT 2 AS q FROM a) SELECT q FROM z);",
    "LET t = (WITH a AS (PREDICT m(d)) SELECT * FROM a); EXPORT t TO 't.csv' OVERWRITE; SELECT (WITH a AS (PREDICT m(d)) SELECT max(input) FROM a) FROM t;",
    "SELECT * FROM t JOIN PREDICT m(d) TOP 2 AS p USING (input, label); SELECT * FROM (SELECT * FROM t) AS a JOIN u AS b ON a.input = b.input AND label = b.k;",
    "LOAD DATA f FROM 'x.npy' SHAPE (1, 8, 8) LABELS 'y.npy' CLASSES 'c.txt'; LOAD DATA g FROM 't.csv' SHAPE (64) LABEL COLUMN y;",
    "WITH a AS (PREDICT m(d)) (WITH b AS (SELECT * FROM a) SELECT * FROM b) UNION (SELECT * FROM a);",
];

#[test]
fn tricky_statements_round_trip() {
    for (i, t) in TRICKY.iter().enumerate() {
        check(t, &format!("tricky {i}"));
    }
}

#[test]
fn saved_queries_and_test_files_round_trip() {
    let mut n = 0;
    for dir in ["queries", "tests/slt"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            match path.extension().and_then(|e| e.to_str()) {
                Some("iql") => {
                    check(&text, &path.display().to_string());
                    n += 1;
                }
                Some("slt") => {
                    // the SQL lines of each record (between its header and a blank line or ----)
                    let mut lines = text.lines().peekable();
                    while let Some(line) = lines.next() {
                        if line.starts_with("statement") || line == "query" {
                            let mut sql = Vec::new();
                            while let Some(l) = lines.peek() {
                                if l.trim().is_empty() || l.trim() == "----" {
                                    break;
                                }
                                sql.push(*l);
                                lines.next();
                            }
                            let sql = sql.join("\n");
                            if line.starts_with("statement error") && parse(&sql).is_err() {
                                continue;
                            }
                            check(&sql, &path.display().to_string());
                            n += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    assert!(n > 50, "only {n} scripts checked");
}
