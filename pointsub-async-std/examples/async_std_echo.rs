//! Two pointsub nodes on async-std: a request/response echo, then a raw
//! byte stream, printing each step.
//!
//! ```sh
//! cargo run -p pointsub-async-std --example async_std_echo
//! ```

use futures::io::{AsyncReadExt, AsyncWriteExt};
use pointsub_async_std::{Client, ClientConfig, Node, NodeConfig, Server, ServerConfig};

/// Errors of this example, from any task.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PROTOCOL: &str = "/echo/1.0.0";

#[async_std::main]
async fn main() -> Result<(), BoxError> {
    // Two nodes with fresh identities on loopback TCP: no configuration.
    let server_node = Node::new(NodeConfig::default()).await?;
    let client_node = Node::new(NodeConfig::default()).await?;
    println!(
        "server node {} on {:?}",
        server_node.peer_id(),
        server_node.listen_addrs()
    );
    println!("client node {}", client_node.peer_id());
    for addr in server_node.listen_addrs() {
        client_node.add_address(server_node.peer_id(), addr);
    }

    // Request/response: the server echoes what it gets.
    let server = Server::new(&server_node, ServerConfig::default())?;
    server.start(PROTOCOL, |peer, body| async move {
        println!("  server: {} bytes from {peer}", body.len());
        Ok::<_, String>(body)
    })?;
    let client = Client::new(&client_node, ClientConfig::default())?;
    let reply = client
        .send(
            server_node.peer_id(),
            PROTOCOL,
            "hello from async-std".into(),
        )
        .await?;
    println!("client: reply {:?}", String::from_utf8_lossy(&reply));

    // A raw byte stream (the net.Conn counterpart), echoed by a task.
    let mut listener = server_node.listen("/raw-echo/1.0.0")?;
    let echo = async_std::task::spawn(async move {
        let conn = listener.accept().await?;
        let (mut reader, mut writer) = conn.split();
        let n = futures::io::copy(&mut reader, &mut writer).await?;
        writer.close().await?;
        Ok::<_, BoxError>(n)
    });
    let mut conn = client_node
        .dial(server_node.peer_id(), "/raw-echo/1.0.0")
        .await?;
    conn.write_all(b"bytes over a libp2p stream").await?;
    conn.close().await?;
    let mut back = Vec::new();
    conn.read_to_end(&mut back).await?;
    println!(
        "conn: echoed {} bytes: {:?}",
        echo.await?,
        String::from_utf8_lossy(&back)
    );

    server.stop().await;
    println!("server stopped; done");
    Ok(())
}
