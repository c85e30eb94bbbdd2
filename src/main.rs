//! The `fukastor` binary: a thin wrapper around [`fukastor::cli`].

fn main() {
    std::process::exit(fukastor::cli::main());
}
