//! Stage 4: results for people and files. Terminal tables that fit the width, CSV and
//! JSON for pipes, and exports written atomically.

pub mod export;
pub mod picture;
pub mod progress;
pub mod report;
pub mod table;

pub use export::{write_atomically, write_frame};
pub use table::{Format, render};
