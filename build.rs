//! Build script: links the `fukastor` binary as a position-dependent
//! executable (`-no-pie`).
//!
//! Every command is a short-lived process, and a PIE binary of this size
//! makes the dynamic loader apply ~17,000 relative relocations at each
//! start, touching (and copying) every page of its relocated data: about
//! 0.7 ms and 80 page faults per command on the reference machine
//! (docs/benchmarks.md, *Process start*). The code is still compiled
//! position-independent; only the final link of the binary changes, and
//! test binaries are left as they are.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
