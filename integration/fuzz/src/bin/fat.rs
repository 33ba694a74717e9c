//! AFL++ target: `fat` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("fat");
}
