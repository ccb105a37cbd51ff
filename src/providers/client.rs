//! The pooled HTTP client every dialect's requests go through: HTTP/1.1 or HTTP/2, over
//! rustls with the system's trust roots, and what its errors mean for failover.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Shared;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::h1;
use super::pool::{Body, Pool};
use super::{ProbeFailure, SendError, SetupError};
use crate::domain::{Instance, UpstreamTimeouts};
use crate::telemetry::root_cause;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("switchyard/", env!("CARGO_PKG_VERSION")));

/// HTTP/2 flow-control windows for upstream connections (see `Client::new`).
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
const H2_STREAM_WINDOW: u32 = 256 << 10;

type Http = Shared<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct Client {
    /// Opens cleartext connections for instances' own pools (`pool::Pool`).
    tcp: HttpConnector,
    /// A pool for each connection worker, then one for everything else (probes,
    /// batches, flows): a worker's requests use connections whose tasks run on the
    /// worker's own thread (see `workers`).
    pools: Box<[Pools]>,
    timeouts: UpstreamTimeouts,
}

struct Pools {
    /// HTTP/1.1, or HTTP/2 where TLS negotiates it.
    client: Http,
    /// HTTP/2 from the first byte, for instances with `http2 = true`.
    h2: Http,
}

impl Client {
    /// `https` names an instance reached over TLS, if any: without one, a machine with
    /// no CA certificates (a minimal container) still starts. `workers`: the connection
    /// workers, each of which gets a pool.
    pub fn new(
        timeouts: UpstreamTimeouts,
        https: Option<&str>,
        workers: usize,
    ) -> Result<Client, SetupError> {
        crate::tls::install_crypto();
        let tls = {
            use rustls_platform_verifier::ConfigVerifierExt;
            match (rustls::ClientConfig::with_platform_verifier(), https) {
                (Ok(config), _) => config,
                (Err(e), Some(instance)) => {
                    return Err(SetupError::Client(format!(
                        "instance {instance} is reached over https, but this machine's trust roots cannot be used ({e}); install the CA certificates (Debian: ca-certificates) or point SSL_CERT_FILE at a bundle"
                    )));
                }
                (Err(_), None) => rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            }
        };
        let tcp = {
            let mut tcp = HttpConnector::new();
            tcp.enforce_http(false);
            tcp.set_nodelay(true);
            tcp.set_connect_timeout(Some(timeouts.connect));
            tcp
        };
        let connector = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(tcp.clone())
        };
        let builder = || {
            let mut builder = Shared::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                // h2 closes a connection (ENHANCE_YOUR_CALM, "too_many_data_frames")
                // when more small DATA frames wait unread than half its connection
                // window allows. Token streams are nothing but small frames, thousands
                // of them share one connection, and a burst of tokens lands at once:
                // with the adaptive window's start (64 KiB) a few hundred waiting
                // tokens killed every stream on the connection (benches/streams.rs,
                // 10,000 streams). A fixed 16 MiB window lets ~100,000 wait; 256 KiB a
                // stream still moves a large answer at 5 MB/s over a 50 ms round trip.
                .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
                .http2_initial_stream_window_size(H2_STREAM_WINDOW);
            builder
        };
        let pools = (0..=workers)
            .map(|_| Pools {
                client: builder().build(connector()),
                h2: builder()
                    .http2_only(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .http2_keep_alive_while_idle(true)
                    .build(connector()),
            })
            .collect();
        Ok(Client {
            tcp,
            pools,
            timeouts,
        })
    }

    /// The calling worker's pools (the shared ones off the workers).
    fn pools(&self) -> &Pools {
        let last = self.pools.len() - 1;
        &self.pools[crate::workers::current().map_or(last, |w| w.min(last))]
    }

    /// The calling worker's pool for `instance`.
    fn client(&self, instance: &Instance) -> &Http {
        let pools = self.pools();
        if instance.http2 {
            &pools.h2
        } else {
            &pools.client
        }
    }

    pub fn timeouts(&self) -> UpstreamTimeouts {
        self.timeouts
    }

