//! From TOML text and `WAPING__…` environment variables to a [`Config`], with every problem
//! located.
//!
//! The text is parsed into toml's span-carrying tree (`DeValue`), the environment overrides are
//! written into that tree, and then `Config` is deserialised from it repeatedly: each structural
//! error (unknown key, wrong type, bad enum value, missing required field) is recorded with its
//! path and the offending entry is cut out of the tree, until deserialisation succeeds. The
//! semantic rules ([`Config::validate`]) then run on the result. Every problem is located by
//! walking its path through the tree to the span of the entry.
//!
//! Cutting an element out of an array of tables (a `[[workspaces]]` entry without `id`) shifts
//! the later ones down. Their problems are still reported, with the index remapped to the one
//! in the file: skipping them would hide real mistakes until the next run, and an index that
//! does not match the file would send the operator to the wrong entry.
//!
//! Values that came from the environment carry fake spans past the end of the text (one per
//! variable), so any problem that lands on them is reported as `env WAPING__…` without a second
//! bookkeeping structure, including errors toml raises deep inside an inline table given as a
//! variable's value.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use super::{Config, Location, Problem};

/// Environment variables whose names start with this (case-insensitively) are overrides.
pub(crate) const ENV_PREFIX: &str = "WAPING__";

/// At most this many structural errors are recovered from; a file with more gets the first ones
/// and a note. Every round removes an entry, so the loop ends anyway; the cap bounds the time
/// spent on a file that is not a configuration at all.
const MAX_ROUNDS: usize = 100;

/// The outcome of [`load`]: the configuration and the names of the applied overrides, or every
/// problem.
pub(crate) type Loaded = Result<(Config, Vec<String>), Vec<Problem>>;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A key path as the problems print it: `workspaces[0].keys[1].hash`.
struct PathDisplay<'a>(&'a [Seg]);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, s) in self.0.iter().enumerate() {
            match s {
                Seg::Index(i) => write!(f, "[{i}]")?,
                Seg::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        f.write_str(k)?
                    } else {
                        write!(f, "{k:?}")?
                    }
                }
            }
        }
        Ok(())
    }
}

fn path_string(segs: &[Seg]) -> String {
    PathDisplay(segs).to_string()
}

/// Parses the paths the semantic checks print (`a.b[2].c`); `None` if it is not one.
fn parse_path(s: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    for part in s.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return None;
        }
        out.push(Seg::Key(name.to_string()));
        while !rest.is_empty() {
            let close = rest.find(']')?;
            out.push(Seg::Index(rest.get(1..close)?.parse().ok()?));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    Some(out)
}

/// Byte offsets to `line:column` (1-based, columns in characters), and fake spans to variables.
struct Locator<'a> {
    text: &'a str,
    /// Overrides in application order; the fake span of the `n`th starts at `text.len() + 1 + n`.
    vars: Vec<String>,
}

impl Locator<'_> {
    fn env_span(&self, n: usize) -> Range<usize> {
        let start = self.text.len() + 1 + n;
        start..start + 1
    }

    fn locate(&self, span: &Range<usize>) -> Option<Location> {
        if span.start > self.text.len() {
            let var = self.vars.get(span.start - self.text.len() - 1)?;
            return Some(Location::Env { var: var.clone() });
        }
        let before = self.text.get(..span.start)?;
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Some(Location::Line { line, column })
    }
}

/// The child of `v` at `s`, and the span that locates it: the key of a table entry (so
/// `burst = 0` points at `burst`), the element itself in an array.
fn child<'a, 'i>(v: &'a DeValue<'i>, s: &Seg) -> Option<(&'a Spanned<DeValue<'i>>, Range<usize>)> {
    match (v, s) {
        (DeValue::Table(t), Seg::Key(k)) => t.get_key_value(k.as_str()).map(|(k, v)| (v, k.span())),
        (DeValue::Array(a), Seg::Index(i)) => a.get(*i).map(|v| (v, v.span())),
        _ => None,
    }
}

fn child_mut<'a, 'i>(v: &'a mut DeValue<'i>, s: &Seg) -> Option<&'a mut Spanned<DeValue<'i>>> {
    match (v, s) {
        (DeValue::Table(t), Seg::Key(k)) => t.get_mut(k.as_str()),
        (DeValue::Array(a), Seg::Index(i)) => a.get_mut(*i),
        _ => None,
    }
}

