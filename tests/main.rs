//! The one integration test binary: each module tests one face of the product.

mod algebra;
mod attacks;
mod case_studies;
mod cli;
mod common;
mod completion;
mod corpus;
mod determinism;
mod edits;
mod errors;
mod files;
mod fuzz_corpus;
mod layers;
mod mutations;
mod onnx;
mod parity;
mod patching;
mod pictures;
mod predictions;
mod pty;
mod relational;
mod report;
mod roundtrip;
mod slt;
mod text;
mod zoo;
