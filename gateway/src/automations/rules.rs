//! Automation rules: the stored model, its validation (every problem with its JSON path) and
//! the compiled form the engine matches with.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest regex pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 512;
/// Compiled program size limit of a regex (`RegexBuilder::size_limit`).
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Lazy DFA cache limit of a regex (`RegexBuilder::dfa_size_limit`).
pub const REGEX_DFA_LIMIT: usize = 256 * 1024;
/// Longest template, in characters.
pub const MAX_TEMPLATE_CHARS: usize = 1000;
/// Longest rendered text (reply or forward), in bytes; longer output is cut at a character.
pub const MAX_RENDERED_BYTES: usize = 4096;
/// Most entries in each match list (devices, senders, keywords).
pub const MAX_LIST: usize = 50;
/// Most actions per rule.
pub const MAX_ACTIONS: usize = 8;
/// Most tags per tag action, and per (device, sender).
pub const MAX_TAGS: usize = 16;
/// Default loop limit: automated actions per (rule, device, sender) per window.
pub const DEFAULT_MAX_PER_WINDOW: u32 = 3;
/// Default loop window, seconds.
pub const DEFAULT_WINDOW_S: u32 = 600;
/// Placeholders a template may use.
pub const PLACEHOLDERS: [&str; 5] = ["sender", "text", "device", "workspace", "rule"];

/// What an inbound message must satisfy; every given condition must hold (an empty list is
/// no condition). Keywords: any one of them, case-insensitive, as a whole word.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Devices the message arrived at (any of them); empty = every device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Senders (any of them), compared on their digits (`+49 151…` = `49151…`); empty = anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<String>,
    /// Words (any of them), case-insensitive, matched as whole words (a keyword with a space
    /// matches that phrase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// A regular expression the text must match (the `regex` crate's syntax: linear time,
    /// no look-around or back-references; at most 512 bytes and bounded compiled size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Reply to the sender from the device the message arrived at.
    Reply {
        /// Text with placeholders `{{sender}}`, `{{text}}`, `{{device}}`, `{{workspace}}`,
        /// `{{rule}}` (at most 1000 characters; the result is cut at 4096 bytes).
        template: String,
    },
    /// Send the message on: from `device` (default: the device it arrived at) to `to`.
    Forward {
        /// Device of the same workspace to send from; absent = the receiving device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Recipient (phone number or WhatsApp address).
        to: String,
        /// Text to send; default `{{sender}}: {{text}}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<String>,
    },
    /// Owe an `automation.matched` event to a webhook endpoint of the workspace.
    Webhook {
        /// `whe_…`.
        endpoint_id: String,
    },
    /// Tag the (device, sender) pair.
    Tag {
        /// Tags to add (1–16, each 1–64 of `a-z 0-9 _ - . :`).
        tags: Vec<String>,
    },
}

impl Action {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Reply { .. } => "reply",
            Action::Forward { .. } => "forward",
            Action::Webhook { .. } => "webhook",
            Action::Tag { .. } => "tag",
        }
    }
}

/// Loop protection of a rule: at most `max` automated actions per (rule, device, sender) in
/// any `window_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// 1..=100. Default 3.
    pub max: u32,
    /// 10..=86 400. Default 600.
    pub window_s: u32,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            max: DEFAULT_MAX_PER_WINDOW,
            window_s: DEFAULT_WINDOW_S,
        }
    }
}

/// A rule as the API takes it (`POST /v1/automations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// 1–100 characters.
    pub name: String,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Conditions (all must hold).
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// 1–8 actions, run in order.
    pub actions: Vec<Action>,
    /// Loop protection; default 3 per 600 s.
    #[serde(default)]
    pub limit: Limit,
}

fn yes() -> bool {
    true
}

/// `PATCH /v1/automations/{id}`: fields to replace.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleUpdate {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// New conditions (replace the old ones).
    #[serde(default, rename = "match")]
    pub matcher: Option<MatchSpec>,
    /// New actions.
    #[serde(default)]
    pub actions: Option<Vec<Action>>,
    /// New loop protection.
    #[serde(default)]
    pub limit: Option<Limit>,
}

