//! One client connection: WA framing over WebSocket, the Noise handshake, then the
//! encrypted stanza loop (decrypt -> node -> [`crate::stanza`], and a writer task
//! that marshals, encrypts and frames what the simulator sends back).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};
use tokio_websockets::{Message, WebSocketStream};
use wacore::framing::{FrameDecoder, encode_frame};
use wacore::handshake::NoiseCipher;
use wacore_binary::Node;
use wacore_binary::marshal::{marshal, unmarshal_ref};

use crate::noise::{self, AfterHello};
use crate::stanza::{self, Conn};
use crate::state::{ConnHandle, Outgoing, World};

/// Reads whole WA frames from the WebSocket (frames may span or share messages).
struct FrameReader<S> {
    stream: SplitStream<WebSocketStream<S>>,
    decoder: FrameDecoder,
    first: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameReader<S> {
    /// Next frame, or `None` when the client closed the connection.
    async fn next(&mut self) -> Result<Option<BytesMut>> {
        loop {
            if let Some(frame) = self.decoder.decode_frame() {
                return Ok(Some(frame));
            }
            let msg = match self.stream.next().await {
                None => return Ok(None),
                Some(msg) => msg.context("websocket read")?,
            };
            if msg.is_close() {
                return Ok(None);
            }
            if !msg.is_binary() {
                continue;
            }
            let payload = bytes::Bytes::from(msg.into_payload());
            if self.first {
                self.first = false;
                self.decoder.feed(noise::strip_conn_header(&payload)?);
            } else {
                self.decoder.feed(&payload);
            }
        }
    }
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

async fn send_raw<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut Sink<S>,
    payload: &[u8],
) -> Result<()> {
    let framed = encode_frame(payload, None)?;
    sink.send(Message::binary(framed))
        .await
        .context("websocket write")
}

/// Serves one WebSocket until the client leaves, the simulator closes it, or shutdown.
pub async fn serve<S>(
    world: Arc<World>,
    ws: WebSocketStream<S>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = world.next_id();
    match run(&world, conn_id, ws, &mut shutdown).await {
        Ok(()) => log::debug!("conn {conn_id}: closed"),
        Err(e) => log::info!("conn {conn_id}: ended: {e:#}"),
    }
    world.connection_closed(conn_id);
}

async fn run<S>(
    world: &Arc<World>,
    conn_id: u64,
    ws: WebSocketStream<S>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, stream) = ws.split();
    let mut reader = FrameReader {
        stream,
        decoder: FrameDecoder::new(),
        first: true,
    };

    let hello = reader.next().await?.context("closed before ClientHello")?;
    let established = match noise::on_client_hello(&world.identity, &hello)? {
        AfterHello::Ik {
            server_hello,
            established,
        } => {
            send_raw(&mut sink, &server_hello).await?;
            *established
        }
        AfterHello::Xx {
            server_hello,
            pending,
        } => {
            send_raw(&mut sink, &server_hello).await?;
            let finish = reader.next().await?.context("closed before ClientFinish")?;
            pending.on_client_finish(&finish)?
        }
    };
    log::debug!("conn {conn_id}: noise handshake done");

    let (tx, rx) = mpsc::unbounded_channel();
    // The writer wakes the reader when the simulator aborts the connection.
    let kill = Arc::new(Notify::new());
    let handle = ConnHandle::new(conn_id, tx);
    let writer = tokio::spawn(write_loop(
        conn_id,
        sink,
        established.write,
        rx,
        kill.clone(),
    ));

    let mut conn = Conn::new(world.clone(), handle.clone(), established.client_static);
    let result = async {
        stanza::on_established(&mut conn, &established.payload);
        let read_cipher = established.read;
        let mut counter: u32 = 0;
        loop {
            let frame = tokio::select! {
                f = reader.next() => f?,
                _ = shutdown.changed() => None,
                _ = kill.notified() => {
                    log::info!("conn {conn_id}: aborted by the simulator");
                    None
                }
            };
            let Some(mut frame) = frame else {
                return Ok(());
            };
            read_cipher
                .decrypt_in_place_with_counter(counter, &mut frame)
                .context("decrypting frame")?;
            counter = counter.checked_add(1).context("read counter exhausted")?;
            let plain = wacore_binary::util::unpack(&frame).context("unpacking frame")?;
            let node = unmarshal_ref(&plain).context("decoding node")?.to_owned();
            if log::log_enabled!(log::Level::Debug) {
                log::debug!("conn {conn_id} <- {}", short(&node));
            }
            stanza::on_stanza(&mut conn, node).await;
        }
    }
    .await;
    handle.close();
    drop(conn);
    drop(handle);
    let _ = writer.await;
    result
}

async fn write_loop<S>(
    conn_id: u64,
    mut sink: Sink<S>,
    cipher: NoiseCipher,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    kill: Arc<Notify>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut counter: u32 = 0;
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Node(node) => {
                if let Err(e) = write_node(conn_id, &mut sink, &cipher, &mut counter, &node).await {
                    log::info!("conn {conn_id}: write failed: {e:#}");
                    break;
                }
            }
            Outgoing::Close => break,
            Outgoing::Abort => {
                // No close frame: dropping both halves closes the TCP socket.
                kill.notify_one();
                return;
            }
        }
    }
    let _ = sink.send(Message::close(None, "")).await;
    let _ = sink.close().await;
}

async fn write_node<S: AsyncRead + AsyncWrite + Unpin>(
    conn_id: u64,
    sink: &mut Sink<S>,
    cipher: &NoiseCipher,
    counter: &mut u32,
    node: &Node,
) -> Result<()> {
    if log::log_enabled!(log::Level::Debug) {
        log::debug!("conn {conn_id} -> {}", short(node));
    }
    let plain = marshal(node)?;
    let ct = cipher.encrypt_with_counter(*counter, &plain)?;
    if *counter == u32::MAX {
        bail!("write counter exhausted");
    }
    *counter += 1;
    send_raw(sink, &ct).await
}

/// A stanza as XML for the logs, cut after 600 characters (pre-key uploads are huge).
fn short(node: &Node) -> String {
    let mut s = wacore::xml::DisplayableNode(node).to_string();
    if s.len() > 600 {
        let mut cut = 600;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
