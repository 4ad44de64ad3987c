//! A tower layer for the API server: a non-OK response that tonic produced itself (an unknown
//! method, a message above the decoding limit, a request with no message or a truncated frame)
//! carries no `gatekeeper-error-code`; this adds it, through [`crate::error::transport_code`], so
//! every non-OK status of the Key, Peer and Admin services has one. Responses the handlers built
//! (through `ApiError`) already carry it and pass unchanged.

use crate::error::{transport_code, ERROR_CODE_METADATA};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorCodeLayer;

impl<S> tower::Layer<S> for ErrorCodeLayer {
    type Service = ErrorCodeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorCodeService(inner)
    }
}

/// The service the layer wraps around the routes.
#[derive(Clone, Debug)]
pub struct ErrorCodeService<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ErrorCodeService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            label(resp.headers_mut());
            Ok(resp)
        })
    }
}

/// Adds the stable code to a trailers-only error response that lacks one (and turns framing
/// errors of the request into `INVALID_ARGUMENT`).
pub fn label(headers: &mut http::HeaderMap) {
    if headers.contains_key(ERROR_CODE_METADATA) {
        return;
    }
    let Some(status) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    if let Some((grpc, code)) = transport_code(status, &message) {
        headers.insert("grpc-status", http::HeaderValue::from(grpc as i32));
        headers.insert(
            ERROR_CODE_METADATA,
            http::HeaderValue::from_static(code.as_str()),
        );
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec).
fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&v[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &str, message: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_str(status).unwrap());
        h.insert(
            "grpc-message",
            http::HeaderValue::from_str(message).unwrap(),
        );
        h
    }

    #[test]
    fn tonic_made_errors_get_their_code() {
        let mut h = headers("13", "Missing%20request%20message.");
        label(&mut h);
        assert_eq!(h["grpc-status"], "3");
        assert_eq!(h[ERROR_CODE_METADATA], "MALFORMED_REQUEST");
        let mut h = headers("11", "Error,%20decoded%20message%20length%20too%20large");
        label(&mut h);
        assert_eq!(h["grpc-status"], "11");
        assert_eq!(h[ERROR_CODE_METADATA], "MESSAGE_TOO_LARGE");
        let mut h = headers("12", "");
        label(&mut h);
        assert_eq!(h[ERROR_CODE_METADATA], "UNIMPLEMENTED");
    }

    #[test]
    fn handler_errors_and_successes_pass_unchanged() {
        let mut h = headers("5", "worker%20not%20registered");
        h.insert(
            ERROR_CODE_METADATA,
            http::HeaderValue::from_static("WORKER_NOT_REGISTERED"),
        );
        let before = h.clone();
        label(&mut h);
        assert_eq!(h, before);
        let mut ok = http::HeaderMap::new();
        ok.insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        let before = ok.clone();
        label(&mut ok);
        assert_eq!(ok, before);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b%25c"), "a b%c");
        assert_eq!(percent_decode(b"trailing%2"), "trailing%2");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }
}
