//! `cosa-compose`: see [`cosa::compose`].
fn main() -> std::process::ExitCode {
    cosa::cli::main::<cosa::compose::Args>()
}
