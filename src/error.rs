//! The one error enum of the public API and its single mapping to an HTTP status and JSON body.
//! Every other module returns these; none of them picks a status code itself.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

/// Every error a client can see. Message texts are part of the contract: they say what to change.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "a credential is required: send a virtual key as `Authorization: Bearer …`, `x-bf-vk`, `x-api-key` or `api-key`"
    )]
    AuthenticationRequired,
    #[error("SSO authentication required: this key belongs to a user, who must send their SSO access token")]
    SsoRequired,
    #[error("{0}")]
    InvalidToken(String),
    #[error("this role requires multi-factor authentication; sign in again with MFA")]
    MfaRequired,
    #[error("budget exceeded at {level} '{id}'")]
    BudgetExceeded { level: &'static str, id: String },
    #[error("virtual key not found")]
    VirtualKeyNotFound,
    #[error("virtual key '{0}' is blocked")]
    VirtualKeyBlocked(String),
    #[error("model '{model}' is not allowed for {level} '{id}'")]
    ModelBlocked { model: String, level: &'static str, id: String },
    #[error("provider '{provider}' is not allowed for {level} '{id}'")]
    ProviderBlocked { provider: String, level: &'static str, id: String },
    #[error("{0}")]
    UserNotAuthorized(String),
    #[error("{0}")]
    ComplianceViolation(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The change would break the state: an id in use, a parent with children, a config-managed entity.
    #[error("{0}")]
    Conflict(String),
    #[error("model '{0}' is not served by any configured provider")]
    ModelNotFound(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("no price is configured for model '{0}'")]
    UnpricedModel(String),
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    #[error("{message}")]
    RequestLimited { message: String, retry_after_secs: u64 },
    #[error("{message}")]
    TokenLimited { message: String, retry_after_secs: u64 },
    /// The provider refused the request itself (a 4xx other than 401/403/429): not retried.
    #[error("{message}")]
    ProviderRejected { status: u16, message: String },
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AuthenticationRequired | SsoRequired | InvalidToken(_) | MfaRequired => StatusCode::UNAUTHORIZED,
            BudgetExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            VirtualKeyNotFound
            | VirtualKeyBlocked(_)
            | ModelBlocked { .. }
            | ProviderBlocked { .. }
            | UserNotAuthorized(_)
            | ComplianceViolation(_) => StatusCode::FORBIDDEN,
            NotFound(_) | ModelNotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Conflict(_) => StatusCode::CONFLICT,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnpricedModel(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited { .. } | RequestLimited { .. } | TokenLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProviderRejected { status, .. } => {
                StatusCode::from_u16(*status).ok().filter(|s| s.is_client_error()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Upstream(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error.type` of the body; also a bounded metric label.
    pub fn error_type(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidRequest(_) => "invalid_request",
            AuthenticationRequired | SsoRequired => "authentication_required",
            InvalidToken(_) => "invalid_token",
            MfaRequired => "mfa_required",
            BudgetExceeded { .. } => "budget_exceeded",
            VirtualKeyNotFound => "virtual_key_not_found",
            VirtualKeyBlocked(_) => "virtual_key_blocked",
            ModelBlocked { .. } => "model_blocked",
            ProviderBlocked { .. } => "provider_blocked",
            UserNotAuthorized(_) => "user_not_authorized",
            ComplianceViolation(_) => "compliance_violation",
            NotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            Conflict(_) => "conflict",
            ModelNotFound(_) => "model_not_found",
            PayloadTooLarge { .. } => "payload_too_large",
            UnpricedModel(_) => "unpriced_model",
            RateLimited { .. } => "rate_limited",
            RequestLimited { .. } => "request_limited",
            TokenLimited { .. } => "token_limited",
            ProviderRejected { status: 404, .. } => "model_not_found",
            ProviderRejected { status: 413, .. } => "payload_too_large",
            ProviderRejected { .. } => "invalid_request",
            Upstream(_) => "upstream_error",
            UpstreamTimeout(_) => "upstream_timeout",
            Unavailable(_) => "service_unavailable",
            Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after_secs, .. }
            | GatewayError::RequestLimited { retry_after_secs, .. }
            | GatewayError::TokenLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            GatewayError::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// `{"error":{"type":…,"message":…}}`, the shape OpenAI SDKs read `error.message` from.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({ "error": { "type": self.error_type(), "message": self.to_string() } });
        Bytes::from(body.to_string())
    }

    /// The whole response. `x-heimdall-error` marks errors the gateway produced itself.
    pub fn to_http(&self) -> http::Response<Bytes> {
        let mut resp = http::Response::new(self.body());
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-heimdall-error", HeaderValue::from_static(self.error_type()));
        if let Some(secs) = self.retry_after() {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped_json() {
        let e = GatewayError::ModelNotFound("nope".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "model_not_found");
        assert_eq!(v["error"]["message"], "model 'nope' is not served by any configured provider");
    }

    #[test]
    fn rate_limits_carry_retry_after() {
        let e = GatewayError::RateLimited { message: "slow down".into(), retry_after_secs: 7 };
        let r = e.to_http();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "7");
    }

    #[test]
    fn catalogue_statuses_match_the_design() {
        assert_eq!(GatewayError::PayloadTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::UnpricedModel("m".into()).status(), 422);
        assert_eq!(GatewayError::BudgetExceeded { level: "team", id: "t".into() }.status(), 402);
        assert_eq!(GatewayError::Upstream("x".into()).status(), 502);
        assert_eq!(GatewayError::UpstreamTimeout("x".into()).status(), 504);
        assert_eq!(GatewayError::VirtualKeyBlocked("k".into()).status(), 403);
        assert_eq!(GatewayError::AuthenticationRequired.status(), 401);
    }
}
