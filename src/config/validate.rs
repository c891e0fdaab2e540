//! Semantic checks a parsed file must pass before a snapshot is built from it.
//! Each refusal names the path of the offending key so the loader can point at its line.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{BudgetConfig, FileConfig, RateLimitConfig, Seg, secret};

pub(super) struct Violation {
    pub path: Vec<Seg>,
    pub reason: String,
}

macro_rules! path {
    ($($s:expr),* $(,)?) => { vec![$(Seg::from($s)),*] };
}

fn fail<T>(path: Vec<Seg>, reason: impl Into<String>) -> Result<T, Violation> {
    Err(Violation { path, reason: reason.into() })
}

pub(super) fn validate(c: &FileConfig) -> Result<(), Violation> {
    server(c)?;
    providers(c)?;
    pricing(c)?;
    governance(c)?;
    identity(c)
}

fn server(c: &FileConfig) -> Result<(), Violation> {
    if c.server.listen.parse::<SocketAddr>().is_err() {
        return fail(path!["server", "listen"], format!("`{}` is not an IP:port address", c.server.listen));
    }
    if c.server.max_body_bytes == 0 {
        return fail(path!["server", "max_body_bytes"], "must be greater than 0");
    }
    if c.server.workers > 1024 {
        return fail(path!["server", "workers"], "at most 1024 workers");
    }
    if c.audit.ring_capacity == 0 {
        return fail(path!["audit", "ring_capacity"], "must be at least 1");
    }
    Ok(())
}

fn providers(c: &FileConfig) -> Result<(), Violation> {
    let mut names = HashSet::new();
    for (i, p) in c.providers.iter().enumerate() {
        if p.name.is_empty() || p.name.contains('/') || p.name == "*" {
            return fail(path!["providers", i, "name"], "must be non-empty, without `/`, and not `*`");
        }
        if !names.insert(p.name.as_str()) {
            return fail(path!["providers", i, "name"], format!("duplicate provider name `{}`", p.name));
        }
        match p.base_url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => return fail(path!["providers", i, "base_url"], format!("`{}` is not an http(s) URL", p.base_url)),
        }
        if p.keys.is_empty() {
            return fail(path!["providers", i, "keys"], "at least one key is required");
        }
        for (k, key) in p.keys.iter().enumerate() {
            if !(key.weight.is_finite() && key.weight > 0.0) {
                return fail(path!["providers", i, "keys", k], "weight must be a positive number");
            }
            if let Err(e) = secret::resolve(&key.value) {
                return fail(path!["providers", i, "keys", k], e);
            }
        }
        let mut models = HashSet::new();
        for (m, model) in p.models.iter().enumerate() {
            if model.is_empty() {
                return fail(path!["providers", i, "models", m], "model names must be non-empty");
            }
            if !models.insert(model.as_str()) {
                return fail(path!["providers", i, "models", m], format!("model `{model}` listed twice"));
            }
        }
        if p.timeout.is_zero() || p.connect_timeout.is_zero() || p.stream_idle_timeout.is_zero() {
            return fail(path!["providers", i], "timeouts must be greater than zero");
        }
        if let Some(ca) = &p.tls_ca_file {
            if !p.base_url.starts_with("https://") {
                return fail(path!["providers", i, "tls_ca_file"], "only an https base_url uses a CA file");
            }
            if let Err(e) = std::fs::metadata(ca) {
                return fail(path!["providers", i, "tls_ca_file"], format!("cannot read {ca}: {e}"));
            }
        }
        if p.max_retries > 10 {
            return fail(path!["providers", i, "max_retries"], "at most 10 retries");
        }
    }
    Ok(())
}

fn pricing(c: &FileConfig) -> Result<(), Violation> {
    for (model, p) in &c.pricing {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(p.input_per_mtok) || !ok(p.output_per_mtok) || !p.cached_input_per_mtok.is_none_or(ok) {
            return fail(path!["pricing", model.as_str()], "prices must be finite and not negative");
        }
        if p.max_output_tokens == Some(0) {
            return fail(path!["pricing", model.as_str(), "max_output_tokens"], "must be greater than 0");
        }
    }
    Ok(())
}

