//! The event model, schema version 1: what `docs/events.md` documents, as Rust types.
//!
//! An [`Event`] is an envelope (id, type, version, workspace, device, timestamp) around typed
//! [`EventData`]. [`Event::to_json`] writes exactly the documented JSON; [`Event::from_json`]
//! reads it back strictly: an unknown `version`, an unknown field, a malformed id or timestamp
//! is a typed [`ModelError`], never a silently different event.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::timestamp::{rfc3339, rfc3339_opt};

/// The schema version this crate writes and the only one it reads.
///
/// Additive changes (a new optional field, a new event type) keep version 1; anything that
/// changes or removes the meaning of an existing field bumps it (see `docs/events.md`).
pub const SCHEMA_VERSION: u32 = 1;

/// Longest workspace or device id in bytes (the device store's bound); ids are never empty.
pub const MAX_ID_BYTES: usize = 255;

/// Why an event could not be read from JSON or is not well formed. Always the producer's fault
/// (whoever wrote the JSON or built the [`Event`]): retrying the same input does not help.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not JSON, or not a JSON object.
    #[error("event is not a JSON object: {0}")]
    Json(#[source] serde_json::Error),
    /// The `version` field is missing or names a schema this build does not read.
    #[error("event schema version {found} is not supported (this build reads version {SCHEMA_VERSION})")]
    UnsupportedVersion {
        /// The `version` value as found (JSON text, `missing` when absent).
        found: String,
    },
    /// The envelope has an unknown or missing field or a field of the wrong JSON type.
    #[error("event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// An event id that is not `evt_` followed by 32 lowercase hex digits.
    #[error("invalid event id {found:?}: expected evt_ followed by 32 lowercase hex digits")]
    BadId {
        /// The offending text.
        found: String,
    },
    /// A `type` this build does not know.
    #[error("unknown event type {found:?}")]
    UnknownType {
        /// The offending text.
        found: String,
    },
    /// A `timestamp` that is not an RFC 3339 date-time at or after 1970.
    #[error("invalid timestamp {found:?}: expected RFC 3339 like 2026-11-26T15:04:05.123Z")]
    BadTimestamp {
        /// The offending text.
        found: String,
    },
    /// `data` does not match its type's schema (unknown field, missing field, wrong value).
    #[error("{kind} data: {source}")]
    Data {
        /// The event's type.
        kind: EventType,
        /// What serde found wrong, with the field.
        #[source]
        source: serde_json::Error,
    },
    /// Well-formed JSON that breaks a rule of the envelope (empty or too long id, a device on a
    /// workspace-level event or none on a device-level one).
    #[error("invalid event: {reason}")]
    Invalid {
        /// Which rule.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Ids

/// Stable event id: 16 bytes, written `evt_` + 32 lowercase hex digits.
///
/// Receivers deduplicate on it (it is the `webhook-id` of a webhook delivery): one event keeps
/// its id across retries, replays and resumes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId([u8; 16]);

impl EventId {
    /// Prefix of the text form.
    pub const PREFIX: &'static str = "evt_";

    /// A fresh time-ordered id (UUIDv7: 48 bits of unix milliseconds, then random bits;
    /// monotonic within the process). For events the gateway itself originates.
    pub fn new_v7() -> EventId {
        EventId(*uuid::Uuid::now_v7().as_bytes())
    }

    /// An id derived from `parts` (a UUIDv8 holding the first 122 bits of a SHA-256 of the
    /// length-prefixed parts under a domain tag): the same parts give the same id in every
    /// process and release, so a redelivered input is recognised as a duplicate.
    pub fn derived(parts: &[&[u8]]) -> EventId {
        let mut h = Sha256::new();
        h.update(b"waping-events derived id v1\0");
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        let digest = h.finalize();
        let mut custom = [0u8; 16];
        custom.copy_from_slice(&digest[..16]);
        EventId(*uuid::Builder::from_custom_bytes(custom).as_uuid().as_bytes())
    }

    /// The id of an inbound WhatsApp message: derived from the type, workspace, device and
    /// WhatsApp's message id, so WhatsApp delivering the same message twice (e.g. after a
    /// reconnect) yields one event.
    pub fn for_inbound(workspace: &str, device: &str, upstream_id: &str) -> EventId {
        EventId::derived(&[
            EventType::MessageReceived.as_str().as_bytes(),
            workspace.as_bytes(),
            device.as_bytes(),
            upstream_id.as_bytes(),
        ])
    }

    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> EventId {
        EventId(bytes)
    }

    /// The 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the text form: exactly `evt_` + 32 lowercase hex digits (one spelling per id, so
    /// receivers may compare ids as strings).
    pub fn parse(s: &str) -> Result<EventId, ModelError> {
        let bad = || ModelError::BadId { found: s.to_owned() };
        let hex = s.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        if hex.len() != 32 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(hex, &mut out).map_err(|_| bad())?;
        Ok(EventId(out))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for EventId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventId::parse(s)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        EventId::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Types

/// The closed set of event types; the string forms are part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `message.received`: a WhatsApp message arrived at one of the workspace's devices.
    MessageReceived,
    /// `message.status`: progress of a message the workspace sent (sent, delivered, read, failed).
    MessageStatus,
    /// `device.state`: a device changed state (connected, logged out, banned, ...).
    DeviceState,
    /// `device.link_code`: a new QR payload or pairing code for a device being linked.
    DeviceLinkCode,
    /// `message.dead_lettered`: the gateway gave up sending a message.
    MessageDeadLettered,
    /// `webhook.endpoint_disabled`: the gateway stopped delivering to a webhook endpoint.
    WebhookEndpointDisabled,
    /// `automation.matched`: an automation rule with a webhook action matched an inbound
    /// message.
    AutomationMatched,
}

impl EventType {
    /// Every type, in documentation order.
    pub const ALL: [EventType; 7] = [
        EventType::MessageReceived,
        EventType::MessageStatus,
        EventType::DeviceState,
        EventType::DeviceLinkCode,
        EventType::MessageDeadLettered,
        EventType::WebhookEndpointDisabled,
        EventType::AutomationMatched,
    ];

    /// The stable string form (`message.received`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::MessageReceived => "message.received",
            EventType::MessageStatus => "message.status",
            EventType::DeviceState => "device.state",
            EventType::DeviceLinkCode => "device.link_code",
            EventType::MessageDeadLettered => "message.dead_lettered",
            EventType::WebhookEndpointDisabled => "webhook.endpoint_disabled",
            EventType::AutomationMatched => "automation.matched",
        }
    }

    /// The type with this string form.
    pub fn parse(s: &str) -> Result<EventType, ModelError> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ModelError::UnknownType { found: s.to_owned() })
    }

    /// Whether events of this type belong to one device (`device` set) rather than to the
    /// workspace as a whole (`device` absent).
    pub const fn is_device_level(self) -> bool {
        !matches!(self, EventType::WebhookEndpointDisabled)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::parse(s)
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        EventType::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// An error as the gateway reports it elsewhere: the stable numeric code of the protocol's
/// catalogue, its name, and optionally a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorInfo {
    /// Numeric code (`PROTOCOL.md` catalogue, e.g. 5005).
    pub code: u16,
    /// Its stable upper-snake-case name (e.g. `DEVICE_LOGGED_OUT`).
    pub name: String,
    /// Human-readable detail; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Media of an inbound message: a reference to where the gateway stored it, not the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// Where the media can be fetched (URL or storage key).
    pub reference: String,
    /// MIME type as WhatsApp declared it.
    pub mime: String,
    /// Caption; absent when the sender wrote none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

/// What an inbound message carries: text or media, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Plain text (`"text"` in JSON).
    Text(String),
    /// A media reference (`"media"` in JSON).
    Media(Media),
}

