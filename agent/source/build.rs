//! The build's time, a safe default for the secure time floor (as systemd
//! uses its build time as the earliest clock): `SOURCE_DATE_EPOCH` when the
//! build sets it (reproducible builds, Debian, Nix), else the time of the
//! commit being built, else none.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok());
    let from_git = || {
        let out = Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(std::env::var_os("CARGO_MANIFEST_DIR")?)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        String::from_utf8(out.stdout)
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()
    };
    let epoch = from_env.or_else(from_git).unwrap_or(0).max(0);
    println!("cargo:rustc-env=FERRY_BUILD_EPOCH={epoch}");
}
