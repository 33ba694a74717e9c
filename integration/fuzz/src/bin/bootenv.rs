//! AFL++ target: `bootenv` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("bootenv");
}
