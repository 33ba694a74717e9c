//! AFL++ entry point: `ferry-fuzz TARGET` feeds stdin to one target (see
//! the crate docs); one binary for every target keeps the test build small.
fn main() {
    let mut args = std::env::args().skip(1);
    match (args.next(), args.next()) {
        (Some(name), None) if ferry_fuzz::TARGETS.iter().any(|(n, _)| *n == name) => {
            ferry_fuzz::main_for(&name)
        }
        _ => {
            let names: Vec<&str> = ferry_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            eprintln!(
                "usage: ferry-fuzz TARGET < input\ntargets: {}",
                names.join(" ")
            );
            std::process::exit(2);
        }
    }
}
