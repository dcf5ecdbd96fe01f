//! `cosa-image`: see [`cosa::image`].
fn main() -> std::process::ExitCode {
    cosa::cli::main::<cosa::image::Args>()
}
