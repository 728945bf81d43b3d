//! The libp2p request-response anchor: `libp2p::request_response` with the
//! plain [`LengthPrefixed`] codec, over tcp (nodelay) + noise + yamux built
//! with `SwarmBuilder::with_tokio().with_tcp(…)`, one connection.
//!
//! Stock settings throughout, as an application would use it: libp2p's
//! default yamux config, request-response's default `Config` except the
//! request timeout (30 s, like every system here). One task drives each
//! swarm; requests reach the client swarm's task through a channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::libp2p::request_response::{self as rr, OutboundRequestId, ProtocolSupport};
use crate::libp2p::swarm::SwarmEvent;
use crate::libp2p::{Swarm, SwarmBuilder, noise, tcp, yamux};
use crate::{Multiaddr, PeerId, StreamProtocol};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::codec::LengthPrefixed;
use super::stats::{Failure, failure_message};
use super::{Case, Instance, MAX_BODY, REQUEST_TIMEOUT, System};
use crate::bench::BoxError;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/echo/1.0.0");

/// The registry entry.
pub const SYSTEM: System = System {
    name: "request-response",
    describe,
    start: |case| start(case).boxed(),
};

/// Connections stay up between requests.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Commands drained per wake-up of the client task before it polls the
/// swarm again.
const COMMAND_BATCH: usize = 256;

fn describe() -> String {
    format!(
        "libp2p-request-response 0.30 (libp2p 0.57), u32 BE length-prefixed bytes codec, \
         tcp nodelay + noise + yamux (libp2p defaults), one connection.\n    \
         {:?}: the default but for the request timeout; one task per swarm, requests sent \
         to the client task over a channel.",
        rr::Config::default().with_request_timeout(REQUEST_TIMEOUT)
    )
}

type Behaviour = rr::Behaviour<LengthPrefixed>;
type Reply = oneshot::Sender<Result<Bytes, Failure>>;

fn swarm() -> Result<Swarm<Behaviour>, BoxError> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            Behaviour::with_codec(
                LengthPrefixed::new(MAX_BODY),
                [(PROTOCOL, ProtocolSupport::Full)],
                rr::Config::default().with_request_timeout(REQUEST_TIMEOUT),
            )
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build())
}

struct RequestResponse {
    commands: mpsc::UnboundedSender<(Bytes, Reply)>,
    tasks: Mutex<Vec<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

async fn start(_case: Case) -> Result<Arc<dyn Instance>, BoxError> {
    let mut server = swarm()?;
    let mut client = swarm()?;
    let server_peer = *server.local_peer_id();
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let (server_stop, stop) = oneshot::channel();
    let server_task = tokio::spawn(serve(server, stop));

    client.add_peer_address(server_peer, addr.clone());
    client.dial(addr.clone())?;
    let connected = wait_connected(&mut client, server_peer, &addr).await;
    let (client_stop, stop) = oneshot::channel();
    let (commands, rx) = mpsc::unbounded_channel();
    let client_task = tokio::spawn(drive_client(client, server_peer, rx, stop));
    let instance = RequestResponse {
        commands,
        tasks: Mutex::new(vec![(client_stop, client_task), (server_stop, server_task)]),
    };
    if let Err(e) = connected {
        instance.shutdown().await;
        return Err(e);
    }
    Ok(Arc::new(instance))
}

/// Polls the client swarm until its connection to `server` is up.
async fn wait_connected(
    client: &mut Swarm<Behaviour>,
    server: PeerId,
    addr: &Multiaddr,
) -> Result<(), BoxError> {
    loop {
        match client.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server => {
                return Ok(());
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(format!("dial {addr}: {error}").into());
            }
            _ => {}
        }
    }
}

/// The server swarm's task: echoes every request.
async fn serve(mut swarm: Swarm<Behaviour>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(rr::Event::Message {
                    message: rr::Message::Request { request, channel, .. },
                    ..
                }) = event
                {
                    // Fails only if the connection is gone; the client
                    // sees that as its own failure.
                    let _ = swarm.behaviour_mut().send_response(channel, request);
                }
            }
        }
    }
}

/// The client swarm's task: sends what arrives on `commands`, answers each
/// from the swarm's events.
async fn drive_client(
    mut swarm: Swarm<Behaviour>,
    server: PeerId,
    mut commands: mpsc::UnboundedReceiver<(Bytes, Reply)>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut pending: HashMap<OutboundRequestId, Reply> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            command = commands.recv() => {
                let Some(command) = command else { break };
                let mut send = |(body, reply): (Bytes, Reply)| {
                    let id = swarm.behaviour_mut().send_request(&server, body);
                    pending.insert(id, reply);
                };
                send(command);
                for _ in 1..COMMAND_BATCH {
                    match commands.try_recv() {
                        Ok(command) => send(command),
                        Err(_) => break,
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(rr::Event::Message {
                    message: rr::Message::Response { request_id, response },
                    ..
                }) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(rr::Event::OutboundFailure { request_id, error, .. }) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Err(failure_message(&error.to_string())));
                    }
                }
                _ => {}
            },
        }
    }
}

impl Instance for RequestResponse {
    fn request(&self, _slot: usize, body: Bytes) -> BoxFuture<'_, Result<Bytes, Failure>> {
        async move {
            let (reply, response) = oneshot::channel();
            self.commands
                .send((body, reply))
                .map_err(|_| Failure::from("client swarm task ended"))?;
            response
                .await
                .unwrap_or_else(|_| Err(Failure::from("client swarm task ended")))
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
            for (stop, task) in tasks {
                let _ = stop.send(());
                let abort = task.abort_handle();
                if tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
        }
        .boxed()
    }
}
