//! `ferry rules check|test|run`: the rule language for admins, before they
//! sign a commit, and a foreground engine for trying rules on live events.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
#[cfg(feature = "rules")]
use std::sync::Arc;

use anyhow::{Context, Result, bail};
#[cfg(feature = "rules")]
use ferry_ingest::config::CoapConfig;
use ferry_ingest::config::{IngestConfig, ModbusDevice};
#[cfg(feature = "rules")]
use ferry_rules::runtime::{Loaded, MqttTarget, Options, Runtime};
use ferry_rules::{Compiled, Envelope, Output};
use serde_json::json;

use crate::cli::RulesAction;
use crate::exit::Code;

pub fn run(action: RulesAction) -> Result<Code> {
    match action {
        RulesAction::Check {
            file,
            out,
            print,
            modbus,
        } => check(&file, out.json, print, modbus.as_deref()),
        RulesAction::Test { file, events, out } => test(&file, &events, out.json),
        #[cfg(not(feature = "rules"))]
        RulesAction::Run { .. } => {
            bail!(crate::cli::not_built_in("`ferry rules run`", "rules"))
        }
        #[cfg(feature = "rules")]
        RulesAction::Run {
            files,
            mqtt,
            client_id,
            socket,
            alert_topic,
            coap,
            coap_max_payload,
            modbus,
            queue,
            print,
        } => {
            let sources = IngestConfig {
                coap: coap.map(|bind| CoapConfig {
                    bind,
                    max_payload: coap_max_payload,
                }),
                modbus: match &modbus {
                    Some(path) => read_modbus(path)?,
                    None => Vec::new(),
                },
            };
            let plan = sources.plan("").map_err(|e| match &modbus {
                Some(path) if e.key.starts_with("modbus") => {
                    anyhow::anyhow!("{}: {e}", path.display())
                }
                _ => anyhow::anyhow!("--{e}"),
            })?;
            let mut sets = Vec::new();
            for f in &files {
                let (text, compiled) = read(f)?;
                let compiled = match compiled.and_then(|c| {
                    c.check_writes(|d, r| plan.writable(d, r))?;
                    Ok(c)
                }) {
                    Ok(c) => c,
                    Err(e) => bail!("{}", e.render(&f.display().to_string(), &text).trim_end()),
                };
                let name = f
                    .file_stem()
                    .map_or("rules".into(), |s| s.to_string_lossy().into_owned());
                sets.push((Arc::from(name.as_str()), Arc::new(compiled)));
            }
            let options = Options {
                mqtt: mqtt
                    .as_deref()
                    .map(MqttTarget::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                client_id,
                socket,
                alert_topic,
                print_actions: print,
                queue,
            };
            if options.mqtt.is_none()
                && options.socket.is_none()
                && plan.coap.is_none()
                && plan.devices.is_empty()
            {
                bail!(
                    "no event input: give --mqtt URL, --socket PATH, --coap ADDR and/or --modbus FILE"
                );
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let loaded = Loaded {
                    label: "command line".into(),
                    sets,
                };
                let engine = Runtime::start(options, loaded, None)?;
                let mut ingest = crate::rules_agent::sources(&engine);
                ingest.apply(&plan).await.with_context(|| {
                    format!(
                        "--coap {}",
                        plan.coap
                            .as_ref()
                            .map(|c| c.bind.to_string())
                            .unwrap_or_default()
                    )
                })?;
                if let Some(addr) = ingest.coap_addr() {
                    eprintln!("coap: listening on {addr}");
                }
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                anyhow::Ok(())
            })?;
            Ok(Code::Success)
        }
    }
}

/// The `[[modbus]]` devices of a `--modbus` file.
fn read_modbus(path: &Path) -> Result<Vec<ModbusDevice>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        modbus: Vec<ModbusDevice>,
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_string(&mut text))
        .with_context(|| format!("reading {}", path.display()))?;
    let file: File = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    Ok(file.modbus)
}

