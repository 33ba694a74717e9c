//! AFL++ target: `rules` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("rules");
}
