// The shape of floodgate's settings! table: clap's builder reads flags and env vars, toml reads
// the file, and one hand-written loop layers them.
use clap::{Arg, Command};

fn main() {
    let names = ["workers", "queue-capacity-events", "header-timeout-ms", "data-dir", "inline"];
    let mut command = Command::new("serve").arg(Arg::new("config").long("config"));
    for name in names {
        let env = format!("FLOODGATE_{}", name.to_uppercase().replace('-', "_"));
        command = command.arg(Arg::new(name).long(name).env(env));
    }
    let matches = command.get_matches();
    let file: toml::Table = matches
        .get_one::<String>("config")
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .map(|text| text.parse().unwrap_or_default())
        .unwrap_or_default();
    for name in names {
        let value = matches
            .get_one::<String>(name)
            .cloned()
            .or_else(|| file.get(name).map(ToString::to_string));
        println!("{name} = {value:?}");
    }
}
