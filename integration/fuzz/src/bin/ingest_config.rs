//! AFL++ target: `ingest_config` (see the crate docs).
fn main() {
    ferry_fuzz::main_for("ingest_config");
}
