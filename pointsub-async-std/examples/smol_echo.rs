//! Two pointsub nodes on smol, with the nodes' tasks on the application's
//! own `smol::Executor`: concurrent requests to an upper-casing echo
//! server, then a greeting over a raw byte stream, printing each step.
//!
//! (With plain `Node::new` instead of `Node::with_runtime`, the tasks would run on async-std's
//! global executor, which also works under a plain `smol::block_on`.)
//!
//! ```sh
//! cargo run -p pointsub-async-std --example smol_echo
//! ```

use std::sync::Arc;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use pointsub_async_std::{
    AsyncStdRuntime, Client, ClientConfig, Node, NodeConfig, Server, ServerConfig,
};

/// Errors of this example, from any task.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let executor = Arc::new(smol::Executor::new());
    let spawner = executor.clone();
    let runtime = AsyncStdRuntime::with_spawner(move |task| spawner.spawn(task).detach());
    // The executor runs as long as `run` does, on this thread.
    smol::block_on(executor.run(run(runtime)))
}

async fn run(runtime: AsyncStdRuntime) -> Result<(), BoxError> {
    let a = Node::with_runtime(NodeConfig::default(), runtime.clone()).await?;
    let b = Node::with_runtime(NodeConfig::default(), runtime).await?;
    println!("node a {} on {:?}", a.peer_id(), a.listen_addrs());
    println!("node b {} on {:?}", b.peer_id(), b.listen_addrs());
    for addr in b.listen_addrs() {
        a.add_address(b.peer_id(), addr);
    }

    let server = Server::new(&b, ServerConfig::default())?;
    server.start("/upper/1.0.0", |_peer, body| async move {
        Ok::<_, String>(body.to_ascii_uppercase().into())
    })?;
    let client = Client::new(&a, ClientConfig::default())?;
    let words = ["smol", "async-io", "libp2p"];
    let replies = futures::future::join_all(
        words.map(|w| client.send(b.peer_id(), "/upper/1.0.0", w.into())),
    )
    .await;
    for (word, reply) in words.iter().zip(replies) {
        println!("a -> b: {word:?} -> {:?}", String::from_utf8_lossy(&reply?));
    }
    println!("client metrics: {:?}", client.metrics());

    let mut listener = a.listen("/greet/1.0.0")?;
    let greeter = smol::spawn(async move {
        let mut conn = listener.accept().await?;
        conn.write_all(format!("hello {}, from a", conn.peer()).as_bytes())
            .await?;
        conn.close().await?;
        Ok::<_, BoxError>(())
    });
    let mut conn = b.dial(a.peer_id(), "/greet/1.0.0").await?;
    let mut greeting = String::new();
    conn.read_to_string(&mut greeting).await?;
    greeter.await?;
    println!("b read over a raw stream: {greeting:?}");

    server.stop().await;
    println!("done");
    Ok(())
}
