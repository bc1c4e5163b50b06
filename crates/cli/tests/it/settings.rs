//! The settings layers on a real process: a config file, env vars and flags, as `floodgate
//! serve` reads them, seen through `/stats` (which names each setting as the flags do).

use std::path::PathBuf;

use tokio::process::{Child, Command};

use crate::support::{ANSWER_WAIT, client, signal, start, wait_exit};

/// A config file in the temp directory, removed when dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("floodgate-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write the config file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads `/stats` of a started server, then stops it (SIGTERM) and checks it exited 0.
async fn stats_then_stop(mut child: Child, addr: &str) -> serde_json::Value {
    let stats = client()
        .get(format!("http://{addr}/stats"))
        .send()
        .await
        .expect("stats answers")
        .json()
        .await
        .expect("stats is JSON");
    signal(&child, "TERM");
    assert!(wait_exit(&mut child).await.success());
    stats
}

// Proves every layer on a real process, one representative setting each: a flag beats env
// (workers), env beats the file (shards) and turns off the file's inline switch (mode), the
// file beats the stage preset (strategy, queue capacity) and the default (max users), the
// preset beats the default (queue kind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_env_file_preset_and_default_layer_in_order() {
    let file = ConfigFile::new(
        "layers",
        "stage = 7\nworkers = 2\nmode = \"inline\"\nstrategy = \"sharded\"\n\
         queue-capacity-events = 50\nmax-users = 9\n",
    );
    let (child, addr) = start(
        &["--config", file.path(), "--workers", "4"],
        &[
            ("FLOODGATE_WORKERS", "3"),
            ("FLOODGATE_SHARDS", "7"),
            ("FLOODGATE_MODE", "queued"),
        ],
    )
    .await;
    let stats = stats_then_stop(child, &addr).await;
    assert_eq!(stats["workers"], 4, "flag beats env: {stats}");
    assert_eq!(stats["shards"], 7, "env beats preset: {stats}");
    assert_eq!(
        stats["mode"], "queued",
        "env turns the file's inline off: {stats}"
    );
    assert_eq!(stats["strategy"], "sharded", "file beats preset: {stats}");
    assert_eq!(
        stats["queue_capacity_events"], 50,
        "file beats preset: {stats}"
    );
    assert_eq!(stats["max_users"], 9, "file beats default: {stats}");
    assert_eq!(
        stats["queue_kind"], "shared_receiver",
        "preset beats default: {stats}"
    );
}

/// Runs `floodgate serve` expecting it to refuse to start; returns its stderr.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_floodgate"));
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .env("FLOODGATE_DURABILITY", crate::support::durability_for(args))
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(ANSWER_WAIT, command.output())
        .await
        .expect("exits in time")
        .expect("runs");
    assert!(!output.status.success(), "must refuse to start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// Proves an unknown config-file key and a bad env value stop the process at start, with a
// message naming the key or the setting and its env var.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_and_bad_env_value_are_refused_at_start() {
    let file = ConfigFile::new("unknown", "workerz = 3\n");
    let stderr = refused(&["--config", file.path()], &[]).await;
    assert!(stderr.contains("unknown setting `workerz`"), "{stderr}");
    let stderr = refused(&[], &[("FLOODGATE_QUEUE_CAPACITY_EVENTS", "lots")]).await;
    assert!(
        stderr.contains("`queue-capacity-events`")
            && stderr.contains("FLOODGATE_QUEUE_CAPACITY_EVENTS"),
        "{stderr}"
    );
}

// Proves the older `--inline` switch is a flag like any other: it beats `FLOODGATE_MODE` from
// the environment instead of clashing with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inline_shorthand_beats_the_mode_env_var() {
    let (child, addr) = start(&["--inline"], &[("FLOODGATE_MODE", "queued")]).await;
    let stats = stats_then_stop(child, &addr).await;
    assert_eq!(stats["mode"], "inline", "{stats}");
}
