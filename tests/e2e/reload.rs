use std::time::{Duration, Instant};

use crate::harness::*;

const NEW_KEY: &str = "\n[[governance.virtual_keys]]\nid = \"vk-new\"\nvalue = \"vk-new-key\"\n";

async fn wait_for_status(url: &str, key: &str, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = post(url, Some(key), &chat_body("gpt-4o-mini", "x")).await;
        if r.status().as_u16() == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "still {} after {within:?}: {}", r.status(), url);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn an_edited_config_file_adds_a_key_within_a_second() {
    let (mock, _d) = mock(&[]);
    let base = config(&mock.addr, "");
    let gw = gateway(&base);
    let url = gw.url("/v1/chat/completions");
    expect_error(post(&url, Some("vk-new-key"), &chat_body("gpt-4o-mini", "x")).await, 403, "virtual_key_not_found")
        .await;
    gw.rewrite_config(&format!("{base}{NEW_KEY}"));
    let took = wait_for_status(&url, "vk-new-key", 200, Duration::from_secs(1)).await;
    eprintln!("new key usable after {took:?}");
    assert_eq!(gw.metric("heimdall_config_reloads_total").await, 1.0);
    let health: serde_json::Value = reqwest::get(gw.url("/health")).await.unwrap().json().await.unwrap();
    assert_eq!(health["config_version"], 2);
    // The old keys still work.
    assert_eq!(post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await.status(), 200);
}

#[tokio::test]
async fn a_config_overwritten_in_place_is_reloaded_once() {
    let (mock, _d) = mock(&[]);
    let base = config(&mock.addr, "");
    let gw = gateway(&base);
    let url = gw.url("/v1/chat/completions");
    // Traffic writes the store (heimdall.db, in the config's directory) all along.
    for _ in 0..20 {
        assert_eq!(post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await.status(), 200);
    }
    gw.edit_config_in_place(&format!("{base}{NEW_KEY}"));
    wait_for_status(&url, "vk-new-key", 200, Duration::from_secs(1)).await;
    for _ in 0..20 {
        assert_eq!(post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gw.metric("heimdall_config_reloads_total").await, 1.0);
}

#[tokio::test]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let (mock, _d) = mock(&[]);
    let base = config(&mock.addr, "");
    let gw = gateway(&base);
    let url = gw.url("/v1/chat/completions");
    gw.rewrite_config(&format!(
        "{base}\n[[governance.virtual_keys]]\nid = \"vk-new\"\nvalue = \"vk-new-key\"\nusr = \"typo\"\n"
    ));
    // Generous: under a parallel test run the watcher thread may wait for a core.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.metric("heimdall_config_reload_failures_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await.status(), 200);
    expect_error(post(&url, Some("vk-new-key"), &chat_body("gpt-4o-mini", "x")).await, 403, "virtual_key_not_found")
        .await;
    let log = gw.proc.stderr();
    let line = base.lines().count() + 5;
    assert!(
        log.contains(&format!("heimdall.toml:{line}: unknown field `usr`")),
        "log does not name file, line and reason:\n{log}"
    );
    // A later good edit is picked up: refusing one file does not stop the watcher.
    gw.rewrite_config(&format!("{base}{NEW_KEY}"));
    wait_for_status(&url, "vk-new-key", 200, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let (mock, _d) = mock(&[]);
    let base = config(&mock.addr, "");
    let gw = gateway(&base);
    gw.proc.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(2);
    while gw.metric("heimdall_config_reloads_total").await < 1.0 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let health: serde_json::Value = reqwest::get(gw.url("/health")).await.unwrap().json().await.unwrap();
    assert_eq!(health["config_version"], 2);
}