    /// Sends `body` to `uri` with `headers` (a POST, unless `method` says otherwise) and
    /// waits up to `wait` for the response's headers: on a connection from the
    /// instance's own `pool` (HTTP/1.1 by hand) where it has one for `uri`, else from
    /// hyper-util's.
    pub async fn send(
        &self,
        (instance, pool): (&Instance, Option<&Pool>),
        (method, uri): (Method, &Uri),
        headers: impl Iterator<Item = (&header::HeaderName, &HeaderValue)>,
        request_id: &str,
        body: Bytes,
        wait: Duration,
    ) -> Result<http::Response<Body>, SendError> {
        if let Some(pool) = pool.filter(|pool| pool.serves(uri)) {
            // Written straight into the request head: no header map.
            let mut fields = Vec::with_capacity(256);
            h1::field(
                &mut fields,
                &header::CONTENT_TYPE,
                APPLICATION_JSON.as_bytes(),
            );
            h1::field(&mut fields, &header::USER_AGENT, USER_AGENT.as_bytes());
            if h1::is_field_value(request_id.as_bytes()) {
                h1::field(&mut fields, &X_REQUEST_ID, request_id.as_bytes());
            }
            for (name, value) in headers {
                h1::field(&mut fields, name, value.as_bytes());
            }
            let sent = pool.send((&self.tcp, self.timeouts), (&method, uri), &fields, body);
            return match tokio::time::timeout(wait, sent).await {
                Err(_) => Err(SendError::Timeout(wait)),
                Ok(sent) => sent,
            };
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        // Sized once for the three headers here and the instance's: not grown by any.
        let mut fixed = HeaderMap::with_capacity(3 + headers.size_hint().0);
        fixed.insert(header::CONTENT_TYPE, APPLICATION_JSON);
        fixed.insert(header::USER_AGENT, USER_AGENT);
        // The id came in as a header value or was made here; it is one.
        if let Ok(id) = HeaderValue::from_str(request_id) {
            fixed.insert(X_REQUEST_ID, id);
        }
        for (name, value) in headers {
            fixed.append(name, value.clone());
        }
        *request.headers_mut() = fixed;
        match tokio::time::timeout(wait, self.client(instance).request(request)).await {
            Err(_) => Err(SendError::Timeout(wait)),
            Ok(Ok(response)) => Ok(response.map(Body::unpooled)),
            Ok(Err(error)) => Err(classify(&error, self.timeouts)),
        }
    }

    /// GETs `url`, which must answer 2xx within `timeout`.
    pub async fn probe(
        &self,
        instance: &Instance,
        url: String,
        headers: impl Iterator<Item = (&header::HeaderName, &HeaderValue)>,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        let uri = parse(url).map_err(|e| ProbeFailure::Upstream(e.to_string()))?;
        let mut request = Request::builder()
            .uri(uri)
            .header(header::USER_AGENT, USER_AGENT);
        for (name, value) in headers {
            request = request.header(name, value.clone());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| ProbeFailure::Upstream(e.to_string()))?;
        let response = tokio::time::timeout(timeout, self.client(instance).request(request))
            .await
            .map_err(|_| ProbeFailure::Upstream(format!("no answer within {timeout:?}")))?
            .map_err(|e| {
                if out_of_local_resources(&e) {
                    ProbeFailure::Local(root_cause(&e))
                } else {
                    ProbeFailure::Upstream(root_cause(&e))
                }
            })?;
        let status = response.status();
        // Read the body so the connection goes back to the pool.
        let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeFailure::Upstream(format!("answered {status}")))
        }
    }
}

/// An upstream URL made at request time (Azure's deployment URLs), or one that did not
/// parse at start: the attempt fails before anything is sent, and says why.
pub fn parse(url: String) -> Result<Uri, SendError> {
    url.parse()
        .map_err(|e| SendError::Connect(format!("{url} is not a usable URL: {e}")))
}

/// A connect timeout is a failure to connect (503: nothing could be reached), not a slow
/// upstream (504).
fn classify(error: &hyper_util::client::legacy::Error, timeouts: UpstreamTimeouts) -> SendError {
    if error.is_connect() {
        connect_error(error, timeouts)
    } else if out_of_local_resources(error) {
        SendError::Local(root_cause(error))
    } else {
        SendError::Broken(root_cause(error))
    }
}

/// A connection that could not be opened: this machine's limits, the connect timeout,
/// or whatever the upstream's address said.
pub(super) fn connect_error(
    error: &(dyn std::error::Error + 'static),
    timeouts: UpstreamTimeouts,
) -> SendError {
    if out_of_local_resources(error) {
        SendError::Local(root_cause(error))
    } else if timed_out(error) {
        SendError::Connect(format!(
            "no connection within {}",
            crate::config::format_duration(timeouts.connect)
        ))
    } else {
        SendError::Connect(root_cause(error))
    }
}

/// Whether a connect error is the connect timeout expiring.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether an error comes from this machine's limits (EMFILE, ENFILE, ENOBUFS, ENOMEM)
/// rather than from the upstream.
fn out_of_local_resources(error: &(dyn std::error::Error + 'static)) -> bool {
    const LOCAL: [i32; 4] = [24, 23, 105, 12];
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| LOCAL.contains(&code))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::Workers;

    #[tokio::test]
    async fn each_worker_takes_connections_from_its_own_pool_and_others_from_the_last() {
        let timeouts = UpstreamTimeouts::all(Duration::from_secs(1));
        let client = std::sync::Arc::new(Client::new(timeouts, None, 2).expect("client"));
        let own = |client: &Client| {
            let chosen: *const Pools = client.pools();
            client.pools.iter().position(|p| std::ptr::eq(p, chosen))
        };
        assert_eq!(own(&client), Some(2), "off the workers: the shared pool");
        let workers = Workers::start(2).expect("workers");
        for expected in [0, 1, 0] {
            let client = client.clone();
            let (worker, _assigned) = workers.take();
            let on = worker.spawn(async move { own(&client) });
            assert_eq!(on.await.expect("task"), Some(expected));
        }
    }
}
