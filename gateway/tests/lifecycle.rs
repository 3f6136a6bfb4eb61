//! Device lifecycle through the real binary: link by QR, sends refused while a device cannot
//! send, disable/enable, the state surviving `kill -9`, unlink, a link that times out.

mod common;

use std::time::Duration;

use common::{Gateway, Ws};
use waping_client::{ClientError, Connection, EventStream};
use waping_protocol::{
    Body, DeliveryStatus, DeviceAction, DeviceState, ErrorCode, EventKind, Frame, LinkCodeKind, LinkMethod,
    Text, subscribe,
};

const ACME: Ws = Ws {
    id: "acme",
    devices: &["d1"],
    rate: 100_000,
    burst: 100_000,
};

/// The simulated phone confirms a link 600 ms after it starts; QR refs rotate every 150 ms.
const SIM: &str = "require_link = true\nlink_pair_after_ms = 600\nqr_rotate_ms = 150";

fn send(seq: u64) -> Frame {
    Frame::Send {
        seq,
        idempotency_key: Text::from(format!("k-{seq}")),
        device_id: "d1".into(),
        recipient: "4915112345678".into(),
        body: Body::Text(Text::from(format!("hello {seq}"))),
    }
}

async fn control(conn: &Connection, action: DeviceAction) -> Result<DeviceState, ClientError> {
    tokio::time::timeout(Duration::from_secs(10), conn.device_control("d1", action))
        .await
        .expect("device control answered")
}

/// Sends one message and returns the rejection code, or `None` if it was accepted and sent.
async fn try_send(conn: &mut Connection, seq: u64) -> Option<ErrorCode> {
    let mut s = conn.open_stream().await.unwrap();
    s.send(&send(seq)).await.unwrap();
    match common::next_frame(&mut s).await {
        Frame::Rejected { code, .. } => Some(code),
        Frame::Accepted { .. } => match common::next_frame(&mut s).await {
            Frame::Report(report) => {
                assert_eq!(report.status, DeliveryStatus::Sent, "{report:?}");
                None
            }
            other => panic!("expected a report, got {other:?}"),
        },
        other => panic!("expected accepted or rejected, got {other:?}"),
    }
}

/// Reads events until the device reports `want`; returns the link codes seen on the way.
async fn until_state(events: &mut EventStream, want: DeviceState) -> Vec<(LinkCodeKind, String)> {
    let mut codes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 15 s; codes so far {codes:?}"))
            .unwrap()
            .expect("event stream open");
        match ev.kind {
            EventKind::LinkCode {
                device_id,
                kind,
                code,
                ..
            } => {
                assert_eq!(device_id.as_str(), "d1");
                codes.push((kind, code.to_string()));
            }
            EventKind::DeviceState { state, .. } if state == want => return codes,
            _ => {}
        }
    }
}

