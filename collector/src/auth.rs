//! Bearer-token check for the query API.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` when a token is configured; lets everything through
/// otherwise.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
}

impl BearerAuth {
    pub fn new(token: Option<String>) -> BearerAuth {
        BearerAuth {
            token: token.map(Arc::from),
        }
    }
}

/// Compares without an early exit so the time taken does not reveal how much of a guess matched.
/// Hand-written: four lines, not worth a dependency.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let Some(header) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this collector requires a query token (authorization: Bearer ...)",
            ));
        };
        let presented = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("query token rejected"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks() {
        let mut auth = BearerAuth::new(Some("s3cret".into()));
        assert!(auth.call(Request::new(())).is_err());
        let mut good = Request::new(());
        good.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer s3cret"),
        );
        assert!(auth.call(good).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer s3creT"),
        );
        assert_eq!(
            auth.call(bad).map(|_| ()).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(BearerAuth::new(None).call(Request::new(())).is_ok());
    }
}
