//! AFL++ target: `modbus` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("modbus");
}
