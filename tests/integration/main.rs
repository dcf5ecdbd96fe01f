//! Integration tests: the built binaries run against real work directories, stores
//! and tools. One test binary (as ripgrep does); modules by concern.

mod actions;
mod ami;
mod changed;
mod common;
mod compose;
mod consistency;
mod crash;
mod ec2_stub;
mod example;
mod extend;
mod faults;
mod gitlab;
mod hostile;
mod http;
mod image;
mod props;
mod schema;
mod secrets;
mod store_file;
mod store_ghrelease;
mod store_http;
mod store_s3;
mod store_servers;
mod store_util;
