//! Integration tests: the built binaries run against real work directories, stores
//! and tools. One test binary (as ripgrep does); modules by concern.

mod actions;
mod ami;
mod changed;
mod common;
mod compose;
mod ec2_stub;
mod example;
mod extend;
mod gitlab;
mod http;
mod image;
mod schema;
mod store_file;
mod store_ghrelease;
mod store_http;
mod store_s3;
mod store_servers;
mod store_util;