/// `message.received` data.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ReceivedWire")]
pub struct MessageReceived {
    /// The sender: a phone number in E.164 form (`+4915112345678`), or the WhatsApp address
    /// when no number is known.
    pub from: String,
    /// WhatsApp's id of the message.
    pub upstream_id: String,
    /// Text or media.
    pub content: Content,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceivedWire {
    from: String,
    upstream_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media: Option<Media>,
}

impl TryFrom<ReceivedWire> for MessageReceived {
    type Error = String;
    fn try_from(w: ReceivedWire) -> Result<Self, Self::Error> {
        let content = match (w.text, w.media) {
            (Some(t), None) => Content::Text(t),
            (None, Some(m)) => Content::Media(m),
            (Some(_), Some(_)) => return Err("exactly one of `text` and `media` expected, found both".into()),
            (None, None) => return Err("exactly one of `text` and `media` expected, found neither".into()),
        };
        Ok(MessageReceived {
            from: w.from,
            upstream_id: w.upstream_id,
            content,
        })
    }
}

impl Serialize for MessageReceived {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            from: &'a str,
            upstream_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            text: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            media: Option<&'a Media>,
        }
        let (text, media) = match &self.content {
            Content::Text(t) => (Some(t.as_str()), None),
            Content::Media(m) => (None, Some(m)),
        };
        Out {
            from: &self.from,
            upstream_id: &self.upstream_id,
            text,
            media,
        }
        .serialize(s)
    }
}

