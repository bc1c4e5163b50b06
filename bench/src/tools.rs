//! The load tools the suite drives: `floodgate load` (its JSON report) and wrk (an outside
//! tool, so no figure rests on our own generator alone), plus `GET /stats` on a server.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::Binaries;

/// The event body both tools send; the same bytes every time, so the servers compare fairly.
pub const EVENT_BODY: &str = r#"{"user":"bench-user","amount":1}"#;

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadFigures {
    /// Responses per second, all outcomes.
    pub requests_per_second: f64,
    /// 202 answers per second (wrk cannot tell: it reports non-2xx only).
    pub accepted_per_second: f64,
    /// Responses that were not 2xx.
    pub non_success: u64,
    /// p99 latency of accepted requests, ms.
    pub accepted_p99_ms: f64,
    /// p99 latency of rejected (503) requests, ms.
    pub rejected_p99_ms: f64,
}

/// A closed or open loop run of `floodgate load`.
#[derive(Debug, Clone)]
pub struct FloodgateLoad {
    /// Flags after `floodgate load --url URL` (e.g. `--concurrency 64 --duration 5s`).
    pub flags: Vec<String>,
}

impl FloodgateLoad {
    /// Runs it against `url` and reads its JSON report.
    pub fn run(&self, binaries: &Binaries, url: &str) -> Result<LoadFigures> {
        let json_path =
            std::env::temp_dir().join(format!("floodgate-bench-{}.json", std::process::id()));
        let status = Command::new(&binaries.floodgate)
            .args(["load", "--url", url, "--json"])
            .arg(&json_path)
            .args(&self.flags)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running floodgate load")?;
        // A --fail-if threshold is not used here, so any non-zero exit is a real failure.
        if !status.success() {
            bail!("floodgate load {:?} exited with {status}", self.flags);
        }
        let report: Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
        let _ = std::fs::remove_file(&json_path);
        Ok(figures_from_report(&report))
    }
}

fn number(value: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(value, |node, key| node.get(key))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn figures_from_report(report: &Value) -> LoadFigures {
    let sent = number(report, &["sent"]);
    let accepted = number(report, &["accepted"]);
    LoadFigures {
        requests_per_second: number(report, &["throughput_per_second"]),
        accepted_per_second: number(report, &["accepted_per_second"]),
        non_success: (sent - accepted).max(0.0) as u64,
        accepted_p99_ms: number(report, &["latency_ms", "accepted", "p99"]),
        rejected_p99_ms: number(report, &["latency_ms", "rejected", "p99"]),
    }
}

/// Runs `wrk -t2 -c CONNECTIONS -d SECONDS` posting [`EVENT_BODY`] to `url/events`.
pub fn wrk(url: &str, connections: usize, seconds: u64, script_dir: &Path) -> Result<LoadFigures> {
    let script = script_dir.join("post-event.lua");
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = '{EVENT_BODY}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    std::fs::write(&script, lua).context("writing the wrk script")?;
    let output = Command::new("wrk")
        .args(["-t2", "--latency", "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "-s"])
        .arg(&script)
        .arg(format!("{url}/events"))
        .output()
        .context("running wrk (install it with `apt-get install -y wrk`)")?;
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

fn parse_wrk(text: &str) -> Result<LoadFigures> {
    let mut figures = LoadFigures::default();
    for line in text.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            figures.requests_per_second = rate.trim().parse().context("wrk Requests/sec")?;
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            figures.non_success = count.trim().parse().context("wrk Non-2xx")?;
        } else if let Some(latency) = line.strip_prefix("99%") {
            figures.accepted_p99_ms = parse_wrk_duration_ms(latency.trim())?;
        }
    }
    if figures.requests_per_second == 0.0 {
        bail!("wrk printed no Requests/sec line:\n{text}");
    }
    figures.accepted_per_second = if figures.non_success == 0 {
        figures.requests_per_second
    } else {
        f64::NAN
    };
    Ok(figures)
}

fn parse_wrk_duration_ms(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .context("wrk latency unit")?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().context("wrk latency value")?;
    Ok(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => bail!("unknown wrk latency unit {unit}"),
    })
}

/// `GET URL/stats` as JSON.
pub fn server_stats(url: &str) -> Result<Value> {
    let response = reqwest::blocking::get(format!("{url}/stats")).context("GET /stats")?;
    Ok(response.json()?)
}

/// A number out of `/stats` (0 when absent).
pub fn stat(stats: &Value, key: &str) -> f64 {
    number(stats, &[key])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the wrk output parser reads rate, non-2xx count and p99 with its units.
    #[test]
    fn parses_wrk_output() {
        let text = "  Latency Distribution\n     50%  1.10ms\n     99%  850.00us\n\
                    Requests/sec:  51234.56\nNon-2xx or 3xx responses: 12\n";
        let figures = parse_wrk(text).unwrap();
        assert!((figures.requests_per_second - 51234.56).abs() < 1e-6);
        assert_eq!(figures.non_success, 12);
        assert!((figures.accepted_p99_ms - 0.85).abs() < 1e-9);
        assert!(parse_wrk("nothing").is_err());
    }
}
