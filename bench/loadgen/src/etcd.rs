//! The etcd side: 256-byte puts through etcd's gRPC API (`etcdserverpb.KV/Put`), what etcd's
//! own clients use. Only the two request fields the benchmark sets and no response field
//! are declared (protobuf skips the fields a reader does not know), so no `.proto` file or
//! `protoc` is needed. Clients are spread over the members; a follower forwards to the
//! leader.

use std::time::Duration;

use tonic::client::Grpc;
use tonic::codec::ProstCodec;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::stats::run_clients;
use crate::stats::Level;

/// `PutRequest`'s `key` (1) and `value` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `PutResponse`, read for its status only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {}

/// The bytes of every value written.
pub const VALUE_LEN: usize = 256;

/// Connects one channel per member of `endpoints` (`host:port`), `conns` in all.
pub async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for j in 0..conns {
        let ep = &endpoints[j % endpoints.len()];
        let ch = Channel::from_shared(format!("http://{ep}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("etcd at {ep}: {e}"))?;
        out.push(ch);
    }
    Ok(out)
}

/// One put; the error message if it failed.
pub async fn put(ch: Channel, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
    let mut grpc = Grpc::new(ch);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = ProstCodec::<PutRequest, PutResponse>::default();
    grpc.unary(tonic::Request::new(PutRequest { key, value }), path, codec)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs `clients` clients for `secs` after `warmup`, over `channels`.
pub async fn level(
    channels: &[Channel],
    clients: usize,
    warmup: Duration,
    secs: Duration,
) -> Level {
    let channels = channels[..clients.clamp(1, channels.len())].to_vec();
    run_clients(clients, warmup, secs, |i, from, until| {
        let ch = channels[i % channels.len()].clone();
        async move {
            let key = format!("loadgen/{i:04}").into_bytes();
            let value = vec![b'v'; VALUE_LEN];
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t0 = tokio::time::Instant::now();
                if t0 >= until {
                    break;
                }
                let ok = put(ch.clone(), key.clone(), value.clone()).await.is_ok();
                if t0 >= from {
                    match ok {
                        true => lat.push(t0.elapsed()),
                        false => errors += 1,
                    }
                }
            }
            (lat, errors)
        }
    })
    .await
}
