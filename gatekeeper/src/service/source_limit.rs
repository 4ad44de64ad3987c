//! A share of the key listener's requests in service per source address: at most `per_source`
//! requests from one address (IPv6: one /64) are in service at once; more are refused at once
//! with `RESOURCE_EXHAUSTED` + `SOURCE_BUSY`. Without it one connection of half-sent requests
//! could hold every slot of `api_max_requests` and keep every other worker waiting.

use crate::error::{ApiError, ErrorCode};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The address a source's share is kept under: the IPv4 address, or the /64 of an IPv6 address
/// (one host usually holds a whole /64).
pub fn source_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

#[derive(Debug)]
struct Shares {
    per_source: usize,
    in_service: Mutex<HashMap<IpAddr, usize>>,
}

impl Shares {
    fn take(&self, ip: IpAddr) -> bool {
        let mut m = self.in_service.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_source {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, ip: IpAddr) {
        let mut m = self.in_service.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Returns a source's share when its request is done (or dropped).
struct Share(Arc<Shares>, IpAddr);

impl Drop for Share {
    fn drop(&mut self) {
        self.0.give_back(self.1);
    }
}

/// The layer.
#[derive(Clone, Debug)]
pub struct SourceLimitLayer(Arc<Shares>);

impl SourceLimitLayer {
    /// At most `per_source` requests in service per source address.
    pub fn new(per_source: usize) -> Self {
        SourceLimitLayer(Arc::new(Shares {
            per_source: per_source.max(1),
            in_service: Mutex::new(HashMap::new()),
        }))
    }
}

impl<S> tower::Layer<S> for SourceLimitLayer {
    type Service = SourceLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SourceLimit(inner, self.0.clone())
    }
}

/// The service the layer wraps.
#[derive(Clone, Debug)]
pub struct SourceLimit<S>(S, Arc<Shares>);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for SourceLimit<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    /// Always ready: the share is checked first, in `call`, and only then does the request wait
    /// for the inner service (the listener-wide cap). Otherwise a source over its share would
    /// wait for a listener-wide slot before being told it is over its share.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let ip = req
            .extensions()
            .get::<crate::tls::ConnectInfo>()
            .map(|c| source_bucket(c.remote_addr.ip()));
        let share = match ip {
            Some(ip) if !self.1.take(ip) => {
                let status: tonic::Status = ApiError::new(
                    ErrorCode::SourceBusy,
                    "too many key requests from this address are in service; retry shortly",
                )
                .into();
                let resp = status.into_http::<ResBody>();
                return Box::pin(async move { Ok(resp) });
            }
            Some(ip) => Some(Share(self.1.clone(), ip)),
            None => None,
        };
        // The future waits for the inner service itself (`oneshot`: ready, then call), on the
        // instance taken from `self`; `self` keeps a fresh clone for the next request.
        let clone = self.0.clone();
        let inner = std::mem::replace(&mut self.0, clone);
        Box::pin(async move {
            use tower::ServiceExt;
            let r = inner.oneshot(req).await;
            drop(share);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_its_share() {
        let s = Arc::new(Shares {
            per_source: 2,
            in_service: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = s.take(a).then(|| Share(s.clone(), a));
        let two = s.take(a).then(|| Share(s.clone(), a));
        assert!(one.is_some() && two.is_some());
        assert!(!s.take(a), "a third from the same source");
        assert!(s.take(b), "another source is unaffected");
        s.give_back(b);
        drop(one);
        assert!(s.take(a), "a share comes back when a request ends");
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_bucket(a), source_bucket(b));
        assert_ne!(source_bucket(a), source_bucket(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_bucket(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
