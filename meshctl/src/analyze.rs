//! `meshctl analyze`.

use std::{collections::HashSet, path::PathBuf, process::ExitCode};

use clap::ValueEnum;
use mesh_core::{
    config::Resource,
    validate::{Finding, Findings, Severity, validate_all},
};

use crate::{EXIT_ANALYSIS_ISSUES, Output};

/// Severity thresholds, as `istioctl analyze` spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub(crate) enum Level {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Everything.
    Info,
}

impl Level {
    fn includes(self, s: Severity) -> bool {
        match self {
            Level::Error => s == Severity::Error,
            Level::Warning => s != Severity::Info,
            Level::Info => true,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A file or directory of Istio YAML/JSON to analyze; `-` reads standard input. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    files: Vec<String>,

    /// Analyze the files alone, without what the store holds.
    #[arg(long)]
    no_store: bool,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,

    /// Exit with code 79 when a finding is at or above this level.
    #[arg(long, value_enum, default_value = "Error")]
    failure_threshold: Level,

    /// Show findings at or above this level.
    #[arg(long, value_enum, default_value = "Info")]
    output_threshold: Level,
}

pub(crate) async fn run(
    args: Args,
    store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let loaded = crate::input::load(&args.files)?;
    let mut findings: Vec<Finding> = loaded.findings;
    let mut resources: Vec<Resource> = Vec::new();
    let store = if args.no_store {
        None
    } else {
        crate::open_store(store, dir)?
    };
    if store.is_none() && args.files.is_empty() {
        anyhow::bail!(
            "nothing to analyze: pass -f FILE|DIR, or --config-dir DIR to analyze the store"
        );
    }
    if let Some(store) = store {
        let listing = store.list().await?;
        findings.extend(listing.findings.0);
        // A resource in the files replaces the stored one with the same key.
        let from_files: HashSet<_> = loaded.resources.iter().map(Resource::key).collect();
        resources.extend(
            listing
                .resources
                .into_iter()
                .filter(|r| !from_files.contains(&r.key())),
        );
    }
    resources.extend(loaded.resources);
    findings.extend(validate_all(&resources).0);
    let mut findings = Findings(findings);
    findings.sort();
    let failed = findings
        .0
        .iter()
        .any(|f| args.failure_threshold.includes(f.severity));
    let shown: Vec<&Finding> = findings
        .0
        .iter()
        .filter(|f| args.output_threshold.includes(f.severity))
        .collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        Output::Yaml => {
            let value = serde_json::to_value(&shown)?;
            print!("{}", mesh_core::yaml::to_yaml(&value));
        }
        Output::Text => {
            for f in &shown {
                println!("{f}");
            }
            if findings.0.is_empty() {
                eprintln!(
                    "\u{2714} No validation issues found ({} resources analyzed).",
                    resources.len()
                );
            } else if shown.is_empty() {
                eprintln!(
                    "\u{2714} No validation issues at the output threshold ({} below it hidden; {} resources analyzed).",
                    findings.0.len(),
                    resources.len()
                );
            } else if failed {
                eprintln!(
                    "Error: analyzers found issues ({} errors, {} warnings).",
                    findings.errors().count(),
                    findings
                        .0
                        .iter()
                        .filter(|f| f.severity == Severity::Warning)
                        .count()
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_ANALYSIS_ISSUES)
    } else {
        ExitCode::SUCCESS
    })
}
