//! `ferry-assets --out DIR`: ferry's man pages (`DIR/man/ferry.1`, one page
//! per subcommand) and bash, zsh and fish completions (`DIR/completions/`),
//! generated from `agent/cli/src/cli.rs`, the definitions `ferry --help`
//! prints, on the machine that builds the package. A cross build
//! (`images/deb/build --target aarch64-unknown-linux-gnu`, the Nix package
//! for another platform) never has to run the binary it made.
//!
//! The pages' VERSION section is `ferry --version` of the build they
//! describe: build this with the same cargo features as the binary, and set
//! `FERRY_TARGET` to its target triple when it is not the host's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;

// The definitions are only described here, never run: most of what
// `ferry` reads from them is unused in this program.
#[allow(dead_code)]
#[path = "../../cli/src/cli.rs"]
mod cli;

fn main() -> Result<()> {
    generate(&out_dir(std::env::args_os().skip(1))?)
}

/// The directory of `--out DIR`, the only form accepted.
fn out_dir(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<PathBuf> {
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--out" => Ok(PathBuf::from(dir)),
        _ => bail!("usage: ferry-assets --out DIR"),
    }
}

fn generate(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // ferry.1 and one page per subcommand (ferry-apply.1, …).
    clap_mangen::generate_to(cli::Cli::command(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli::Cli::command(), "ferry", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_gets_a_page_and_every_shell_its_completions() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let page = |name: &str| std::fs::read_to_string(dir.path().join("man").join(name));
        let top = page("ferry.1").unwrap();
        // The VERSION section is `ferry --version` of the build described.
        assert!(
            top.contains(&format!("commit: {}", env!("FERRY_COMMIT"))),
            "{top}"
        );
        assert!(top.contains("features: "), "{top}");
        for sub in cli::Cli::command().get_subcommands() {
            if sub.is_hide_set() {
                continue;
            }
            let name = format!("ferry-{}.1", sub.get_name());
            let text = page(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(text.contains(".SH NAME"), "{name}");
        }
        for file in ["ferry.bash", "_ferry", "ferry.fish"] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            assert!(text.contains("apply"), "{file}");
        }
    }

    #[test]
    fn only_out_dir_is_accepted() {
        let args = |a: &[&str]| out_dir(a.iter().map(std::ffi::OsString::from));
        assert_eq!(args(&["--out", "d"]).unwrap(), PathBuf::from("d"));
        for bad in [
            &[][..],
            &["d"],
            &["--out"],
            &["--out", "d", "e"],
            &["--dir", "d"],
        ] {
            let e = args(bad).unwrap_err().to_string();
            assert_eq!(e, "usage: ferry-assets --out DIR", "{bad:?}");
        }
    }
}
