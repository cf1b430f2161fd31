//! Per-process CPU time and peak RSS from `/proc`.

use std::{sync::OnceLock, time::Duration};

use anyhow::{Context, bail};

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that cannot be run, the Linux default).
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// User + system CPU time of process `pid` (all its threads, living and exited), from
/// `/proc/PID/stat` fields 14 and 15.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let file = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    parse_stat(&stat).with_context(|| format!("parsing {file}"))
}

fn parse_stat(stat: &str) -> anyhow::Result<Duration> {
    // The command name is in parentheses and may contain spaces: split after the last `)`.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("no `)` after the command name");
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("field {} missing", i + 3))?
            .parse::<u64>()
            .with_context(|| format!("field {} is not a number", i + 3))
    };
    let ticks = field(11)? + field(12)?;
    let per_second = ticks_per_second();
    Ok(Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second))
}

/// Peak resident set size of process `pid` in KiB (`VmHWM` in `/proc/PID/status`).
pub(crate) fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let file = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    parse_hwm(&status).with_context(|| format!("no VmHWM in {file}"))
}

fn parse_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        let t = parse_stat(stat).unwrap();
        let tick = Duration::from_secs(1) / u32::try_from(ticks_per_second()).unwrap();
        assert_eq!(t, tick * 300);
    }

    #[test]
    fn hwm() {
        assert_eq!(
            parse_hwm("Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t1 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_hwm("Name:\tx\n"), None);
    }

    #[test]
    fn own_process() {
        let pid = std::process::id();
        assert!(peak_rss_kb(pid).unwrap() > 0);
        cpu_time(pid).unwrap();
    }
}
