//! ialgebra: an interactive query engine for interpreting deep neural networks.
//!
//! An analyst asks *why* a model decided something by writing IQL queries; the engine
//! parses them into a plan of composable interpretation operators (after i-Algebra,
//! Zhang et al., AAAI 2021), runs the plan on models whose activations it caches, and
//! answers with polars tables. Attributions match Captum's definitions to the letter.
//!
//! ```text
//! text ──pest──▶ syntax tree ──▶ logical plan ──▶ executor ──▶ DataFrame ──▶ output
//!  grammar/        syntax          plan            exec + ops    (polars)      output
//!                                                    │
//!                                 model (layers, hook points, layer-wise gradients)
//!                                 data  (datasets, labels, input ids)
//! ```
//!
//! Each stage has one entry point: [`syntax::parse`], [`plan::plan`],
//! [`exec::Session::execute`] (which runs the others), [`output::render`].
//!
//! ```no_run
//! use ialgebra::exec::{Output, Session};
//! let mut s = Session::new();
//! let out = s.execute("
//!     LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
//!     LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
//!     SELECT row, col, attribution FROM cnn(digits[17]) ORDER BY attribution DESC LIMIT 5;").unwrap();
//! if let Some(Output::Table(df)) = out.last() {
//!     println!("{df}");
//! }
//! ```

pub mod cli;
pub mod data;
pub mod error;
pub mod exec;
pub mod model;
pub mod ops;
pub mod output;
pub mod plan;
pub mod syntax;

pub use error::{Error, Result};
pub use exec::{Output, Session};