/// How many leading steps of `segs` exist in `root`, and the locating span of the last of them.
fn resolve(root: &DeValue<'_>, segs: &[Seg]) -> (usize, Option<Range<usize>>) {
    let (mut node, mut span) = (root, None);
    for (n, s) in segs.iter().enumerate() {
        match child(node, s) {
            Some((v, sp)) => {
                node = v.get_ref();
                span = Some(sp);
            }
            None => return (n, span),
        }
    }
    (segs.len(), span)
}

/// The value at `segs`, if the whole path exists.
fn get<'a, 'i>(root: &'a DeValue<'i>, segs: &[Seg]) -> Option<&'a DeValue<'i>> {
    segs.iter()
        .try_fold(root, |node, s| child(node, s).map(|(v, _)| v.get_ref()))
}

/// Removes the entry at `segs` (which must exist and be non-empty).
fn remove(root: &mut DeValue<'_>, segs: &[Seg]) {
    let Some((last, parent)) = segs.split_last() else {
        return;
    };
    let mut node = root;
    for s in parent {
        match child_mut(node, s) {
            Some(v) => node = v.get_mut(),
            None => return,
        }
    }
    match (node, last) {
        (DeValue::Table(t), Seg::Key(k)) => {
            t.remove(k.as_str());
        }
        (DeValue::Array(a), Seg::Index(i)) => {
            let old = std::mem::replace(a, DeArray::new());
            *a = old
                .into_iter()
                .enumerate()
                .filter_map(|(j, v)| (j != *i).then_some(v))
                .collect();
        }
        _ => {}
    }
}

/// Gives `v` and everything inside it `span` (env values are parsed from their own string, so
/// their spans would otherwise point into the file).
fn respan<'i>(v: DeValue<'i>, span: &Range<usize>) -> Spanned<DeValue<'i>> {
    let v = match v {
        DeValue::Array(a) => DeValue::Array(a.into_iter().map(|e| respan(e.into_inner(), span)).collect()),
        DeValue::Table(t) => DeValue::Table(
            t.into_iter()
                .map(|(k, v)| {
                    (
                        Spanned::new(span.clone(), k.into_inner()),
                        respan(v.into_inner(), span),
                    )
                })
                .collect(),
        ),
        other => other,
    };
    Spanned::new(span.clone(), v)
}

/// An override's value: TOML when the (trimmed) text is one TOML value, else the text as a
/// string, so `0.0.0.0:7400` and `info,hyper=warn` need no quotes.
fn env_value<'i>(raw: &'i str, span: &Range<usize>) -> Spanned<DeValue<'i>> {
    match DeValue::parse(raw.trim()) {
        Ok(v) => respan(v.into_inner(), span),
        Err(_) => Spanned::new(span.clone(), DeValue::String(DeString::Borrowed(raw))),
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Writes one override into the tree. Missing tables on the way are created; arrays are only
/// entered by an index that exists (an override cannot invent a workspace, whose required
/// fields it could not all give).
fn apply_env<'i>(
    root: &mut DeValue<'i>,
    keys: &[String],
    value: Spanned<DeValue<'i>>,
    span: &Range<usize>,
) -> Result<(), (Vec<Seg>, String)> {
    let (last, parents) = keys.split_last().expect("at least one key");
    let mut at: Vec<Seg> = Vec::new();
    let mut node = root;
    let step = |node: &DeValue<'_>, k: &str, at: &[Seg]| -> Result<Seg, (Vec<Seg>, String)> {
        match node {
            DeValue::Table(_) => Ok(Seg::Key(k.to_string())),
            DeValue::Array(a) => match k.parse::<usize>() {
                Ok(i) if i < a.len() => Ok(Seg::Index(i)),
                Ok(i) => Err((
                    at.to_vec(),
                    format!(
                        "index {i} does not exist ({} has {} entr{}); an override can only change an existing entry",
                        PathDisplay(at),
                        a.len(),
                        if a.len() == 1 { "y" } else { "ies" }
                    ),
                )),
                Err(_) => Err((
                    at.to_vec(),
                    format!(
                        "{} is an array: the next part of the name must be an index, not {k:?}",
                        PathDisplay(at)
                    ),
                )),
            },
            other => Err((
                at.to_vec(),
                format!(
                    "{} is {}, not a table: cannot set {k:?} inside it",
                    PathDisplay(at),
                    type_name(other)
                ),
            )),
        }
    };
    for (n, k) in parents.iter().enumerate() {
        let s = step(node, k, &at)?;
        at.push(s.clone());
        if let (DeValue::Table(t), Seg::Key(k)) = (&mut *node, &s)
            && !t.contains_key(k.as_str())
        {
            // An index after a key the file lacks: an array of tables that is not there, whose
            // entries an override cannot create one field at a time.
            if let Ok(i) = keys[n + 1].parse::<usize>() {
                return Err((
                    at,
                    format!(
                        "index {i} does not exist ({} is not in the file); an override can only change an existing entry, or give the whole array as TOML",
                        k
                    ),
                ));
            }
            t.insert(
                Spanned::new(span.clone(), DeString::Owned(k.clone())),
                Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
            );
        }
        node = child_mut(node, &s).expect("just checked or inserted").get_mut();
    }
    let s = step(node, last, &at)?;
    match (node, s) {
        (DeValue::Table(t), Seg::Key(k)) => {
            // Re-insert rather than overwrite: a map keeps its old key, and the key's span is
            // what locates a problem with this entry.
            t.remove(k.as_str());
            t.insert(Spanned::new(span.clone(), DeString::Owned(k)), value);
        }
        (DeValue::Array(a), Seg::Index(i)) => a.as_mut()[i] = value,
        _ => unreachable!("step returns a key for tables and an index for arrays"),
    }
    Ok(())
}

