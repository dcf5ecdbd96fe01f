//! `cosa-fetch`: see [`cosa::fetch`].
fn main() -> std::process::ExitCode {
    cosa::cli::main::<cosa::fetch::Args>()
}
