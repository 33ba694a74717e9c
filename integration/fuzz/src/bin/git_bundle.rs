//! AFL++ target: `git_bundle` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("git_bundle");
}