/// Progress of an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// WhatsApp accepted the message (one tick).
    Sent,
    /// The recipient's phone received it (two ticks).
    Delivered,
    /// The recipient read it (blue ticks; only when the recipient shares read receipts).
    Read,
    /// The gateway could not send it; `error` says why.
    Failed,
}

/// `message.status` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageStatus {
    /// The gateway's id of the message (as returned when it was submitted: 32 hex digits).
    pub message_id: String,
    /// What happened.
    pub status: DeliveryStatus,
    /// WhatsApp's id of the message, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// Why it failed; present exactly when `status` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl MessageStatus {
    /// `error` must be present exactly when `status` is `failed`.
    fn check(&self) -> Result<(), &'static str> {
        match (self.status, &self.error) {
            (DeliveryStatus::Failed, None) => Err("status `failed` requires `error`"),
            (st, Some(_)) if st != DeliveryStatus::Failed => {
                Err("`error` is only allowed with status `failed`")
            }
            _ => Ok(()),
        }
    }
}

/// A device's state, as the gateway's device lifecycle names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// No WhatsApp account linked.
    Unlinked,
    /// Waiting for a QR code or pairing code to be used (`device.link_code` events follow).
    Linking,
    /// Linked; (re)connecting to WhatsApp.
    Connecting,
    /// Connected and able to send.
    Connected,
    /// Connection lost; the gateway reconnects with backoff.
    Disconnected,
    /// WhatsApp logged the device out (from the phone, or the session was revoked); it must be
    /// linked again.
    LoggedOut,
    /// WhatsApp banned or restricted the account (`until` is set for a temporary ban).
    Banned,
    /// An operator disabled the device.
    Disabled,
}

/// `device.state` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStateChange {
    /// The new state.
    pub state: DeviceState,
    /// Human-readable reason (e.g. WhatsApp's logout reason); absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// End of a temporary ban (unix milliseconds; RFC 3339 in JSON); absent otherwise.
    #[serde(
        rename = "until",
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_opt"
    )]
    pub until_ms: Option<u64>,
}

/// How a device is being linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    /// `code` is the payload to render as a QR code and scan with the phone.
    Qr,
    /// `code` is the pairing code to type into the phone.
    PairingCode,
}

/// `device.link_code` data. Whoever holds the code can link a phone to the device: treat it
/// as a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkCode {
    /// QR or pairing code.
    pub method: LinkMethod,
    /// The QR payload or the pairing code.
    pub code: String,
    /// When this code stops working (unix milliseconds; RFC 3339 in JSON); a new
    /// `device.link_code` event follows while linking continues.
    #[serde(rename = "expires_at", with = "rfc3339")]
    pub expires_at_ms: u64,
}

/// `message.dead_lettered` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettered {
    /// The gateway's id of the message.
    pub message_id: String,
    /// Send attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: ErrorInfo,
}

/// Why a webhook endpoint was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// The endpoint answered HTTP 410 Gone.
    Gone,
    /// Deliveries kept failing for the whole retry horizon.
    Failing,
    /// The endpoint's address is one the gateway may not connect to (private or loopback
    /// address, blocked by the SSRF guard).
    Blocked,
}

