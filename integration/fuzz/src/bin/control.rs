//! AFL++ target: `control` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("control");
}
