//! The one integration test binary: each module tests one face of the product.

mod common;
mod parity;
mod slt;
mod errors;
mod roundtrip;
mod corpus;
mod files;
mod cli;
