//! The few HTTP calls the supervisor makes to its children: health checks and
//! load-balancer membership changes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// One request with a 2 s limit; `None` if it could not be made.
    pub async fn call(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> Option<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .ok()?;
        tokio::time::timeout(Duration::from_secs(2), async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        })
        .await
        .ok()
        .flatten()
    }

    /// Polls until `check` accepts an answer to `GET path`, or `limit` passes.
    pub async fn wait_until(
        &self,
        addr: SocketAddr,
        path: &str,
        limit: Duration,
        check: impl Fn(StatusCode, &[u8]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Some((status, body)) = self.call(Method::GET, addr, path, None, None).await
                && check(status, &body)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}
