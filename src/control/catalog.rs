//! What snapshots are built from: the config file plus the entities created through the
//! management API. Both reloads and API changes go through here, one at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::de::DeserializeOwned;

use crate::config::{self, LoadedConfig};
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// The four kinds of governed entity, as named in the API's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Customer,
    Team,
    User,
    VirtualKey,
    /// `[[identity.providers]]` entries; their id is their `name`.
    IdentityProvider,
}

impl Kind {
    pub fn from_path(s: &str) -> Option<Kind> {
        Some(match s {
            "customers" => Kind::Customer,
            "teams" => Kind::Team,
            "users" => Kind::User,
            "virtual-keys" => Kind::VirtualKey,
            "identity-providers" => Kind::IdentityProvider,
            _ => return None,
        })
    }

    /// How the kind is stored and named in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Customer => "customer",
            Kind::Team => "team",
            Kind::User => "user",
            Kind::VirtualKey => "virtual_key",
            Kind::IdentityProvider => "identity_provider",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Customer => "customers",
            Kind::Team => "teams",
            Kind::User => "users",
            Kind::VirtualKey => "virtual_keys",
            Kind::IdentityProvider => "identity_providers",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [Kind::Customer, Kind::Team, Kind::User, Kind::VirtualKey, Kind::IdentityProvider]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// An entity created through the API: its body has the config file's shape for its kind.
#[derive(Debug, Clone)]
pub struct ApiEntity {
    pub kind: Kind,
    pub id: String,
    pub body: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ApiEntity {
    pub fn from_stored(e: crate::store::StoredEntity) -> Option<Self> {
        Some(ApiEntity {
            kind: Kind::parse(&e.kind)?,
            id: e.id,
            body: serde_json::from_str(&e.body).ok()?,
            created_at: e.created_at,
            updated_at: e.updated_at,
        })
    }

    pub fn to_stored(&self) -> crate::store::StoredEntity {
        crate::store::StoredEntity {
            kind: self.kind.as_str().to_string(),
            id: self.id.clone(),
            body: self.body.to_string(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

struct State {
    file: LoadedConfig,
    api: Vec<ApiEntity>,
}

pub struct Catalog {
    /// Held across a whole change (validate, build, persist, publish) so changes never interleave.
    writes: tokio::sync::Mutex<()>,
    state: std::sync::Mutex<State>,
}

/// Why a merged catalog is refused: the field (as `kind.field`) and the reason.
#[derive(Debug)]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

impl Catalog {
    pub fn new(file: LoadedConfig, api: Vec<ApiEntity>) -> Self {
        Catalog { writes: tokio::sync::Mutex::new(()), state: std::sync::Mutex::new(State { file, api }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub async fn lock_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    pub fn file(&self) -> LoadedConfig {
        self.state().file.clone()
    }

    pub fn api(&self) -> Vec<ApiEntity> {
        self.state().api.clone()
    }

    pub fn set_file(&self, file: LoadedConfig) {
        self.state().file = file;
    }

    pub fn set_api(&self, api: Vec<ApiEntity>) {
        self.state().api = api;
    }
}

fn parse_body<T: DeserializeOwned>(e: &ApiEntity) -> Result<T, Refusal> {
    serde_json::from_value(e.body.clone())
        .map_err(|err| Refusal { field: e.kind.as_str().to_string(), reason: err.to_string() })
}

/// The file's config with the API's entities appended, validated as one.
pub fn merge(file: &LoadedConfig, api: &[ApiEntity]) -> Result<LoadedConfig, Refusal> {
    let mut merged = file.clone();
    let c = &mut merged.config;
    for e in api {
        let g = &mut c.governance;
        match e.kind {
            Kind::IdentityProvider => c.identity.providers.push(parse_body(e)?),
            Kind::Customer => g.customers.push(parse_body(e)?),
            Kind::Team => g.teams.push(parse_body(e)?),
            Kind::User => g.users.push(parse_body(e)?),
            Kind::VirtualKey => g.virtual_keys.push(parse_body(e)?),
        }
    }
    config::check(&merged.config).map_err(|(path, reason)| Refusal { field: path, reason })?;
    Ok(merged)
}

/// Builds the next snapshot from `merged`, off the event loop (it may resolve DNS).
pub async fn build(shared: &Arc<Shared>, merged: LoadedConfig) -> Result<Snapshot, String> {
    let version = shared.snapshot.load().version + 1;
    let s = shared.clone();
    let jwks = match shared.jwks.lock() {
        Ok(j) => j.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    tokio::task::spawn_blocking(move || Snapshot::build_with_keys(&merged, version, &s.counters, &jwks))
        .await
        .map_err(|e| format!("snapshot build task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// Makes `snapshot` the one every core reads from its next request on.
pub fn swap(shared: &Shared, snapshot: Snapshot) -> u64 {
    let version = snapshot.version;
    shared.snapshot.store(Arc::new(snapshot));
    shared.metrics.config_version.store(version, Relaxed);
    version
}

/// `build` then `swap`.
pub async fn publish(shared: &Arc<Shared>, merged: LoadedConfig) -> Result<u64, String> {
    Ok(swap(shared, build(shared, merged).await?))
}

/// Rebuilds and publishes the snapshot from the catalog as it stands, when something outside it
/// changed (provider addresses, identity provider keys); one change at a time.
pub async fn rebuild(shared: &Arc<Shared>, catalog: &Catalog) -> Result<u64, String> {
    let _writes = catalog.lock_writes().await;
    match merge(&catalog.file(), &catalog.api()) {
        Ok(merged) => publish(shared, merged).await,
        Err(r) => Err(format!("{}: {}", r.field, r.reason)),
    }
}
