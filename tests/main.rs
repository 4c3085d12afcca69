//! The one integration test binary: each module tests one face of the product.

mod algebra;
mod cli;
mod common;
mod corpus;
mod errors;
mod files;
mod layers;
mod mutations;
mod parity;
mod roundtrip;
mod slt;
