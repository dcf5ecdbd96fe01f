//! cosa: coreos-assembler's build pipeline as a library behind small CI-plugin binaries.
//!
//! The work directory and build directory layout are coreos-assembler's own, so that
//! its tooling (and anything else that reads `builds/builds.json` and `meta.json`) can
//! read what we write. Each module covers one concern:
//!
//! - [`workdir`]: the coreos-assembler work directory (`src/config`, `builds`, `tmp`, `cache`)
//!   and its lock.
//! - [`builds`]: `builds/builds.json`, the index of builds, newest first.
//! - [`meta`]: `builds/<id>/<arch>/meta.json`, one build for one architecture.
//! - [`names`]: validation of build IDs and arch names, artifact file names.
//! - [`version`]: rpm-ostree's `automatic-version-prefix` semantics.
//! - [`prune`]: keeping the last N builds.
//! - [`changed`]: the decision behind `cosa-changed`.
//! - [`store`]: where build directories are kept between CI jobs.
//! - [`ci`]: CI outputs (GitHub `$GITHUB_OUTPUT`, GitLab dotenv, log groups).
//! - [`cmd`]: running external tools with their errors captured.
//! - [`fsutil`]: atomic file writes and symlink replacement.
//! - [`parse`]: the one place YAML and JSON documents are parsed (file:line:column errors,
//!   size and alias-bomb limits).
//! - [`cli`]: shared command-line plumbing (logging, exit codes).

pub mod builds;
pub mod changed;
pub mod ci;
pub mod cli;
pub mod cmd;
pub mod compose;
pub mod extend;
pub mod fetch;
pub mod fsutil;
pub mod image;
pub mod meta;
pub mod names;
pub mod parse;
pub mod prune;
pub mod scratch;
pub mod store;
pub mod treefile;
pub mod upload;
pub mod userns;
pub mod version;
pub mod workdir;