impl RuleUpdate {
    /// Applies to `spec`; returns the names of the fields that changed.
    pub fn apply(self, spec: &mut RuleSpec) -> Vec<String> {
        let mut changed = Vec::new();
        macro_rules! set {
            ($f:ident, $name:expr) => {
                if let Some(v) = self.$f
                    && v != spec.$f
                {
                    spec.$f = v;
                    changed.push($name.to_string());
                }
            };
        }
        set!(name, "name");
        set!(enabled, "enabled");
        set!(matcher, "match");
        set!(actions, "actions");
        set!(limit, "limit");
        changed
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Lit(String),
    /// A placeholder (an index into [`PLACEHOLDERS`]).
    Var(usize),
}

/// Parses `{{name}}` placeholders; `{{` without a known name and `}}` is an error.
pub fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        if i > 0 {
            out.push(Piece::Lit(rest[..i].to_string()));
        }
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            return Err("unclosed `{{`".into());
        };
        let name = after[..j].trim();
        let Some(k) = PLACEHOLDERS.iter().position(|p| *p == name) else {
            return Err(format!(
                "unknown placeholder `{{{{{name}}}}}` (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        };
        out.push(Piece::Var(k));
        rest = &after[j + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Lit(rest.to_string()));
    }
    Ok(out)
}

/// Renders a parsed template; the values are in [`PLACEHOLDERS`] order. Values are inserted
/// as they are (never parsed again), and the result is cut at [`MAX_RENDERED_BYTES`].
pub fn render(pieces: &[Piece], values: [&str; 5]) -> String {
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Lit(l) => s.push_str(l),
            Piece::Var(k) => s.push_str(values[*k]),
        }
        if s.len() >= MAX_RENDERED_BYTES {
            break;
        }
    }
    if s.len() > MAX_RENDERED_BYTES {
        let mut cut = MAX_RENDERED_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Compiles a pattern within the size limits.
pub fn compile_regex(p: &str) -> Result<regex::Regex, String> {
    if p.len() > MAX_PATTERN_LEN {
        return Err(format!("at most {MAX_PATTERN_LEN} bytes (got {})", p.len()));
    }
    regex::RegexBuilder::new(p)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(n) => {
                format!("the compiled pattern exceeds the size limit of {n} bytes")
            }
            other => other
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_string(),
        })
}

/// Digits of a phone number or WhatsApp address before any `@`/`:` (`+49 151-1` →
/// `491511`); the text itself when it has no digits.
pub fn sender_key(s: &str) -> String {
    let head = s.split(['@', ':']).next().unwrap_or(s);
    let d: String = head.chars().filter(char::is_ascii_digit).collect();
    if d.is_empty() { s.to_lowercase() } else { d }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.:".contains(&b))
}

