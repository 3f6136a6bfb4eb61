//! Offline tests of the adapter: the Noise handshake against an in-process responder
//! over this crate's WebSocket transport and KV store, the node's dial path, the
//! inbound commit gate, event mapping and backpressure, and hostile input.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_websockets::{ClientBuilder, Message, ServerBuilder, WebSocketStream};
use whatsapp_rust::buffa::{Message as _, MessageField};
use whatsapp_rust::handshake::do_handshake;
use whatsapp_rust::prelude::wa;
use whatsapp_rust::store::persistence_manager::PersistenceManager;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::wacore::handshake::NoiseHandshake;
use whatsapp_rust::wacore::libsignal::protocol::KeyPair;
use whatsapp_rust::wacore::store::DeviceCommand;
use whatsapp_rust::wacore_binary::consts::{NOISE_PATTERN_XX, WA_CONN_HEADER};

use crate::backend::KvBackend;
use crate::event::{InboundCommit, WaEvent, WaMessage, map_event};
use crate::kv::{DeviceKv, MemoryKv};
use crate::net::spawn_ws_transport;
use crate::{MessageBody, WaConfig, WaError, WaNode};

type ServerWs = WebSocketStream<tokio::io::DuplexStream>;

/// A client transport and the server end of a WebSocket over an in-memory pipe.
async fn ws_pair() -> (
    Arc<dyn whatsapp_rust::transport::Transport>,
    whatsapp_rust::async_channel::Receiver<whatsapp_rust::transport::TransportEvent>,
    ServerWs,
) {
    let (c, s) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { ServerBuilder::new().accept(s).await.map(|(_, ws)| ws) });
    let (ws, _) = ClientBuilder::from_uri(http::Uri::from_static("ws://chat.test/ws/chat"))
        .connect_on(c)
        .await
        .expect("client upgrade");
    let server = server.await.unwrap().expect("server upgrade");
    let (t, rx) = spawn_ws_transport(ws);
    (t, rx, server)
}

/// Reads one length-prefixed frame from a binary message, skipping the connection
/// header the client puts in front of its first frame.
fn first_frame(raw: &[u8]) -> Vec<u8> {
    let body = raw.strip_prefix(&WA_CONN_HEADER[..]).unwrap_or(raw);
    let len = (usize::from(body[0]) << 16) | (usize::from(body[1]) << 8) | usize::from(body[2]);
    body[3..3 + len].to_vec()
}

async fn next_binary<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Vec<u8> {
    loop {
        let m = ws.next().await.expect("client closed").expect("ws read");
        if m.is_binary() {
            return Vec::from(&*m.into_payload());
        }
    }
}

fn keypair() -> KeyPair {
    KeyPair::generate(&mut rand010::rng())
}

/// Serves the responder side of Noise XX like WhatsApp's edge does, over `ws`.
async fn serve_xx(ws: &mut ServerWs, identity: &KeyPair) -> Vec<u8> {
    let hello_raw = next_binary(ws).await;
    assert!(
        hello_raw.starts_with(&WA_CONN_HEADER[..]),
        "client must open with the WA header"
    );
    let hello = wa::HandshakeMessage::decode_from_slice(&first_frame(&hello_raw)).unwrap();
    let client_eph: [u8; 32] = hello
        .client_hello
        .into_option()
        .unwrap()
        .ephemeral
        .unwrap()
        .try_into()
        .unwrap();
    let static_pub: [u8; 32] = identity.public_key.public_key_bytes().try_into().unwrap();

    let mut noise = NoiseHandshake::new(NOISE_PATTERN_XX, &WA_CONN_HEADER).unwrap();
    noise.authenticate(&client_eph);
    let eph = keypair();
    let eph_pub: [u8; 32] = eph.public_key.public_key_bytes().try_into().unwrap();
    noise.authenticate(&eph_pub);
    noise
        .mix_shared_secret(eph.private_key.serialize(), &client_eph)
        .unwrap();
    let enc_static = noise.encrypt(&static_pub).unwrap();
    noise
        .mix_shared_secret(identity.private_key.serialize(), &client_eph)
        .unwrap();
    let chain = wacore_noise::test_util::build_cert_chain_bytes(&static_pub);
    let enc_payload = noise.encrypt(&chain).unwrap();
    let server_hello = wa::HandshakeMessage {
        server_hello: MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(eph_pub.to_vec()),
            r#static: Some(enc_static),
            payload: Some(enc_payload),
            ..Default::default()
        }),
        ..Default::default()
    };
    let framed = whatsapp_rust::wacore::framing::encode_frame(&server_hello.encode_to_vec(), None).unwrap();
    ws.send(Message::binary(framed)).await.unwrap();
    // The client's finish message (encrypted static + login payload).
    next_binary(ws).await
}

