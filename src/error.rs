//! The HTTP layer's one error type: each variant's status and JSON body, in one place.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use twizzle_actors::ids::DevNameError;
use twizzle_actors::registry::RegistryError;
use twizzle_actors::store::StoreError;
use twizzle_actors::tokens::TokenError;

/// Every way a request can fail, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Creating a stream needs an access token.
    MissingAccessToken,
    /// The access token belongs to nobody.
    InvalidAccessToken,
    /// The stream does not exist, or has ended.
    UnknownStream,
    /// The socket endpoint was called without a WebSocket upgrade.
    NotAnUpgrade,
    /// The user has the most open streams allowed.
    TooManyStreams {
        /// The limit in force.
        limit: usize,
    },
    /// The stream has the most sender sockets allowed.
    TooManySenderSockets {
        /// The limit in force.
        limit: usize,
    },
    /// The client address holds the most open sockets allowed.
    TooManyClientSockets {
        /// The limit in force.
        limit: usize,
    },
    /// The client address is over a rate; it may come back after `retry_after`.
    TooFast {
        /// Which limit: `handshakes per client` or `requests per client`.
        limit: &'static str,
        /// When a request would pass again.
        retry_after: std::time::Duration,
    },
    /// The server holds the most open sockets allowed.
    TooManySockets {
        /// The limit in force.
        limit: usize,
    },
    /// The OAuth callback came without a code.
    MissingCode,
    /// The WCA refused the code, or could not be reached.
    WcaFailed,
    /// No WCA client secret is configured.
    SignInNotConfigured,
    /// The development sign-in's name is missing or not a valid name.
    BadDevName(DevNameError),
    /// Claiming needs a claim token.
    MissingClaimToken,
    /// The claim token is unknown, already used, or expired.
    InvalidClaimToken,
    /// `since` is not a non-negative integer.
    BadSince,
    /// The user is not a sender of the stream they want to change.
    NotASender,
    /// The query string could not be read.
    BadQuery(String),
    /// No endpoint at this path.
    NoSuchEndpoint(String),
    /// The endpoint exists but not for this method.
    MethodNotAllowed,
    /// The server is restarting; try again in a moment.
    ShuttingDown,
    /// An actor did not answer within the deadline
    /// ([`ACTOR_DEADLINE`](crate::routes::ACTOR_DEADLINE)).
    Busy,
    /// What the request needs could not be kept (a full or read-only disk,
    /// an unreachable store); what is kept already still works.
    Storage(StoreError),
    /// Something on our side failed (storage, an actor gone); the details are in the log.
    Internal,
}

impl ApiError {
    fn message(&self) -> String {
        match self {
            ApiError::MissingAccessToken => "a twizzle access token is required".to_owned(),
            ApiError::InvalidAccessToken => "invalid twizzle access token".to_owned(),
            ApiError::UnknownStream => "stream ID is unknown".to_owned(),
            ApiError::NotAnUpgrade => "this endpoint expects a WebSocket upgrade".to_owned(),
            ApiError::TooManyStreams { limit } => {
                format!("too many open streams (at most {limit} per user)")
            }
            ApiError::TooManySenderSockets { limit } => {
                format!("too many sender sockets on this stream (at most {limit})")
            }
            ApiError::TooManyClientSockets { limit } => {
                format!("too many open sockets from this address (at most {limit})")
            }
            ApiError::TooFast { limit, .. } => format!("rate limit exceeded: {limit}"),
            ApiError::TooManySockets { limit } => {
                format!("too many open sockets (at most {limit})")
            }
            ApiError::MissingCode => "code was not provided".to_owned(),
            ApiError::WcaFailed => "Could not get WCA info. Please start over.".to_owned(),
            ApiError::SignInNotConfigured => {
                "WCA sign-in is not configured on this server".to_owned()
            }
            ApiError::BadDevName(why) => why.to_string(),
            ApiError::MissingClaimToken => "claimToken was not provided".to_owned(),
            ApiError::InvalidClaimToken => {
                "claim token is unknown, already used, or expired".to_owned()
            }
            ApiError::BadQuery(why) => format!("bad query string: {why}"),
            ApiError::BadSince => "since must be a non-negative integer".to_owned(),
            ApiError::NotASender => "only a sender of this stream may do that".to_owned(),
            ApiError::NoSuchEndpoint(path) => format!("no such endpoint: {path}"),
            ApiError::MethodNotAllowed => "method not allowed here".to_owned(),
            ApiError::ShuttingDown => "server restarting: try again in a moment".to_owned(),
            ApiError::Busy => "server busy".to_owned(),
            ApiError::Storage(e) => e.public_message().to_owned(),
            ApiError::Internal => "internal error".to_owned(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// The body of every error response.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingAccessToken
            | ApiError::InvalidAccessToken
            | ApiError::InvalidClaimToken => StatusCode::UNAUTHORIZED,
            ApiError::UnknownStream | ApiError::NoSuchEndpoint(_) => StatusCode::NOT_FOUND,
            ApiError::NotAnUpgrade
            | ApiError::MissingCode
            | ApiError::BadDevName(_)
            | ApiError::MissingClaimToken
            | ApiError::BadQuery(_)
            | ApiError::BadSince => StatusCode::BAD_REQUEST,
            ApiError::TooManyStreams { .. }
            | ApiError::TooManySenderSockets { .. }
            | ApiError::TooManyClientSockets { .. }
            | ApiError::TooFast { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManySockets { .. }
            | ApiError::SignInNotConfigured
            | ApiError::ShuttingDown
            | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::WcaFailed | ApiError::NotASender => StatusCode::FORBIDDEN,
            ApiError::Storage(StoreError::Failed(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::TooFast { retry_after, .. } = self {
            // Whole seconds, rounded up, and at least one.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.insert_header(("Retry-After", secs.clamp(1, 86_400).to_string()));
        }
        response.json(ErrorBody {
            error: self.message(),
        })
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            TokenError::InvalidAccessToken => ApiError::InvalidAccessToken,
            TokenError::InvalidClaimToken => ApiError::InvalidClaimToken,
            TokenError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match e {
            RegistryError::UnknownStream => ApiError::UnknownStream,
            RegistryError::TooManyStreams { limit } => ApiError::TooManyStreams { limit },
            RegistryError::TooManySockets { limit } => ApiError::TooManySockets { limit },
            RegistryError::TooManyClientSockets { limit } => {
                ApiError::TooManyClientSockets { limit }
            }
            RegistryError::TooManySenderSockets { limit } => {
                ApiError::TooManySenderSockets { limit }
            }
            RegistryError::ShuttingDown => ApiError::ShuttingDown,
            RegistryError::NotASender => ApiError::NotASender,
            RegistryError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> ApiError {
        match e {
            actix::MailboxError::Timeout => {
                log::warn!("an actor did not answer within the deadline: server busy");
                ApiError::Busy
            }
            actix::MailboxError::Closed => {
                log::error!("an actor did not answer: {e}");
                ApiError::Internal
            }
        }
    }
}
