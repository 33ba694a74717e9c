//! AFL++ target: `fleet` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("fleet");
}
