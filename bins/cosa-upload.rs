//! `cosa-upload`: see [`cosa::upload`].
fn main() -> std::process::ExitCode {
    cosa::cli::main::<cosa::upload::Args>()
}
