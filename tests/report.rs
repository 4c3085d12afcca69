//! EXPORT REPORT … TO 'f.html': one self-contained page (no external URL, pictures
//! inlined) naming every input of the result with each model's reading of it, the query
//! and its plan.

use crate::common::*;

#[test]
fn the_report_is_self_contained_and_names_every_input() {
    let mut s = session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD MODEL cnn_b FROM 'models/digits_cnn_b.safetensors' ARCH 'models/digits_cnn_b.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';",
    );
    let dir = root().join("target/test-scratch/report");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.html");
    let _ = std::fs::remove_file(&path);
    s.execute(&format!(
        "EXPORT REPORT SELECT * FROM cnn(digits[55:58]) JOIN cnn_b(digits[55:58]) USING integrated_gradients TO '{}'",
        path.display()
    ))
    .unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    for id in [55, 56, 57] {
        assert!(html.contains(&format!("<h3>input {id}</h3>")), "input {id} is named");
    }
    // every picture is inlined: the three inputs and their maps
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 6);
    for external in ["http://", "https://", "src=\"//", "<link", "<script src", "@import"] {
        assert!(
            !html.contains(external),
            "the page refers to something outside it: {external}"
        );
    }
    assert!(html.contains("<h2>Query</h2>") && html.contains("JOIN cnn_b(digits[55:58])"));
    assert!(html.contains("<h2>Plan</h2>") && html.contains("Join (attribution = mean of the sides)"));
    // the result table with its 3 × 64 rows, sortable
    assert_eq!(
        html.matches("<tr><td>").count() - 18,
        192,
        "3 inputs × 2 models × 3 top-class rows, then the table"
    );
    // each side's reading of each input: the models disagree on input 57
    for side in ["cnn(digits[55:58])", "cnn_b(digits[55:58])"] {
        assert_eq!(
            html.matches(&format!("<th colspan=\"2\">{side}</th>")).count(),
            3,
            "{side}"
        );
    }
    let mut predicted = |model: &str| {
        let df = query(&mut s, &format!("SELECT prediction FROM PREDICT {model}(digits[57])"));
        column_f64(&df, "prediction")[0] as i64
    };
    let (a, b) = (predicted("cnn"), predicted("cnn_b"));
    assert_ne!(a, b);
    let section = &html[html.find("<h3>input 57</h3>").unwrap()..];
    let section = &section[..section.find("</section>").unwrap()];
    for p in [a, b] {
        assert!(
            section.contains(&format!("<tr><th>prediction</th><td>{p}</td></tr>")),
            "input 57 shows prediction {p}: {section}"
        );
    }
    assert!(html.contains("onclick=\"sortBy(0)\""));
    // a report is HTML, and HTML is only a report
    let err = s
        .execute(&format!(
            "EXPORT REPORT PREDICT cnn(digits[0]) TO '{}'",
            dir.join("r.png").display()
        ))
        .unwrap_err();
    assert!(err.message.contains("a report is an HTML file"), "{}", err.message);
    let err = s
        .execute(&format!(
            "EXPORT PREDICT cnn(digits[0]) TO '{}'",
            dir.join("r.html").display()
        ))
        .unwrap_err();
    assert!(err.message.contains("EXPORT REPORT"), "{}", err.message);
}
