//! The engine as a library for other front ends (the Python package): arrays loaded from
//! memory with their input ids, tables kept from outside, and a query split over blocks
//! (`plan::distribute`) giving, block by block and merged, the whole dataset's table.

use ialgebra::exec::Output;
use ialgebra::plan::distribute::split_for_blocks;
use polars::prelude::*;

use crate::common::{fixture, npy, query, root, session};

const SETUP: &str =
    "LOAD MODEL m FROM 'models/digits_cnn_backdoor.safetensors' ARCH 'models/digits_cnn_backdoor.json';";

/// The first `n` backdoor training digits: values (N × 64) and labels.
fn train(n: usize) -> (Vec<f32>, Vec<i64>) {
    let (_, x) = npy(&root().join("data/digits_backdoor_train_x.npy"));
    let (_, y) = npy(&root().join("data/digits_backdoor_train_y.npy"));
    (
        x[..n * 64].iter().map(|&v| v as f32).collect(),
        y[..n].iter().map(|&v| v as i64).collect(),
    )
}

/// Runs `text` over `blocks` blocks of the first `n` inputs the way ialgebra.ray does:
/// each block loaded under the dataset's name with its ids, the pushed query, the
/// results concatenated in input order, kept as `merged`, and the after query.
fn by_blocks(text: &str, n: usize, blocks: usize) -> DataFrame {
    let split = split_for_blocks(text, "merged").unwrap_or_else(|e| panic!("{}", e.render(text, "q")));
    let (x, y) = train(n);
    let mut merged: Option<DataFrame> = None;
    let per = n.div_ceil(blocks);
    for start in (0..n).step_by(per) {
        let end = (start + per).min(n);
        let mut worker = session(SETUP);
        let ids: Vec<i64> = (start as i64..end as i64).collect();
        worker
            .load_array(
                &split.dataset,
                &[end - start, 1, 8, 8],
                x[start * 64..end * 64].to_vec(),
                Some(y[start..end].to_vec()),
                Some(ids),
            )
            .expect("a block loads");
        let part = query(&mut worker, &split.pushed);
        merged = Some(match merged {
            None => part,
            Some(mut m) => {
                m.vstack_mut(&part).expect("the blocks' columns agree");
                m
            }
        });
    }
    let merged = merged.expect("at least one block");
    match &split.after {
        None => merged,
        Some(after) => {
            let mut driver = ialgebra::exec::Session::new();
            driver.keep_table("merged", merged, "blocks").expect("kept");
            query(&mut driver, after)
        }
    }
}

fn whole(text: &str, n: usize) -> DataFrame {
    let mut s = session(SETUP);
    let (x, y) = train(n);
    s.load_array("train", &[n, 1, 8, 8], x, Some(y), None).expect("loads");
    query(&mut s, text)
}

#[test]
fn a_query_split_over_blocks_gives_the_whole_datasets_table_bit_for_bit() {
    for text in [
        // The contamination audit's score: per input (pushed), ordered and cut after.
        "SELECT input, label, prediction, max(attribution) AS score FROM m(train) USING integrated_gradients \
         GROUP BY input, label, prediction ORDER BY score DESC, input LIMIT 25",
        // Row-local: nothing after the merge.
        "SELECT input, row, col, attribution FROM m(train) USING saliency WHERE attribution > 0.5",
        // Groups across inputs: the rows merged, the grouping after.
        "SELECT label, count(*) AS n, max(attribution) AS peak FROM m(train) USING input_x_gradient \
         WHERE row < 4 GROUP BY label ORDER BY label",
        // OFFSET: each block keeps LIMIT + OFFSET.
        "SELECT input, confidence FROM PREDICT m(train) ORDER BY confidence, input LIMIT 5 OFFSET 7",
    ] {
        let want = whole(text, 120);
        for blocks in [1, 3, 7] {
            let got = by_blocks(text, 120, blocks);
            assert!(
                got.equals_missing(&want),
                "{text}\n{blocks} blocks:\n{got}\nwhole:\n{want}"
            );
        }
    }
}

#[test]
fn arrays_load_from_memory_with_their_ids_and_are_checked() {
    let mut s = session(SETUP);
    let (x, y) = train(4);
    let msg = s.load_array(
        "part",
        &[3, 1, 8, 8],
        x[64..].to_vec(),
        Some(y[1..].to_vec()),
        Some(vec![5, 9, 12]),
    );
    assert!(
        matches!(msg, Ok(Output::Message(ref m)) if m == "loaded data part: 3 inputs of shape [1, 8, 8], with labels")
    );
    let df = query(&mut s, "SELECT input, label FROM PREDICT m(part)");
    assert_eq!(
        df.column("input").unwrap().i64().unwrap().to_vec(),
        vec![Some(5), Some(9), Some(12)]
    );
    // The same digit under its kept id answers as in the file.
    let by_id = query(&mut s, "SELECT row, col, attribution FROM m(part[9]) USING saliency");
    let mut file = session(&format!("{SETUP} LOAD DATA t FROM 'data/digits_backdoor_train_x.npy';"));
    let from_file = query(&mut file, "SELECT row, col, attribution FROM m(t[2]) USING saliency");
    assert!(by_id.equals(&from_file));

    let err = |r: ialgebra::Result<Output>| r.expect_err("refused").to_string();
    let mut nan = x[..64].to_vec();
    nan[10] = f32::NAN;
    assert!(err(s.load_array("n", &[1, 1, 8, 8], nan, None, Some(vec![40]))).contains("input 40 holds NaN at"));
    assert!(err(s.load_array("d", &[2, 1, 8, 8], x[..128].to_vec(), None, Some(vec![3, 3]))).contains("must increase"));
    assert!(
        err(s.load_array("l", &[2, 1, 8, 8], x[..128].to_vec(), Some(vec![1]), None)).contains("2 inputs but 1 labels")
    );
    assert!(err(s.load_array("s", &[2, 1, 8, 8], x[..64].to_vec(), None, None)).contains("holds 128 values, not 64"));
    assert!(err(s.load_array("f", &[64], x[..64].to_vec(), None, None)).contains("batch dimension"));
    assert!(err(s.load_array("m", &[1, 1, 8, 8], x[..64].to_vec(), None, None)).contains("already a model"));
    assert!(err(s.load_array("a b", &[1, 1, 8, 8], x[..64].to_vec(), None, None)).contains("cannot name"));
    assert_eq!(s.dataset_names(), vec!["part".to_string()]);
}

#[test]
fn tables_kept_from_outside_join_interpretation_results() {
    let mut s = session(&format!(
        "{SETUP} LOAD DATA d FROM '{}';",
        fixture("../../data/digits_test_x.npy").display()
    ));
    let notes = df!("input" => [0i64, 2], "note" => ["first", "third"]).unwrap();
    assert!(
        matches!(s.keep_table("notes", notes, "test"), Ok(Output::Message(ref m)) if m.starts_with("kept table notes: 2 rows"))
    );
    let joined = query(
        &mut s,
        "SELECT p.input, n.note FROM (PREDICT m(d[0:3])) AS p JOIN notes AS n ON p.input = n.input",
    );
    assert_eq!(joined.height(), 2);
    assert!(s.keep_table("m", df!("a" => [1i64]).unwrap(), "test").is_err());
}
