//! A raw delta xDS session written against the protos (not weft's own
//! client), to see exactly what the control plane sends: which resources
//! each response carries, with which versions.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tonic::transport::Channel;
use weft_xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};

/// What a client holds: type URL → resource name → version.
pub(crate) type Held = HashMap<String, HashMap<String, String>>;

/// One open stream.
pub(crate) struct AdsSession {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
    node: Node,
    /// What the client holds now.
    pub(crate) held: Held,
}

impl AdsSession {
    /// Opens a stream on `channel` (with `headers` as request metadata,
    /// e.g. `authorization: Bearer …`) and subscribes to `types`
    /// (wildcard), resuming from `held`.
    pub(crate) async fn open(
        channel: Channel,
        headers: &[(&'static str, String)],
        node: Node,
        types: &[&str],
        held: Held,
    ) -> Result<AdsSession, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        for type_url in types {
            let initial = held.get(*type_url).cloned().unwrap_or_default();
            tx.send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: (*type_url).to_owned(),
                initial_resource_versions: initial,
                ..Default::default()
            })
            .await
            .map_err(|_| tonic::Status::internal("request channel closed"))?;
        }
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        for (name, value) in headers {
            request
                .metadata_mut()
                .insert(*name, value.parse().expect("header value"));
        }
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(AdsSession {
            tx,
            responses,
            node,
            held,
        })
    }

    /// The next response (5 s at most), applied to `held` and ACKed.
    pub(crate) async fn next(&mut self) -> DeltaDiscoveryResponse {
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.responses.message())
                .await
                .expect("a response within 5 s")
                .expect("the stream stays open")
                .expect("a response");
        let held = self.held.entry(response.type_url.clone()).or_default();
        for r in &response.resources {
            held.insert(r.name.clone(), r.version.clone());
        }
        for name in &response.removed_resources {
            held.remove(name);
        }
        self.tx
            .send(DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .await
            .expect("ACK");
        response
    }
}
