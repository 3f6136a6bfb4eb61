//! Deletion requests reach the event log: a device's events, or a sender's messages, are
//! erased in place (the other events keep their numbers), with the deliveries owed for them.

use waping_events::*;

const T0: u64 = 1_795_705_445_000;

fn inbound(dev: &str, from: &str, n: u64) -> Event {
    Event {
        id: EventId::for_inbound("acme", dev, &format!("UP{n}")),
        workspace: "acme".into(),
        device: Some(dev.into()),
        at_ms: T0 + n,
        data: EventData::MessageReceived(MessageReceived {
            from: from.into(),
            upstream_id: format!("UP{n}"),
            content: Content::Text(format!("private text {n}")),
        }),
    }
}

fn status(dev: &str, n: u64) -> Event {
    Event {
        id: EventId::new_v7(),
        workspace: "acme".into(),
        device: Some(dev.into()),
        at_ms: T0 + n,
        data: EventData::MessageStatus(MessageStatus {
            message_id: format!("{n:032x}"),
            status: DeliveryStatus::Sent,
            upstream_id: None,
            error: None,
        }),
    }
}

fn texts(store: &EventStore) -> Vec<(u64, String)> {
    store
        .read_after("acme", 0, 1000)
        .unwrap()
        .into_iter()
        .map(|s| {
            let e = s.event.unwrap();
            let what = match e.data {
                EventData::MessageReceived(m) => format!("{} from {}", e.device.unwrap(), m.from),
                EventData::MessageStatus(st) => format!("{} status {}", e.device.unwrap(), st.message_id),
                other => format!("{other:?}"),
            };
            (s.seq, what)
        })
        .collect()
}

#[tokio::test]
async fn a_device_and_a_sender_are_erased_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(
        dir.path().join("events.redb"),
        StoreOptions {
            max_row_events: 3,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let batch = vec![
        NewEvent {
            event: inbound("d1", "+49 151 111", 1),
            endpoints: vec![9],
        },
        NewEvent {
            event: inbound("d2", "49151111@s.whatsapp.net", 2),
            endpoints: vec![9],
        },
        NewEvent {
            event: inbound("d2", "+49 151 222", 3),
            endpoints: vec![],
        },
        NewEvent {
            event: status("d1", 4),
            endpoints: vec![],
        },
        NewEvent {
            event: status("d2", 5),
            endpoints: vec![],
        },
    ];
    let ids: Vec<EventId> = batch.iter().map(|n| n.event.id).collect();
    let appended = store.append(batch).await.unwrap();
    assert_eq!(
        appended.iter().map(|a| a.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    store.open_cursor(9, "acme", Some(0)).await.unwrap();
    assert_eq!(store.owed(9, 0, 10).unwrap().len(), 2);

    let n = store.erase("acme", Erase::Device("d1".into())).await.unwrap();
    assert_eq!(n, 2, "d1's message and status");
    assert_eq!(
        texts(&store),
        [
            (2, "d2 from 49151111@s.whatsapp.net".to_string()),
            (3, "d2 from +49 151 222".to_string()),
            (5, format!("d2 status {:032x}", 5)),
        ]
    );
    assert!(store.get(1).unwrap().is_none(), "an erased event reads as absent");
    assert_eq!(
        store
            .owed(9, 0, 10)
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect::<Vec<_>>(),
        [2]
    );

    // The same number written another way, on another device: erased too.
    let n = store
        .erase("acme", Erase::Sender("+49151111".into()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        texts(&store).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [3, 5],
        "the other sender and the statuses stay, with their numbers"
    );
    assert!(
        store.owed(9, 0, 10).unwrap().is_empty(),
        "its owed delivery went with it"
    );
    assert_eq!(
        store
            .erase("acme", Erase::Sender("+49151111".into()))
            .await
            .unwrap(),
        0,
        "idempotent"
    );
    assert_eq!(
        store.erase("acme", Erase::Sender("".into())).await.unwrap(),
        0,
        "no digits, no match"
    );
    // Ids stay known: a redelivery of an erased inbound message is not stored again.
    let again = store
        .append(vec![NewEvent {
            event: inbound("d1", "+49 151 111", 1),
            endpoints: vec![],
        }])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].id, ids[0]);
    // A reopen reads the rewritten rows.
    drop(store);
    let store = EventStore::open(dir.path().join("events.redb"), StoreOptions::default()).unwrap();
    assert_eq!(texts(&store).len(), 2);
}