/// Every problem of a rule, each as `path: message`. Endpoint existence is checked by the
/// caller (`endpoint_ok`), as it needs the workspace's endpoints.
pub fn validate(spec: &RuleSpec, endpoint_ok: &dyn Fn(&str) -> Result<(), String>) -> Vec<String> {
    let mut p = Vec::new();
    let n = spec.name.chars().count();
    if n == 0 || n > 100 {
        p.push("name: 1 to 100 characters".to_string());
    }
    let m = &spec.matcher;
    for (field, list) in [
        ("devices", &m.devices),
        ("senders", &m.senders),
        ("keywords", &m.keywords),
    ] {
        if list.len() > MAX_LIST {
            p.push(format!("match.{field}: at most {MAX_LIST} entries"));
        }
        for (i, v) in list.iter().enumerate() {
            if v.trim().is_empty() || v.len() > 128 {
                p.push(format!("match.{field}[{i}]: 1 to 128 bytes, not blank"));
            }
        }
    }
    if let Some(r) = &m.regex
        && let Err(e) = compile_regex(r)
    {
        p.push(format!("match.regex: {e}"));
    }
    if spec.actions.is_empty() || spec.actions.len() > MAX_ACTIONS {
        p.push(format!("actions: 1 to {MAX_ACTIONS} actions"));
    }
    let tmpl = |p: &mut Vec<String>, path: String, t: &str| {
        if t.chars().count() > MAX_TEMPLATE_CHARS {
            p.push(format!("{path}: at most {MAX_TEMPLATE_CHARS} characters"));
        } else if t.trim().is_empty() {
            p.push(format!("{path}: must not be empty"));
        } else if let Err(e) = parse_template(t) {
            p.push(format!("{path}: {e}"));
        }
    };
    for (i, a) in spec.actions.iter().enumerate() {
        match a {
            Action::Reply { template } => tmpl(&mut p, format!("actions[{i}].template"), template),
            Action::Forward { device, to, template } => {
                if let Some(d) = device
                    && (d.is_empty() || d.len() > waping_protocol::limits::MAX_DEVICE_ID_LEN)
                {
                    p.push(format!("actions[{i}].device: 1 to 64 bytes"));
                }
                if to.trim().is_empty() || to.len() > waping_protocol::limits::MAX_RECIPIENT_LEN {
                    p.push(format!("actions[{i}].to: 1 to 128 bytes"));
                }
                if let Some(t) = template {
                    tmpl(&mut p, format!("actions[{i}].template"), t);
                }
            }
            Action::Webhook { endpoint_id } => {
                if let Err(e) = endpoint_ok(endpoint_id) {
                    p.push(format!("actions[{i}].endpoint_id: {e}"));
                }
            }
            Action::Tag { tags } => {
                if tags.is_empty() || tags.len() > MAX_TAGS {
                    p.push(format!("actions[{i}].tags: 1 to {MAX_TAGS} tags"));
                }
                for (j, t) in tags.iter().enumerate() {
                    if !valid_tag(t) {
                        p.push(format!(
                            "actions[{i}].tags[{j}]: 1 to 64 of a-z, 0-9, `_`, `-`, `.`, `:`"
                        ));
                    }
                }
            }
        }
    }
    if !(1..=100).contains(&spec.limit.max) {
        p.push("limit.max: 1 to 100".into());
    }
    if !(10..=86_400).contains(&spec.limit.window_s) {
        p.push("limit.window_s: 10 to 86400".into());
    }
    p
}

/// A rule ready to match: conditions normalised, regex and templates compiled.
#[derive(Debug)]
pub struct Compiled {
    /// `ar_…`.
    pub id: String,
    /// Name (for the event and logs).
    pub name: String,
    /// Devices (empty = any).
    pub devices: Vec<String>,
    /// Sender keys (empty = any).
    pub senders: Vec<String>,
    /// Lowercased keywords.
    pub keywords: Vec<String>,
    /// The pattern.
    pub regex: Option<regex::Regex>,
    /// Actions with their parsed templates.
    pub actions: Vec<(Action, Vec<Piece>)>,
    /// Loop protection.
    pub limit: Limit,
}

/// Default text of a forward.
pub const FORWARD_TEMPLATE: &str = "{{sender}}: {{text}}";

impl Compiled {
    /// Compiles a validated rule (a pattern that no longer compiles is an error).
    pub fn new(id: &str, spec: &RuleSpec) -> Result<Compiled, String> {
        let regex = spec.matcher.regex.as_deref().map(compile_regex).transpose()?;
        let mut actions = Vec::with_capacity(spec.actions.len());
        for a in &spec.actions {
            let pieces = match a {
                Action::Reply { template } => parse_template(template)?,
                Action::Forward { template, .. } => {
                    parse_template(template.as_deref().unwrap_or(FORWARD_TEMPLATE))?
                }
                _ => Vec::new(),
            };
            actions.push((a.clone(), pieces));
        }
        Ok(Compiled {
            id: id.to_string(),
            name: spec.name.clone(),
            devices: spec.matcher.devices.clone(),
            senders: spec.matcher.senders.iter().map(|s| sender_key(s)).collect(),
            keywords: spec
                .matcher
                .keywords
                .iter()
                .map(|k| k.trim().to_lowercase())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            regex,
            actions,
            limit: spec.limit,
        })
    }

