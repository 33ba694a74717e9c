//! AFL++ target: `chunk_index` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("chunk_index");
}
