//! AFL++ target: `coap` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("coap");
}
