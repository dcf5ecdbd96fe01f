//! Integration tests: the built binaries run against real work directories, stores
//! and tools. One test binary (as ripgrep does); modules by concern.

mod changed;
mod common;
mod compose;
mod example;
mod http;
mod schema;
