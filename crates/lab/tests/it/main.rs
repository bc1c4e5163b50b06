//! The lab's quick experiments, end to end: each starts real servers in-process on port 0,
//! drives them, and must reach the verdict the seed claims; and broken configurations must
//! fail those same verdicts, so a passing verdict means something.
//!
//! The experiments measure time, so they run one at a time (a shared async lock), never in
//! parallel with each other.

use floodgate_core::config::LedgerStrategy;
use floodgate_lab::experiments::servers::Target;
use floodgate_lab::experiments::{Experiment, stage1, stage4, stage8};
use floodgate_lab::outcome::Outcome;
use tokio::sync::Mutex;

/// Serializes the experiments: timing measurements must not share the two cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn assert_holds(outcome: &Outcome) {
    assert!(
        outcome.verdict.holds,
        "the claim should hold:\n{}",
        outcome.render_text()
    );
}

fn assert_fails(outcome: &Outcome) {
    assert!(
        !outcome.verdict.holds,
        "a broken configuration should fail the verdict:\n{}",
        outcome.render_text()
    );
}

async fn quick(experiment: Experiment) -> Outcome {
    let _serial = SERIAL.lock().await;
    // Boxed: an experiment's future is large (the scale-out experiment's processes and probes).
    match Box::pin(experiment.run(true)).await {
        Ok(outcome) => outcome,
        Err(error) => panic!("{} could not run: {error}", experiment.info().name),
    }
}

// Proves stage 1's claim in its quick form: the blocking server freezes under 20 idle clients
// while the async echo server and the default server answer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage1_blocking_server_freezes() {
    assert_holds(&quick(Experiment::Stage1Freeze).await);
}

// Proves the stage-1 verdict can fail: naming the async echo server as the one that should
// freeze makes the "frozen" check fail, because it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage1_verdict_fails_against_the_async_server() {
    let _serial = SERIAL.lock().await;
    let params = stage1::Params {
        suspect: Target::Echo,
        controls: vec![Target::Default],
        ..stage1::Params::quick()
    };
    let outcome = stage1::run(&params).await.expect("experiment runs");
    assert_fails(&outcome);
}

// Proves stage 2's claim: clients behind a trickling client are answered at once by the async
// server (and wait on the blocking one); idle and trickling clients delay no probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage2_async_server_serves_clients_together() {
    assert_holds(&quick(Experiment::Stage2Concurrency).await);
}

// Proves stage 3's claim: every malformed, cut-short, oversized or slow request gets its
// predicted status and reason, a bad-input load mix causes no errors, and the server survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage3_bad_input_gets_predictable_answers() {
    assert_holds(&quick(Experiment::Stage3BadInput).await);
}

// Proves stage 4's claim: inline work under one global lock serializes concurrent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage4_inline_work_under_one_lock_serializes() {
    assert_holds(&quick(Experiment::Stage4InlineLock).await);
}

// Proves the stage-4 verdict can fail: with a sharded ledger the same requests (distinct
// users) overlap, so wall time is far below N × hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage4_verdict_fails_with_a_sharded_ledger() {
    let _serial = SERIAL.lock().await;
    let params = stage4::Params {
        strategy: LedgerStrategy::Sharded,
        ..stage4::Params::quick()
    };
    let outcome = stage4::run(&params).await.expect("experiment runs");
    assert_fails(&outcome);
}

// Proves stage 5's claim: a burst fills the bounded queue, the rest is rejected fast, and the
// single worker drains at its fixed pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage5_bounded_queue_rejects_a_burst_fast() {
    assert_holds(&quick(Experiment::Stage5Backpressure).await);
}

// Proves stage 6's claim: throughput grows about linearly with workers for independent work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage6_workers_multiply_throughput() {
    assert_holds(&quick(Experiment::Stage6Workers).await);
}

// Proves stage 7's claim: the seed's stress test is mostly rejected, and with one global lock
// throughput plateaus near 1/hold while lock wait grows far past the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage7_one_lock_caps_throughput() {
    assert_holds(&quick(Experiment::Stage7Contention).await);
}

// Proves stage 8's claim: a sharded ledger follows workers / (work + hold) past the plateau.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage8_sharding_lifts_the_plateau() {
    assert_holds(&quick(Experiment::Stage8Sharding).await);
}

// Proves the stage-8 verdict can fail: "sharding" with the global lock stays on the plateau,
// so it is not 2x the global lock and its lock wait dwarfs the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage8_verdict_fails_with_the_global_lock() {
    let _serial = SERIAL.lock().await;
    let params = stage8::Params {
        strategy: LedgerStrategy::Global,
        workers: vec![1, 64],
        ..stage8::Params::quick()
    };
    let outcome = stage8::run(&params).await.expect("experiment runs");
    assert_fails(&outcome);
}

// Proves the hot-key claim: skewed users pull a sharded ledger back towards 1/hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_defeat_sharding() {
    assert_holds(&quick(Experiment::HotKeys).await);
}

// Proves the shared-receiver claim: it matches a multi-consumer channel at the seed's scale,
// and both queue kinds still scale with workers on 1 ms jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_receiver_matches_a_multi_consumer_channel() {
    assert_holds(&quick(Experiment::SharedReceiver).await);
}

// Proves the `lab` command end to end: `lab <name> --quick --out DIR` exits 0 when the claim
// holds and leaves `<name>.json` (the verdict) and `<name>.svg` (the chart) in DIR; `lab list`
// succeeds and an unknown name is an error.
#[test]
fn lab_command_writes_json_and_svg() {
    let _serial = SERIAL.blocking_lock();
    let out = std::env::temp_dir().join(format!("floodgate-lab-it-{}", std::process::id()));
    let args = |experiment: &str| floodgate_lab::LabArgs {
        experiment: experiment.to_owned(),
        out: out.clone(),
        quick: true,
    };
    let code = floodgate_lab::lab_main(args("stage4-inline-lock")).expect("lab runs");
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let json = std::fs::read_to_string(out.join("stage4-inline-lock.json")).expect("json written");
    let json: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    assert_eq!(json["verdict"]["holds"], true);
    assert_eq!(json["quick"], true);
    let svg = std::fs::read_to_string(out.join("stage4-inline-lock.svg")).expect("svg written");
    assert!(svg.contains("Stage 4") && svg.trim_end().ends_with("</svg>"));
    assert!(floodgate_lab::lab_main(args("list")).is_ok());
    assert!(floodgate_lab::lab_main(args("no-such-experiment")).is_err());
    std::fs::remove_dir_all(&out).expect("temp dir removed");
}
