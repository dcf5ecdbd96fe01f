//! `cosa-changed`: see [`cosa::changed`].
fn main() -> std::process::ExitCode {
    cosa::cli::main::<cosa::changed::Args>()
}
