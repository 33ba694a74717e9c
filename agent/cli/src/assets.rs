//! `ferry generate-assets --out DIR` (hidden): the man pages and shell
//! completions, generated from the same argument definitions as `--help`,
//! for packages and images (`images/deb/build`).

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn generate(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // ferry.1 and one page per subcommand (ferry-apply.1, …).
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "ferry", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}
