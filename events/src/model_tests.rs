//! The JSON contract: one golden string per event type (the same examples as
//! `docs/events.md`), round trips, and every refusal as its typed error.

use crate::model::*;

const AT: u64 = 1_795_705_445_123; // 2026-11-26T15:04:05.123Z

fn id(hex: &str) -> EventId {
    EventId::parse(&format!("evt_{hex}")).unwrap()
}

fn device_event(hex: &str, data: EventData) -> Event {
    Event {
        id: id(hex),
        workspace: "acme".into(),
        device: Some("d1".into()),
        at_ms: AT,
        data,
    }
}

/// Each example event with its exact JSON, in the order of `docs/events.md`.
fn examples() -> Vec<(Event, &'static str)> {
    vec![
        (
            Event {
                id: EventId::for_inbound("acme", "d1", "3EB0C431D5F1A2B3C4D5"),
                ..device_event(
                    "00000000000000000000000000000000",
                    EventData::MessageReceived(MessageReceived {
                        from: "+4915112345678".into(),
                        upstream_id: "3EB0C431D5F1A2B3C4D5".into(),
                        content: Content::Text("Hello, is my order on its way?".into()),
                    }),
                )
            },
            r#"{"id":"evt_e53bf66416bb81a1add04c122ac46257","type":"message.received","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"from":"+4915112345678","upstream_id":"3EB0C431D5F1A2B3C4D5","text":"Hello, is my order on its way?"}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445501",
                EventData::MessageReceived(MessageReceived {
                    from: "+4915112345678".into(),
                    upstream_id: "3EB0D2E5F6A7B8C9D0E1".into(),
                    content: Content::Media(Media {
                        reference: "media/acme/3EB0D2E5F6A7B8C9D0E1".into(),
                        mime: "image/jpeg".into(),
                        caption: Some("The parcel".into()),
                    }),
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445501","type":"message.received","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"from":"+4915112345678","upstream_id":"3EB0D2E5F6A7B8C9D0E1","media":{"reference":"media/acme/3EB0D2E5F6A7B8C9D0E1","mime":"image/jpeg","caption":"The parcel"}}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445502",
                EventData::MessageStatus(MessageStatus {
                    message_id: "0192f3a4b0007a3c8d2e4f6a8b0c1d2e".into(),
                    status: DeliveryStatus::Delivered,
                    upstream_id: Some("3EB0A1B2C3D4E5F6A7B8".into()),
                    error: None,
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445502","type":"message.status","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"message_id":"0192f3a4b0007a3c8d2e4f6a8b0c1d2e","status":"delivered","upstream_id":"3EB0A1B2C3D4E5F6A7B8"}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445503",
                EventData::MessageStatus(MessageStatus {
                    message_id: "0192f3a4b0007a3c8d2e4f6a8b0c1d2f".into(),
                    status: DeliveryStatus::Failed,
                    upstream_id: None,
                    error: Some(ErrorInfo {
                        code: 5005,
                        name: "DEVICE_LOGGED_OUT".into(),
                        detail: Some("the device was logged out and must be relinked".into()),
                    }),
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445503","type":"message.status","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"message_id":"0192f3a4b0007a3c8d2e4f6a8b0c1d2f","status":"failed","error":{"code":5005,"name":"DEVICE_LOGGED_OUT","detail":"the device was logged out and must be relinked"}}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445504",
                EventData::DeviceState(DeviceStateChange {
                    state: DeviceState::LoggedOut,
                    detail: Some("logged out from the phone".into()),
                    until_ms: None,
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445504","type":"device.state","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"state":"logged_out","detail":"logged out from the phone"}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445505",
                EventData::DeviceState(DeviceStateChange {
                    state: DeviceState::Banned,
                    detail: None,
                    until_ms: Some(AT + 86_400_000),
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445505","type":"device.state","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"state":"banned","until":"2026-11-27T15:04:05.123Z"}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445506",
                EventData::DeviceLinkCode(LinkCode {
                    method: LinkMethod::Qr,
                    code: "2@Xy7Qm3kP0aBcD,f9GhIjKlMnOp=,QrStUvWx=,YzAb=".into(),
                    expires_at_ms: AT + 20_000,
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445506","type":"device.link_code","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"method":"qr","code":"2@Xy7Qm3kP0aBcD,f9GhIjKlMnOp=,QrStUvWx=,YzAb=","expires_at":"2026-11-26T15:04:25.123Z"}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445507",
                EventData::MessageDeadLettered(DeadLettered {
                    message_id: "0192f3a4b0007a3c8d2e4f6a8b0c1d30".into(),
                    attempts: 8,
                    error: ErrorInfo {
                        code: 9000,
                        name: "INTERNAL".into(),
                        detail: None,
                    },
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445507","type":"message.dead_lettered","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"message_id":"0192f3a4b0007a3c8d2e4f6a8b0c1d30","attempts":8,"error":{"code":9000,"name":"INTERNAL"}}}"#,
        ),
        (
            Event {
                device: None,
                ..device_event(
                    "0192f3a4b5c67d8e9f00112233445508",
                    EventData::WebhookEndpointDisabled(EndpointDisabled {
                        endpoint_id: "whe_00000000000000a7".into(),
                        reason: DisableReason::Gone,
                        http_status: Some(410),
                        detail: None,
                    }),
                )
            },
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445508","type":"webhook.endpoint_disabled","version":1,"workspace":"acme","timestamp":"2026-11-26T15:04:05.123Z","data":{"endpoint_id":"whe_00000000000000a7","reason":"gone","http_status":410}}"#,
        ),
        (
            device_event(
                "0192f3a4b5c67d8e9f00112233445509",
                EventData::AutomationMatched(AutomationMatched {
                    rule_id: "ar_00000000000000b1".into(),
                    rule_name: "order status".into(),
                    trigger_event_id: "evt_e53bf66416bb81a1add04c122ac46257".into(),
                    from: "+4915112345678".into(),
                    text: Some("Hello, is my order on its way?".into()),
                }),
            ),
            r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445509","type":"automation.matched","version":1,"workspace":"acme","device":"d1","timestamp":"2026-11-26T15:04:05.123Z","data":{"rule_id":"ar_00000000000000b1","rule_name":"order status","trigger_event_id":"evt_e53bf66416bb81a1add04c122ac46257","from":"+4915112345678","text":"Hello, is my order on its way?"}}"#,
        ),
    ]
}

#[test]
fn every_type_has_a_golden_example_that_round_trips() {
    let mut seen = std::collections::HashSet::new();
    for (event, golden) in examples() {
        event.validate().unwrap();
        assert_eq!(event.to_json(), golden, "{}", event.kind());
        assert_eq!(Event::from_json(golden).unwrap(), event, "{}", event.kind());
        seen.insert(event.kind());
    }
    assert_eq!(seen.len(), EventType::ALL.len(), "an example per type");
}

#[test]
fn the_docs_carry_the_same_examples() {
    let docs = include_str!("../../docs/events.md");
    for (event, golden) in examples() {
        // The docs pretty-print; compare the parsed JSON.
        let want: serde_json::Value = serde_json::from_str(golden).unwrap();
        let found = docs
            .split("```json")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .filter_map(|block| serde_json::from_str::<serde_json::Value>(block).ok())
            .any(|v| v == want);
        assert!(
            found,
            "docs/events.md lacks the example of {}: {golden}",
            event.kind()
        );
    }
}

#[test]
fn optional_fields_round_trip_absent_and_present() {
    let variants = [
        EventData::MessageReceived(MessageReceived {
            from: "+1".into(),
            upstream_id: "u".into(),
            content: Content::Media(Media {
                reference: "r".into(),
                mime: "audio/ogg".into(),
                caption: None,
            }),
        }),
        EventData::MessageStatus(MessageStatus {
            message_id: "m".into(),
            status: DeliveryStatus::Sent,
            upstream_id: None,
            error: None,
        }),
        EventData::MessageStatus(MessageStatus {
            message_id: "m".into(),
            status: DeliveryStatus::Read,
            upstream_id: Some("u".into()),
            error: None,
        }),
        EventData::DeviceState(DeviceStateChange {
            state: DeviceState::Connecting,
            detail: None,
            until_ms: None,
        }),
        EventData::DeviceLinkCode(LinkCode {
            method: LinkMethod::PairingCode,
            code: "ABCD-EFGH".into(),
            expires_at_ms: 0,
        }),
        EventData::MessageDeadLettered(DeadLettered {
            message_id: "m".into(),
            attempts: 0,
            error: ErrorInfo {
                code: 0,
                name: String::new(),
                detail: Some("d".into()),
            },
        }),
    ];
    for data in variants {
        let e = device_event("0192f3a4b5c67d8e9f001122334455ff", data);
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
        // And through the store's path (data alone, typed by the header).
        let bytes = e.data.to_json_bytes();
        assert_eq!(EventData::from_json_slice(e.kind(), &bytes).unwrap(), e.data);
    }
    for state in [
        "unlinked",
        "linking",
        "connecting",
        "connected",
        "disconnected",
        "logged_out",
        "banned",
        "disabled",
    ] {
        let json = format!(
            r#"{{"id":"evt_0192f3a4b5c67d8e9f00112233445566","type":"device.state","version":1,"workspace":"w","device":"d","timestamp":"1970-01-01T00:00:00.000Z","data":{{"state":"{state}"}}}}"#
        );
        let e = Event::from_json(&json).unwrap();
        assert_eq!(e.to_json(), json);
    }
}

#[test]
fn workspace_level_events_accept_a_null_device() {
    let json = r#"{"id":"evt_0192f3a4b5c67d8e9f00112233445508","type":"webhook.endpoint_disabled","version":1,"workspace":"acme","device":null,"timestamp":"2026-11-26T15:04:05.123Z","data":{"endpoint_id":"whe_00000000000000a7","reason":"failing"}}"#;
    let e = Event::from_json(json).unwrap();
    assert_eq!(e.device, None);
    assert!(!e.to_json().contains("device"));
}

/// The golden message example with `edit` applied to its JSON object.
fn edited(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(examples()[0].1).unwrap();
    edit(v.as_object_mut().unwrap());
    v.to_string()
}

#[test]
fn refuses_other_versions_first() {
    use serde_json::json;
    for (version, found) in [
        (json!(2), "2"),
        (json!(0), "0"),
        (json!("1"), "\"1\""),
        (json!(1.5), "1.5"),
    ] {
        // Even with an envelope that would not parse as version 1.
        let text = edited(|o| {
            o.insert("version".into(), version);
            o.insert("something_new".into(), json!(true));
        });
        match Event::from_json(&text) {
            Err(ModelError::UnsupportedVersion { found: f }) => assert_eq!(f, found),
            other => panic!("{found}: {other:?}"),
        }
    }
    let missing = edited(|o| {
        o.remove("version");
    });
    assert!(matches!(
        Event::from_json(&missing),
        Err(ModelError::UnsupportedVersion { found }) if found == "missing"
    ));
    let e = Event::from_json(&edited(|o| {
        o.insert("version".into(), json!(2));
    }))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "event schema version 2 is not supported (this build reads version 1)"
    );
}

#[test]
fn refuses_unknown_fields_in_envelope_and_data() {
    use serde_json::json;
    let e = Event::from_json(&edited(|o| {
        o.insert("extra".into(), json!(1));
    }))
    .unwrap_err();
    assert!(matches!(e, ModelError::Envelope(_)), "{e:?}");
    assert!(e.to_string().contains("extra"), "{e}");

    let e = Event::from_json(&edited(|o| {
        o["data"]
            .as_object_mut()
            .unwrap()
            .insert("colour".into(), json!("red"));
    }))
    .unwrap_err();
    match &e {
        ModelError::Data { kind, source } => {
            assert_eq!(*kind, EventType::MessageReceived);
            assert!(source.to_string().contains("colour"), "{source}");
        }
        other => panic!("{other:?}"),
    }
    // Unknown fields inside nested objects too.
    let media = examples()[1].1.replace(r#""mime":"#, r#""size":5,"mime":"#);
    assert!(matches!(Event::from_json(&media), Err(ModelError::Data { .. })));
    let status = examples()[3].1.replace(r#""name":"#, r#""retry":true,"name":"#);
    assert!(matches!(Event::from_json(&status), Err(ModelError::Data { .. })));
}

#[test]
fn refuses_bad_ids_types_and_timestamps() {
    use serde_json::json;
    for bad in [
        "evt_E53BF66416BB81A1ADD04C122AC46257",
        "evt_e53bf66416bb81a1add04c122ac4625",
        "evt_e53bf66416bb81a1add04c122ac462577",
        "e53bf66416bb81a1add04c122ac46257",
        "msg_e53bf66416bb81a1add04c122ac46257",
        "evt_e53bf66416bb81a1add04c122ac4625g",
        "evt_+53bf66416bb81a1add04c122ac46257",
    ] {
        let text = edited(|o| {
            o.insert("id".into(), json!(bad));
        });
        assert!(
            matches!(Event::from_json(&text), Err(ModelError::BadId { ref found }) if found == bad),
            "{bad}"
        );
        assert!(bad.parse::<EventId>().is_err());
    }
    let text = edited(|o| {
        o.insert("type".into(), json!("message.deleted"));
    });
    assert!(matches!(
        Event::from_json(&text),
        Err(ModelError::UnknownType { found }) if found == "message.deleted"
    ));
    for bad in ["2026-11-26 15:04", "yesterday", "1969-12-31T23:59:59.000Z"] {
        let text = edited(|o| {
            o.insert("timestamp".into(), json!(bad));
        });
        assert!(
            matches!(Event::from_json(&text), Err(ModelError::BadTimestamp { ref found }) if found == bad),
            "{bad}"
        );
    }
    let text = examples()[6].1.replace("2026-11-26T15:04:25.123Z", "soon");
    assert!(matches!(Event::from_json(&text), Err(ModelError::Data { .. })));
    assert!(matches!(Event::from_json("[1]"), Err(ModelError::Json(_))));
    assert!(matches!(Event::from_json("{"), Err(ModelError::Json(_))));
    assert!(matches!(
        Event::from_json(&edited(|o| {
            o.remove("workspace");
        })),
        Err(ModelError::Envelope(_))
    ));
}

#[test]
fn refuses_inconsistent_data_and_devices() {
    use serde_json::json;
    // Both text and media, or neither.
    let both = examples()[0]
        .1
        .replace(r#""text":"#, r#""media":{"reference":"r","mime":"m"},"text":"#);
    assert!(matches!(Event::from_json(&both), Err(ModelError::Data { .. })));
    let neither = edited(|o| {
        o["data"].as_object_mut().unwrap().remove("text");
    });
    assert!(matches!(Event::from_json(&neither), Err(ModelError::Data { .. })));
    // `error` exactly with `failed`.
    let no_error = examples()[3].1.replace(
        r#","error":{"code":5005,"name":"DEVICE_LOGGED_OUT","detail":"the device was logged out and must be relinked"}"#,
        "",
    );
    assert!(matches!(
        Event::from_json(&no_error),
        Err(ModelError::Data { .. })
    ));
    let stray_error = examples()[3].1.replace(r#""failed""#, r#""sent""#);
    assert!(matches!(
        Event::from_json(&stray_error),
        Err(ModelError::Data { .. })
    ));
    // Device-level without a device, workspace-level with one, ids empty or too long.
    let no_device = edited(|o| {
        o.remove("device");
    });
    assert!(matches!(
        Event::from_json(&no_device),
        Err(ModelError::Invalid { .. })
    ));
    let with_device = examples()[8]
        .1
        .replace(r#""workspace":"acme","#, r#""workspace":"acme","device":"d1","#);
    assert!(matches!(
        Event::from_json(&with_device),
        Err(ModelError::Invalid { .. })
    ));
    for ws in [String::new(), "w".repeat(MAX_ID_BYTES + 1)] {
        let text = edited(|o| {
            o.insert("workspace".into(), json!(ws));
        });
        assert!(matches!(Event::from_json(&text), Err(ModelError::Invalid { .. })));
    }
    let text = edited(|o| {
        o.insert("workspace".into(), json!("w".repeat(MAX_ID_BYTES)));
    });
    Event::from_json(&text).unwrap();
    // The same rules apply to events built in Rust.
    let mut e = examples()[3].0.clone();
    if let EventData::MessageStatus(s) = &mut e.data {
        s.error = None;
    }
    assert!(matches!(e.validate(), Err(ModelError::Invalid { .. })));
}

#[test]
fn ids_print_parse_and_derive_stably() {
    // Derived ids are part of the contract: a change would break dedupe across an upgrade.
    assert_eq!(
        EventId::for_inbound("acme", "d1", "3EB0C431D5F1A2B3C4D5").to_string(),
        "evt_e53bf66416bb81a1add04c122ac46257"
    );
    assert_eq!(
        EventId::derived(&[b"a", b"bc"]).to_string(),
        "evt_30a83ec02c8488c683049e36168a92f6"
    );
    // Length prefixes: moving a boundary changes the id.
    assert_ne!(EventId::derived(&[b"a", b"bc"]), EventId::derived(&[b"ab", b"c"]));
    assert_ne!(
        EventId::for_inbound("acme", "d1", "X"),
        EventId::for_inbound("acme", "d2", "X")
    );
    let d = EventId::derived(&[b"x"]);
    assert_eq!(d.as_bytes()[6] >> 4, 8, "UUIDv8");
    assert_eq!(d.as_bytes()[8] >> 6, 0b10, "RFC 9562 variant");

    let a = EventId::new_v7();
    let b = EventId::new_v7();
    assert!(b > a, "time-ordered within the process");
    assert_eq!(a.as_bytes()[6] >> 4, 7, "UUIDv7");
    let text = a.to_string();
    assert!(text.starts_with("evt_") && text.len() == 36);
    assert_eq!(EventId::parse(&text).unwrap(), a);
    assert_eq!(format!("{a:?}"), text);
    assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{text}\""));
}

#[test]
fn types_have_stable_strings() {
    let strings: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        strings,
        [
            "message.received",
            "message.status",
            "device.state",
            "device.link_code",
            "message.dead_lettered",
            "webhook.endpoint_disabled",
            "automation.matched"
        ]
    );
    for t in EventType::ALL {
        assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
    }
    assert!(EventType::WebhookEndpointDisabled.is_device_level().eq(&false));
}
