//! Model resolution: `provider/model` or a bare name → the provider that serves it.
//! Reads only the snapshot.

use crate::error::GatewayError;
use crate::snapshot::{Provider, Snapshot};

/// Where one attempt goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'s, 'r> {
    pub provider_index: usize,
    pub provider: &'s Provider,
    /// The model name the provider is sent.
    pub model: &'r str,
    /// True when the client named the provider (`provider/model`): the body's model must be rewritten.
    pub prefixed: bool,
}

/// Resolves a requested model name.
///
/// `provider/model` goes to that provider; when the provider lists models, the model must be one of
/// them (so allow-lists and prices mean what they say), and a provider with no list takes any model.
/// A bare name goes to the first provider that lists it. Names with a `/` whose prefix is not a
/// provider (`meta-llama/Llama-3`) are bare names.
pub fn resolve<'s, 'r>(snap: &'s Snapshot, requested: &'r str) -> Result<Target<'s, 'r>, GatewayError> {
    if let Some((prefix, model)) = requested.split_once('/')
        && let Some((i, provider)) = snap.provider(prefix)
    {
        if model.is_empty() || (!provider.models.is_empty() && !provider.models.iter().any(|m| m == model)) {
            return Err(GatewayError::ModelNotFound(requested.to_string()));
        }
        return Ok(Target { provider_index: i, provider, model, prefixed: true });
    }
    match snap.provider_for_bare_model(requested) {
        Some(i) => Ok(Target { provider_index: i, provider: &snap.providers[i], model: requested, prefixed: false }),
        None => Err(GatewayError::ModelNotFound(requested.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn snap() -> Snapshot {
        let text = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["gpt-4o-mini", "shared-model"]
keys = [{ value = "k" }]

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:9"
models = ["claude-3-5-sonnet-20241022", "shared-model"]
keys = [{ value = "k" }]

[[providers]]
name = "open"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
keys = [{ value = "k" }]
"#;
        Snapshot::build(&config::parse(Path::new("t.toml"), text).unwrap(), 1, &Default::default()).unwrap()
    }

    #[test]
    fn bare_names_resolve_through_model_lists() {
        let s = snap();
        let t = resolve(&s, "claude-3-5-sonnet-20241022").unwrap();
        assert_eq!(&*t.provider.name, "anthropic");
        assert!(!t.prefixed);
    }

    #[test]
    fn a_bare_name_listed_twice_goes_to_the_first_provider() {
        let s = snap();
        assert_eq!(&*resolve(&s, "shared-model").unwrap().provider.name, "openai");
    }

    #[test]
    fn a_provider_prefix_selects_the_provider_and_strips_the_prefix() {
        let s = snap();
        let t = resolve(&s, "anthropic/shared-model").unwrap();
        assert_eq!(&*t.provider.name, "anthropic");
        assert_eq!(t.model, "shared-model");
        assert!(t.prefixed);
    }

    #[test]
    fn a_prefixed_model_outside_the_providers_list_is_not_found() {
        let s = snap();
        assert!(matches!(resolve(&s, "openai/gpt-9"), Err(GatewayError::ModelNotFound(_))));
    }

    #[test]
    fn a_provider_without_a_model_list_takes_any_prefixed_model() {
        let s = snap();
        assert_eq!(resolve(&s, "open/anything-at-all").unwrap().model, "anything-at-all");
    }

    #[test]
    fn unknown_names_and_slashes_that_are_not_providers_are_not_found() {
        let s = snap();
        assert!(matches!(resolve(&s, "gpt-9"), Err(GatewayError::ModelNotFound(_))));
        assert!(matches!(resolve(&s, "meta-llama/Llama-3"), Err(GatewayError::ModelNotFound(_))));
        assert!(matches!(resolve(&s, "openai/"), Err(GatewayError::ModelNotFound(_))));
    }
}
