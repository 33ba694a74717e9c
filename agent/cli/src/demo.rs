//! `ferry demo`: a complete signed reconcile from an embedded example
//! repository, in a temporary directory, with no network beyond loopback and
//! no root.
//!
//! It generates a key, signs a TUF repository with it (tough's
//! `RepositoryEditor`) and serves it on 127.0.0.1 from inside the process.
//! The device trusts only that repository's `root.json`. It applies revision
//! 1, shows the plan for revision 2 and applies it, rolls back, verifies the
//! audit chain and prints the status, showing every transition as it is
//! recorded.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_engine::render::facts::Facts;
use ferry_engine::render::report::report;
use ferry_engine::{Config, Engine};

use crate::demo_repo::DemoRepo;
use crate::exit::Code;
use crate::output;

macro_rules! files {
    ($rev:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../demo/", $rev, "/", $path)))),*]
    };
}

const REV1: &[(&str, &str)] = files!("rev1":
    "ferry.yaml.j2",
    "templates/bridge.conf.j2",
    "templates/site.env.j2",
    "files/motd",
    "files/gw3000-serial.conf",
    "vars/common.yaml",
    "vars/sites/plant-7.yaml",
);

const REV2: &[(&str, &str)] = files!("rev2":
    "ferry.yaml.j2",
    "templates/bridge.conf.j2",
    "templates/site.env.j2",
    "files/maintenance.txt",
    "files/gw3000-serial.conf",
    "vars/common.yaml",
    "vars/sites/plant-7.yaml",
);

const FACTS: &str = include_str!("../demo/facts.toml");

/// Prints the audit entries recorded since `seen`, returns the new count.
fn show_transitions(engine: &Engine, seen: usize) -> Result<usize> {
    let entries = engine.audit_entries()?;
    for e in &entries[seen.min(entries.len())..] {
        let what = match (e.details.get("resource"), e.details.get("kind")) {
            (Some(r), Some(k)) => format!(
                "{} {} {}",
                e.details["op"].as_str().unwrap_or("?"),
                k.as_str().unwrap_or("?"),
                r.as_str().unwrap_or("?")
            ),
            (None, Some(k)) => format!(
                "{} transition #{}",
                k.as_str().unwrap_or("?"),
                e.details["transition"]
            ),
            _ => String::new(),
        };
        println!(
            "    audit #{:<3} gen {:<2} {:<11} {what}",
            e.seq,
            e.generation.map_or("-".to_owned(), |g| g.to_string()),
            e.event
        );
    }
    Ok(entries.len())
}

fn show_plan(engine: &Engine, src: &dyn ferry_source::Source, facts: &Facts) -> Result<()> {
    let (rev, desired, plan) = engine.plan(src, None, facts)?;
    output::plan(&report(&plan, &*rev, &desired, Some(engine.store())), false)
}

fn show_last_line(path: &Path) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    println!(
        "    {}: {}",
        path.display(),
        text.lines().last().unwrap_or_default()
    );
    Ok(())
}

pub fn run(dir: Option<&Path>) -> Result<Code> {
    let temp;
    let base: PathBuf = match dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            std::path::absolute(d)?
        }
        None => {
            temp = tempfile::Builder::new().prefix("ferry-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let published = base.join("repository");
    let root = base.join("root");
    let state = base.join("state");
    fs::create_dir_all(&root)?;
    let facts_path = base.join("facts.toml");
    fs::write(&facts_path, FACTS)?;
    let repo = DemoRepo::create(&published).context("creating the demo TUF repository")?;
    let url = repo.serve().context("serving the demo repository")?;
    let trusted_root = repo.root();
    let config_text = format!(
        "state_dir = {state:?}\nfacts = {facts_path:?}\n\n[source]\nkind = \"tuf\"\n\n[source.tuf]\nmetadata_url = \"{url}/metadata\"\ntargets_url = \"{url}/targets\"\nroot = {trusted_root:?}\nmanifest = \"ferry.yaml.j2\"\n\n[files]\nroot = {root:?}\n",
    );
    let config_path = base.join("ferry.toml");
    fs::write(&config_path, &config_text)?;
    let config = Config::from_toml(&config_path, &config_text)?;
    let src = ferry_engine::fetch::source(&config)?;
    let facts = Facts::from_file(&facts_path)?;

    println!("ferry demo in {}", base.display());
    println!(
        "  config {}; files are installed under {}",
        config_path.display(),
        root.display()
    );
    println!(
        "  device facts {} (gw-demo-01, an Acme GW-3000 at site plant-7)",
        facts_path.display()
    );
    println!(
        "  TUF repository {} signed with a key made just now, served at {url};\n  the device trusts only {}\n",
        published.display(),
        trusted_root.display()
    );

    let mut engine = Engine::open(config.clone())?;
    let mut seen = 0;

    println!("1. revision 1 is published; plan and apply:");
    repo.publish(1, REV1)?;
    show_plan(&engine, &*src, &facts)?;
    output::outcome(&engine.apply(&*src, &facts)?, false)?;
    seen = show_transitions(&engine, seen)?;

    println!("\n2. a second apply of the same revision changes nothing:");
    output::outcome(&engine.apply(&*src, &facts)?, false)?;

    println!("\n3. revision 2 is published; plan and apply:");
    repo.publish(2, REV2)?;
    show_plan(&engine, &*src, &facts)?;
    output::outcome(&engine.apply(&*src, &facts)?, false)?;
    seen = show_transitions(&engine, seen)?;
    let bridge = root.join("etc/mosquitto/conf.d/bridge.conf");
    show_last_line(&bridge)?;

    println!("\n4. an operator rolls back to the previous generation:");
    output::outcome(&engine.rollback(None)?, false)?;
    seen = show_transitions(&engine, seen)?;
    show_last_line(&bridge)?;
    let _ = seen;

    println!("\n5. the audit chain verifies:");
    output::audit_ok(engine.audit_verify()?, false)?;

    println!("\n6. status:");
    output::status(&state, Some(&engine.status()?), None, false)?;
    if dir.is_some() {
        println!(
            "\nkept {}; try: ferry --config {} generations",
            base.display(),
            config_path.display()
        );
    }
    Ok(Code::Success)
}
