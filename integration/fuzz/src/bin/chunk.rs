//! AFL++ target: `chunk` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("chunk");
}