fn limits(base: &[Seg], budgets: &[BudgetConfig], rates: &[RateLimitConfig]) -> Result<(), Violation> {
    let at = |tail: Vec<Seg>| base.iter().cloned().chain(tail).collect::<Vec<_>>();
    let mut windows = HashSet::new();
    for (i, b) in budgets.iter().enumerate() {
        if !(b.max_usd.is_finite() && b.max_usd >= 0.0) {
            return fail(at(path!["budgets", i, "max_usd"]), "must be a finite amount, not negative");
        }
        if !windows.insert(b.reset) {
            return fail(at(path!["budgets", i, "reset"]), format!("two budgets reset every `{}`", b.reset.as_str()));
        }
    }
    let (mut req, mut tok) = (HashSet::new(), HashSet::new());
    for (i, r) in rates.iter().enumerate() {
        if r.requests.is_none() && r.tokens.is_none() {
            return fail(at(path!["rate_limits", i]), "give `requests`, `tokens` or both");
        }
        if (r.requests.is_some() && !req.insert(r.per)) || (r.tokens.is_some() && !tok.insert(r.per)) {
            return fail(
                at(path!["rate_limits", i, "per"]),
                format!("two limits of one kind per `{}`", r.per.as_str()),
            );
        }
    }
    Ok(())
}

fn allow_list(
    base: &[Seg],
    field: &str,
    list: &Option<Vec<String>>,
    known: Option<&HashSet<&str>>,
) -> Result<(), Violation> {
    let Some(list) = list else { return Ok(()) };
    for (i, entry) in list.iter().enumerate() {
        let path = base.iter().cloned().chain(path![field, i]).collect();
        if entry.is_empty() {
            return fail(path, "entries must be non-empty");
        }
        if let Some(known) = known
            && entry != "*"
            && !known.contains(entry.as_str())
        {
            return fail(path, format!("unknown provider `{entry}`"));
        }
    }
    Ok(())
}

fn unique_id<'a>(seen: &mut HashSet<&'a str>, id: &'a str, path: Vec<Seg>, kind: &str) -> Result<(), Violation> {
    if id.is_empty() {
        return fail(path, format!("{kind} id must be non-empty"));
    }
    if !seen.insert(id) {
        return fail(path, format!("duplicate {kind} id `{id}`"));
    }
    Ok(())
}

fn governance(c: &FileConfig) -> Result<(), Violation> {
    let g = &c.governance;
    let providers: HashSet<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    let mut customers = HashSet::new();
    for (i, e) in g.customers.iter().enumerate() {
        let base = path!["governance", "customers", i];
        unique_id(&mut customers, &e.id, base.iter().cloned().chain(path!["id"]).collect(), "customer")?;
        limits(&base, &e.budgets, &e.rate_limits)?;
        allow_list(&base, "allowed_models", &e.allowed_models, None)?;
        allow_list(&base, "allowed_providers", &e.allowed_providers, Some(&providers))?;
    }
    let mut teams = HashSet::new();
    for (i, e) in g.teams.iter().enumerate() {
        let base = path!["governance", "teams", i];
        unique_id(&mut teams, &e.id, base.iter().cloned().chain(path!["id"]).collect(), "team")?;
        if let Some(cu) = &e.customer
            && !customers.contains(cu.as_str())
        {
            return fail(base.into_iter().chain(path!["customer"]).collect(), format!("unknown customer `{cu}`"));
        }
        limits(&base, &e.budgets, &e.rate_limits)?;
        allow_list(&base, "allowed_models", &e.allowed_models, None)?;
        allow_list(&base, "allowed_providers", &e.allowed_providers, Some(&providers))?;
    }
    let mut users = HashSet::new();
    for (i, e) in g.users.iter().enumerate() {
        let base = path!["governance", "users", i];
        unique_id(&mut users, &e.id, base.iter().cloned().chain(path!["id"]).collect(), "user")?;
        for (t, team) in e.teams.iter().enumerate() {
            if !teams.contains(team.as_str()) {
                return fail(base.into_iter().chain(path!["teams", t]).collect(), format!("unknown team `{team}`"));
            }
        }
        limits(&base, &e.budgets, &e.rate_limits)?;
        allow_list(&base, "allowed_models", &e.allowed_models, None)?;
        allow_list(&base, "allowed_providers", &e.allowed_providers, Some(&providers))?;
    }
    let mut keys = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, e) in g.virtual_keys.iter().enumerate() {
        let base = path!["governance", "virtual_keys", i];
        let at = |tail: Vec<Seg>| base.iter().cloned().chain(tail).collect::<Vec<_>>();
        unique_id(&mut keys, &e.id, at(path!["id"]), "virtual key")?;
        let hash = match (&e.value, &e.value_sha256) {
            (Some(v), None) => match secret::resolve(v) {
                Ok(v) if v.is_empty() => return fail(at(path!["value"]), "the key value is empty"),
                Ok(v) => crate::auth::hash_key(&v),
                Err(err) => return fail(at(path!["value"]), err),
            },
            (None, Some(h)) => match crate::auth::parse_hash(h) {
                Some(h) => h,
                None => return fail(at(path!["value_sha256"]), "must be 64 hex characters"),
            },
            _ => return fail(at(vec![]), "give exactly one of `value` and `value_sha256`"),
        };
        if !hashes.insert(hash) {
            return fail(at(path!["value"]), "another virtual key has the same value");
        }
        if e.team.is_some() && e.customer.is_some() {
            return fail(at(path!["customer"]), "a key belongs to a team or a customer, not both");
        }
        if let Some(u) = &e.user
            && !users.contains(u.as_str())
        {
            return fail(at(path!["user"]), format!("unknown user `{u}`"));
        }
        if let Some(t) = &e.team
            && !teams.contains(t.as_str())
        {
            return fail(at(path!["team"]), format!("unknown team `{t}`"));
        }
        if let Some(cu) = &e.customer
            && !customers.contains(cu.as_str())
        {
            return fail(at(path!["customer"]), format!("unknown customer `{cu}`"));
        }
        limits(&base, &e.budgets, &e.rate_limits)?;
        allow_list(&base, "allowed_models", &e.allowed_models, None)?;
        allow_list(&base, "allowed_providers", &e.allowed_providers, Some(&providers))?;
    }
    Ok(())
}