    /// Whether an inbound message satisfies every condition. `lower` is `text` lowercased
    /// (computed once per message).
    pub fn matches(&self, device: &str, sender_key: &str, text: &str, lower: &str) -> bool {
        if !self.devices.is_empty() && !self.devices.iter().any(|d| d == device) {
            return false;
        }
        if !self.senders.is_empty() && !self.senders.iter().any(|s| s == sender_key) {
            return false;
        }
        if !self.keywords.is_empty() && !self.keywords.iter().any(|k| has_word(lower, k)) {
            return false;
        }
        if let Some(r) = &self.regex
            && !r.is_match(text)
        {
            return false;
        }
        true
    }
}

/// Whether `word` occurs in `hay` with no letter or digit right before or after it.
pub fn has_word(hay: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(i) = hay[from..].find(word) {
        let start = from + i;
        let end = start + word.len();
        let before = hay[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after = hay[end..].chars().next().is_none_or(|c| !c.is_alphanumeric());
        if before && after {
            return true;
        }
        from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> RuleSpec {
        serde_json::from_value(v).unwrap()
    }

    fn no_endpoints(_: &str) -> Result<(), String> {
        Err("no such endpoint in this workspace".into())
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let s = spec(serde_json::json!({
            "name": "",
            "match": {"keywords": [" "], "regex": "(a"},
            "actions": [
                {"type": "reply", "template": "hi {{nope}}"},
                {"type": "forward", "to": "", "template": "{{text"},
                {"type": "webhook", "endpoint_id": "whe_0000000000000001"},
                {"type": "tag", "tags": ["Bad Tag"]}
            ],
            "limit": {"max": 0, "window_s": 5}
        }));
        let p = validate(&s, &no_endpoints);
        let paths: Vec<&str> = p.iter().map(|x| x.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "name",
                "match.keywords[0]",
                "match.regex",
                "actions[0].template",
                "actions[1].to",
                "actions[1].template",
                "actions[2].endpoint_id",
                "actions[3].tags[0]",
                "limit.max",
                "limit.window_s"
            ],
            "{p:?}"
        );
    }

    #[test]
    fn regex_bounds_refuse_long_and_huge_patterns() {
        assert!(
            compile_regex(&"a".repeat(MAX_PATTERN_LEN + 1))
                .unwrap_err()
                .contains("at most")
        );
        // Short to write, huge once compiled: counted repetitions of a Unicode class.
        let e = compile_regex(r"\w{100}\w{100}\w{100}").unwrap_err();
        assert!(e.contains("size limit"), "{e}");
        assert!(compile_regex(r"(?i)\border\s+#?\d{3,10}\b").is_ok());
    }

    #[test]
    fn templates_render_placeholders_once_and_cap_output() {
        let t = parse_template("Hi {{sender}}, you said {{ text }} on {{device}}").unwrap();
        let out = render(&t, ["+49", "{{rule}}", "d1", "w", "r"]);
        assert_eq!(out, "Hi +49, you said {{rule}} on d1");
        let long = "é".repeat(MAX_RENDERED_BYTES);
        let out = render(&parse_template("{{text}}!").unwrap(), ["", &long, "", "", ""]);
        assert!(out.len() <= MAX_RENDERED_BYTES && out.len() >= MAX_RENDERED_BYTES - 1);
        assert!(parse_template("{{").is_err());
        assert!(parse_template("{{secret}}").is_err());
    }

    #[test]
    fn keywords_match_whole_words_case_insensitively() {
        let s = spec(serde_json::json!({
            "name": "r",
            "match": {"keywords": ["Price", "opening hours"], "senders": ["+49 151 1"]},
            "actions": [{"type": "tag", "tags": ["lead"]}]
        }));
        assert!(validate(&s, &no_endpoints).is_empty());
        let c = Compiled::new("ar_1", &s).unwrap();
        let m = |t: &str| c.matches("d1", "491511", t, &t.to_lowercase());
        assert!(m("What's the PRICE?"));
        assert!(m("your opening hours please"));
        assert!(!m("priceless"));
        assert!(!m("no match"));
        assert!(!c.matches("d1", "4900", "price", "price"));
        assert_eq!(sender_key("+49 151-1@s.whatsapp.net"), "491511");
    }
}
