//! Secret references in the config: `env.NAME`, `file:PATH`, or a literal value.
//! Resolves them when a snapshot is built; never logs a resolved value.

/// Resolves a secret reference to its value.
pub fn resolve(reference: &str) -> Result<String, String> {
    if let Some(name) = reference.strip_prefix("env.") {
        return std::env::var(name).map_err(|_| format!("environment variable {name} is not set"));
    }
    if let Some(path) = reference.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read secret file {path}: {e}"));
    }
    Ok(reference.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_values_pass_through() {
        assert_eq!(resolve("sk-abc").unwrap(), "sk-abc");
    }

    #[test]
    fn missing_env_var_is_named_in_the_error() {
        let err = resolve("env.HEIMDALL_SURELY_UNSET_VAR_42").unwrap_err();
        assert!(err.contains("HEIMDALL_SURELY_UNSET_VAR_42"), "{err}");
    }

    #[test]
    fn file_secrets_lose_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "secret-value\n").unwrap();
        assert_eq!(resolve(&format!("file:{}", p.display())).unwrap(), "secret-value");
    }
}
