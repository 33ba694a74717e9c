//! AFL++ target: `trust` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("trust");
}
