//! Embedding the engine in a Rust program: one `Session`, IQL text in, polars
//! DataFrames out. Run it with `cargo run --example embed` from the repository root.

use ialgebra::exec::{Output, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut session = Session::new();
    let script = "
        LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
        LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
        SELECT row, col, attribution FROM cnn(digits[17]) USING integrated_gradients
        ORDER BY attribution DESC LIMIT 5;";
    // Errors carry the span of the text they come from; render them for people.
    let outputs = session.execute(script).map_err(|e| e.render(script, "embed"))?;
    for output in &outputs {
        match output {
            Output::Table(df) => println!("{df}"),
            Output::Message(m) => println!("{m}"),
            Output::Plan(p) => println!("{p}"),
        }
    }
    // The frames are ordinary polars DataFrames.
    if let Some(Output::Table(top)) = outputs.last() {
        let best = top.column("attribution")?.f32()?.get(0).unwrap_or(f32::NAN);
        println!("the strongest pixel carries {best:.4} of the logit");
    }
    Ok(())
}
