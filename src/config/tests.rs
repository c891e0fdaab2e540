use super::*;

fn refuse(text: &str) -> ConfigError {
    parse(Path::new("bad.toml"), text).unwrap_err()
}

const PROVIDER: &str = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9000/v1"
models = ["gpt-4o-mini"]
keys = [{ value = "sk" }]
"#;

#[test]
fn the_shipped_default_config_is_valid() {
    let loaded = load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/heimdall.toml"))).unwrap();
    assert_eq!(loaded.config.server.listen, "0.0.0.0:8080");
    assert!(loaded.config.providers.iter().any(|p| p.base_url == "http://127.0.0.1:9000/v1"));
    assert_eq!(loaded.config.governance.virtual_keys.len(), 1);
    assert!(loaded.config.pricing.contains_key("gpt-4o-mini"));
}

#[test]
fn an_empty_file_gets_the_documented_defaults() {
    let c = parse(Path::new("e.toml"), "").unwrap().config;
    assert!(c.server.require_virtual_key);
    assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(c.server.workers, 0);
    assert_eq!(c.storage.path, "data/heimdall.db");
}

#[test]
fn syntax_errors_name_the_line() {
    let e = refuse("[server]\nlisten = \"127.0.0.1:1\"\nworkers = = 2\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().starts_with("bad.toml:3: "), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let e = refuse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.reason.contains("lisen"), "{e}");
}

#[test]
fn semantic_errors_point_at_the_offending_key() {
    let text = format!(
        "{PROVIDER}\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nkeys = [{{ value = \"k\" }}]\n"
    );
    let e = refuse(&text);
    assert!(e.reason.contains("duplicate provider name"), "{e}");
    assert_eq!(e.line, Some(10), "{e}");
}

#[test]
fn a_bad_base_url_is_refused() {
    let e = refuse(&PROVIDER.replace("http://127.0.0.1:9000/v1", "ftp://nowhere"));
    assert!(e.reason.contains("providers[0].base_url"), "{e}");
    assert_eq!(e.line, Some(5));
}

#[test]
fn bad_windows_and_duplicate_budget_windows_are_refused() {
    let e = refuse("[[governance.customers]]\nid = \"c\"\nbudgets = [{ max_usd = 1.0, reset = \"2d\" }]\n");
    assert!(e.reason.contains("invalid window"), "{e}");
    let e = refuse(
        "[[governance.customers]]\nid = \"c\"\nbudgets = [{ max_usd = 1.0, reset = \"1d\" }, { max_usd = 2.0, reset = \"1d\" }]\n",
    );
    assert!(e.reason.contains("two budgets"), "{e}");
    assert_eq!(e.line, Some(3));
}

#[test]
fn negative_budgets_are_refused() {
    let e = refuse("[[governance.users]]\nid = \"u\"\nbudgets = [{ max_usd = -1.0, reset = \"1d\" }]\n");
    assert!(e.reason.contains("max_usd"), "{e}");
}

#[test]
fn virtual_keys_must_reference_known_entities() {
    let e = refuse("[[governance.virtual_keys]]\nid = \"k\"\nvalue = \"v\"\nuser = \"ghost\"\n");
    assert!(e.reason.contains("unknown user `ghost`"), "{e}");
    assert_eq!(e.line, Some(4));
}

#[test]
fn a_key_cannot_belong_to_a_team_and_a_customer() {
    let text = "[[governance.customers]]\nid = \"c\"\n[[governance.teams]]\nid = \"t\"\ncustomer = \"c\"\n\
[[governance.virtual_keys]]\nid = \"k\"\nvalue = \"v\"\nteam = \"t\"\ncustomer = \"c\"\n";
    assert!(refuse(text).reason.contains("not both"));
}

#[test]
fn a_key_needs_exactly_one_value() {
    assert!(refuse("[[governance.virtual_keys]]\nid = \"k\"\n").reason.contains("exactly one"));
    let two = "[[governance.virtual_keys]]\nid = \"k\"\nvalue = \"v\"\nvalue_sha256 = \"00\"\n";
    assert!(refuse(two).reason.contains("exactly one"));
}

#[test]
fn two_keys_with_the_same_value_are_refused() {
    let text = "[[governance.virtual_keys]]\nid = \"a\"\nvalue = \"same\"\n[[governance.virtual_keys]]\nid = \"b\"\nvalue = \"same\"\n";
    assert!(refuse(text).reason.contains("same value"));
}

#[test]
fn allowed_providers_must_name_configured_providers() {
    let text = format!(
        "{PROVIDER}\n[[governance.virtual_keys]]\nid = \"k\"\nvalue = \"v\"\nallowed_providers = [\"openai\", \"nope\"]\n"
    );
    let e = refuse(&text);
    assert!(e.reason.contains("unknown provider `nope`"), "{e}");
}

#[test]
fn unset_env_secrets_are_refused_by_name() {
    let e = refuse(&PROVIDER.replace("\"sk\"", "\"env.HEIMDALL_TEST_UNSET_KEY\""));
    assert!(e.reason.contains("HEIMDALL_TEST_UNSET_KEY"), "{e}");
}

#[test]
fn durations_are_human_readable() {
    let c = parse(Path::new("d.toml"), "[server]\nshutdown_grace = \"1m 30s\"\n").unwrap().config;
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(90));
    assert!(refuse("[server]\nshutdown_grace = \"soon\"\n").reason.contains("invalid duration"));
}

#[test]
fn rate_limits_need_requests_or_tokens() {
    let e = refuse("[[governance.teams]]\nid = \"t\"\nrate_limits = [{ per = \"1m\" }]\n");
    assert!(e.reason.contains("requests"), "{e}");
}

#[test]
fn the_io_driver_is_auto_unless_named_and_an_unknown_one_is_refused_with_its_line() {
    assert_eq!(parse(Path::new("e.toml"), "").unwrap().config.server.io_driver, IoDriver::Auto);
    let c = parse(Path::new("e.toml"), "[server]\nio_driver = \"epoll\"\n").unwrap().config;
    assert_eq!(c.server.io_driver, IoDriver::Epoll);
    let e = refuse("[server]\nio_driver = \"kqueue\"\n");
    assert_eq!(e.line, Some(2), "{e}");
}
