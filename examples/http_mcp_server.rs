//! A minimal, fast MCP server over Streamable HTTP (JSON answers), for the
//! HTTP proxy benchmark: it answers `tools/call` with a small text result,
//! `initialize`/`server/discover` with its name, `tools/list` with one
//! tool, and notifications with 202. It never does work of its own, so a
//! benchmark measures the proxy.
//!
//! usage: http_mcp_server PORT   (prints `listening on 127.0.0.1:PORT`)

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

async fn handle(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::ACCEPTED;
        return Ok(r);
    };
    let result = match msg["method"].as_str().unwrap_or_default() {
        "initialize" => {
            json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "http-bench-server", "version": "1"}})
        }
        "tools/list" => {
            json!({"tools": [{"name": "copy_image_set", "inputSchema": {"type": "object"}}]})
        }
        _ => json!({"content": [{"type": "text", "text": "ok"}]}),
    };
    let out = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result})).unwrap();
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                .await;
        });
    }
}
