use crate::harness::*;

#[tokio::test]
async fn the_official_openai_python_sdk_works_unchanged() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("HEIMDALL_BASE_URL", gw.url("/v1"))
        .env("HEIMDALL_KEY", KEY)
        .output()
        .await
        .expect("python3 is required (scripts/test installs the openai package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK script failed (is `pip install openai` done?):\n{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["chat"], "mock reply to: hello sdk");
    assert_eq!(seen["not_found"]["type"], "model_not_found");
    assert_eq!(seen["denied"]["type"], "virtual_key_not_found");
}
