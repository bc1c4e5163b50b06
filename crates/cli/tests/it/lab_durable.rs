//! The lab's ninth stage ("durable acceptance") in its quick form, against this build's real
//! binary: it SIGKILLs `floodgate serve` mid-load, so it runs here, where the binary is known,
//! rather than with the in-process experiments of `crates/lab`.

use std::path::PathBuf;

use floodgate_core::DurabilityMode;
use floodgate_lab::experiments::stage9;

fn quick() -> stage9::Params {
    stage9::Params {
        binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_floodgate"))),
        ..stage9::Params::quick()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage9_a_202_from_the_log_survives_sigkill() {
    // Proves the claim: under one load and a SIGKILL mid-load, memory loses what it answered
    // 202, write and fsync lose nothing on restart, and fsync's groups grow with the clients.
    let outcome = stage9::run(&quick()).await.expect("experiment runs");
    assert!(outcome.verdict.holds, "{}", outcome.render_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage9_verdict_fails_when_memory_is_claimed_durable() {
    // Proves the verdict can fail: claiming that `memory` loses nothing is refuted by the kill.
    let params = stage9::Params {
        modes: vec![DurabilityMode::Memory],
        durable_modes: vec![DurabilityMode::Memory],
        sweep_connections: Vec::new(),
        ..quick()
    };
    let outcome = stage9::run(&params).await.expect("experiment runs");
    assert!(
        !outcome.verdict.holds,
        "a broken configuration should fail:\n{}",
        outcome.render_text()
    );
}