fn read(file: &Path) -> Result<(String, Result<Compiled, ferry_rules::RulesError>)> {
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(ferry_rules::parse::MAX_SOURCE_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .with_context(|| format!("reading {}", file.display()))?;
    let compiled = ferry_rules::compile_source(&text);
    Ok((text, compiled))
}

fn check(file: &Path, json: bool, print: bool, modbus: Option<&Path>) -> Result<Code> {
    let (text, compiled) = read(file)?;
    let compiled = match modbus {
        None => compiled,
        Some(path) => {
            let plan = IngestConfig {
                coap: None,
                modbus: read_modbus(path)?,
            }
            .plan("")
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            compiled.and_then(|c| {
                c.check_writes(|d, r| plan.writable(d, r))?;
                Ok(c)
            })
        }
    };
    let name = file.display().to_string();
    match compiled {
        Ok(c) => {
            if json {
                let out = json!({
                    "file": name,
                    "ok": true,
                    "rules": c.rule_names().collect::<Vec<_>>(),
                    "fields": c.fields().iter().map(|f| &**f).collect::<Vec<_>>(),
                    "subscriptions": c.subscriptions().iter().map(|f| f.as_str()).collect::<Vec<_>>(),
                });
                println!("{out:#}");
            } else if print {
                print!("{}", ferry_rules::parse(&text).map_err(anyhow::Error::msg)?);
            } else {
                let subs: Vec<&str> = c.subscriptions().iter().map(|f| f.as_str()).collect();
                println!(
                    "{name}: ok, {} rule(s); subscribes to {}",
                    c.rule_count(),
                    if subs.is_empty() {
                        "nothing (socket events only)".to_owned()
                    } else {
                        subs.join(", ")
                    }
                );
            }
            Ok(Code::Success)
        }
        Err(e) => {
            if json {
                let errors: Vec<_> = e
                    .0
                    .iter()
                    .map(|d| json!({"line": d.pos.line, "col": d.pos.col, "message": d.message}))
                    .collect();
                println!("{:#}", json!({"file": name, "ok": false, "errors": errors}));
            } else {
                eprint!("{}", e.render(&name, &text));
            }
            Ok(Code::InvalidInput)
        }
    }
}

fn test(file: &Path, events: &Path, json: bool) -> Result<Code> {
    let (text, compiled) = read(file)?;
    let c = match compiled {
        Ok(c) => c,
        Err(e) => {
            eprint!("{}", e.render(&file.display().to_string(), &text));
            return Ok(Code::InvalidInput);
        }
    };
    let input: Box<dyn Read> = if events.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(events).with_context(|| format!("reading {}", events.display()))?,
        )
    };
    let mut state = c.new_state();
    let mut time_ms = 0;
    let mut actions = Vec::new();
    let (mut count, mut fired) = (0u64, 0usize);
    let mut line = Vec::new();
    let mut reader = BufReader::new(input);
    let mut lineno = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        lineno += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |e: &dyn std::fmt::Display| -> Result<Code> {
            eprintln!("{}:{lineno}: {e}", events.display());
            Ok(Code::InvalidInput)
        };
        let env = match Envelope::parse(&line) {
            Ok(env) => env,
            Err(e) => return bad(&e),
        };
        time_ms = env.time_ms.unwrap_or(time_ms);
        let event = match c.decode(&env.topic, time_ms, &env.payload) {
            Ok(ev) => ev,
            Err(e) => return bad(&e),
        };
        count += 1;
        fired += c.eval(&mut state, &event, &mut actions);
        for a in actions.drain(..) {
            if json {
                let mut j = a.to_json();
                j["line"] = json!(lineno);
                j["time"] = json!(time_ms as f64 / 1000.0);
                println!("{j}");
            } else {
                println!("{:>10.3}s  {}", time_ms as f64 / 1000.0, describe(&a));
            }
        }
    }
    if !json {
        eprintln!("{count} event(s), {fired} rule firing(s)");
    }
    Ok(Code::Success)
}

fn describe(a: &Output) -> String {
    match a {
        Output::Alert { rule, message } => format!("{rule}: alert {message:?}"),
        Output::Publish {
            rule,
            topic,
            payload,
        } => {
            format!(
                "{rule}: publish {topic} {:?}",
                String::from_utf8_lossy(payload)
            )
        }
        Output::Call {
            rule,
            module,
            export,
            payload,
        } => {
            format!(
                "{rule}: call {module}.{export} {:?}",
                String::from_utf8_lossy(payload)
            )
        }
        Output::ModbusWrite {
            rule,
            device,
            register,
            value,
        } => format!("{rule}: modbus_write {device} register {register} = {value}"),
    }
}
