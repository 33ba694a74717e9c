//! AFL++ target: `manifest` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("manifest");
}
