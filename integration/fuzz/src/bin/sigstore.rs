//! AFL++ target: `sigstore` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("sigstore");
}
