//! Streaming and cancellation: a server that streams a prompt back one token at a time,
//! slowly, as a language model would, and a client that prints the tokens as they come
//! and cancels the call on Ctrl-C. The server's handler sees the cancel at once and stops
//! generating.
//!
//! ```sh
//! # In one terminal: the server.
//! cargo run -p ringbell --example tokens -- serve /tmp/tokens.sock
//! # In another: ask, and press Ctrl-C half-way to stop the generation on the server.
//! cargo run -p ringbell --example tokens -- ask /tmp/tokens.sock "the quick brown fox jumps over the lazy dog"
//! # Or both in one process, cancelling after three tokens, with no terminal needed:
//! cargo run -p ringbell --example tokens -- demo
//! ```

use std::time::{Duration, Instant};

use ringbell::tokio::{AsyncServer, Call, CallOptions, Client};
use ringbell::{ClientConfig, Error, ServerConfig};

/// How long the "model" takes per token.
const TOKEN_TIME: Duration = Duration::from_millis(150);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", path] => serve(path).await,
        ["ask", path, prompt] => ask(path, prompt, None).await,
        ["demo"] => demo().await,
        _ => {
            eprintln!("usage: tokens serve PATH | tokens ask PATH PROMPT | tokens demo");
            std::process::exit(2);
        }
    }
}

/// Streams each word of the request back, one per [`TOKEN_TIME`], until the words run out
/// or the client cancels; the final reply says how many were sent.
async fn serve(path: &str) -> Result<(), Error> {
    let server = AsyncServer::bind(path, ServerConfig::default())?;
    println!("serving at {path}; Ctrl-C to stop");
    server.serve_calls(generate).await;
    Ok(())
}

async fn generate(mut call: Call) -> Result<Vec<u8>, Error> {
    let prompt = String::from_utf8_lossy(call.request()).into_owned();
    let request_id = call.metadata().get("request-id").map(<[u8]>::to_vec);
    let mut sent = 0;
    for word in prompt.split_whitespace() {
        // The "work" of one token, abandoned at once if the client cancels.
        tokio::select! {
            () = tokio::time::sleep(TOKEN_TIME) => {}
            () = call.cancelled() => break,
        }
        // `send` waits while the client's window is full: a slow reader slows us down,
        // it does not make the server buffer.
        if call.send(format!("{word} ").as_bytes()).await.is_err() {
            break;
        }
        sent += 1;
    }
    if call.is_cancelled() {
        println!(
            "call {:?}: cancelled by the client after {sent} tokens; generation stopped",
            request_id.as_deref().map(String::from_utf8_lossy)
        );
    }
    Ok(format!("{sent} tokens").into_bytes())
}

/// Prints the tokens of `prompt` as they stream in; Ctrl-C (or `cancel_after` tokens)
/// drops the stream, which cancels the call on the server.
async fn ask(path: &str, prompt: &str, cancel_after: Option<usize>) -> Result<(), Error> {
    let client = Client::connect(path, ClientConfig::default()).await?;
    let options = CallOptions::default()
        .timeout(Duration::from_secs(30))
        .metadata("request-id", b"42");
    let started = Instant::now();
    let mut stream = client.call_stream_with(prompt.as_bytes(), options).await?;
    let mut received = 0;
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(token) => {
                    print!("{}", String::from_utf8_lossy(&token?));
                    use std::io::Write;
                    std::io::stdout().flush().ok();
                    received += 1;
                    if Some(received) == cancel_after {
                        println!("\n[cancelling after {received} tokens]");
                        break;
                    }
                }
                None => {
                    let reply = stream.reply().await?;
                    println!("\n[complete: {} in {:?}]", String::from_utf8_lossy(&reply), started.elapsed());
                    return Ok(());
                }
            },
            _ = tokio::signal::ctrl_c() => {
                println!("\n[Ctrl-C: cancelling]");
                break;
            }
        }
    }
    // Dropping the stream cancels the call: the server's handler sees it now.
    drop(stream);
    // Let the server's message about the cancel come out before we exit (demo only).
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// Server and client in one process: one complete stream, then one cancelled after
/// three tokens.
async fn demo() -> Result<(), Error> {
    let path = std::env::temp_dir().join(format!("ringbell-tokens-{}.sock", std::process::id()));
    let server = AsyncServer::bind(&path, ServerConfig::default())?;
    let serving = tokio::spawn(server.serve_calls(generate));
    let path = path.to_string_lossy().into_owned();
    ask(&path, "streamed replies arrive token by token", None).await?;
    ask(
        &path,
        "this one is cancelled before it ends so the server stops",
        Some(3),
    )
    .await?;
    serving.abort();
    Ok(())
}