#[tokio::test]
async fn link_by_qr_then_unlink() {
    let gw = Gateway::start(&[ACME], SIM);
    let mut conn = gw.connect("acme").await;
    let mut events = conn
        .subscribe(subscribe::LINK_CODES | subscribe::DEVICE_STATE)
        .await
        .unwrap();

    // A device never linked refuses sends (the message is handed back, not queued).
    assert_eq!(
        control(&conn, DeviceAction::Status).await.unwrap(),
        DeviceState::Unlinked
    );
    assert_eq!(try_send(&mut conn, 1).await, Some(ErrorCode::DEVICE_NOT_LINKED));

    // Link by QR: rotating codes, then connected.
    assert_eq!(
        control(&conn, DeviceAction::Link(LinkMethod::Qr)).await.unwrap(),
        DeviceState::Linking
    );
    let codes = until_state(&mut events, DeviceState::Connected).await;
    assert!(codes.len() >= 2, "QR refs rotate while linking: {codes:?}");
    assert!(codes.iter().all(|(k, _)| *k == LinkCodeKind::Qr));
    let distinct: std::collections::HashSet<_> = codes.iter().map(|c| &c.1).collect();
    assert_eq!(distinct.len(), codes.len(), "each ref is new");
    // Linking a linked device is refused with a reason.
    match control(&conn, DeviceAction::Link(LinkMethod::Qr)).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::INVALID_FIELD),
        other => panic!("{other:?}"),
    }
    assert_eq!(try_send(&mut conn, 2).await, None);

    // Unlink: logged out at the (simulated) WhatsApp and forgotten.
    assert_eq!(
        control(&conn, DeviceAction::Unlink).await.unwrap(),
        DeviceState::Unlinked
    );
    assert_eq!(try_send(&mut conn, 6).await, Some(ErrorCode::DEVICE_NOT_LINKED));
    // An unknown device is refused like one of another workspace.
    match tokio::time::timeout(
        Duration::from_secs(10),
        conn.device_control("nope", DeviceAction::Status),
    )
    .await
    .unwrap()
    {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::UNKNOWN_DEVICE),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_disabled_device_stays_disabled_across_kill9_and_enables_again() {
    // Provisioned devices (the in-process simulator keeps no credentials across a restart;
    // the WhatsApp upstream keeps them in the device store like the session record).
    let mut gw = Gateway::start(&[ACME], "");
    let mut conn = gw.connect("acme").await;
    let mut events = conn.subscribe(subscribe::DEVICE_STATE).await.unwrap();
    if control(&conn, DeviceAction::Status).await.unwrap() != DeviceState::Connected {
        until_state(&mut events, DeviceState::Connected).await;
    }
    assert_eq!(try_send(&mut conn, 1).await, None);
    assert_eq!(
        control(&conn, DeviceAction::Disable).await.unwrap(),
        DeviceState::Disabled
    );
    assert_eq!(try_send(&mut conn, 2).await, Some(ErrorCode::DEVICE_DISABLED));
    // Unlink and link are refused while disabled; the state is unchanged.
    match control(&conn, DeviceAction::Link(LinkMethod::Qr)).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::DEVICE_DISABLED),
        other => panic!("{other:?}"),
    }

    gw.kill9();
    gw.respawn();
    let mut conn = gw.connect("acme").await;
    let mut events = conn.subscribe(subscribe::DEVICE_STATE).await.unwrap();
    assert_eq!(
        control(&conn, DeviceAction::Status).await.unwrap(),
        DeviceState::Disabled
    );
    assert_eq!(try_send(&mut conn, 3).await, Some(ErrorCode::DEVICE_DISABLED));

    // Enable: the device is still linked, so it reconnects without a new link.
    control(&conn, DeviceAction::Enable).await.unwrap();
    until_state(&mut events, DeviceState::Connected).await;
    assert_eq!(try_send(&mut conn, 4).await, None);
}

#[tokio::test]
async fn a_link_the_phone_never_confirms_times_out_with_a_reason() {
    // The shortest allowed link timeout (10 s) with a phone that never confirms.
    let gw = Gateway::start_upstream(
        &[ACME],
        "[upstream.sim]\nrequire_link = true\nlink_pair_after_ms = 0\nqr_rotate_ms = 1000\n[sessions]\nlink_timeout_ms = 10000\n",
        false,
    );
    let conn = gw.connect("acme").await;
    let mut events = conn
        .subscribe(subscribe::DEVICE_STATE | subscribe::LINK_CODES)
        .await
        .unwrap();
    control(&conn, DeviceAction::Link(LinkMethod::Qr)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut qr = 0;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the link ends within 30 s")
            .unwrap()
            .unwrap();
        match ev.kind {
            EventKind::LinkCode { .. } => qr += 1,
            EventKind::DeviceState {
                state: DeviceState::Unlinked,
                detail,
                ..
            } => {
                assert!(detail.as_str().contains("link timed out"), "{detail:?}");
                break;
            }
            _ => {}
        }
    }
    assert!(qr >= 5, "codes kept coming until the timeout: {qr}");
    assert_eq!(
        control(&conn, DeviceAction::Status).await.unwrap(),
        DeviceState::Unlinked
    );
}
