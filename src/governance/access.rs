//! Allow-lists of models and providers. Every level of the caller's chain must admit the target:
//! the effective set is the intersection. Reads only the snapshot.

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::providers::route::Target;
use crate::snapshot::Snapshot;

/// Refuses a target outside any allow-list on the chain (provider first, then model), naming the level.
pub fn authorize(snap: &Snapshot, principal: &Principal<'_>, target: &Target<'_, '_>) -> Result<(), GatewayError> {
    let Some(chain) = principal.chain() else { return Ok(()) };
    let provider = &*target.provider.name;
    for entity in snap.chain(chain).iter().map(|&e| &snap.entities[e]) {
        if !entity.allowed_providers.allows(provider) {
            return Err(GatewayError::ProviderBlocked {
                provider: provider.to_string(),
                level: entity.level.as_str(),
                id: entity.id.to_string(),
            });
        }
        if !entity.allowed_models.allows_model(provider, target.model) {
            return Err(GatewayError::ModelBlocked {
                model: target.model.to_string(),
                level: entity.level.as_str(),
                id: entity.id.to_string(),
            });
        }
    }
    Ok(())
}
