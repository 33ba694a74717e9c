//! AFL++ target: `tuf_metadata` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("tuf_metadata");
}