/// The field name serde quotes after `prefix` in messages such as "missing field `id`" and
/// "unknown field `colour`, expected …".
fn field_in(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_string())
}

/// True for `WAPING__…` names (not `WAPING_CONFIG` and other single-underscore settings).
pub(crate) fn is_override(name: &str) -> bool {
    name.get(..ENV_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
}

/// Cut-out entries, by their path in the tree as written (before any removal), so that paths
/// printed after a removal still name the entry the operator sees in the file.
#[derive(Default)]
struct Removed {
    /// Removed array elements: array path → original indices.
    elements: HashMap<Vec<Seg>, BTreeSet<usize>>,
    /// Every removed entry (keys and elements).
    paths: Vec<Vec<Seg>>,
}

impl Removed {
    /// Translates a path in the current tree to the tree as written.
    fn original(&self, segs: &[Seg]) -> Vec<Seg> {
        let mut out = Vec::with_capacity(segs.len());
        for s in segs {
            let s = match s {
                Seg::Index(i) => match self.elements.get(&out) {
                    Some(gone) => Seg::Index((0..).filter(|j| !gone.contains(j)).nth(*i).unwrap_or(*i)),
                    None => Seg::Index(*i),
                },
                key => key.clone(),
            };
            out.push(s);
        }
        out
    }

    fn record(&mut self, current: &[Seg]) {
        let orig = self.original(current);
        if let Some((Seg::Index(i), array)) = orig.split_last() {
            self.elements.entry(array.to_vec()).or_default().insert(*i);
        }
        self.paths.push(orig);
    }

    /// True if `orig` is a removed entry, inside one, or encloses one: its problems are likely
    /// consequences of the structural error already reported there (a required key cut out for
    /// its wrong type is not also "missing"; cutting out the only audit sink does not make
    /// `audit.sinks` "empty"). A real problem hidden this way shows in the next check.
    fn covers(&self, orig: &[Seg]) -> bool {
        self.paths
            .iter()
            .any(|p| orig.starts_with(p) || p.starts_with(orig))
    }
}

/// Parses `text`, applies the `WAPING__…` variables among `env` (other names are ignored),
/// deserialises and validates. Returns the configuration and the names of the applied overrides,
/// or every problem (the caller names the file when rendering them).
pub(crate) fn load(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Loaded {
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| is_override(k)).collect();
    // Sorted, so the outcome does not depend on the environment's order and a whole table
    // (`WAPING__LIMITS`) is applied before a field inside it (`WAPING__LIMITS__BURST`).
    vars.sort();
    let loc = Locator {
        text,
        vars: vars.iter().map(|(k, _)| k.clone()).collect(),
    };

    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let mut errs: Vec<_> = syntax
            .iter()
            .map(|e| {
                let span = e.span();
                (
                    span.as_ref().map_or(usize::MAX, |s| s.start),
                    Problem {
                        path: String::new(),
                        location: span.and_then(|s| loc.locate(&s)),
                        message: e.message().to_string(),
                    },
                )
            })
            .collect();
        errs.sort_by_key(|(at, _)| *at);
        return Err(errs.into_iter().map(|(_, p)| p).collect());
    }
    let root_span = doc.span();
    let mut root = DeValue::Table(doc.into_inner());

    let mut problems = Vec::new();
    let mut applied = Vec::new();
    for (n, (name, raw)) in vars.iter().enumerate() {
        let span = loc.env_span(n);
        let located = |path: String, message: String| Problem {
            path,
            location: Some(Location::Env { var: name.clone() }),
            message,
        };
        let keys: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|k| k.to_ascii_lowercase())
            .collect();
        if keys.iter().any(String::is_empty) {
            problems.push(located(
                String::new(),
                format!("not a key path: {ENV_PREFIX} must be followed by keys separated by `__`"),
            ));
            continue;
        }
        match apply_env(&mut root, &keys, env_value(raw, &span), &span) {
            Ok(()) => applied.push(name.clone()),
            Err((at, message)) => problems.push(located(path_string(&at), message)),
        }
    }

    let mut removed = Removed::default();
    let mut config = None;
    for _ in 0..MAX_ROUNDS {
        let DeValue::Table(t) = root.clone() else {
            unreachable!("the root is a table")
        };
        let de = toml::de::Deserializer::from(Spanned::new(root_span.clone(), t));
        let e = match serde_path_to_error::deserialize::<_, Config>(de) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(e) => e,
        };
        let mut segs = Vec::new();
        for s in e.path().iter() {
            match s {
                serde_path_to_error::Segment::Seq { index } => segs.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => segs.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => segs.push(Seg::Key(variant.clone())),
                serde_path_to_error::Segment::Unknown => break,
            }
        }
        let message = e.inner().message().to_string();
        let toml_span = e.inner().span();
        let (resolved, _) = resolve(&root, &segs);
        segs.truncate(resolved);

        if let Some(field) = field_in(&message, "missing field ") {
            // serde names the table; the path names the missing key, located at the table.
            let span = resolve(&root, &segs).1.or(toml_span);
            let mut missing = removed.original(&segs);
            missing.push(Seg::Key(field));
            if !removed.covers(&missing) {
                problems.push(Problem {
                    path: path_string(&missing),
                    location: span.and_then(|s| loc.locate(&s)),
                    message: "required key is missing".into(),
                });
            }
        } else {
            // Inside an internally tagged enum (audit sinks) serde's path stops at the table;
            // the message still names an unknown key, so find it there.
            if let Some(field) = field_in(&message, "unknown field ")
                && let Some(DeValue::Table(t)) = get(&root, &segs)
                && t.contains_key(field.as_str())
                && !matches!(segs.last(), Some(Seg::Key(k)) if *k == field)
            {
                segs.push(Seg::Key(field));
            }
            let span = resolve(&root, &segs).1.or(toml_span);
            problems.push(Problem {
                path: path_string(&removed.original(&segs)),
                location: span.and_then(|s| loc.locate(&s)),
                message,
            });
        }
        if segs.is_empty() {
            // Nothing to cut out: the document itself is wrong. Stop rather than loop.
            return Err(sorted(problems));
        }
        removed.record(&segs);
        remove(&mut root, &segs);
    }
    let Some(config) = config else {
        problems.push(Problem {
            path: String::new(),
            location: None,
            message: format!("stopped after {MAX_ROUNDS} errors; fix these and check again"),
        });
        return Err(sorted(problems));
    };

    for line in config.semantic_problems() {
        let (path, message) = line.split_once(": ").unwrap_or(("", line.as_str()));
        let Some(segs) = parse_path(path) else {
            problems.push(Problem {
                path: path.to_string(),
                location: None,
                message: message.to_string(),
            });
            continue;
        };
        let orig = removed.original(&segs);
        if removed.covers(&orig) {
            continue;
        }
        let (resolved, span) = resolve(&root, &segs);
        problems.push(Problem {
            path: path_string(&orig),
            // Only the entry itself locates a problem: a problem about a default (not in the
            // file) has no line rather than the line of some enclosing table.
            location: span
                .filter(|_| resolved == segs.len())
                .and_then(|s| loc.locate(&s)),
            message: message.to_string(),
        });
    }
    if problems.is_empty() {
        Ok((config, applied))
    } else {
        Err(sorted(problems))
    }
}

/// File positions in order, then environment variables by name, then unlocated problems.
fn sorted(mut p: Vec<Problem>) -> Vec<Problem> {
    p.sort_by(|a, b| {
        let key = |p: &Problem| match &p.location {
            Some(Location::Line { line, column }) => (0, *line, *column, String::new()),
            Some(Location::Env { var }) => (1, 0, 0, var.clone()),
            None => (2, 0, 0, String::new()),
        };
        key(a).cmp(&key(b))
    });
    p
}
