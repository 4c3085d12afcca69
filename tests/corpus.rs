//! Every saved analysis in queries/ runs end to end on the shipped models and data, so no
//! example can rot; each opens with a comment saying what it shows.

use ialgebra::exec::{Output, Session};

use crate::common::{announce_skip, root};

#[test]
fn every_saved_query_runs() {
    std::env::set_current_dir(root()).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(root().join("queries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "iql"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("quickstart.iql")));
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.starts_with("--"),
            "{} must open with a comment saying what it shows",
            f.display()
        );
        // Scripts on the downloaded MiniLM wait for tools/fetch_minilm.sh (CI runs it).
        if text.contains("models/downloaded/")
            && !root()
                .join("models/downloaded/all-MiniLM-L6-v2/model.safetensors")
                .is_file()
        {
            announce_skip(&format!(
                "{}: run `sh tools/fetch_minilm.sh` to fetch the model it uses",
                f.display()
            ));
            continue;
        }
        let mut s = Session::new();
        let outputs = s
            .execute(&text)
            .unwrap_or_else(|e| panic!("{}", e.render(&text, &f.display().to_string())));
        let tables = outputs
            .iter()
            .filter(|o| matches!(o, Output::Table(df) if df.height() > 0))
            .count();
        assert!(tables > 0, "{} shows no table", f.display());
    }
}
