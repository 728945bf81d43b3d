//! The [`ConnectionHandler`] of one connection, [`Handler`], and the
//! upgrades it negotiates streams with.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Ready, ready};
use futures::task::AtomicWaker;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
    ListenUpgradeError,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol,
};
use libp2p::{PeerId, Stream, StreamProtocol};

use super::*;

/// A request for one outbound substream, travelling from the behaviour to a
/// handler and on through the swarm as the substream's open info.
pub struct OpenRequest {
    pub(super) protocol: StreamProtocol,
    pub(super) reply: OpenReply,
}

impl fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRequest")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// What [`Behaviour`] tells a [`Handler`] (opaque).
#[derive(Debug)]
pub struct HandlerIn(pub(super) OpenRequest);

/// The [`ConnectionHandler`] of [`Behaviour`], one per connection.
///
/// It offers the currently accepted protocols to inbound substreams and
/// hands each negotiated one straight to its protocol's [`IncomingStreams`];
/// it turns open requests into outbound substreams.
pub struct Handler {
    pub(super) peer: PeerId,
    /// The connection this handler serves.
    pub(super) path: ConnectionPath,
    pub(super) shared: Arc<Shared>,
    pub(super) open_timeout: Duration,
    pub(super) pending: VecDeque<OpenRequest>,
    /// Woken when the local protocols change, so that the connection
    /// re-reads them (and identify pushes them) at once.
    pub(super) protocols_changed: Arc<AtomicWaker>,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("peer", &self.peer)
            .field("relayed", &self.path.relayed)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = Infallible;
    type InboundProtocol = AcceptedProtocols;
    type OutboundProtocol = RequestedProtocol;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenRequest;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        SubstreamProtocol::new(AcceptedProtocols(self.shared.protocols()), ())
            .with_timeout(self.open_timeout)
    }

    fn connection_keep_alive(&self) -> bool {
        !self.pending.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        // The connection task polls the handler again right after every
        // `on_behaviour_event`; the waker is only for protocol changes.
        self.protocols_changed.register(cx.waker());
        while let Some(request) = self.pending.pop_front() {
            if request.reply.is_canceled() {
                continue;
            }
            let protocol = RequestedProtocol(request.protocol.clone());
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(protocol, request).with_timeout(self.open_timeout),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, HandlerIn(request): Self::FromBehaviour) {
        self.pending.push_back(request);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (protocol, stream),
                ..
            }) => self.shared.deliver(self.peer, protocol, stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: request,
            }) => {
                // If the caller gave up, the stream is dropped here.
                let _ = request.reply.send(Ok((stream, self.path.clone())));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: request,
                error,
            }) => {
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        OpenStreamError::UnsupportedProtocol(request.protocol.clone())
                    }
                    StreamUpgradeError::Timeout => OpenStreamError::Timeout,
                    StreamUpgradeError::Io(e) => OpenStreamError::Io(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                tracing::debug!(peer = %self.peer, protocol = %request.protocol, %error, "open failed");
                let _ = request.reply.send(Err(error));
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { error, .. }) => match error {},
            ConnectionEvent::RemoteProtocolsChange(change) => {
                lock(&self.shared.remote).changed(self.peer, self.path.connection, &change);
            }
            _ => {}
        }
    }
}

/// The inbound upgrade offered by [`Handler`]: the protocols accepted when
/// the substream arrived. Its output carries the negotiated protocol with
/// the stream.
#[derive(Debug, Clone)]
pub struct AcceptedProtocols(pub(super) Arc<[StreamProtocol]>);

impl UpgradeInfo for AcceptedProtocols {
    type Info = StreamProtocol;
    type InfoIter = AcceptedProtocolsIter;

    fn protocol_info(&self) -> Self::InfoIter {
        AcceptedProtocolsIter {
            protocols: self.0.clone(),
            next: 0,
        }
    }
}

/// Iterates over the protocols of an [`AcceptedProtocols`] without copying
/// the list.
#[derive(Debug, Clone)]
pub struct AcceptedProtocolsIter {
    pub(super) protocols: Arc<[StreamProtocol]>,
    pub(super) next: usize,
}

impl Iterator for AcceptedProtocolsIter {
    type Item = StreamProtocol;

    fn next(&mut self) -> Option<Self::Item> {
        let protocol = self.protocols.get(self.next)?.clone();
        self.next += 1;
        Some(protocol)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.protocols.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for AcceptedProtocolsIter {}

impl InboundUpgrade<Stream> for AcceptedProtocols {
    type Output = (StreamProtocol, Stream);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: Self::Info) -> Self::Future {
        ready(Ok((protocol, stream)))
    }
}

/// The outbound upgrade requested by [`Handler`]: exactly one protocol.
#[derive(Debug, Clone)]
pub struct RequestedProtocol(pub(super) StreamProtocol);

impl UpgradeInfo for RequestedProtocol {
    type Info = StreamProtocol;
    type InfoIter = std::iter::Once<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(self.0.clone())
    }
}

impl OutboundUpgrade<Stream> for RequestedProtocol {
    type Output = Stream;
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, stream: Stream, _protocol: Self::Info) -> Self::Future {
        ready(Ok(stream))
    }
}
