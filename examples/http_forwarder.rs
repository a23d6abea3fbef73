//! The floor for the HTTP proxy benchmark: a bare reverse proxy with the
//! same runtime shape as `flightrec proxy --listen` (tokio, two workers,
//! hyper server, pooled hyper client) that forwards each POST to the
//! upstream and its answer back, bytes untouched: no parsing, no policy,
//! no audit log. What it costs is what any proxy costs on this machine.
//!
//! usage: http_forwarder UPSTREAM_URL [WORKERS]   (prints `listening on
//! 127.0.0.1:PORT`; WORKERS defaults to 2, as the proxy has)

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn forward(
    client: Arc<Upstream>,
    upstream: hyper::Uri,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut up = Request::builder().method(parts.method).uri(upstream);
    for (k, v) in &parts.headers {
        if k != "host" {
            up = up.header(k, v);
        }
    }
    let up = up.body(Full::new(body)).expect("a request");
    let Ok(resp) = client.request(up).await else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        return Ok(r);
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn main() {
    let workers: usize = std::env::args()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
        .block_on(serve());
}

async fn serve() {
    let upstream: hyper::Uri = std::env::args()
        .nth(1)
        .expect("usage: http_forwarder UPSTREAM_URL [WORKERS]")
        .parse()
        .expect("an http:// URL");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Arc::new(Client::builder(TokioExecutor::new()).build(connector));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                forward(client.clone(), upstream.clone(), req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
