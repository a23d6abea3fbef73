//! `flightrec pins`: record, diff, approve and check tool definitions of a
//! server started from a command (the listing is `flightrec scan`'s).

use super::{EXIT_FINDING, EXIT_INPUT};
use crate::policy::pins::{self as defs, PinFile};
use crate::proxy::pins::{read_pin_file, write_pin_file};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// List a server's tools and write their definitions and hashes to a
    /// pin file (other servers already in the file are kept)
    Record {
        /// The pin file to write
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show what a server changed against a pin file (exit 0 unchanged,
    /// 1 changed, 2 unreadable)
    Diff {
        /// The pin file
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Accept the current definition of these tools into the pin file (a
    /// tool no longer listed is removed from it)
    Approve {
        /// The pin file
        file: PathBuf,
        /// Tools to accept
        #[arg(required = true)]
        tools: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Flag definitions that look aimed at the model: hidden Unicode,
    /// instructions, references to secrets, very long descriptions (a
    /// heuristic; exit 0 clean, 1 flagged, 2 unreadable)
    Check {
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's name in the pin file (default: its serverInfo.name,
    /// which is also what the proxy uses without --server-name)
    #[arg(long)]
    pub server: Option<String>,
    /// The MCP server command (stdio)
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The server's name and its tools' definitions, by tool name.
fn list(args: &ServerArgs) -> Result<(String, BTreeMap<String, Value>), ExitCode> {
    let (name, tools) = crate::proxy::scan::scan(&args.command, std::time::Duration::from_secs(30))
        .map_err(|e| {
            eprintln!("error: pins: {e}");
            ExitCode::from(EXIT_INPUT)
        })?;
    let mut defs = BTreeMap::new();
    for t in tools {
        if defs.insert(t.name.clone(), t.definition).is_some() {
            eprintln!(
                "error: pins: the server lists the tool {} more than once",
                defs::quote(&t.name)
            );
            return Err(ExitCode::from(EXIT_INPUT));
        }
    }
    Ok((args.server.clone().unwrap_or(name), defs))
}

fn read(path: &Path) -> Result<PinFile, ExitCode> {
    match read_pin_file(path) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => {
            eprintln!("error: pin file {} does not exist", path.display());
            Err(ExitCode::from(EXIT_INPUT))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EXIT_INPUT))
        }
    }
}

fn write(path: &Path, file: &PinFile) -> Result<(), ExitCode> {
    write_pin_file(path, file).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_INPUT)
    })
}

/// The file must know the server (else every tool would look new).
fn require_server(file: &PinFile, path: &Path, server: &str) -> Result<(), ExitCode> {
    if file.servers.contains_key(server) {
        return Ok(());
    }
    let known: Vec<String> = file.servers.keys().map(|s| defs::quote(s)).collect();
    eprintln!(
        "error: pin file {} has no server {} (it has: {}); name it with --server",
        path.display(),
        defs::quote(server),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    );
    Err(ExitCode::from(EXIT_INPUT))
}

pub fn run(cmd: PinsCommand) -> ExitCode {
    match inner(cmd) {
        Ok(code) | Err(code) => code,
    }
}

fn inner(cmd: PinsCommand) -> Result<ExitCode, ExitCode> {
    match cmd {
        PinsCommand::Record { output, server } => {
            let mut file = match read_pin_file(&output) {
                Ok(f) => f.unwrap_or_default(),
                Err(e) => {
                    eprintln!("error: {e} (fix or remove it first)");
                    return Err(ExitCode::from(EXIT_INPUT));
                }
            };
            let (name, current) = list(&server)?;
            let tools = file.servers.entry(name.clone()).or_default();
            tools.clear();
            for (tool, def) in &current {
                tools.insert(tool.clone(), defs::Pin::of(def));
            }
            write(&output, &file)?;
            eprintln!(
                "pins: {} tools of {} pinned in {}",
                current.len(),
                defs::quote(&name),
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PinsCommand::Diff { file: path, server } => {
            let file = read(&path)?;
            let (name, current) = list(&server)?;
            require_server(&file, &path, &name)?;
            let changes = defs::diff(file.servers.get(&name), &current);
            print!("{}", defs::render_diff(&name, &changes));
            Ok(if changes.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FINDING)
            })
        }
        PinsCommand::Approve {
            file: path,
            tools,
            server,
        } => {
            let mut file = read(&path)?;
            let (name, current) = list(&server)?;
            let mut lines = Vec::new();
            for tool in &tools {
                match current.get(tool) {
                    Some(def) => {
                        let sha = defs::definition_sha256(def);
                        let was = file.get(&name, tool).map(|p| p.sha256.clone());
                        file.set(&name, tool, def);
                        lines.push(match was {
                            Some(old) if old == sha => {
                                format!(
                                    "{}: unchanged (sha256 {}…)",
                                    defs::quote(tool),
                                    defs::short(&sha)
                                )
                            }
                            Some(old) => format!(
                                "{}: accepted (sha256 {}… → {}…)",
                                defs::quote(tool),
                                defs::short(&old),
                                defs::short(&sha)
                            ),
                            None => format!(
                                "{}: pinned (sha256 {}…)",
                                defs::quote(tool),
                                defs::short(&sha)
                            ),
                        });
                    }
                    None if file.remove(&name, tool) => {
                        lines.push(format!(
                            "{}: no longer listed, pin removed",
                            defs::quote(tool)
                        ));
                    }
                    None => {
                        eprintln!(
                            "error: the server {} does not list a tool {} and the pin file has none",
                            defs::quote(&name),
                            defs::quote(tool)
                        );
                        return Err(ExitCode::from(EXIT_INPUT));
                    }
                }
            }
            write(&path, &file)?;
            for l in lines {
                eprintln!("pins: {l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PinsCommand::Check { server } => {
            let (name, current) = list(&server)?;
            let mut findings = 0usize;
            for (tool, def) in &current {
                for f in defs::scan_definition(tool, def) {
                    println!("{f}");
                    findings += 1;
                }
            }
            if findings == 0 {
                println!(
                    "server {}: {} tools, nothing flagged",
                    defs::quote(&name),
                    current.len()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "server {}: {findings} finding{} (a heuristic: review each one)",
                    defs::quote(&name),
                    if findings == 1 { "" } else { "s" }
                );
                Ok(ExitCode::from(EXIT_FINDING))
            }
        }
    }
}