async fn paired_pm(kv: Arc<dyn DeviceKv>, id: &str) -> Arc<PersistenceManager> {
    let pm = Arc::new(
        PersistenceManager::new(Arc::new(KvBackend::new(kv, id)))
            .await
            .unwrap(),
    );
    pm.process_command(DeviceCommand::SetId(Some(
        "15550001111@s.whatsapp.net".parse().unwrap(),
    )))
    .await;
    pm
}

#[tokio::test]
async fn noise_xx_over_websocket_transport_persists_cert_chain_in_kv() {
    let kv: Arc<dyn DeviceKv> = Arc::new(MemoryKv::new());
    let pm = paired_pm(kv.clone(), "dev").await;
    let (transport, mut events, mut server_ws) = ws_pair().await;
    let identity = keypair();
    let static_pub: [u8; 32] = identity.public_key.public_key_bytes().try_into().unwrap();
    let server = tokio::spawn(async move {
        let finish = serve_xx(&mut server_ws, &identity).await;
        (finish, server_ws)
    });
    let counter = AtomicU32::new(0);
    let socket = do_handshake(
        Arc::new(whatsapp_rust::TokioRuntime),
        &pm,
        &counter,
        transport.clone(),
        &mut events,
        None,
    )
    .await;
    assert!(socket.is_ok(), "handshake failed: {:?}", socket.err());
    let (finish, _server_ws) = server.await.unwrap();
    let finish = wa::HandshakeMessage::decode_from_slice(&first_frame(&finish)).unwrap();
    assert!(finish.client_finish.is_set(), "client answered with ClientFinish");

    // The cached chain reaches the KV store and survives a reopen of the device.
    pm.flush().await.unwrap();
    let reopened = PersistenceManager::new(Arc::new(KvBackend::new(kv.clone(), "dev")))
        .await
        .unwrap();
    let chain = reopened
        .get_device_snapshot()
        .server_cert_chain
        .clone()
        .expect("chain persisted");
    assert_eq!(chain.leaf.key, static_pub);
    assert_eq!(
        reopened
            .get_device_snapshot()
            .pn
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("15550001111@s.whatsapp.net")
    );
}

