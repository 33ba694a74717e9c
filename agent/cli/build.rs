//! What `ferry --version` says about the build: the commit (`FERRY_COMMIT`
//! when the build sets it, as packaging from a tarball does; else the git
//! checkout's) and the target triple (`FERRY_TARGET` when ferry-assets
//! describes a binary built for another target).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(std::env::var_os("CARGO_MANIFEST_DIR")?)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_COMMIT");
    let commit = std::env::var("FERRY_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Built again when the checkout moves to another commit.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
                if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    println!("cargo:rerun-if-changed={dir}/{head}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FERRY_COMMIT={commit}");
    // FERRY_TARGET: the triple ferry-assets describes when the pages are
    // made on another host than the binary's target (cross packaging).
    println!("cargo:rerun-if-env-changed=FERRY_TARGET");
    let target = std::env::var("FERRY_TARGET")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| std::env::var("TARGET").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FERRY_TARGET={target}");
}
