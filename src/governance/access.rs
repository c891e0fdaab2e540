//! Allow-lists of models and providers. The principal's lists must both admit the target.
//! Reads only the snapshot.

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::providers::route::Target;

/// Refuses a target outside the caller's allow-lists (provider first, then model).
pub fn authorize(principal: &Principal<'_>, target: &Target<'_, '_>) -> Result<(), GatewayError> {
    let Some(key) = principal.virtual_key() else { return Ok(()) };
    let provider = &*target.provider.name;
    if !key.allowed_providers.allows(provider) {
        return Err(GatewayError::ProviderBlocked {
            provider: provider.to_string(),
            level: "virtual_key",
            id: key.id.to_string(),
        });
    }
    if !key.allowed_models.allows_model(provider, target.model) {
        return Err(GatewayError::ModelBlocked {
            model: target.model.to_string(),
            level: "virtual_key",
            id: key.id.to_string(),
        });
    }
    Ok(())
}