#[tokio::test]
async fn garbage_from_the_server_fails_the_handshake_without_panicking() {
    let kv: Arc<dyn DeviceKv> = Arc::new(MemoryKv::new());
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xFF; 3],
        vec![0x00, 0x00, 0x05, 1, 2],                   // truncated frame
        vec![0x00, 0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF], // frame that is not a protobuf
        {
            // A well-formed ServerHello whose ciphertexts are junk.
            let sh = wa::HandshakeMessage {
                server_hello: MessageField::some(wa::handshake_message::ServerHello {
                    ephemeral: Some(vec![7; 32]),
                    r#static: Some(vec![0xCC; 48]),
                    payload: Some(vec![0xDE; 64]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            whatsapp_rust::wacore::framing::encode_frame(&sh.encode_to_vec(), None).unwrap()
        },
    ];
    for (i, junk) in payloads.into_iter().enumerate() {
        let pm = paired_pm(kv.clone(), &format!("junk{i}")).await;
        let (transport, mut events, mut server_ws) = ws_pair().await;
        let server = tokio::spawn(async move {
            let _hello = next_binary(&mut server_ws).await;
            let _ = server_ws.send(Message::binary(junk)).await;
            // Then hang up, as a broken edge would.
            let _ = server_ws.close().await;
        });
        let counter = AtomicU32::new(0);
        let r = do_handshake(
            Arc::new(whatsapp_rust::TokioRuntime),
            &pm,
            &counter,
            transport,
            &mut events,
            None,
        )
        .await;
        server.await.unwrap();
        assert!(r.is_err(), "payload #{i} must not complete a handshake");
    }
}

#[tokio::test]
async fn transport_reports_server_close_with_its_code() {
    let (transport, events, mut server_ws) = ws_pair().await;
    transport.send(bytes::Bytes::from_static(b"ping")).await.unwrap();
    assert_eq!(next_binary(&mut server_ws).await, b"ping");
    server_ws
        .send(Message::binary(bytes::Bytes::from_static(b"pong")))
        .await
        .unwrap();
    server_ws
        .send(Message::close(
            Some(tokio_websockets::CloseCode::try_from(4001).unwrap()),
            "bye",
        ))
        .await
        .unwrap();
    use whatsapp_rust::transport::{DisconnectReason, TransportEvent};
    assert!(matches!(events.recv().await.unwrap(), TransportEvent::Connected));
    match events.recv().await.unwrap() {
        TransportEvent::DataReceived(d) => assert_eq!(&d[..], b"pong"),
        other => panic!("expected data, got {other:?}"),
    }
    match events.recv().await.unwrap() {
        TransportEvent::Disconnected(DisconnectReason::ServerClose { code, reason }) => {
            assert_eq!((code, reason.as_str()), (Some(4001), "bye"));
        }
        other => panic!("expected close, got {other:?}"),
    }
    transport.disconnect().await;
    assert!(transport.send(bytes::Bytes::from_static(b"late")).await.is_err());
}

/// The node dials the configured static address through its own resolver, pacer and
/// WebSocket upgrade (with WhatsApp Web's Origin), and speaks Noise first.
#[tokio::test]
async fn node_dials_static_address_and_opens_with_noise_hello() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = WaConfig {
        ws_url: "ws://chat.invalid/ws/chat".into(),
        static_addrs: vec![addr],
        ..WaConfig::default()
    };
    let node = WaNode::new(cfg, Arc::new(MemoryKv::new())).unwrap();
    let (device, _events) = node.device("d1").await.unwrap();
    assert!(!device.is_paired());
    device.connect();
    let (tcp, _) = listener.accept().await.unwrap();
    let (req, mut ws) = ServerBuilder::new().accept(tcp).await.unwrap();
    assert_eq!(req.headers().get("origin").unwrap(), "https://web.whatsapp.com");
    assert_eq!(req.uri().path(), "/ws/chat");
    let hello = next_binary(&mut ws).await;
    let msg = wa::HandshakeMessage::decode_from_slice(&first_frame(&hello)).unwrap();
    assert!(
        msg.client_hello.is_set(),
        "an unpaired device starts with a Noise XX ClientHello"
    );
    drop(ws);
    device.disconnect().await;
    assert!(!device.is_connected());
    assert_eq!(node.dns_lookups(), 0, "static address: no name lookup at all");
}

fn inbound(text: &str) -> WaMessage {
    WaMessage {
        chat: "1@s.whatsapp.net".into(),
        from: "1@s.whatsapp.net".into(),
        id: "ID1".into(),
        timestamp: 1,
        push_name: String::new(),
        from_me: false,
        is_group: false,
        offline: false,
        body: MessageBody::Text(text.into()),
    }
}

#[tokio::test]
async fn inbound_batch_is_acked_only_after_commit() {
    let (tx, mut rx) = mpsc::channel(4);
    let hook = crate::node::CommitHook {
        tx,
        timeout: Duration::from_secs(3600),
    };
    let consumer = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for action in ["commit", "reject", "drop"] {
            let Some(WaEvent::Messages { batch, commit }) = rx.recv().await else {
                panic!("expected messages")
            };
            assert_eq!(batch[0].body, MessageBody::Text(action.into()));
            assert!(commit.is_gated());
            match action {
                "commit" => commit.commit(),
                "reject" => commit.reject("journal full"),
                _ => drop(commit),
            }
            outcomes.push(action);
        }
        outcomes
    });
    assert!(hook.deliver(vec![inbound("commit")]).await.is_ok());
    let e = hook.deliver(vec![inbound("reject")]).await.unwrap_err();
    assert!(e.to_string().contains("journal full"));
    assert!(hook.deliver(vec![inbound("drop")]).await.is_err());
    assert_eq!(consumer.await.unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn inbound_batch_without_answer_times_out_unacked() {
    let (tx, mut rx) = mpsc::channel(1);
    let hook = crate::node::CommitHook {
        tx,
        timeout: Duration::from_secs(30),
    };
    // The consumer takes the batch but never answers: the hook gives up and the
    // library leaves the message unacknowledged for redelivery.
    let (r, held) = tokio::join!(hook.deliver(vec![inbound("slow")]), rx.recv());
    assert!(r.unwrap_err().to_string().contains("timed out"));
    drop(held);
    // A consumer that is gone fails immediately.
    drop(rx);
    assert!(hook.deliver(vec![inbound("x")]).await.is_err());
}

#[test]
fn ungated_commit_is_inert() {
    let c = InboundCommit::ungated();
    assert!(!c.is_gated());
    c.commit();
}

#[tokio::test]
async fn slow_consumer_loses_informational_events_counted_never_blocks() {
    let (tx, mut rx) = mpsc::channel(2);
    let sink = crate::node::EventSink::new(tx);
    use whatsapp_rust::types::events::EventHandler;
    for _ in 0..5 {
        sink.handle_event(Arc::new(Event::Connected(
            whatsapp_rust::types::events::Connected::builder().build(),
        )));
    }
    assert!(matches!(rx.recv().await, Some(WaEvent::Connected)));
    assert!(matches!(rx.recv().await, Some(WaEvent::Connected)));
    assert!(rx.try_recv().is_err(), "the channel stays bounded");
    sink.handle_event(Arc::new(Event::StreamReplaced(
        whatsapp_rust::types::events::StreamReplaced::builder().build(),
    )));
    assert!(matches!(rx.recv().await, Some(WaEvent::Lagged { missed: 3 })));
    assert!(matches!(rx.recv().await, Some(WaEvent::StreamReplaced)));
}

#[test]
fn library_events_map_to_neutral_ones() {
    use whatsapp_rust::types::events as ev;
    let qr = Event::PairingQrCode(
        ev::PairingQrCode::builder()
            .code("2@abc".into())
            .timeout(Duration::from_secs(60))
            .build(),
    );
    assert!(
        matches!(map_event(&qr).event, Some(WaEvent::Qr { code, valid_for }) if code == "2@abc" && valid_for == Duration::from_secs(60))
    );

    let ban = Event::TemporaryBan(
        ev::TemporaryBan::builder()
            .code(ev::TempBanReason::SentToTooManyPeople)
            .expire(whatsapp_rust::wacore::chrono::TimeDelta::seconds(3600))
            .build(),
    );
    match map_event(&ban).event {
        Some(WaEvent::TemporaryBan { code, expires, .. }) => {
            assert_eq!((code, expires), (101, Duration::from_secs(3600)));
        }
        other => panic!("{other:?}"),
    }

    let logout = Event::LoggedOut(
        ev::LoggedOut::builder()
            .on_connect(true)
            .reason(ev::ConnectFailureReason::LoggedOut)
            .build(),
    );
    assert!(matches!(
        map_event(&logout).event,
        Some(WaEvent::LoggedOut {
            code: 401,
            on_connect: true
        })
    ));

    let nack = Event::ServerAck(
        ev::ServerAck::builder()
            .id("3EB0AA".into())
            .class("message".into())
            .error("429".into())
            .build(),
    );
    let m = map_event(&nack);
    assert_eq!(
        m.ack,
        Some((
            "3EB0AA".into(),
            Some(WaError::RateOverlimit { retry_after: None })
        ))
    );
    let ok = Event::ServerAck(
        ev::ServerAck::builder()
            .id("3EB0BB".into())
            .class("message".into())
            .build(),
    );
    assert_eq!(map_event(&ok).ack, Some(("3EB0BB".into(), None)));
    let receipt_ack = Event::ServerAck(
        ev::ServerAck::builder()
            .id("r1".into())
            .class("receipt".into())
            .build(),
    );
    assert!(map_event(&receipt_ack).ack.is_none() && map_event(&receipt_ack).event.is_none());

    let dis = Event::Disconnected(
        ev::Disconnected::builder()
            .reason(whatsapp_rust::transport::DisconnectReason::StreamEnded)
            .build(),
    );
    assert!(matches!(
        map_event(&dis).event,
        Some(WaEvent::Disconnected { clean: true, .. })
    ));

    // Kinds the gateway does not care about map to nothing.
    let other = Event::OfflineSyncCompleted(ev::OfflineSyncCompleted::builder().count(3).build());
    assert!(map_event(&other).event.is_none());
}

#[tokio::test]
async fn corrupt_store_rows_are_errors_not_panics() {
    use whatsapp_rust::wacore::store::traits::{DeviceStore, MsgSecretStore, ProtocolStore, SignalStore};
    let kv = Arc::new(MemoryKv::new());
    let b = KvBackend::new(kv.clone(), "x");
    // Overwrite rows of this device with junk in every namespace, under keys the
    // backend will read.
    b.store_prekey(1, b"k", false).await.unwrap();
    b.put_identity("a@lid", [1; 32]).await.unwrap();
    b.put_msg_secret("c", "s", "m", &[1; 32]).await.unwrap();
    b.store_pending_inbound("c", "s", "i", b"m").await.unwrap();
    b.save(&whatsapp_rust::wacore::store::Device::new())
        .await
        .unwrap();
    for ns in crate::backend::NAMESPACES {
        for (k, _) in kv.scan_prefix(ns, b"").await.unwrap() {
            kv.put(ns, k, vec![]).await.unwrap();
        }
    }
    assert!(b.load_prekey(1).await.is_err());
    assert!(b.load_identity("a@lid").await.is_err());
    assert!(b.get_msg_secret("c", "s", "m").await.is_err());
    assert!(b.get_pending_inbound("c", "s", "i").await.is_err());
    assert!(b.load().await.is_err());
    assert!(b.delete_expired_pending_inbound(0).await.is_err());
}