/// `webhook.endpoint_disabled` data (a workspace-level event: no `device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDisabled {
    /// The endpoint's id as the API shows it.
    pub endpoint_id: String,
    /// Why.
    pub reason: DisableReason,
    /// The last HTTP status received, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Human-readable detail (e.g. the last connection error); absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `automation.matched` data: the rule, and the inbound message that triggered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomationMatched {
    /// The rule's id (`ar_…`).
    pub rule_id: String,
    /// The rule's name.
    pub rule_name: String,
    /// The `message.received` event's id.
    pub trigger_event_id: String,
    /// The sender of the message.
    pub from: String,
    /// Its text (or media caption); absent when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The typed payload of an event; its variant determines the event's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    /// `message.received`.
    MessageReceived(MessageReceived),
    /// `message.status`.
    MessageStatus(MessageStatus),
    /// `device.state`.
    DeviceState(DeviceStateChange),
    /// `device.link_code`.
    DeviceLinkCode(LinkCode),
    /// `message.dead_lettered`.
    MessageDeadLettered(DeadLettered),
    /// `webhook.endpoint_disabled`.
    WebhookEndpointDisabled(EndpointDisabled),
    /// `automation.matched`.
    AutomationMatched(AutomationMatched),
}

impl EventData {
    /// The event type this payload belongs to.
    pub const fn kind(&self) -> EventType {
        match self {
            EventData::MessageReceived(_) => EventType::MessageReceived,
            EventData::MessageStatus(_) => EventType::MessageStatus,
            EventData::DeviceState(_) => EventType::DeviceState,
            EventData::DeviceLinkCode(_) => EventType::DeviceLinkCode,
            EventData::MessageDeadLettered(_) => EventType::MessageDeadLettered,
            EventData::WebhookEndpointDisabled(_) => EventType::WebhookEndpointDisabled,
            EventData::AutomationMatched(_) => EventType::AutomationMatched,
        }
    }

    /// The `data` object as JSON bytes (what the store seals).
    #[cfg(test)]
    pub(crate) fn to_json_bytes(&self) -> Vec<u8> {
        // Strings, integers and enums only: serialisation cannot fail.
        serde_json::to_vec(self).expect("event data serialises")
    }

    /// Reads `data` of type `kind` from JSON bytes.
    pub(crate) fn from_json_slice(kind: EventType, bytes: &[u8]) -> Result<EventData, ModelError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let data =
            EventData::deserialize_as(kind, &mut de).map_err(|source| ModelError::Data { kind, source })?;
        de.end().map_err(|source| ModelError::Data { kind, source })?;
        Ok(data)
    }

    /// Reads `data` of type `kind` from a parsed JSON value.
    pub fn from_json_value(kind: EventType, value: serde_json::Value) -> Result<EventData, ModelError> {
        EventData::deserialize_as(kind, value).map_err(|source| ModelError::Data { kind, source })
    }

    fn deserialize_as<'de, D: Deserializer<'de>>(kind: EventType, d: D) -> Result<EventData, D::Error> {
        Ok(match kind {
            EventType::MessageReceived => EventData::MessageReceived(Deserialize::deserialize(d)?),
            EventType::MessageStatus => {
                let s: MessageStatus = Deserialize::deserialize(d)?;
                s.check().map_err(serde::de::Error::custom)?;
                EventData::MessageStatus(s)
            }
            EventType::DeviceState => EventData::DeviceState(Deserialize::deserialize(d)?),
            EventType::DeviceLinkCode => EventData::DeviceLinkCode(Deserialize::deserialize(d)?),
            EventType::MessageDeadLettered => EventData::MessageDeadLettered(Deserialize::deserialize(d)?),
            EventType::WebhookEndpointDisabled => {
                EventData::WebhookEndpointDisabled(Deserialize::deserialize(d)?)
            }
            EventType::AutomationMatched => EventData::AutomationMatched(Deserialize::deserialize(d)?),
        })
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventData::MessageReceived(d) => d.serialize(s),
            EventData::MessageStatus(d) => d.serialize(s),
            EventData::DeviceState(d) => d.serialize(s),
            EventData::DeviceLinkCode(d) => d.serialize(s),
            EventData::MessageDeadLettered(d) => d.serialize(s),
            EventData::WebhookEndpointDisabled(d) => d.serialize(s),
            EventData::AutomationMatched(d) => d.serialize(s),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Envelope

/// One event: the envelope and its typed data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Stable id; receivers deduplicate on it.
    pub id: EventId,
    /// Workspace the event belongs to (1..=[`MAX_ID_BYTES`] bytes).
    pub workspace: String,
    /// Device the event belongs to; `None` exactly for workspace-level types
    /// ([`EventType::is_device_level`]).
    pub device: Option<String>,
    /// When the gateway observed what the event reports (unix milliseconds; `timestamp` in
    /// JSON). Passed in by the producer, never read from the clock here.
    pub at_ms: u64,
    /// The typed payload.
    pub data: EventData,
}

