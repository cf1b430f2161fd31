//! `meshctl apply` and `meshctl delete`.

use std::{collections::HashSet, path::PathBuf, process::ExitCode};

use mesh_core::{
    config::{Kind, Resource, ResourceKey},
    store::StoreError,
    validate::{Findings, validate_all},
};

use crate::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct ApplyArgs {
    /// A file or directory of Istio YAML/JSON; `-` reads standard input. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    files: Vec<String>,

    /// Validate against the store and report what would change, without writing.
    #[arg(long)]
    dry_run: bool,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    /// The kind (`virtualservice`, `vs`, `destinationrules`, ...).
    #[arg(required_unless_present = "files")]
    kind: Option<String>,

    /// The names to delete.
    names: Vec<String>,

    /// Delete the resources named in these files instead.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        conflicts_with = "kind"
    )]
    files: Vec<String>,

    /// The namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,

    /// Succeed when a resource does not exist.
    #[arg(long)]
    ignore_not_found: bool,
}

fn print_findings_stderr(findings: &Findings) {
    for f in &findings.0 {
        eprintln!("{f}");
    }
}

fn qualified(kind: Kind) -> String {
    format!("{}.{}", kind.as_str().to_ascii_lowercase(), kind.group())
}

pub(crate) async fn apply(
    args: ApplyArgs,
    store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let store = crate::require_store(store, dir)?;
    let loaded = crate::input::load(&args.files)?;
    let input = Findings(loaded.findings);
    if input.has_errors() {
        print_findings_stderr(&input);
        eprintln!(
            "error: {} error(s) in the input; nothing was applied",
            input.errors().count()
        );
        return Ok(ExitCode::FAILURE);
    }
    print_findings_stderr(&input); // warnings: kinds the mesh does not read
    if loaded.resources.is_empty() {
        anyhow::bail!("no Istio resources found in the input");
    }
    if args.dry_run {
        let listing = store.list().await?;
        let new: HashSet<ResourceKey> = loaded.resources.iter().map(Resource::key).collect();
        let mut merged: Vec<Resource> = listing
            .resources
            .into_iter()
            .filter(|r| !new.contains(&r.key()))
            .collect();
        merged.extend(loaded.resources.iter().cloned());
        let findings = validate_all(&merged);
        print_findings_stderr(&findings);
        if findings.has_errors() {
            eprintln!("error: the configuration would be refused; nothing was written");
            return Ok(ExitCode::FAILURE);
        }
        for r in &loaded.resources {
            println!(
                "{}/{} configured (dry run)",
                qualified(r.kind()),
                r.metadata.name
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    match store.apply(loaded.resources).await {
        Ok(outcome) => {
            print_findings_stderr(&outcome.warnings);
            match args.output {
                Output::Json | Output::Yaml => {
                    let rows: Vec<serde_json::Value> = outcome
                        .results
                        .iter()
                        .map(|a| {
                            serde_json::json!({
                                "kind": a.key.kind.as_str(),
                                "namespace": a.key.namespace,
                                "name": a.key.name,
                                "action": a.action.to_string(),
                            })
                        })
                        .collect();
                    let value = serde_json::Value::Array(rows);
                    if args.output == Output::Json {
                        println!("{}", serde_json::to_string_pretty(&value)?);
                    } else {
                        print!("{}", mesh_core::yaml::to_yaml(&value));
                    }
                }
                Output::Text => print!("{outcome}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::Invalid(findings)) => {
            print_findings_stderr(&findings);
            eprintln!(
                "error: the resulting configuration has {} error(s); nothing was written",
                findings.errors().count()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn delete(
    args: DeleteArgs,
    store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let store = crate::require_store(store, dir)?;
    let keys: Vec<ResourceKey> = if args.files.is_empty() {
        let kind: Kind = args.kind.as_deref().unwrap_or_default().parse()?;
        if args.names.is_empty() {
            anyhow::bail!("name the {kind} to delete");
        }
        args.names
            .iter()
            .map(|n| ResourceKey::new(kind, args.namespace.clone(), n.clone()))
            .collect()
    } else {
        let loaded = crate::input::load(&args.files)?;
        let input = Findings(loaded.findings);
        if input.has_errors() {
            print_findings_stderr(&input);
            anyhow::bail!("the input has errors; nothing was deleted");
        }
        loaded.resources.iter().map(Resource::key).collect()
    };
    let mut failed = false;
    for key in keys {
        match store.delete(&key).await {
            Ok(true) => println!("{} {:?} deleted", qualified(key.kind), key.name),
            Ok(false) if args.ignore_not_found => {}
            Ok(false) => {
                eprintln!(
                    "error: {}.{} {:?} not found in namespace {:?}",
                    key.kind.plural(),
                    key.kind.group(),
                    key.name,
                    key.namespace
                );
                failed = true;
            }
            Err(StoreError::Invalid(findings)) => {
                print_findings_stderr(&findings);
                eprintln!(
                    "error: deleting {key} would leave the configuration invalid; nothing was deleted"
                );
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
