// The figment way: clap derive for flags, figment layers defaults < file < env < flags.
use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug, Serialize, Deserialize)]
struct Settings {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_capacity_events: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    header_timeout_ms: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    inline: Option<bool>,
    #[arg(long)]
    #[serde(skip)]
    config: Option<String>,
}

fn main() {
    let flags = Settings::parse();
    let mut figment = Figment::new();
    if let Some(path) = &flags.config {
        figment = figment.merge(Toml::file(path));
    }
    let settings: Result<Settings, _> = figment
        .merge(Env::prefixed("FLOODGATE_"))
        .merge(Serialized::defaults(&flags))
        .extract();
    println!("{settings:?}");
}
