pub mod error;
pub mod model;
pub mod data;
pub mod ops;
