//! `cosa-extend`: see [`cosa::extend`].
fn main() -> std::process::ExitCode {
    cosa::cli::main::<cosa::extend::Args>()
}
