//! AFL++ target: `cbor` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("cbor");
}
