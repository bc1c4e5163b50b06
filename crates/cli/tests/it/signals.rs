//! Every signal an operator or a supervisor may send has a deliberate effect: SIGHUP reloads
//! (nothing to reload yet) and keeps serving; SIGUSR1, SIGUSR2 and SIGALRM are ignored with a
//! log line; SIGQUIT, like SIGTERM and SIGINT, stops gracefully and drains.

use crate::support::{
    ANSWER_WAIT, collect_log, launch, post_events, settled_balance, signal, summary_field,
    wait_with_stdout,
};

// Proves SIGHUP, SIGUSR1, SIGUSR2 and SIGALRM neither stop nor kill the server: after each,
// the log says how it was handled, new events are answered 202 and applied, and the process
// is still running; a SIGTERM then drains and exits 0 with every event applied.
#[tokio::test]
async fn hup_usr1_usr2_alrm_keep_the_server_serving() {
    let mut launched = launch(&[], &[]).await;
    let cases = [
        ("HUP", "reload requested; nothing to reload"),
        ("USR1", "signal ignored"),
        ("USR2", "signal ignored"),
        ("ALRM", "signal ignored"),
    ];
    let mut total = 0;
    for (name, logged) in cases {
        signal(&launched.child, name);
        let line = tokio::time::timeout(ANSWER_WAIT, async {
            while let Some(line) = launched.log.next_line().await.expect("read log") {
                if line.contains(logged) {
                    return Some(line);
                }
            }
            None
        })
        .await
        .expect("the signal is logged in time");
        assert!(
            line.is_some(),
            "SIG{name}: the log ended (the process died)"
        );
        assert_eq!(post_events(&launched.addr, "signalled", 3, 1).await, 3);
        total += 3;
        assert_eq!(
            settled_balance(&launched.addr, "signalled", total).await,
            Some(total),
            "after SIG{name}"
        );
        assert!(
            launched.child.try_wait().expect("try_wait").is_none(),
            "SIG{name} stopped the process"
        );
    }
    drop(collect_log(launched.log));
    signal(&launched.child, "TERM");
    let (status, stdout) = wait_with_stdout(launched.child).await;
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert_eq!(summary_field(&stdout, "applied"), 12, "{stdout}");
}

// Proves SIGQUIT is a graceful stop: with events still queued behind a slow worker (20 ms
// each), it drains every 202-answered event, prints the summary and exits 0 (not a core dump).
#[tokio::test]
async fn quit_drains_like_term() {
    let launched = launch(&["--work-ms", "20"], &[("FLOODGATE_WORKERS", "1")]).await;
    drop(collect_log(launched.log));
    let accepted = post_events(&launched.addr, "quitting", 30, 1).await;
    assert_eq!(accepted, 30);
    signal(&launched.child, "QUIT");
    let (status, stdout) = wait_with_stdout(launched.child).await;
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert_eq!(summary_field(&stdout, "accepted"), 30, "{stdout}");
    assert_eq!(summary_field(&stdout, "applied"), 30, "{stdout}");
}