#[derive(Serialize)]
struct WireOut<'a> {
    id: EventId,
    #[serde(rename = "type")]
    kind: EventType,
    version: u32,
    workspace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    #[serde(with = "rfc3339")]
    timestamp: u64,
    data: &'a EventData,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[allow(dead_code)] // checked before this struct is parsed
    version: serde_json::Value,
    workspace: String,
    #[serde(default)]
    device: Option<String>,
    timestamp: String,
    data: serde_json::Value,
}

impl Event {
    /// A new event with a fresh time-ordered id ([`EventId::new_v7`]).
    pub fn new(workspace: impl Into<String>, device: Option<String>, at_ms: u64, data: EventData) -> Event {
        Event {
            id: EventId::new_v7(),
            workspace: workspace.into(),
            device,
            at_ms,
            data,
        }
    }

    /// The event's type (from its data).
    pub const fn kind(&self) -> EventType {
        self.data.kind()
    }

    /// Checks the rules serde cannot: ids 1..=[`MAX_ID_BYTES`] bytes, a device exactly on
    /// device-level types, `error` exactly on failed `message.status`.
    pub fn validate(&self) -> Result<(), ModelError> {
        let check = |what: &str, id: &str| {
            if id.is_empty() || id.len() > MAX_ID_BYTES {
                Err(ModelError::Invalid {
                    reason: format!("{what} id of {} bytes (must be 1..={MAX_ID_BYTES})", id.len()),
                })
            } else {
                Ok(())
            }
        };
        check("workspace", &self.workspace)?;
        if let EventData::MessageStatus(s) = &self.data {
            s.check().map_err(|reason| ModelError::Invalid {
                reason: reason.into(),
            })?;
        }
        match (&self.device, self.kind().is_device_level()) {
            (Some(d), true) => check("device", d),
            (None, false) => Ok(()),
            (None, true) => Err(ModelError::Invalid {
                reason: format!("{} events belong to a device, but none is given", self.kind()),
            }),
            (Some(_), false) => Err(ModelError::Invalid {
                reason: format!(
                    "{} events belong to the workspace and carry no device",
                    self.kind()
                ),
            }),
        }
    }

    /// The event as one line of JSON, exactly as `docs/events.md` shows it: fields in the order
    /// `id`, `type`, `version`, `workspace`, `device` (omitted for workspace-level events),
    /// `timestamp`, `data`; absent optional data fields omitted.
    pub fn to_json(&self) -> String {
        // Strings, integers and enums only: serialisation cannot fail.
        serde_json::to_string(&WireOut {
            id: self.id,
            kind: self.kind(),
            version: SCHEMA_VERSION,
            workspace: &self.workspace,
            device: self.device.as_deref(),
            timestamp: self.at_ms,
            data: &self.data,
        })
        .expect("event serialises")
    }

    /// Reads an event written by [`Event::to_json`] (or by any producer following
    /// `docs/events.md`, version 1).
    ///
    /// Strict: the `version` is checked first (anything but 1 is
    /// [`ModelError::UnsupportedVersion`], whatever else the object holds); unknown fields in
    /// the envelope or the data are refused; `device` may be absent or `null` on
    /// workspace-level events.
    pub fn from_json(json: &str) -> Result<Event, ModelError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(ModelError::Json)?;
        let Some(obj) = value.as_object() else {
            return Err(ModelError::Json(serde::de::Error::custom(
                "expected a JSON object",
            )));
        };
        match obj.get("version") {
            Some(v) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
            Some(v) => return Err(ModelError::UnsupportedVersion { found: v.to_string() }),
            None => {
                return Err(ModelError::UnsupportedVersion {
                    found: "missing".into(),
                });
            }
        }
        let wire: WireIn = serde_json::from_value(value).map_err(ModelError::Envelope)?;
        let id = EventId::parse(&wire.id)?;
        let kind = EventType::parse(&wire.kind)?;
        let at_ms = crate::timestamp::parse_ms(&wire.timestamp).ok_or_else(|| ModelError::BadTimestamp {
            found: wire.timestamp.clone(),
        })?;
        let data = EventData::from_json_value(kind, wire.data)?;
        let event = Event {
            id,
            workspace: wire.workspace,
            device: wire.device,
            at_ms,
            data,
        };
        event.validate()?;
        Ok(event)
    }
}