fn identity(c: &FileConfig) -> Result<(), Violation> {
    let d = &c.identity.user_defaults;
    let base = path!["identity", "user_defaults"];
    limits(&base, &d.budgets, &d.rate_limits)?;
    allow_list(&base, "allowed_models", &d.allowed_models, None)?;
    let providers: HashSet<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    allow_list(&base, "allowed_providers", &d.allowed_providers, Some(&providers))?;
    let mut names = HashSet::new();
    for (i, p) in c.identity.providers.iter().enumerate() {
        if !names.insert(p.name.as_str()) {
            return fail(
                path!["identity", "providers", i, "name"],
                format!("duplicate identity provider `{}`", p.name),
            );
        }
        match p.issuer.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) => {}
            _ => return fail(path!["identity", "providers", i, "issuer"], "must be an http(s) URL"),
        }
        if crate::auth::jwt::parse_algorithm(&p.algorithm).is_none() {
            return fail(
                path!["identity", "providers", i, "algorithm"],
                format!(
                    "`{}` is not accepted: one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
                    p.algorithm
                ),
            );
        }
        for (claim, role) in &p.role_map {
            if crate::auth::Role::parse(role).is_none() {
                return fail(
                    path!["identity", "providers", i, "role_map", claim.as_str()],
                    format!("`{role}` is not a role: admin, developer or viewer"),
                );
            }
        }
        if let Some(d) = &p.default_role
            && d != "deny"
            && crate::auth::Role::parse(d).is_none()
        {
            return fail(path!["identity", "providers", i, "default_role"], "one of deny, admin, developer, viewer");
        }
        for (j, r) in p.require_mfa.iter().enumerate() {
            if crate::auth::Role::parse(r).is_none() {
                return fail(path!["identity", "providers", i, "require_mfa", j], format!("`{r}` is not a role"));
            }
        }
    }
    let mut external = HashSet::new();
    for (i, u) in c.governance.users.iter().enumerate() {
        if let Some(r) = &u.role
            && crate::auth::Role::parse(r).is_none()
        {
            return fail(
                path!["governance", "users", i, "role"],
                format!("`{r}` is not a role: admin, developer or viewer"),
            );
        }
        let Some(ext) = &u.external_id else { continue };
        let at = path!["governance", "users", i, "external_id"];
        match ext.split_once(':') {
            Some((provider, subject)) if !subject.is_empty() => {
                if !names.contains(provider) {
                    return fail(at, format!("`{provider}` is not an identity provider in [[identity.providers]]"));
                }
            }
            _ => return fail(at, "must read PROVIDER:SUBJECT"),
        }
        if !external.insert(ext.as_str()) {
            return fail(at, format!("`{ext}` is already another user's external_id"));
        }
    }
    Ok(())
}
